//! Reference dequantization: scalar, block-at-a-time, written to read like ggml's
//! `dequantize_row_*` (ggml/src/ggml-quants.c) and to produce the same f32 bits.
//!
//! This is the slow, obviously-correct version that fast kernels are tested against.
//! Products and sums are evaluated exactly in the order and grouping of ggml's C source, with no
//! fused multiply-add (Rust never contracts `a * b + c`); a ggml build whose C compiler contracts
//! to FMA can differ from this (and from gguf-py) in the last bit.
//!
//! Block layouts (bytes, little-endian; `d`, `m`, `dmin` are f16 unless noted):
//! ```text
//! Q4_0  d | qs[16]                 x = (nibble - 8) * d
//! Q4_1  d m | qs[16]               x = nibble * d + m
//! Q5_0  d | qh[4] | qs[16]         x = (nibble | high bit << 4) - 16) * d
//! Q5_1  d m | qh[4] | qs[16]       x = (nibble | high bit << 4) * d + m
//! Q8_0  d | qs[32] (i8)            x = q * d
//! Q2_K  scales[16] | qs[64] | d dmin               16 groups of 16, 4-bit scale and min
//! Q3_K  hmask[32] | qs[64] | scales[12] | d        16 groups of 16, 6-bit signed scales
//! Q4_K  d dmin | scales[12] | qs[128]              8 groups of 32, 6-bit scale and min
//! Q5_K  d dmin | scales[12] | qh[32] | qs[128]     as Q4_K plus a fifth bit
//! Q6_K  ql[128] | qh[64] | scales[16] (i8) | d     16 groups of 16
//! Q8_K  d (f32) | qs[256] (i8) | bsums[16] (i16, unused here)
//! ```

use crate::error::FormatError;
use crate::types::{GgmlType, QK_K};

/// Dequantizes `out.len()` elements of type `ty` from `bytes` into `out`.
///
/// `out.len()` must be a multiple of the type's block size and `bytes.len()` must equal
/// `ty.row_bytes(out.len())`. The result equals ggml's `dequantize_row_*` bit for bit.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), FormatError> {
    let problem = |problem: String| FormatError::Dequantize { ty, problem };
    let n = out.len();
    let Some(expected) = ty.row_bytes(n) else {
        return Err(problem(format!(
            "{n} elements is not a multiple of the block size {}",
            ty.block_size()
        )));
    };
    if bytes.len() != expected {
        return Err(problem(format!(
            "{n} elements take {expected} bytes, but {} were given",
            bytes.len()
        )));
    }
    match ty {
        GgmlType::F32 => f32_row(bytes, out),
        GgmlType::F16 => f16_row(bytes, out),
        GgmlType::BF16 => bf16_row(bytes, out),
        _ => {
            let Some(block_fn) = block_kernel(ty) else {
                return Err(problem(
                    "ferrolm has no dequantizer for this type".to_string(),
                ));
            };
            let blocks = bytes.chunks_exact(ty.type_size());
            for (block, y) in blocks.zip(out.chunks_exact_mut(ty.block_size())) {
                block_fn(block, y);
            }
        }
    }
    Ok(())
}

/// Dequantizes one block: `type_size` bytes in, `block_size` values out.
type BlockFn = fn(&[u8], &mut [f32]);

/// The block function of a quantized type.
fn block_kernel(ty: GgmlType) -> Option<BlockFn> {
    Some(match ty {
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q2_K => q2_k,
        GgmlType::Q3_K => q3_k,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        GgmlType::Q8_K => q8_k,
        _ => return None,
    })
}

