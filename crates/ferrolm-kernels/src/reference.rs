//! Slow references for the fast kernels: dequantize both sides to f32 and take plain dot
//! products. Tests compare every fast path with these.

use crate::q8::BlockQ8_1;
use crate::qdot::QuantKind;
use half::f16;

/// Dequantizes one weight row to f32 (independent of the kernels' unpacking).
pub fn dequant_row(kind: QuantKind, row: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for blk in row.chunks_exact(kind.block_bytes()) {
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
        let mut vals = [0f32; 32];
        match kind {
            QuantKind::Q4_0 => {
                for j in 0..16 {
                    vals[j] = ((blk[2 + j] & 15) as f32 - 8.0) * d;
                    vals[j + 16] = ((blk[2 + j] >> 4) as f32 - 8.0) * d;
                }
            }
            QuantKind::Q5_0 => {
                let qh = u32::from_le_bytes(blk[2..6].try_into().unwrap());
                for j in 0..16 {
                    let lo = (blk[6 + j] & 15) as u32 | (((qh >> j) & 1) << 4);
                    let hi = (blk[6 + j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
                    vals[j] = (lo as f32 - 16.0) * d;
                    vals[j + 16] = (hi as f32 - 16.0) * d;
                }
            }
            QuantKind::Q8_0 => {
                for j in 0..32 {
                    vals[j] = blk[2 + j] as i8 as f32 * d;
                }
            }
            QuantKind::Q4_1 => {
                for j in 0..16 {
                    vals[j] = (blk[4 + j] & 15) as f32 * d + m;
                    vals[j + 16] = (blk[4 + j] >> 4) as f32 * d + m;
                }
            }
            QuantKind::Q5_1 => {
                let qh = u32::from_le_bytes(blk[4..8].try_into().unwrap());
                for j in 0..16 {
                    let lo = (blk[8 + j] & 15) as u32 | (((qh >> j) & 1) << 4);
                    let hi = (blk[8 + j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
                    vals[j] = lo as f32 * d + m;
                    vals[j + 16] = hi as f32 * d + m;
                }
            }
        }
        out.extend_from_slice(&vals);
    }
    out
}

/// f32 value of Q8_1 activations.
pub fn dequant_q8_1(x: &[BlockQ8_1]) -> Vec<f32> {
    x.iter()
        .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
        .collect()
}

/// Reference `row . x` in f64.
pub fn dot_row_ref(kind: QuantKind, row: &[u8], x: &[BlockQ8_1]) -> f64 {
    let w = dequant_row(kind, row);
    let a = dequant_q8_1(x);
    w.iter().zip(&a).map(|(&p, &q)| p as f64 * q as f64).sum()
}
