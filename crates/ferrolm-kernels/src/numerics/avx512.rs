//! AVX-512 versions of the numerics (the same operations, lane for lane).

use std::arch::x86_64::*;

/// `expf` on 16 lanes (ggml's `ggml_v_expf` for AVX-512).
#[inline(always)]
pub(super) unsafe fn expf16(x: __m512) -> __m512 {
    unsafe {
        let c = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
        let r = c(0x4b40_0000);
        let z = _mm512_fmadd_ps(x, c(0x3fb8_aa3b), r);
        let n = _mm512_sub_ps(z, r);
        let nn = _mm512_sub_ps(_mm512_setzero_ps(), n);
        let b = _mm512_fmadd_ps(nn, c(0x35bf_be8e), _mm512_fmadd_ps(nn, c(0x3f31_7200), x));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
                u,
                _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
            ),
            u,
            _mm512_fmadd_ps(c(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(n, _mm512_setzero_ps());
        let edge = _mm512_maskz_mov_ps(pos, _mm512_set1_ps(f32::INFINITY));
        _mm512_mask_blend_ps(big, res, edge)
    }
}

/// `rope_pairs` over whole vectors; returns the pairs done (the rest is the caller's).
#[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
pub unsafe fn rope_pairs(x: &mut [f32], cache: &[f32], n: usize, adjacent: bool) -> usize {
    let rot = |x0: __m512, x1: __m512, c: __m512, s: __m512| {
        let a = _mm512_fmadd_ps(
            x0,
            c,
            _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(x1, s)),
        );
        let b = _mm512_fmadd_ps(x0, s, _mm512_mul_ps(x1, c));
        (a, b)
    };
    let (xp, cp) = (x.as_mut_ptr(), cache.as_ptr());
    let mut i = 0;
    if adjacent {
        // 8 pairs per vector: x0, c in even lanes (duplicated), x1, s in odd ones.
        while i + 8 <= n {
            let v = _mm512_loadu_ps(xp.add(2 * i));
            let t = _mm512_loadu_ps(cp.add(2 * i));
            let (a, b) = rot(
                _mm512_moveldup_ps(v),
                _mm512_movehdup_ps(v),
                _mm512_moveldup_ps(t),
                _mm512_movehdup_ps(t),
            );
            _mm512_storeu_ps(xp.add(2 * i), _mm512_mask_blend_ps(0xAAAA, a, b));
            i += 8;
        }
    } else {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        while i + 16 <= n {
            let (t0, t1) = (
                _mm512_loadu_ps(cp.add(2 * i)),
                _mm512_loadu_ps(cp.add(2 * i + 16)),
            );
            let c = _mm512_permutex2var_ps(t0, even, t1);
            let s = _mm512_permutex2var_ps(t0, odd, t1);
            let (x0, x1) = (_mm512_loadu_ps(xp.add(i)), _mm512_loadu_ps(xp.add(i + n)));
            let (a, b) = rot(x0, x1, c, s);
            _mm512_storeu_ps(xp.add(i), a);
            _mm512_storeu_ps(xp.add(i + n), b);
            i += 16;
        }
    }
    i
}

#[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
pub unsafe fn silu_slice(x: &mut [f32]) {
    let one = _mm512_set1_ps(1.0);
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        let v = _mm512_loadu_ps(c.as_ptr());
        let e = expf16(_mm512_sub_ps(_mm512_setzero_ps(), v));
        _mm512_storeu_ps(c.as_mut_ptr(), _mm512_div_ps(v, _mm512_add_ps(one, e)));
    }
    for v in chunks.into_remainder() {
        *v = super::silu(*v);
    }
}

#[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
pub unsafe fn softmax_row(x: &mut [f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for v in x.iter_mut() {
        *v *= scale;
        if *v > max {
            max = *v;
        }
    }
    let mut sum = 0f64;
    let mx = _mm512_set1_ps(max);
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        let e = expf16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), mx));
        _mm512_storeu_ps(c.as_mut_ptr(), e);
        sum += reduce(e) as f64;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut lanes = [0f32; 16];
        for (l, v) in lanes.iter_mut().zip(tail.iter_mut()) {
            *v = super::expf(*v - max);
            *l = *v;
        }
        sum += super::reduce_add16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
