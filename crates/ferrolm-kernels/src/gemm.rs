//! Register-tiled matrix product for the 32-value block formats (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) against many activation rows: the prefill kernel.
//!
//! Every output element is computed with exactly the operations of `qdot::dot_row` (eight
//! integer lanes per block, one fused multiply-add per block with `d_w * d_x`, `hsum8`, plus
//! the minimum terms), so the results are bit-identical to the single-row kernel and to
//! llama.cpp. What changes is the schedule:
//! - a tile of 8 weight rows is unpacked once into 8-bit codes (two rows per 512-bit vector)
//!   with its scales pre-broadcast, then used against every activation row;
//! - 4 activation rows at a time share those vectors: 16 accumulators of 2 x 8 lanes;
//! - every format becomes "unsigned codes times signed activations minus an offset": the
//!   offset term `-(sum of 4 activations) << shift` is computed once per activation block
//!   and used as the starting value of `vpdpbusd`, so no per-tile correction is needed
//!   (Q8_0's signed codes get `+128` and shift 7; the integer lanes are the same numbers).

use crate::q8::{BlockQ8_1, QK};
use crate::QuantKind;

/// Weight rows per tile (two per 512-bit vector).
pub const TILE_ROWS: usize = 8;
/// Activation rows per register tile.
pub const TILE_COLS: usize = 4;

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

