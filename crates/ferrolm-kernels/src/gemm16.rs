//! The prefill and batched-decode kernel for the 32-value block formats, on tiles of 16 weight
//! rows laid out lane-major: per block, eight vectors of 16 rows x 4 codes (vector `j` holds
//! elements `4j..4j+4` of every row), the 16 rows' `d` and their minimums.
//!
//! Every output is computed with exactly the operations of `qdot::dot_row` (eight integer lanes
//! per block, one fused multiply-add per lane and block with `d_w * d_x`, `hsum8`, plus the
//! minimum terms), so results are bit-identical to the single-row kernel and to llama.cpp
//! (activations come laid out by [`crate::gemm::prepare_acts`]). What the layout buys: one
//! `vpdpbusd` gives lane `j` of 16 rows, so `d_w * d_x` is one multiply for 16 rows (not one
//! per lane), and the final `hsum8` is seven vector additions for 16 rows.

use crate::gemm::{shift_of, ActBlock};
use crate::QuantKind;

/// Weight rows per tile.
pub const ROWS: usize = 16;

/// 16 weight rows unpacked lane-major (see the module docs).
#[derive(Default)]
pub struct Tile16 {
    /// Per block, 8 vectors of 64 bytes: row `r`'s codes `4j..4j+4` at `r * 4` of vector `j`.
    codes: Vec<u8>,
    /// Per block, the 16 rows' `d`, then their `m` (zeros without minimums).
    d: Vec<f32>,
    m: Vec<f32>,
    nb: usize,
}

impl Tile16 {
    fn resize(&mut self, nb: usize) {
        self.nb = nb;
        self.codes.resize(nb * 8 * 64, 0);
        self.d.resize(nb * ROWS, 0.0);
        self.m.resize(nb * ROWS, 0.0);
    }

