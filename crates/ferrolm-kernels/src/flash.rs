//! Blocked attention for long sequences (FlashAttention's recurrence on a CPU).
//!
//! The per-(query, key) dot products of the short-sequence path spend most of their time in
//! horizontal reductions. Here a block of query rows meets a block of [`KEY_BLOCK`] keys as two
//! small matrix products: `S = Q·Kᵀ` against the keys transposed once per block (16 keys per
//! vector, no reductions), then `acc += P·V` (one broadcast probability times a value row),
//! with an online softmax in between, so each key block is read once per query block and no
//! score row longer than a block is ever held.
//!
//! Each row's arithmetic depends only on that row and on where the key blocks start (block
//! `b` is keys `b * KEY_BLOCK ..`), not on which other rows share the call, so a sequence
//! processed in one call or in pieces gets the same bits.
//!
//! `qk_tile` and `pv_tile` have portable references (`*_portable`) and tests comparing them.

/// Keys per block. A multiple of 32 (the tile width of `qk_tile`).
pub const KEY_BLOCK: usize = 128;

/// `out[i * ldo + j] = Σ_e q[i * ldq + e] · kt[e * ldk + j]` for `i < nq`, `j < ldk`, summed
/// in increasing `e` with fused multiply-adds.
#[allow(clippy::too_many_arguments)]
pub fn qk_tile_portable(
    q: &[f32],
    ldq: usize,
    nq: usize,
    d: usize,
    kt: &[f32],
    ldk: usize,
    out: &mut [f32],
    ldo: usize,
) {
    for i in 0..nq {
        let o = &mut out[i * ldo..i * ldo + ldk];
        o.iter_mut().for_each(|x| *x = 0.0);
        for e in 0..d {
            let qe = q[i * ldq + e];
            for (x, &k) in o.iter_mut().zip(&kt[e * ldk..(e + 1) * ldk]) {
                *x = qe.mul_add(k, *x);
            }
        }
    }
}

/// [`qk_tile_portable`] with 512-bit vectors when present (`ldk` a multiple of 32): the same
/// operations per element, so the same bits.
#[allow(clippy::too_many_arguments)]
pub fn qk_tile(
    q: &[f32],
    ldq: usize,
    nq: usize,
    d: usize,
    kt: &[f32],
    ldk: usize,
    out: &mut [f32],
    ldo: usize,
) {
    assert!(nq == 0 || (q.len() >= (nq - 1) * ldq + d && out.len() >= (nq - 1) * ldo + ldk));
    assert!(kt.len() >= d * ldk);
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 && ldk.is_multiple_of(32) {
        // SAFETY: detected at run time; bounds asserted above.
        unsafe { avx512::qk_tile(q, ldq, nq, d, kt, ldk, out, ldo) };
        return;
    }
    qk_tile_portable(q, ldq, nq, d, kt, ldk, out, ldo)
}

/// `acc[i * lda + e] += Σ_j p[i * ldp + j] · v[j * ldv + e]` for `i < nq`, `e < d`, over
/// `j < nk` in increasing order with fused multiply-adds.
#[allow(clippy::too_many_arguments)]
pub fn pv_tile_portable(
    p: &[f32],
    ldp: usize,
    nq: usize,
    nk: usize,
    v: &[f32],
    ldv: usize,
    d: usize,
    acc: &mut [f32],
    lda: usize,
) {
    for i in 0..nq {
        let a = &mut acc[i * lda..i * lda + d];
        for j in 0..nk {
            let pj = p[i * ldp + j];
            for (x, &ve) in a.iter_mut().zip(&v[j * ldv..j * ldv + d]) {
                *x = pj.mul_add(ve, *x);
            }
        }
    }
}

/// [`pv_tile_portable`] with 512-bit vectors when present (`d` a multiple of 16).
#[allow(clippy::too_many_arguments)]
pub fn pv_tile(
    p: &[f32],
    ldp: usize,
    nq: usize,
    nk: usize,
    v: &[f32],
    ldv: usize,
    d: usize,
    acc: &mut [f32],
    lda: usize,
) {
    assert!(nq == 0 || (p.len() >= (nq - 1) * ldp + nk && acc.len() >= (nq - 1) * lda + d));
    assert!(nk == 0 || v.len() >= (nk - 1) * ldv + d);
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 && d.is_multiple_of(16) {
        // SAFETY: detected at run time; bounds asserted above.
        unsafe { avx512::pv_tile(p, ldp, nq, nk, v, ldv, d, acc, lda) };
        return;
    }
    pv_tile_portable(p, ldp, nq, nk, v, ldv, d, acc, lda)
}