pub unsafe fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    let mx = _mm512_set1_ps(m);
    let mut sum = _mm512_setzero_ps();
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        let e = expf16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), mx));
        _mm512_storeu_ps(c.as_mut_ptr(), e);
        sum = _mm512_add_ps(sum, e);
    }
    let mut total = reduce(sum);
    for v in chunks.into_remainder() {
        *v = super::expf(*v - m);
        total += *v;
    }
    total
}

/// `pv_accumulate` with 512-bit vectors (`d` a multiple of 16): per element the same
/// fused multiply-add in the same order.
#[target_feature(enable = "avx512f,fma,avx2")]
pub unsafe fn pv_accumulate(
    probs: &[f32],
    v: &[f32],
    stride: usize,
    d: usize,
    lanes: usize,
    lane0: usize,
    acc: &mut [f32],
) {
    assert!(d.is_multiple_of(16) && acc.len() >= lanes * d);
    for (j, &p) in probs.iter().enumerate() {
        if p == 0.0 {
            continue;
        }
        let vr = &v[j * stride..j * stride + d];
        let a = acc.as_mut_ptr().add(((lane0 + j) % lanes) * d);
        let pv = _mm512_set1_ps(p);
        for e in (0..d).step_by(16) {
            let s = _mm512_fmadd_ps(
                pv,
                _mm512_loadu_ps(vr.as_ptr().add(e)),
                _mm512_loadu_ps(a.add(e)),
            );
            _mm512_storeu_ps(a.add(e), s);
        }
    }
}

/// `reduce_add16` on a register.
#[inline(always)]
pub unsafe fn reduce(v: __m512) -> f32 {
    unsafe {
        let a = _mm256_add_ps(_mm512_extractf32x8_ps(v, 1), _mm512_castps512_ps256(v));
        let b = _mm_add_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
        let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)))
    }
}

#[inline(always)]
unsafe fn load<T: super::KvElem>(p: &[T], at: usize, n: usize) -> __m512 {
    unsafe {
        if at + 16 <= n {
            T::load16(p.as_ptr().add(at))
        } else {
            T::load_first(p.as_ptr().add(at), n - at)
        }
    }
}

#[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
#[inline]
pub unsafe fn dot_batched<T: super::KvElem>(a: &[T], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    unsafe {
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            acc = _mm512_fmadd_ps(load(a, i, n), load(b, i, n), acc);
            i += 16;
        }
        reduce(acc)
    }
}

/// `dot_single_impl` for `padded == false`, or for `padded` when `n` is a multiple of 64.
#[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
#[inline]
pub unsafe fn dot_single<T: super::KvElem>(a: &[T], b: &[f32], padded: bool) -> f32 {
    let n = a.len().min(b.len());
    let np = if padded { n.div_ceil(64) * 64 } else { n & !63 };
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i < np {
            for (j, aj) in acc.iter_mut().enumerate() {
                let at = i + 16 * j;
                if at < n {
                    *aj = _mm512_fmadd_ps(load(a, at, n), load(b, at, n), *aj);
                }
            }
            i += 64;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
        let mut sum = reduce(s) as f64;
        for k in np.min(n)..n {
            sum += (a[k].to_f32() * b[k]) as f64;
        }
        sum as f32
    }
}

