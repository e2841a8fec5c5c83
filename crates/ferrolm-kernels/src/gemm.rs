//! The shared parts of the tiled matrix product for the 32-value block formats (Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0) against many activation rows (the kernel itself is [`crate::gemm16`]):
//! activation blocks laid out for it, and a weight block unpacked to unsigned codes.
//!
//! Every format becomes "unsigned codes times signed activations minus an offset": the offset
//! term `-(sum of 4 activations) << shift` is computed once per activation block and used as
//! the starting value of `vpdpbusd`, so no per-tile correction is needed (Q8_0's signed codes
//! get `+128` and shift 7; the integer lanes are the same numbers as `qdot::dot_row`'s).

use crate::q8::{BlockQ8_1, QK};
use crate::QuantKind;

/// One activation block prepared for the tile kernel.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(8))]
pub struct ActBlock {
    pub qs: [i8; QK],
    /// `-(sum of elements 4k..4k+4) << shift`, the starting integer lanes.
    pub nys: [i32; 8],
    pub d: f32,
    pub s: f32,
}

/// The offset exponent of a format's unsigned codes (`code - (1 << shift)` is the level).
pub fn shift_of(kind: QuantKind) -> Option<u32> {
    match kind {
        QuantKind::Q4_0 => Some(3),
        QuantKind::Q5_0 => Some(4),
        QuantKind::Q8_0 => Some(7),
        QuantKind::Q4_1 | QuantKind::Q5_1 => None,
    }
}

