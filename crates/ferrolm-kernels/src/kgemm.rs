//! Register-tiled K-quant products (Q4_K, Q6_K) for many activation rows: the prefill kernel.
//!
//! The K-quant orders llama.cpp uses with many rows (`Order::Tiled`, `Order::Repacked64`,
//! `Order::Repacked256`) first form exact integers per group of values and only then do float
//! arithmetic, so the integers may be computed any way at all. Here 16 weight rows are
//! unpacked into a row-interleaved layout (4 codes of row 0, 4 of row 1, ... 4 of row 15, then
//! the next 4 codes), so one `vpdpbusd` with 4 broadcast activation bytes forms a 4-value sum
//! for 16 rows at once; the per-row float steps then run lane-wise on 16 rows, each lane doing
//! exactly what `kquant::dot_row` does for its row. Results are bit-identical to it.

use crate::kquant::{decode, new_decoded, BlockQ8K, KQuantKind, Order, QK_K};

/// Weight rows per tile (one 512-bit vector of i32 or f32 lanes).
pub const ROWS: usize = 16;
/// Activation rows sharing each weight load.
pub const COLS: usize = 4;

/// 16 weight rows unpacked: codes row-interleaved by 4, and per super-block the rows' `d`,
/// `dmin`, integer sub-block scales and minimums, each as 16 lanes.
#[derive(Default)]
pub struct KTile {
    nb: usize,
    codes: Vec<u8>,
    d: Vec<f32>,
    dmin: Vec<f32>,
    /// `[nb][16 sub-blocks][16 rows]` (Q4_K uses 8 sub-blocks of 32, Q6_K 16 of 16).
    scales: Vec<i32>,
    /// `[nb][8][16]` (Q4_K only).
    mins: Vec<i32>,
}

impl KTile {
    pub fn fill(&mut self, kind: KQuantKind, rows: [&[u8]; ROWS], nb: usize) {
        let bb = kind.block_bytes();
        self.nb = nb;
        self.codes.resize(nb * QK_K * ROWS, 0);
        self.d.resize(nb * ROWS, 0.0);
        self.dmin.resize(nb * ROWS, 0.0);
        self.scales.resize(nb * 16 * ROWS, 0);
        self.mins.resize(nb * 8 * ROWS, 0);
        let mut dec = new_decoded();
        for b in 0..nb {
            for (r, row) in rows.iter().enumerate() {
                decode(kind, &row[b * bb..(b + 1) * bb], &mut dec);
                for g in 0..QK_K / 4 {
                    let at = ((b * (QK_K / 4) + g) * ROWS + r) * 4;
                    self.codes[at..at + 4].copy_from_slice(&dec.q[4 * g..4 * g + 4]);
                }
                self.d[b * ROWS + r] = dec.d;
                self.dmin[b * ROWS + r] = dec.dmin;
                for s in 0..16 {
                    self.scales[(b * 16 + s) * ROWS + r] = dec.scales[s];
                }
                for s in 0..8 {
                    self.mins[(b * 8 + s) * ROWS + r] = dec.mins[s];
                }
            }
        }
    }

    /// Integer sum of `code * q` over values `4g .. 4g + 4 * count` of super-block `b`, row `r`.
    fn raw(&self, b: usize, r: usize, y: &BlockQ8K, g0: usize, count: usize) -> i32 {
        let mut s = 0i32;
        for g in g0..g0 + count {
            let at = ((b * (QK_K / 4) + g) * ROWS + r) * 4;
            for e in 0..4 {
                s += self.codes[at + e] as i32 * y.qs[4 * g + e] as i32;
            }
        }
        s
    }
}

/// Sums of the activation's 16-value group sums for sub-block `s` of 32 values.
fn bsum32(y: &BlockQ8K, s: usize) -> i32 {
    y.bsums[2 * s] as i32 + y.bsums[2 * s + 1] as i32
}