/// The state of `nq` query rows part-way through their keys: running maximum, running sum of
/// exponentials and unnormalised output, plus the tiles one key block needs.
pub struct Flash {
    nq: usize,
    d: usize,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
    kt: Vec<f32>,
    s: Vec<f32>,
    round_f16: bool,
}

impl Flash {
    pub fn new(nq: usize, d: usize) -> Flash {
        Flash {
            nq,
            d,
            m: vec![f32::NEG_INFINITY; nq],
            l: vec![0.0; nq],
            acc: vec![0.0; nq * d],
            kt: vec![0.0; d * KEY_BLOCK],
            s: vec![0.0; nq * KEY_BLOCK],
            round_f16: false,
        }
    }

    /// Rounds the probabilities to f16 before they multiply the values (as an f16 KV cache's
    /// attention does); the running sums keep full precision.
    pub fn round_probabilities_f16(mut self) -> Flash {
        self.round_f16 = true;
        self
    }

    /// Raw scores `q_i · k_j` of the block's `n` keys (`k[j * stride..][..d]`) for the rows
    /// `q[i * ldq..][..d]`, into `out` (`nq` rows of [`KEY_BLOCK`]). `out` may be the block's
    /// own score tile (see [`Flash::scores`]) or a caller's second tile (two score sources
    /// stitched by a mask, as ReRoPE does).
    pub fn dots(&mut self, q: &[f32], ldq: usize, k: &[f32], stride: usize, n: usize) {
        self.dots_runs(q, ldq, &[(k, n)], stride)
    }

    /// [`Flash::dots`] for a block whose keys lie in several runs (a paged cache):
    /// `runs[r] = (keys of the run, rows)`, one after another, transposed into the tile
    /// (`kt[e * KEY_BLOCK + j]`, unused columns zero); the tile, and so every bit, is that of
    /// the same keys in one piece.
    pub fn dots_runs<T: crate::numerics::KvElem>(
        &mut self,
        q: &[f32],
        ldq: usize,
        runs: &[(&[T], usize)],
        stride: usize,
    ) {
        let (nq, d) = (self.nq, self.d);
        let mut c = 0;
        for &(k, n) in runs {
            assert!(c + n <= KEY_BLOCK && (n == 0 || k.len() >= (n - 1) * stride + d));
            for e in 0..d {
                let row = &mut self.kt[e * KEY_BLOCK + c..e * KEY_BLOCK + c + n];
                for (j, x) in row.iter_mut().enumerate() {
                    *x = k[j * stride + e].to_f32();
                }
            }
            c += n;
        }
        for e in 0..d {
            self.kt[e * KEY_BLOCK + c..(e + 1) * KEY_BLOCK].fill(0.0);
        }
        qk_tile(q, ldq, nq, d, &self.kt, KEY_BLOCK, &mut self.s, KEY_BLOCK);
    }

    /// The score tile of the current block: row `i` at `i * KEY_BLOCK`. After [`Flash::dots`]
    /// the caller turns raw dots into final logits here (scale, softcap, bias, `-inf` for
    /// masked keys) before [`Flash::absorb`].
    pub fn scores(&mut self) -> &mut [f32] {
        &mut self.s
    }

    /// Folds the current block's logits (`n` keys) and their values `v[j * ldv..][..d]` into
    /// the running state. A row whose logits are all `-inf` is unchanged.
    pub fn absorb(&mut self, n: usize, v: &[f32], ldv: usize) {
        self.absorb_runs(&[(v, n)], ldv)
    }

    /// [`Flash::absorb`] with the block's values in runs `(values, rows)`, as
    /// [`Flash::dots_runs`]; the same bits as one piece.
    pub fn absorb_runs<T: crate::numerics::KvElem>(&mut self, runs: &[(&[T], usize)], ldv: usize) {
        let n: usize = runs.iter().map(|r| r.1).sum();
        let (nq, d) = (self.nq, self.d);
        for i in 0..nq {
            let row = &mut self.s[i * KEY_BLOCK..i * KEY_BLOCK + n];
            let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let m_new = self.m[i].max(mx);
            if m_new == f32::NEG_INFINITY {
                row.iter_mut().for_each(|x| *x = 0.0);
                continue;
            }
            let c = crate::numerics::expf(self.m[i] - m_new);
            if c != 1.0 {
                self.l[i] *= c;
                self.acc[i * d..(i + 1) * d]
                    .iter_mut()
                    .for_each(|x| *x *= c);
            }
            self.m[i] = m_new;
            self.l[i] += crate::numerics::exp_sub_sum(row, m_new);
            if self.round_f16 {
                crate::numerics::round_f16_slice(row);
            }
        }
        // Each output element's sum runs over the keys in order, run after run.
        let mut c = 0;
        for &(v, rows) in runs {
            // f16 values are widened first (exactly), `d` apart.
            let wide;
            let (v, ldv) = match T::as_f32(v) {
                Some(v) => (v, ldv),
                None => {
                    wide = crate::numerics::rows_f32(v, rows, ldv, d);
                    (&wide[..], d)
                }
            };
            pv_tile(
                &self.s[c..],
                KEY_BLOCK,
                nq,
                rows,
                v,
                ldv,
                d,
                &mut self.acc,
                d,
            );
            c += rows;
        }
    }