    /// Whether two tiles hold the same bytes (test helper: NaN scales compare equal).
    #[cfg(test)]
    pub(crate) fn same_bits(&self, o: &Tile16) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        self.nb == o.nb
            && self.codes == o.codes
            && bits(&self.d) == bits(&o.d)
            && bits(&self.m) == bits(&o.m)
    }

    /// Unpacks `rows` (at most 16) rows of `nb` blocks of `kind`, `row_bytes` apart from
    /// `w`'s start (missing rows are zeros): with 512-bit vectors for 16 rows of Q4_0, Q4_1 and
    /// Q8_0, the same bytes as [`Tile16::fill_portable`].
    pub fn fill(&mut self, kind: QuantKind, w: &[u8], row_bytes: usize, nb: usize, rows: usize) {
        assert!((1..=ROWS).contains(&rows));
        assert!(w.len() >= (rows - 1) * row_bytes + nb * kind.block_bytes());
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::features().vnni
            && rows == ROWS
            && matches!(kind, QuantKind::Q4_0 | QuantKind::Q4_1 | QuantKind::Q8_0)
            && row_bytes * ROWS < i32::MAX as usize
        {
            self.resize(nb);
            // SAFETY: the features were detected at run time; the 16 rows hold `nb` blocks
            // (asserted above).
            unsafe { self.fill_avx512(kind, w, row_bytes) };
            return;
        }
        self.fill_portable(kind, w, row_bytes, nb, rows)
    }

    /// [`Tile16::fill`] in portable code (every format, any number of rows).
    pub fn fill_portable(
        &mut self,
        kind: QuantKind,
        w: &[u8],
        row_bytes: usize,
        nb: usize,
        rows: usize,
    ) {
        self.resize(nb);
        if rows < ROWS {
            self.codes.fill(0);
            self.d.fill(0.0);
            self.m.fill(0.0);
        }
        let bb = kind.block_bytes();
        let mut c = [0u8; 32];
        for r in 0..rows {
            for b in 0..nb {
                let at = r * row_bytes + b * bb;
                let (d, m) = crate::gemm::unpack(kind, &w[at..at + bb], &mut c);
                for j in 0..8 {
                    let o = (b * 8 + j) * 64 + r * 4;
                    self.codes[o..o + 4].copy_from_slice(&c[4 * j..4 * j + 4]);
                }
                self.d[b * ROWS + r] = d;
                self.m[b * ROWS + r] = m;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
    unsafe fn fill_avx512(&mut self, kind: QuantKind, w: &[u8], row_bytes: usize) {
        use std::arch::x86_64::*;
        let bb = kind.block_bytes();
        let rows = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(row_bytes as i32),
        );
        let low = _mm512_set1_epi8(0x0F);
        let flip = _mm512_set1_epi8(-128);
        let (codes, dp, mp, base) = (
            self.codes.as_mut_ptr(),
            self.d.as_mut_ptr(),
            self.m.as_mut_ptr(),
            w.as_ptr(),
        );
        for b in 0..self.nb {
            let blk = base.add(b * bb);
            // The 16 rows' first 4 bytes: `d` (and `m` for Q4_1) as f16.
            let head = _mm512_i32gather_epi32::<1>(rows, blk as *const _);
            _mm512_storeu_ps(
                dp.add(b * ROWS),
                _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head)),
            );
            let m = if kind == QuantKind::Q4_1 {
                _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(head)))
            } else {
                _mm512_setzero_ps()
            };
            _mm512_storeu_ps(mp.add(b * ROWS), m);
            let out = |j: usize, v: __m512i| {
                _mm512_storeu_si512(codes.add((b * 8 + j) * 64) as *mut _, v);
            };
            // Words w..w + 4 of the 16 rows' 16 bytes at `at`: four rows per vector, then
            // transposed so that vector `w` holds word `w` of every row.
            let words = |at: usize| -> [__m512i; 4] {
                let q = |r: usize| _mm_loadu_si128(blk.add(r * row_bytes + at) as *const _);
                let z: [__m512i; 4] = std::array::from_fn(|g| {
                    let v = _mm512_castsi128_si512(q(4 * g));
                    let v = _mm512_inserti32x4::<1>(v, q(4 * g + 1));
                    let v = _mm512_inserti32x4::<2>(v, q(4 * g + 2));
                    _mm512_inserti32x4::<3>(v, q(4 * g + 3))
                });
                // Rows 4g..4g + 4 of z[g] -> words (w, w + 1) of 8 rows in each half.
                let even =
                    _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
                let odd = _mm512_add_epi32(even, _mm512_set1_epi32(2));
                let p01 = _mm512_permutex2var_epi32(z[0], even, z[1]);
                let p23 = _mm512_permutex2var_epi32(z[2], even, z[3]);
                let q01 = _mm512_permutex2var_epi32(z[0], odd, z[1]);
                let q23 = _mm512_permutex2var_epi32(z[2], odd, z[3]);
                [
                    _mm512_shuffle_i64x2::<0b01_00_01_00>(p01, p23),
                    _mm512_shuffle_i64x2::<0b11_10_11_10>(p01, p23),
                    _mm512_shuffle_i64x2::<0b01_00_01_00>(q01, q23),
                    _mm512_shuffle_i64x2::<0b11_10_11_10>(q01, q23),
                ]
            };
            match kind {
                QuantKind::Q8_0 => {
                    for half in 0..2 {
                        for (w, v) in words(2 + 16 * half).into_iter().enumerate() {
                            out(4 * half + w, _mm512_xor_si512(v, flip));
                        }
                    }
                }
                _ => {
                    let off = if kind == QuantKind::Q4_1 { 4 } else { 2 };
                    for (w, v) in words(off).into_iter().enumerate() {
                        out(w, _mm512_and_si512(v, low));
                        out(w + 4, _mm512_and_si512(_mm512_srli_epi16::<4>(v), low));
                    }
                }
            }
        }
    }
}