/// Dequantizes a whole buffer of `n` elements into a new vector.
pub fn dequantize_to_vec(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, FormatError> {
    let mut out = vec![0.0; n];
    dequantize(ty, bytes, &mut out)?;
    Ok(out)
}

/// The f16 at byte `i` of `b`, widened (exactly) to f32.
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn f32_row(bytes: &[u8], out: &mut [f32]) {
    for (x, y) in bytes.chunks_exact(4).zip(out) {
        *y = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    }
}

fn f16_row(bytes: &[u8], out: &mut [f32]) {
    for (i, y) in out.iter_mut().enumerate() {
        *y = f16_at(bytes, 2 * i);
    }
}

fn bf16_row(bytes: &[u8], out: &mut [f32]) {
    // bf16 is the top half of an f32.
    for (x, y) in bytes.chunks_exact(2).zip(out) {
        *y = f32::from_bits(u32::from(u16::from_le_bytes([x[0], x[1]])) << 16);
    }
}

/// 32 elements: `d | qs[16]`; element j is the low nibble of qs[j], element j+16 the high one.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// The 5-bit values of a Q5 block: nibbles from `qs`, fifth bits from the 32-bit mask `qh`
/// (bit j for element j).
fn q5_values(qh: &[u8], qs: &[u8]) -> [i32; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut v = [0i32; 32];
    for j in 0..16 {
        let high_lo = ((qh >> j) & 1) << 4;
        let high_hi = ((qh >> (j + 16)) & 1) << 4;
        v[j] = ((qs[j] & 0x0F) as u32 | high_lo) as i32;
        v[j + 16] = ((qs[j] >> 4) as u32 | high_hi) as i32;
    }
    v
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let v = q5_values(&b[2..6], &b[6..22]);
    for j in 0..32 {
        y[j] = (v[j] - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let v = q5_values(&b[4..8], &b[8..24]);
    for j in 0..32 {
        y[j] = v[j] as f32 * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// 256 elements in two halves of 128. Each half reads 32 bytes of 2-bit quants four times
/// (shifts 0, 2, 4, 6), 16 bytes per group; each group of 16 has a 4-bit scale and 4-bit min.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    let mut out = 0;
    let mut group = 0;
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for shift in [0, 2, 4, 6] {
            for q16 in [&q[0..16], &q[16..32]] {
                let sc = scales[group];
                group += 1;
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for &qb in q16 {
                    y[out] = dl * ((qb >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

/// The 16 Q3_K group scales (6 bits, stored offset by 32). Low 4 bits: byte i (groups 0-7) or
/// the high nibble of byte i-8 (groups 8-15); high 2 bits: bits 2*(i/4).. of byte 8 + i%4.
pub(crate) fn q3_k_scales(packed: &[u8]) -> [i32; 16] {
    let mut s = [0i32; 16];
    for (i, s) in s.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0x0F
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i32 - 32;
    }
    s
}

/// Like Q2_K's walk, with a third bit from `hmask`: when the bit is clear the value drops by 4.
/// The mask bit advances once per shift across both halves (bits 0-3, then 4-7).
fn q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    let mut out = 0;
    let mut group = 0;
    let mut bit = 0;
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for shift in [0, 2, 4, 6] {
            for start in [0, 16] {
                let dl = d * scales[group] as f32;
                group += 1;
                for l in start..start + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let sub = if hmask[l] & (1 << bit) != 0 { 0 } else { 4 };
                    y[out] = dl * (low - sub) as f32;
                    out += 1;
                }
            }
            bit += 1;
        }
    }
}

/// Scale and min of group `j` (0..8) of a Q4_K/Q5_K block, 6 bits each, from 12 packed bytes
/// (ggml's `get_scale_min_k4`).
pub(crate) fn k4_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// 256 elements in four chunks of 64; each chunk reads 32 bytes, low nibbles then high nibbles,
/// each 32 with its own scale and min.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..4 {
        let q = &qs[32 * chunk..32 * chunk + 32];
        let y = &mut y[64 * chunk..64 * chunk + 64];
        let (sc1, m1) = k4_scale_min(2 * chunk, scales);
        let (sc2, m2) = k4_scale_min(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// As Q4_K, plus a fifth bit from `qh`: bit 2*chunk for the low nibbles, 2*chunk+1 for the high.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for chunk in 0..4 {
        let q = &qs[32 * chunk..32 * chunk + 32];
        let y = &mut y[64 * chunk..64 * chunk + 64];
        let (sc1, m1) = k4_scale_min(2 * chunk, scales);
        let (sc2, m2) = k4_scale_min(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (bit1, bit2) = (1u8 << (2 * chunk), 1u8 << (2 * chunk + 1));
        for l in 0..32 {
            let high1 = if qh[l] & bit1 != 0 { 16 } else { 0 };
            let high2 = if qh[l] & bit2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((q[l] & 0x0F) + high1) as f32 - m1;
            y[l + 32] = d2 * ((q[l] >> 4) + high2) as f32 - m2;
        }
    }
}

/// 256 elements in two halves of 128; in each half, element l + 32k (k = 0..4) takes a nibble
/// of ql (k even: low, odd: high; bytes l or l+32) and 2 bits of qh[l] (bits 2k..2k+2).
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let nibbles = [ql[l] & 0x0F, ql[l + 32] & 0x0F, ql[l] >> 4, ql[l + 32] >> 4];
            for (k, nibble) in nibbles.into_iter().enumerate() {
                let q = (nibble | (((qh[l] >> (2 * k)) & 3) << 4)) as i32 - 32;
                let scale = sc[is + 2 * k] as i8;
                y[l + 32 * k] = d * scale as f32 * q as f32;
            }
        }
    }
}

fn q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for j in 0..QK_K {
        y[j] = d * (b[4 + j] as i8) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_lengths_and_unsupported_types() {
        let mut out = [0.0; 32];
        assert!(dequantize(GgmlType::Q4_0, &[0; 17], &mut out).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], &mut out[..31]).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], &mut out).is_ok());
        let e = dequantize(GgmlType::IQ4_NL, &[0; 18], &mut out).unwrap_err();
        assert!(e.to_string().contains("IQ4_NL"), "{e}");
    }

    #[test]
    fn hand_checked_q4_0_and_q8_0() {
        // d = 0.5 (f16 0x3800); byte 0x9F: low nibble 15 -> (15-8)*0.5, high nibble 9 -> 0.5.
        let mut b = vec![0x00, 0x38];
        b.extend([0x9F; 16]);
        let out = dequantize_to_vec(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(out[0], 3.5);
        assert_eq!(out[16], 0.5);
        let mut b = vec![0x00, 0x38];
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let out = dequantize_to_vec(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(out[0], -8.0);
        assert_eq!(out[31], 7.5);
    }

    #[test]
    fn half_precision_specials() {
        let f16 = [0x7C00u16, 0xFC00, 0x7E00, 0x0001, 0x8000];
        let bytes: Vec<u8> = f16.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = dequantize_to_vec(GgmlType::F16, &bytes, 5).unwrap();
        assert_eq!(out[0], f32::INFINITY);
        assert_eq!(out[1], f32::NEG_INFINITY);
        assert!(out[2].is_nan());
        assert_eq!(out[3], 2f32.powi(-24));
        assert_eq!(out[4].to_bits(), 0x8000_0000);
        let out = dequantize_to_vec(GgmlType::BF16, &[0x80, 0x3F], 1).unwrap();
        assert_eq!(out[0], 1.0);
    }
}