/// `pv_runs` with every lane's sum in a register: per 16 output elements, each lane's
/// chain of fused multiply-adds over its keys (in increasing order, zeros skipped), then
/// the finish's additions in its order.
#[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn pv_runs<T: super::KvElem>(
    probs: &[f32],
    runs: &[(usize, &[T])],
    stride: usize,
    d: usize,
    lanes: usize,
    lane0: usize,
    out: &mut [f32],
) {
    let n = probs.len();
    for (r, &(start, v)) in runs.iter().enumerate() {
        let end = runs.get(r + 1).map_or(n, |x| x.0).min(n);
        assert!(end <= start || v.len() >= (end - start - 1) * stride + d);
    }
    unsafe {
        match d / 16 {
            4 => pv_runs_w::<T, 4>(probs, runs, stride, lanes, lane0, out),
            8 => pv_runs_w::<T, 8>(probs, runs, stride, lanes, lane0, out),
            16 => pv_runs_w::<T, 16>(probs, runs, stride, lanes, lane0, out),
            w => {
                for e0 in (0..w).map(|i| i * 16) {
                    let o = &mut out[e0..e0 + 16];
                    let rs: Vec<(usize, &[T])> = runs.iter().map(|&(s, v)| (s, &v[e0..])).collect();
                    pv_runs_w::<T, 1>(probs, &rs, stride, lanes, lane0, o);
                }
            }
        }
    }
}

/// `pv_runs` for `d = 16 * W`: each lane's chain over its keys with the whole row in `W`
/// registers; the finish's first additions per lane group, then its tree per 16 elements.
#[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
unsafe fn pv_runs_w<T: super::KvElem, const W: usize>(
    probs: &[f32],
    runs: &[(usize, &[T])],
    stride: usize,
    lanes: usize,
    lane0: usize,
    out: &mut [f32],
) {
    let n = probs.len();
    // `lanes` is 16 or 64: a mask, not a division, per lane.
    debug_assert!(lanes.is_power_of_two());
    let (mask, first) = (lanes - 1, lanes - (lane0 & (lanes - 1)));
    unsafe {
        // Lane `x`'s sum: its keys j = first, first + lanes, ... in order.
        let chain = |x: usize| -> [__m512; W] {
            let mut acc = [_mm512_setzero_ps(); W];
            let mut j = (x + first) & mask;
            let mut r = 0;
            while j < n {
                let p = *probs.get_unchecked(j);
                if p != 0.0 {
                    while r + 1 < runs.len() && runs[r + 1].0 <= j {
                        r += 1;
                    }
                    let (s0, v) = runs[r];
                    let row = v.as_ptr().add((j - s0) * stride);
                    let pb = _mm512_set1_ps(p);
                    for (w, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(pb, T::load16(row.add(16 * w)), *a);
                    }
                }
                j += lanes;
            }
            acc
        };
        let add = |a: [__m512; W], b: [__m512; W]| -> [__m512; W] {
            std::array::from_fn(|w| _mm512_add_ps(a[w], b[w]))
        };
        // t[l]: lane l, or (l + 32, l) + (l + 16, l + 48) with 64 lanes.
        let mut t = [[_mm512_setzero_ps(); W]; 16];
        for (l, tl) in t.iter_mut().enumerate() {
            *tl = if lanes == 64 {
                add(
                    add(chain(l), chain(32 + l)),
                    add(chain(16 + l), chain(48 + l)),
                )
            } else {
                chain(l)
            };
        }
        for w in 0..W {
            let a: [__m512; 8] = std::array::from_fn(|i| _mm512_add_ps(t[i + 8][w], t[i][w]));
            let b: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(a[i + 4], a[i]));
            let o = _mm512_add_ps(_mm512_add_ps(b[0], b[2]), _mm512_add_ps(b[1], b[3]));
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * w), o);
        }
    }
}

/// `dot_rows` in one function, so the per-row dots inline.
#[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
pub unsafe fn dot_rows<T: super::KvElem>(
    q: &[f32],
    k: &[T],
    stride: usize,
    single: bool,
    out: &mut [f32],
) {
    let d = q.len();
    for (j, o) in out.iter_mut().enumerate() {
        let kr = &k[j * stride..j * stride + d];
        *o = unsafe {
            if single {
                dot_single(kr, q, false)
            } else {
                dot_batched(kr, q)
            }
        };
    }
}