/// `out[i][r] = row r . act_i` for the tile's 16 rows and `C` activation rows, portable.
pub fn tile_scalar<const C: usize>(
    t: &Tile16,
    kind: QuantKind,
    acts: [&[ActBlock]; C],
    out: &mut [[f32; ROWS]; C],
) {
    for (i, act) in acts.iter().enumerate() {
        for r in 0..ROWS {
            let mut acc = [0f32; 8];
            let mut summs = 0f32;
            for (b, y) in act.iter().enumerate().take(t.nb) {
                let dd = t.d[b * ROWS + r] * y.d;
                for (j, a) in acc.iter_mut().enumerate() {
                    let c = &t.codes[(b * 8 + j) * 64 + r * 4..][..4];
                    let mut l = y.nys[j];
                    for e in 0..4 {
                        l += c[e] as i32 * y.qs[4 * j + e] as i32;
                    }
                    *a = dd.mul_add(l as f32, *a);
                }
                if kind.has_min() {
                    summs = t.m[b * ROWS + r].mul_add(y.s, summs);
                }
            }
            out[i][r] = crate::qdot::hsum8(&acc) + summs;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_vnni<const C: usize, const MIN: bool, const SHIFT: bool>(
    t: &Tile16,
    acts: [&[ActBlock]; C],
    out: &mut [[f32; ROWS]; C],
) {
    use std::arch::x86_64::*;
    for a in &acts {
        assert!(a.len() >= t.nb);
    }
    let mut acc = [[_mm512_setzero_ps(); 8]; C];
    let mut summs = [_mm512_setzero_ps(); C];
    let (codes, dp, mp) = (t.codes.as_ptr(), t.d.as_ptr(), t.m.as_ptr());
    for b in 0..t.nb {
        let dw = _mm512_loadu_ps(dp.add(b * ROWS));
        for i in 0..C {
            let y = &*acts[i].as_ptr().add(b);
            let dd = _mm512_mul_ps(dw, _mm512_set1_ps(y.d));
            let q = y.qs.as_ptr() as *const i32;
            for j in 0..8 {
                let w = _mm512_loadu_si512(codes.add((b * 8 + j) * 64) as *const _);
                let start = if SHIFT {
                    _mm512_set1_epi32(y.nys[j])
                } else {
                    _mm512_setzero_si512()
                };
                let l = _mm512_dpbusd_epi32(start, w, _mm512_set1_epi32(q.add(j).read_unaligned()));
                acc[i][j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(l), acc[i][j]);
            }
            if MIN {
                summs[i] = _mm512_fmadd_ps(
                    _mm512_loadu_ps(mp.add(b * ROWS)),
                    _mm512_set1_ps(y.s),
                    summs[i],
                );
            }
        }
    }
    for i in 0..C {
        // hsum8 per row: upper four lanes onto the lower, then (r0 + r2) + (r1 + r3).
        let a = &acc[i];
        let r: [__m512; 4] = std::array::from_fn(|k| _mm512_add_ps(a[k + 4], a[k]));
        let h = _mm512_add_ps(_mm512_add_ps(r[0], r[2]), _mm512_add_ps(r[1], r[3]));
        _mm512_storeu_ps(out[i].as_mut_ptr(), _mm512_add_ps(h, summs[i]));
    }
}

/// The tile against `C` activation rows with the best kernel of this CPU (same bits).
pub fn tile<const C: usize>(
    t: &Tile16,
    kind: QuantKind,
    acts: [&[ActBlock]; C],
    out: &mut [[f32; ROWS]; C],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().vnni {
        // SAFETY: the features were detected at run time.
        unsafe {
            match (kind.has_min(), shift_of(kind).is_some()) {
                (true, _) => tile_vnni::<C, true, false>(t, acts, out),
                (false, true) => tile_vnni::<C, false, true>(t, acts, out),
                (false, false) => tile_vnni::<C, false, false>(t, acts, out),
            }
        };
        return;
    }
    tile_scalar(t, kind, acts, out)
}

/// Outputs `j0..j1` of `y (M, N)`: `y[i * n + j] = w_j . x_i`, for `w` holding `n` rows (a
/// last tile of fewer than 16 rows is filled with zero rows).
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
    let mut t16 = Tile16::default();
    for j in (j0..j1).step_by(ROWS) {
        let rows = (j1 - j).min(ROWS);
        let put = |i: usize, v: &[f32; ROWS]| {
            // SAFETY: columns j..j + rows of row i belong to this caller (see above).
            unsafe { y.slice(i * n + j, rows).copy_from_slice(&v[..rows]) };
        };
        t16.fill(kind, &w[j * row_bytes..], row_bytes, nb, rows);
        // The next tile's rows are fetched while this one computes, a share before each
        // pair of activation rows: the fill reads 16 rows at once, more streams than the
        // hardware prefetchers follow, and a burst of prefetches would stall on the miss
        // buffers.
        let next: &[u8] = if j + ROWS < j1 {
            &w[(j + ROWS) * row_bytes..(j + ROWS + (j1 - j - ROWS).min(ROWS)) * row_bytes]
        } else {
            &[]
        };
        let lines = next.len().div_ceil(64);
        let share = lines.div_ceil(acts.len().div_ceil(2).max(1));
        let mut line = 0;
        let mut prefetch = |more: usize| {
            let upto = (line + more).min(lines);
            while line < upto {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a prefetch hint inside the slice.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        next.as_ptr().add(line * 64) as *const i8,
                    )
                };
                line += 1;
            }
        };
        let mut i = 0;
        while i + 2 <= acts.len() {
            prefetch(share);
            let mut o = [[0f32; ROWS]; 2];
            tile::<2>(&t16, kind, [&acts[i][..], &acts[i + 1][..]], &mut o);
            put(i, &o[0]);
            put(i + 1, &o[1]);
            i += 2;
        }
        if i < acts.len() {
            prefetch(lines);
            let mut o = [[0f32; ROWS]; 1];
            tile::<1>(&t16, kind, [&acts[i][..]], &mut o);
            put(i, &o[0]);
        }
    }
}