/// The portable tile kernel: `out[c][r]` = row `r` times `xs[c]` in `order`.
pub fn tile_scalar<const C: usize>(
    kind: KQuantKind,
    order: Order,
    t: &KTile,
    xs: [&[BlockQ8K]; C],
    out: &mut [[f32; ROWS]; C],
) {
    for (c, x) in xs.iter().enumerate() {
        for r in 0..ROWS {
            let (mut acc, mut acc_m) = (0f32, 0f32);
            for (b, y) in x.iter().enumerate().take(t.nb) {
                let d = t.d[b * ROWS + r];
                let dmin = t.dmin[b * ROWS + r];
                let sc = |s: usize| t.scales[(b * 16 + s) * ROWS + r];
                let mn = |s: usize| t.mins[(b * 8 + s) * ROWS + r];
                match (kind, order) {
                    (KQuantKind::Q6K, _) => {
                        let mut s1 = 0i32;
                        for s in 0..16 {
                            s1 += sc(s) * (t.raw(b, r, y, 4 * s, 4) - 32 * y.bsums[s] as i32);
                        }
                        acc = (s1 as f32 * d).mul_add(y.d, acc);
                    }
                    (KQuantKind::Q4K, Order::Tiled) => {
                        let (mut s1, mut s2) = (0i32, 0i32);
                        for s in 0..8 {
                            s1 += sc(s) * t.raw(b, r, y, 8 * s, 8);
                            s2 += mn(s) * bsum32(y, s);
                        }
                        let v = (-dmin).mul_add(s2 as f32, s1 as f32 * d);
                        acc = v.mul_add(y.d, acc);
                    }
                    (KQuantKind::Q4K, _) => {
                        let per = if order == Order::Repacked64 { 2 } else { 8 };
                        let (dd, dm) = (d * y.d, dmin * y.d);
                        for g in 0..8 / per {
                            let (mut i, mut im) = (0i32, 0i32);
                            for s in g * per..(g + 1) * per {
                                i += sc(s) * t.raw(b, r, y, 8 * s, 8);
                                im += mn(s) * bsum32(y, s);
                            }
                            acc = (i as f32).mul_add(dd, acc);
                            acc_m = (im as f32).mul_add(dm, acc_m);
                        }
                    }
                }
            }
            out[c][r] = match (kind, order) {
                (KQuantKind::Q4K, Order::Repacked64 | Order::Repacked256) => acc - acc_m,
                _ => acc,
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_vnni<const C: usize>(
    kind: KQuantKind,
    order: Order,
    t: &KTile,
    xs: [&[BlockQ8K]; C],
    out: &mut [[f32; ROWS]; C],
) {
    use std::arch::x86_64::*;
    for x in &xs {
        assert!(x.len() >= t.nb);
    }
    let codes = t.codes.as_ptr();
    let zi = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); C];
    let mut acc_m = [_mm512_setzero_ps(); C];
    // Sum of `code * q` over groups `g0..g0 + count` of 4 values, for 16 rows and each column.
    let raw = |b: usize, ys: &[&BlockQ8K; C], g0: usize, count: usize| -> [__m512i; C] {
        let mut r = [zi; C];
        for g in g0..g0 + count {
            let w = _mm512_loadu_si512(codes.add((b * (QK_K / 4) + g) * ROWS * 4) as *const _);
            for c in 0..C {
                let q = (ys[c].qs.as_ptr().add(4 * g) as *const i32).read_unaligned();
                r[c] = _mm512_dpbusd_epi32(r[c], w, _mm512_set1_epi32(q));
            }
        }
        r
    };
    for b in 0..t.nb {
        let ys: [&BlockQ8K; C] = std::array::from_fn(|c| &xs[c][b]);
        let d = _mm512_loadu_ps(t.d.as_ptr().add(b * ROWS));
        let dmin = _mm512_loadu_ps(t.dmin.as_ptr().add(b * ROWS));
        let sc =
            |s: usize| _mm512_loadu_si512(t.scales.as_ptr().add((b * 16 + s) * ROWS) as *const _);
        let mn = |s: usize| _mm512_loadu_si512(t.mins.as_ptr().add((b * 8 + s) * ROWS) as *const _);
        match (kind, order) {
            (KQuantKind::Q6K, _) => {
                let mut s1 = [zi; C];
                for s in 0..16 {
                    let r = raw(b, &ys, 4 * s, 4);
                    let scale = sc(s);
                    for c in 0..C {
                        let v =
                            _mm512_sub_epi32(r[c], _mm512_set1_epi32(32 * ys[c].bsums[s] as i32));
                        s1[c] = _mm512_add_epi32(s1[c], _mm512_mullo_epi32(scale, v));
                    }
                }
                for c in 0..C {
                    let v = _mm512_mul_ps(_mm512_cvtepi32_ps(s1[c]), d);
                    acc[c] = _mm512_fmadd_ps(v, _mm512_set1_ps(ys[c].d), acc[c]);
                }
            }
            (KQuantKind::Q4K, _) => {
                let per = match order {
                    Order::Repacked64 => 2,
                    _ => 8,
                };
                let (mut i, mut im) = ([zi; C], [zi; C]);
                for s in 0..8 {
                    let r = raw(b, &ys, 8 * s, 8);
                    let (scale, min) = (sc(s), mn(s));
                    for c in 0..C {
                        i[c] = _mm512_add_epi32(i[c], _mm512_mullo_epi32(scale, r[c]));
                        let bs = _mm512_set1_epi32(bsum32(ys[c], s));
                        im[c] = _mm512_add_epi32(im[c], _mm512_mullo_epi32(min, bs));
                    }
                    if s % per != per - 1 {
                        continue;
                    }
                    for c in 0..C {
                        let yd = _mm512_set1_ps(ys[c].d);
                        if order == Order::Tiled {
                            let s1d = _mm512_mul_ps(_mm512_cvtepi32_ps(i[c]), d);
                            let neg = _mm512_sub_ps(_mm512_setzero_ps(), dmin);
                            let v = _mm512_fmadd_ps(neg, _mm512_cvtepi32_ps(im[c]), s1d);
                            acc[c] = _mm512_fmadd_ps(v, yd, acc[c]);
                        } else {
                            let (dd, dm) = (_mm512_mul_ps(d, yd), _mm512_mul_ps(dmin, yd));
                            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i[c]), dd, acc[c]);
                            acc_m[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(im[c]), dm, acc_m[c]);
                        }
                        i[c] = zi;
                        im[c] = zi;
                    }
                }
            }
        }
    }
    let repacked = kind == KQuantKind::Q4K && order != Order::Tiled;
    for c in 0..C {
        let v = if repacked {
            _mm512_sub_ps(acc[c], acc_m[c])
        } else {
            acc[c]
        };
        _mm512_storeu_ps(out[c].as_mut_ptr(), v);
    }
}