    /// Row `i`'s output: the normalised accumulation (zeros for a row that saw no key).
    pub fn finish_row(&self, i: usize, out: &mut [f32]) {
        let d = self.d;
        let inv = if self.l[i] > 0.0 {
            1.0 / self.l[i]
        } else {
            0.0
        };
        for (o, &a) in out[..d].iter_mut().zip(&self.acc[i * d..(i + 1) * d]) {
            *o = a * inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `R` rows by 32 columns of `qk_tile`.
    #[inline(always)]
    unsafe fn qk_rows<const R: usize>(
        q: *const f32,
        ldq: usize,
        d: usize,
        kt: *const f32,
        ldk: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        unsafe {
            let mut c = 0;
            while c < ldk {
                let mut acc = [[_mm512_setzero_ps(); 2]; R];
                for e in 0..d {
                    let k0 = _mm512_loadu_ps(kt.add(e * ldk + c));
                    let k1 = _mm512_loadu_ps(kt.add(e * ldk + c + 16));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let qb = _mm512_set1_ps(*q.add(r * ldq + e));
                        a[0] = _mm512_fmadd_ps(qb, k0, a[0]);
                        a[1] = _mm512_fmadd_ps(qb, k1, a[1]);
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.add(r * ldo + c), a[0]);
                    _mm512_storeu_ps(out.add(r * ldo + c + 16), a[1]);
                }
                c += 32;
            }
        }
    }

    #[target_feature(enable = "avx512f,fma,avx2")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn qk_tile(
        q: &[f32],
        ldq: usize,
        nq: usize,
        d: usize,
        kt: &[f32],
        ldk: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        let (qp, kp, op) = (q.as_ptr(), kt.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        unsafe {
            while i + 4 <= nq {
                qk_rows::<4>(qp.add(i * ldq), ldq, d, kp, ldk, op.add(i * ldo), ldo);
                i += 4;
            }
            while i < nq {
                qk_rows::<1>(qp.add(i * ldq), ldq, d, kp, ldk, op.add(i * ldo), ldo);
                i += 1;
            }
        }
    }

    /// `R` rows by `W` vectors (16 elements each) of `pv_tile`'s output, at column `e0`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pv_rows<const R: usize, const W: usize>(
        p: *const f32,
        ldp: usize,
        nk: usize,
        v: *const f32,
        ldv: usize,
        acc: *mut f32,
        lda: usize,
        e0: usize,
    ) {
        unsafe {
            let mut a = [[_mm512_setzero_ps(); W]; R];
            for (r, ar) in a.iter_mut().enumerate() {
                for (w, x) in ar.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(acc.add(r * lda + e0 + 16 * w));
                }
            }
            for j in 0..nk {
                let mut vr = [_mm512_setzero_ps(); W];
                for (w, x) in vr.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(v.add(j * ldv + e0 + 16 * w));
                }
                for (r, ar) in a.iter_mut().enumerate() {
                    let pb = _mm512_set1_ps(*p.add(r * ldp + j));
                    for (w, x) in ar.iter_mut().enumerate() {
                        *x = _mm512_fmadd_ps(pb, vr[w], *x);
                    }
                }
            }
            for (r, ar) in a.iter().enumerate() {
                for (w, x) in ar.iter().enumerate() {
                    _mm512_storeu_ps(acc.add(r * lda + e0 + 16 * w), *x);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,fma,avx2")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn pv_tile(
        p: &[f32],
        ldp: usize,
        nq: usize,
        nk: usize,
        v: &[f32],
        ldv: usize,
        d: usize,
        acc: &mut [f32],
        lda: usize,
    ) {
        let (pp, vp, ap) = (p.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
        unsafe {
            let mut e0 = 0;
            while e0 < d {
                let w = ((d - e0) / 16).min(4);
                let mut i = 0;
                macro_rules! rows {
                    ($r:literal) => {
                        match w {
                            4 => pv_rows::<$r, 4>(
                                pp.add(i * ldp),
                                ldp,
                                nk,
                                vp,
                                ldv,
                                ap.add(i * lda),
                                lda,
                                e0,
                            ),
                            3 => pv_rows::<$r, 3>(
                                pp.add(i * ldp),
                                ldp,
                                nk,
                                vp,
                                ldv,
                                ap.add(i * lda),
                                lda,
                                e0,
                            ),
                            2 => pv_rows::<$r, 2>(
                                pp.add(i * ldp),
                                ldp,
                                nk,
                                vp,
                                ldv,
                                ap.add(i * lda),
                                lda,
                                e0,
                            ),
                            _ => pv_rows::<$r, 1>(
                                pp.add(i * ldp),
                                ldp,
                                nk,
                                vp,
                                ldv,
                                ap.add(i * lda),
                                lda,
                                e0,
                            ),
                        }
                    };
                }
                while i + 4 <= nq {
                    rows!(4);
                    i += 4;
                }
                while i < nq {
                    rows!(1);
                    i += 1;
                }
                e0 += 16 * w;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn qk_tile_equals_portable_bit_for_bit() {
        for &(nq, d) in &[(1, 64), (7, 64), (13, 80), (4, 128), (3, 17)] {
            let ldq = d + 3;
            let q = rand(nq * ldq, nq as u64);
            let kt = rand(d * KEY_BLOCK, d as u64);
            let mut a = vec![0f32; nq * KEY_BLOCK];
            let mut b = a.clone();
            qk_tile(&q, ldq, nq, d, &kt, KEY_BLOCK, &mut a, KEY_BLOCK);
            qk_tile_portable(&q, ldq, nq, d, &kt, KEY_BLOCK, &mut b, KEY_BLOCK);
            assert_eq!(a, b, "nq {nq} d {d}");
        }
    }

    #[test]
    fn pv_tile_equals_portable_bit_for_bit() {
        for &(nq, nk, d) in &[
            (1, 128, 64),
            (6, 100, 64),
            (9, 3, 80),
            (5, 128, 256),
            (2, 9, 20),
        ] {
            let p = rand(nq * KEY_BLOCK, 7);
            let ldv = d + 16;
            let v = rand(nk * ldv, 9);
            let mut a = rand(nq * d, 11);
            let mut b = a.clone();
            pv_tile(&p, KEY_BLOCK, nq, nk, &v, ldv, d, &mut a, d);
            pv_tile_portable(&p, KEY_BLOCK, nq, nk, &v, ldv, d, &mut b, d);
            assert_eq!(a, b, "nq {nq} nk {nk} d {d}");
        }
    }

    /// The blocked recurrence against a plain softmax over the whole row, with a causal mask.
    #[test]
    fn flash_equals_plain_softmax_attention() {
        let (nq, nk, d, stride) = (5, 300, 64, 96);
        let q = rand(nq * d, 1);
        let k = rand(nk * stride, 2);
        let v = rand(nk * stride, 3);
        let limit = |i: usize| 200 + 20 * i; // row i sees keys < limit(i)
        let mut f = Flash::new(nq, d);
        for j0 in (0..nk).step_by(KEY_BLOCK) {
            let n = (nk - j0).min(KEY_BLOCK);
            f.dots(&q, d, &k[j0 * stride..], stride, n);
            let s = f.scores();
            for i in 0..nq {
                for j in 0..n {
                    let x = &mut s[i * KEY_BLOCK + j];
                    *x = if j0 + j < limit(i) {
                        *x * 0.125
                    } else {
                        f32::NEG_INFINITY
                    };
                }
            }
            f.absorb(n, &v[j0 * stride..], stride);
        }
        for i in 0..nq {
            let sc: Vec<f64> = (0..limit(i))
                .map(|j| {
                    (0..d)
                        .map(|e| (q[i * d + e] * k[j * stride + e]) as f64)
                        .sum::<f64>()
                        * 0.125
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
            let w: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = w.iter().sum();
            let mut got = vec![0f32; d];
            f.finish_row(i, &mut got);
            for e in 0..d {
                let want: f64 = (0..limit(i))
                    .map(|j| w[j] * v[j * stride + e] as f64)
                    .sum::<f64>()
                    / z;
                assert!(
                    (got[e] as f64 - want).abs() < 1e-5,
                    "row {i} e {e}: {} vs {want}",
                    got[e]
                );
            }
        }
    }
}