/// Activation blocks with their offset lanes for `kind`.
pub fn prepare_acts(kind: QuantKind, x: &[BlockQ8_1], out: &mut Vec<ActBlock>) {
    out.clear();
    let shift = shift_of(kind);
    out.extend(x.iter().map(|b| {
        let mut nys = [0i32; 8];
        if let Some(sh) = shift {
            for (k, n) in nys.iter_mut().enumerate() {
                let s: i32 = b.qs[4 * k..4 * k + 4].iter().map(|&q| q as i32).sum();
                *n = -(s << sh);
            }
        }
        ActBlock {
            qs: b.qs,
            nys,
            d: b.d,
            s: b.s,
        }
    }));
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 32 unsigned codes of one block (levels plus `1 << shift`), its `d` and `m`.
pub(crate) fn unpack(kind: QuantKind, blk: &[u8], codes: &mut [u8]) -> (f32, f32) {
    let d = f16_at(blk, 0);
    // Low nibbles to codes 0..16, high nibbles to 16..32: two masks over 128 bits at once.
    let nib = |qs: &[u8], codes: &mut [u8]| {
        const LOW: u128 = 0x0F0F_0F0F_0F0F_0F0F_0F0F_0F0F_0F0F_0F0F;
        let q = u128::from_le_bytes(qs[..16].try_into().unwrap());
        codes[..16].copy_from_slice(&(q & LOW).to_le_bytes());
        codes[16..32].copy_from_slice(&((q >> 4) & LOW).to_le_bytes());
    };
    let hi = |qh: u32, codes: &mut [u8]| {
        for (j, c) in codes.iter_mut().enumerate() {
            *c |= (((qh >> j) & 1) as u8) << 4;
        }
    };
    match kind {
        QuantKind::Q4_0 => {
            nib(&blk[2..18], codes);
            (d, 0.0)
        }
        QuantKind::Q4_1 => {
            nib(&blk[4..20], codes);
            (d, f16_at(blk, 2))
        }
        QuantKind::Q5_0 => {
            nib(&blk[6..22], codes);
            hi(u32::from_le_bytes(blk[2..6].try_into().unwrap()), codes);
            (d, 0.0)
        }
        QuantKind::Q5_1 => {
            nib(&blk[8..24], codes);
            hi(u32::from_le_bytes(blk[4..8].try_into().unwrap()), codes);
            (d, f16_at(blk, 2))
        }
        QuantKind::Q8_0 => {
            for (c, &b) in codes.iter_mut().zip(&blk[2..34]) {
                *c = b ^ 0x80;
            }
            (d, 0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8::quantize_q8_1;

    fn rng(seed: &mut u64) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Random weight blocks with small finite scales.
    fn weights(kind: QuantKind, rows: usize, nb: usize, seed: &mut u64) -> Vec<u8> {
        let bb = kind.block_bytes();
        let mut w = vec![0u8; rows * nb * bb];
        for blk in w.chunks_exact_mut(bb) {
            for b in blk.iter_mut() {
                *b = (rng(seed) * 1000.0) as i32 as u8;
            }
            let d = half::f16::from_f32(rng(seed) * 0.05).to_le_bytes();
            blk[..2].copy_from_slice(&d);
            if kind.has_min() {
                let m = half::f16::from_f32(rng(seed) * 0.1).to_le_bytes();
                blk[2..4].copy_from_slice(&m);
            }
        }
        w
    }

    const KINDS: [QuantKind; 5] = [
        QuantKind::Q4_0,
        QuantKind::Q4_1,
        QuantKind::Q5_0,
        QuantKind::Q5_1,
        QuantKind::Q8_0,
    ];

    #[test]
    fn lane_major_fill_equals_the_portable_fill() {
        use crate::gemm16::Tile16;
        let mut seed = 5u64;
        for kind in KINDS {
            for nb in [1, 5, 18] {
                // 16 rows a little apart, as rows of a wider matrix.
                let rb = nb * kind.block_bytes() + 7;
                let w = weights(kind, 17, rb / kind.block_bytes() + 1, &mut seed);
                let (mut a, mut b) = (Tile16::default(), Tile16::default());
                a.fill(kind, &w, rb, nb, 16);
                b.fill_portable(kind, &w, rb, nb, 16);
                // Bits, not values: the shifted rows read random bytes as scales (NaNs too).
                assert!(a.same_bits(&b), "{kind:?} nb={nb}");
            }
        }
    }

    #[test]
    fn lane_major_tiles_equal_the_single_row_kernel_bit_for_bit() {
        let mut seed = 0x00dd_ba11_u64;
        for kind in KINDS {
            // A last tile of 8 or 5 rows too (zero rows fill it).
            for (n, nb, m) in [
                (16, 1, 1),
                (48, 18, 5),
                (32, 3, 2),
                (16, 7, 3),
                (24, 4, 4),
                (8, 2, 3),
                (21, 5, 2),
            ] {
                let w = weights(kind, n, nb, &mut seed);
                let row_bytes = nb * kind.block_bytes();
                let xs: Vec<Vec<BlockQ8_1>> = (0..m)
                    .map(|_| {
                        let x: Vec<f32> = (0..nb * QK).map(|_| rng(&mut seed) * 3.0).collect();
                        let mut q = Vec::new();
                        quantize_q8_1(&x, &mut q);
                        q
                    })
                    .collect();
                let acts: Vec<Vec<ActBlock>> = xs
                    .iter()
                    .map(|x| {
                        let mut a = Vec::new();
                        prepare_acts(kind, x, &mut a);
                        a
                    })
                    .collect();
                let mut y = vec![0f32; m * n];
                // SAFETY: one caller owns every column.
                unsafe {
                    crate::gemm16::rows_times_acts(
                        kind,
                        &w,
                        &acts,
                        n,
                        0,
                        n,
                        crate::pool::SharedOut::new(&mut y),
                    )
                };
                let mut t = crate::gemm16::Tile16::default();
                for j in (0..n).step_by(16) {
                    let rows = (n - j).min(16);
                    t.fill_portable(kind, &w[j * row_bytes..], row_bytes, nb, rows);
                    for i in 0..m {
                        let mut o = [[0f32; 16]; 1];
                        crate::gemm16::tile_scalar::<1>(&t, kind, [&acts[i][..]], &mut o);
                        for r in 0..rows {
                            let row = &w[(j + r) * row_bytes..][..row_bytes];
                            let want = crate::qdot::dot_row_scalar(kind, row, &xs[i]);
                            assert_eq!(o[0][r].to_bits(), want.to_bits(), "{kind:?} scalar");
                            assert_eq!(
                                y[i * n + j + r].to_bits(),
                                want.to_bits(),
                                "{kind:?} n={n} nb={nb} m={m} ({i},{})",
                                j + r
                            );
                        }
                    }
                }
            }
        }
    }
}