/// The tile against `C` activation rows with the best kernel of this CPU (same bits).
pub fn tile<const C: usize>(
    kind: KQuantKind,
    order: Order,
    t: &KTile,
    xs: [&[BlockQ8K]; C],
    out: &mut [[f32; ROWS]; C],
) {
    assert!(
        order != Order::Single,
        "the single-row order has its own kernel"
    );
    assert!(kind == KQuantKind::Q4K || order == Order::Tiled);
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().vnni {
        // SAFETY: the features were detected at run time.
        unsafe { tile_vnni(kind, order, t, xs, out) };
        return;
    }
    tile_scalar(kind, order, t, xs, out)
}

/// Outputs `j0..j1` (a multiple of 16 long) of `y (M, N)` for `w` holding `n` rows, with the
/// order `order_of(i)` for activation row `i` (constant over runs of 4 rows, as
/// `kquant::order_for` is).
///
/// # Safety
/// The caller owns columns `j0..j1` of `y` exclusively.
pub unsafe fn rows_times_acts(
    kind: KQuantKind,
    w: &[u8],
    xs: &[Vec<BlockQ8K>],
    n: usize,
    (j0, j1): (usize, usize),
    order_of: impl Fn(usize) -> Order,
    y: crate::pool::SharedOut,
) {
    let row_bytes = w.len() / n;
    let nb = row_bytes / kind.block_bytes();
    let mut t = KTile::default();
    let put = |i: usize, j: usize, v: &[f32; ROWS]| {
        // SAFETY: columns j..j+16 of row i belong to this caller (see above).
        unsafe { y.slice(i * n + j, ROWS).copy_from_slice(v) };
    };
    debug_assert_eq!((j1 - j0) % ROWS, 0);
    for j in (j0..j1).step_by(ROWS) {
        t.fill(
            kind,
            std::array::from_fn(|r| &w[(j + r) * row_bytes..(j + r + 1) * row_bytes]),
            nb,
        );
        let mut i = 0;
        while i < xs.len() {
            let order = order_of(i);
            if order == Order::Single {
                // Left to the caller's single-row kernel.
                i += 1;
                continue;
            }
            if i + COLS <= xs.len() && (1..COLS).all(|c| order_of(i + c) == order) {
                let mut o = [[0f32; ROWS]; COLS];
                tile::<COLS>(
                    kind,
                    order,
                    &t,
                    std::array::from_fn(|c| &xs[i + c][..]),
                    &mut o,
                );
                for (c, v) in o.iter().enumerate() {
                    put(i + c, j, v);
                }
                i += COLS;
            } else {
                let mut o = [[0f32; ROWS]; 1];
                tile::<1>(kind, order, &t, [&xs[i][..]], &mut o);
                put(i, j, &o[0]);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kquant::{dot_row_scalar, quantize_q8_k};

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn weights(kind: KQuantKind, rows: usize, nb: usize, seed: &mut u64) -> Vec<u8> {
        let mut w: Vec<u8> = (0..rows * nb * kind.block_bytes())
            .map(|_| rng(seed) as u8)
            .collect();
        for blk in w.chunks_exact_mut(kind.block_bytes()) {
            let at: &[usize] = match kind {
                KQuantKind::Q4K => &[0, 2],
                KQuantKind::Q6K => &[208],
            };
            for &a in at {
                let v = half::f16::from_f32((rng(seed) % 1000) as f32 * 1e-5);
                blk[a..a + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        w
    }

    #[test]
    fn tiled_k_products_equal_the_row_kernel_bit_for_bit() {
        let mut seed = 0xDEAD_BEEF_1234_5678u64;
        for kind in [KQuantKind::Q4K, KQuantKind::Q6K] {
            let orders: &[Order] = match kind {
                KQuantKind::Q4K => &[Order::Tiled, Order::Repacked64, Order::Repacked256],
                KQuantKind::Q6K => &[Order::Tiled],
            };
            for &order in orders {
                for (n, nb, m) in [(16, 1, 1), (32, 2, 6), (16, 3, 9)] {
                    let w = weights(kind, n, nb, &mut seed);
                    let row_bytes = nb * kind.block_bytes();
                    let xs: Vec<Vec<BlockQ8K>> = (0..m)
                        .map(|_| {
                            let x: Vec<f32> = (0..nb * QK_K)
                                .map(|_| (rng(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                                .collect();
                            let mut q = Vec::new();
                            quantize_q8_k(&x, &mut q);
                            q
                        })
                        .collect();
                    let mut y = vec![0f32; m * n];
                    // SAFETY: one caller owns every column.
                    unsafe {
                        rows_times_acts(
                            kind,
                            &w,
                            &xs,
                            n,
                            (0, n),
                            |_| order,
                            crate::pool::SharedOut::new(&mut y),
                        )
                    };
                    let mut t = KTile::default();
                    for j in (0..n).step_by(ROWS) {
                        t.fill(
                            kind,
                            std::array::from_fn(|r| &w[(j + r) * row_bytes..][..row_bytes]),
                            nb,
                        );
                        for i in 0..m {
                            let mut o = [[0f32; ROWS]; 1];
                            tile_scalar::<1>(kind, order, &t, [&xs[i][..]], &mut o);
                            for r in 0..ROWS {
                                let row = &w[(j + r) * row_bytes..][..row_bytes];
                                let want = dot_row_scalar(kind, row, &xs[i], order);
                                let at =
                                    format!("{kind:?} {order:?} n={n} nb={nb} ({i},{})", j + r);
                                assert_eq!(o[0][r].to_bits(), want.to_bits(), "scalar tile {at}");
                                assert_eq!(y[i * n + j + r].to_bits(), want.to_bits(), "{at}");
                            }
                        }
                    }
                }
            }
        }
    }
}