/// A tile of 8 weight rows unpacked for the kernel: per block, 4 pair vectors of 64 codes,
/// 4 pair vectors of 16 scales (`d` of row `2p` in lanes 0..8, of row `2p + 1` in 8..16), and
/// the 8 rows' minimums.
#[derive(Default)]
pub struct TileBuf {
    codes: Vec<u8>,
    dexp: Vec<f32>,
    mins: Vec<f32>,
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

impl TileBuf {
    /// Unpacks rows `rows[0..8]` (each `nb` blocks of `kind`): with 512-bit vectors for
    /// Q4_0, Q4_1 and Q8_0 where present, the same bytes as [`TileBuf::fill_portable`].
    pub fn fill(&mut self, kind: QuantKind, rows: [&[u8]; TILE_ROWS], nb: usize) {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::features().vnni
            && matches!(kind, QuantKind::Q4_0 | QuantKind::Q4_1 | QuantKind::Q8_0)
        {
            let bb = kind.block_bytes();
            for r in &rows {
                assert!(r.len() >= nb * bb);
            }
            self.codes.resize(nb * 4 * 64, 0);
            self.dexp.resize(nb * 4 * 16, 0.0);
            self.mins.resize(nb * 8, 0.0);
            // SAFETY: the features were detected at run time; the rows hold `nb` blocks.
            unsafe { self.fill_avx512(kind, rows, nb) };
            return;
        }
        self.fill_portable(kind, rows, nb)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
    unsafe fn fill_avx512(&mut self, kind: QuantKind, rows: [&[u8]; TILE_ROWS], nb: usize) {
        use std::arch::x86_64::*;
        let bb = kind.block_bytes();
        let low = _mm512_set1_epi8(0x0F);
        // Per 64-bit element: 128-bit lanes 1 and 3 take the high nibbles.
        let shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
        let flip = _mm512_set1_epi8(-128);
        let f16 = |p: *const u8| {
            let h = u16::from_le_bytes([*p, *p.add(1)]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
        };
        let (codes, dexp, mins) = (
            self.codes.as_mut_ptr(),
            self.dexp.as_mut_ptr(),
            self.mins.as_mut_ptr(),
        );
        for b in 0..nb {
            for p in 0..4 {
                let (b0, b1) = (
                    rows[2 * p].as_ptr().add(b * bb),
                    rows[2 * p + 1].as_ptr().add(b * bb),
                );
                let v = match kind {
                    QuantKind::Q8_0 => {
                        let lo = _mm256_loadu_si256(b0.add(2) as *const _);
                        let hi = _mm256_loadu_si256(b1.add(2) as *const _);
                        let v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                        _mm512_xor_si512(v, flip)
                    }
                    _ => {
                        let off = if kind == QuantKind::Q4_1 { 4 } else { 2 };
                        let q0 = _mm_loadu_si128(b0.add(off) as *const _);
                        let q1 = _mm_loadu_si128(b1.add(off) as *const _);
                        let v = _mm512_broadcast_i32x4(q0);
                        let v = _mm512_inserti32x4(_mm512_inserti32x4(v, q1, 2), q1, 3);
                        _mm512_and_si512(_mm512_srlv_epi64(v, shifts), low)
                    }
                };
                _mm512_storeu_si512(codes.add((b * 4 + p) * 64) as *mut _, v);
                let d = _mm512_insertf32x8(_mm512_set1_ps(f16(b0)), _mm256_set1_ps(f16(b1)), 1);
                _mm512_storeu_ps(dexp.add((b * 4 + p) * 16), d);
                if kind == QuantKind::Q4_1 {
                    *mins.add(b * 8 + 2 * p) = f16(b0.add(2));
                    *mins.add(b * 8 + 2 * p + 1) = f16(b1.add(2));
                }
            }
        }
    }

    /// [`TileBuf::fill`] in portable code (every format).
    pub fn fill_portable(&mut self, kind: QuantKind, rows: [&[u8]; TILE_ROWS], nb: usize) {
        let bb = kind.block_bytes();
        self.codes.resize(nb * 4 * 64, 0);
        self.dexp.resize(nb * 4 * 16, 0.0);
        self.mins.resize(nb * 8, 0.0);
        // Row by row, so the reads run through memory in address order (the tile's rows
        // are usually consecutive in the matrix) and the prefetchers keep ahead of them.
        for (r, row) in rows.iter().enumerate() {
            for b in 0..nb {
                let (p, half) = (r / 2, r % 2);
                let at = (b * 4 + p) * 64 + half * 32;
                let (d, m) = unpack(
                    kind,
                    &row[b * bb..(b + 1) * bb],
                    &mut self.codes[at..at + 32],
                );
                let dat = (b * 4 + p) * 16 + half * 8;
                self.dexp[dat..dat + 8].fill(d);
                self.mins[b * 8 + r] = m;
            }
        }
    }
}

/// `out[i][r] = row r . act_i` for the tile's 8 rows and `C` activation rows, portable.
pub fn tile_scalar<const C: usize>(
    tile: &TileBuf,
    min: bool,
    acts: [&[ActBlock]; C],
    out: &mut [[f32; TILE_ROWS]; C],
) {
    let nb = tile.mins.len() / 8;
    for (i, act) in acts.iter().enumerate() {
        for r in 0..TILE_ROWS {
            let (p, half) = (r / 2, r % 2);
            let mut acc = [0f32; 8];
            let mut summs = 0f32;
            for (b, y) in act.iter().enumerate().take(nb) {
                let codes = &tile.codes[(b * 4 + p) * 64 + half * 32..][..32];
                let d = tile.dexp[(b * 4 + p) * 16 + half * 8];
                let dd = d * y.d;
                for (k, a) in acc.iter_mut().enumerate() {
                    let mut l = y.nys[k];
                    for e in 4 * k..4 * k + 4 {
                        l += codes[e] as i32 * y.qs[e] as i32;
                    }
                    *a = dd.mul_add(l as f32, *a);
                }
                if min {
                    summs = tile.mins[b * 8 + r].mul_add(y.s, summs);
                }
            }
            out[i][r] = crate::qdot::hsum8(&acc) + summs;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_vnni<const C: usize, const MIN: bool>(
    tile: &TileBuf,
    acts: [&[ActBlock]; C],
    out: &mut [[f32; TILE_ROWS]; C],
) {
    use std::arch::x86_64::*;
    let nb = tile.mins.len() / 8;
    for a in &acts {
        assert!(a.len() >= nb);
    }
    let mut acc = [[_mm512_setzero_ps(); 4]; C];
    let mut summs = [_mm256_setzero_ps(); C];
    let codes = tile.codes.as_ptr();
    let dexp = tile.dexp.as_ptr();
    let mins = tile.mins.as_ptr();
    for b in 0..nb {
        let w: [__m512i; 4] =
            std::array::from_fn(|p| _mm512_loadu_si512(codes.add((b * 4 + p) * 64) as *const _));
        let dw: [__m512; 4] = std::array::from_fn(|p| _mm512_loadu_ps(dexp.add((b * 4 + p) * 16)));
        let mv = if MIN {
            _mm256_loadu_ps(mins.add(b * 8))
        } else {
            _mm256_setzero_ps()
        };
        for i in 0..C {
            let y = acts[i].as_ptr().add(b);
            let yq = _mm512_broadcast_i64x4(_mm256_loadu_si256((*y).qs.as_ptr() as *const _));
            let nys = _mm512_broadcast_i64x4(_mm256_loadu_si256((*y).nys.as_ptr() as *const _));
            let dy = _mm512_set1_ps((*y).d);
            for p in 0..4 {
                let l = _mm512_dpbusd_epi32(nys, w[p], yq);
                acc[i][p] =
                    _mm512_fmadd_ps(_mm512_mul_ps(dw[p], dy), _mm512_cvtepi32_ps(l), acc[i][p]);
            }
            if MIN {
                summs[i] = _mm256_fmadd_ps(mv, _mm256_set1_ps((*y).s), summs[i]);
            }
        }
    }
    for i in 0..C {
        let mut s = [0f32; 8];
        _mm256_storeu_ps(s.as_mut_ptr(), summs[i]);
        for p in 0..4 {
            let mut v = [0f32; 16];
            _mm512_storeu_ps(v.as_mut_ptr(), acc[i][p]);
            let lo: &[f32; 8] = v[..8].try_into().unwrap();
            let hi: &[f32; 8] = v[8..].try_into().unwrap();
            out[i][2 * p] = crate::qdot::hsum8(lo) + s[2 * p];
            out[i][2 * p + 1] = crate::qdot::hsum8(hi) + s[2 * p + 1];
        }
    }
}

/// The tile against `C` activation rows with the best kernel of this CPU (same bits).
pub fn tile<const C: usize>(
    tile: &TileBuf,
    min: bool,
    acts: [&[ActBlock]; C],
    out: &mut [[f32; TILE_ROWS]; C],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().vnni {
        // SAFETY: the features were detected at run time.
        unsafe {
            if min {
                tile_vnni::<C, true>(tile, acts, out)
            } else {
                tile_vnni::<C, false>(tile, acts, out)
            }
        };
        return;
    }
    tile_scalar(tile, min, acts, out)
}

/// Outputs `j0..j1` (a multiple of 8 long) of `y (M, N)`: `y[i * n + j] = w_j . x_i`, for `w`
/// holding `n` rows.
///
/// # Safety
/// The caller owns columns `j0..j1` of `y` exclusively.
pub unsafe fn rows_times_acts(
    kind: QuantKind,
    w: &[u8],
    acts: &[Vec<ActBlock>],
    n: usize,
    j0: usize,
    j1: usize,
    y: crate::pool::SharedOut,
) {
    let row_bytes = w.len() / n;
    let nb = row_bytes / kind.block_bytes();
    let min = kind.has_min();
    let mut buf = TileBuf::default();
    let row = |j: usize| &w[j * row_bytes..(j + 1) * row_bytes];
    let put = |i: usize, j: usize, v: &[f32; TILE_ROWS]| {
        // SAFETY: columns j..j+8 of row i belong to this caller (see above).
        unsafe { y.slice(i * n + j, TILE_ROWS).copy_from_slice(v) };
    };
    debug_assert_eq!((j1 - j0) % TILE_ROWS, 0);
    // 16-row lane-major tiles for the bulk (same bits, fewer operations), then an 8-row tile.
    let j16 = j0 + (j1 - j0) / crate::gemm16::ROWS * crate::gemm16::ROWS;
    // SAFETY: the caller owns columns j0..j16.
    unsafe { crate::gemm16::rows_times_acts(kind, w, acts, n, j0, j16, y) };
    for j in (j16..j1).step_by(TILE_ROWS) {
        buf.fill(kind, std::array::from_fn(|r| row(j + r)), nb);
        let mut i = 0;
        while i + TILE_COLS <= acts.len() {
            let mut o = [[0f32; TILE_ROWS]; TILE_COLS];
            tile::<TILE_COLS>(&buf, min, std::array::from_fn(|c| &acts[i + c][..]), &mut o);
            for (c, v) in o.iter().enumerate() {
                put(i + c, j, v);
            }
            i += TILE_COLS;
        }
        while i < acts.len() {
            let mut o = [[0f32; TILE_ROWS]; 1];
            tile::<1>(&buf, min, [&acts[i][..]], &mut o);
            put(i, j, &o[0]);
            i += 1;
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
    fn vector_fill_equals_the_portable_fill() {
        let mut seed = 11u64;
        for kind in [
            QuantKind::Q4_0,
            QuantKind::Q4_1,
            QuantKind::Q5_0,
            QuantKind::Q5_1,
            QuantKind::Q8_0,
        ] {
            let nb = 5;
            let w = weights(kind, TILE_ROWS, nb, &mut seed);
            let rb = nb * kind.block_bytes();
            let rows: [&[u8]; TILE_ROWS] = std::array::from_fn(|r| &w[r * rb..(r + 1) * rb]);
            let (mut a, mut b) = (TileBuf::default(), TileBuf::default());
            a.fill(kind, rows, nb);
            b.fill_portable(kind, rows, nb);
            assert_eq!(a.codes, b.codes, "{kind:?}");
            assert_eq!(a.dexp, b.dexp, "{kind:?}");
            assert_eq!(a.mins, b.mins, "{kind:?}");
        }
    }

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
                a.fill(kind, &w, rb, nb);
                b.fill_portable(kind, &w, rb, nb);
                // Bits, not values: the shifted rows read random bytes as scales (NaNs too).
                assert!(a.same_bits(&b), "{kind:?} nb={nb}");
            }
        }
    }

    #[test]
    fn lane_major_tiles_equal_the_single_row_kernel_bit_for_bit() {
        let mut seed = 0x00dd_ba11_u64;
        for kind in KINDS {
            for (n, nb, m) in [(16, 1, 1), (48, 18, 5), (32, 3, 2), (16, 7, 3)] {
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
                    t.fill_portable(kind, &w[j * row_bytes..], row_bytes, nb);
                    for i in 0..m {
                        let mut o = [[0f32; 16]; 1];
                        crate::gemm16::tile_scalar::<1>(&t, kind, [&acts[i][..]], &mut o);
                        for r in 0..16 {
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

    #[test]
    fn tiled_product_equals_the_single_row_kernel_bit_for_bit() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        for kind in KINDS {
            for (n, nb, m) in [(8, 1, 1), (16, 3, 5), (24, 18, 9), (8, 7, 4), (32, 2, 13)] {
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
                    rows_times_acts(
                        kind,
                        &w,
                        &acts,
                        n,
                        0,
                        n,
                        crate::pool::SharedOut::new(&mut y),
                    )
                };
                let mut buf = TileBuf::default();
                for j in (0..n).step_by(8) {
                    buf.fill(
                        kind,
                        std::array::from_fn(|r| &w[(j + r) * row_bytes..][..row_bytes]),
                        nb,
                    );
                    let mut o = [[0f32; 8]; 1];
                    for i in 0..m {
                        tile_scalar::<1>(&buf, kind.has_min(), [&acts[i][..]], &mut o);
                        for r in 0..8 {
                            let want = crate::qdot::dot_row_scalar(
                                kind,
                                &w[(j + r) * row_bytes..][..row_bytes],
                                &xs[i],
                            );
                            assert_eq!(o[0][r].to_bits(), want.to_bits(), "{kind:?} scalar tile");
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
