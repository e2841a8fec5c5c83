//! Element-wise functions and reductions with llama.cpp's x86 (AVX-512 build) rounding.
//!
//! Small quantized models are chaotic in one specific way: every matrix product quantizes its
//! input to int8, so a one-ulp difference upstream flips a rounding and moves the output by a
//! whole quantization step. Agreeing with llama.cpp token for token therefore needs the same
//! arithmetic, not merely accurate arithmetic. Each function here states the operation order
//! it reproduces; `exp_ref`/`silu_ref` in the tests are the mathematically exact versions they
//! are checked against.

/// Whether this CPU has FMA: `f32::mul_add` then compiles to one instruction inside the
/// `#[target_feature]` wrappers below instead of a libm call. Results are identical either way.
pub fn has_fma() -> bool {
    crate::cpu::features().fma
}

/// Defines `pub fn $name` dispatching to a copy of `$body` compiled with FMA and AVX2 when the
/// CPU has them (same arithmetic, same bits; only faster).
macro_rules! fma_dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($a:ident: $t:ty),*) -> $r:ty $body:block) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) -> $r {
            #[inline(always)]
            fn body($($a: $t),*) -> $r $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "fma,avx2")]
                unsafe fn fast($($a: $t),*) -> $r { body($($a),*) }
                if has_fma() {
                    // SAFETY: the features were detected at run time.
                    return unsafe { fast($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}

/// `exp(x)` as ggml's vectorised `ggml_v_expf` computes it (range reduction to `2^n * e^b`,
/// a degree-5 polynomial in fused multiply-adds), one lane at a time. Max error ~1.5 ulp.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3d2b_9f17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0)); // 0x1.ffffecp-1
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    if n.is_nan() {
        return f32::NAN;
    }
    scalef(j, n as i32)
}

/// `j * 2^n` with one rounding, as `vscalefps` does.
#[inline(always)]
fn scalef(j: f32, n: i32) -> f32 {
    if (-126..=127).contains(&n) {
        j * f32::from_bits(((n + 127) as u32) << 23)
    } else if n > 127 {
        // j is in [0.7, 1.5]: the product overflows exactly when it would for vscalef.
        (j * 2f32.powi(127)) * 2f32.powi(n - 127)
    } else {
        // Subnormal results: scale in f64 (exact) and round once.
        (j as f64 * 2f64.powi(n)) as f32
    }
}

/// `x / (1 + exp(-x))` as `ggml_v_silu`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

fma_dispatch! {
/// `silu` over a slice, in place, one lane at a time.
pub fn silu_slice_portable(x: &mut [f32]) -> () {
    for v in x.iter_mut() {
        *v = silu(*v);
    }
}
}

/// Rotates `n` pairs of a head by a rope cache row (`cache[2i]` = cos, `cache[2i + 1]` = sin
/// of pair `i`): pair `i` is `(x[i * stride], x[i * stride + offset])` (adjacent pairs:
/// stride 2, offset 1; NeoX halves: stride 1, offset `n`), each rotated with llama.cpp's
/// contraction `x0 * c - x1 * s` as `fma(x0, c, -(x1 * s))` and `x0 * s + x1 * c` as
/// `fma(x0, s, x1 * c)`. 16 lanes at a time with AVX-512, the same bits.
pub fn rope_pairs(x: &mut [f32], cache: &[f32], n: usize, stride: usize, offset: usize) {
    assert!(cache.len() >= 2 * n && (n == 0 || x.len() > (n - 1) * stride + offset));
    let mut i0 = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 && ((stride, offset) == (2, 1) || (stride, offset) == (1, n)) {
        // SAFETY: detected at run time; lengths asserted above.
        i0 = unsafe { avx512::rope_pairs(x, cache, n, stride == 2) };
    }
    for i in i0..n {
        let (c, s) = (cache[2 * i], cache[2 * i + 1]);
        let a = i * stride;
        let (x0, x1) = (x[a], x[a + offset]);
        x[a] = x0.mul_add(c, -(x1 * s));
        x[a + offset] = x0.mul_add(s, x1 * c);
    }
}

/// `silu` over a slice, in place: 16 lanes at a time with AVX-512 (`ggml_v_silu`; the same
/// bits as [`silu_slice_portable`]).
pub fn silu_slice(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 {
        // SAFETY: detected at run time.
        unsafe { avx512::silu_slice(x) };
        return;
    }
    silu_slice_portable(x)
}

/// `_mm512_reduce_add_ps` as GCC expands it: halves, then quarters, then pairs.
#[inline(always)]
pub fn reduce_add16(v: &[f32; 16]) -> f32 {
    let mut a = [0f32; 8];
    for i in 0..8 {
        a[i] = v[i + 8] + v[i];
    }
    let mut b = [0f32; 4];
    for i in 0..4 {
        b[i] = a[i + 4] + a[i];
    }
    let c0 = b[0] + b[2];
    let c1 = b[1] + b[3];
    c0 + c1
}

fma_dispatch! {
/// Softmax of one row in place with ggml's `soft_max` order: scaled inputs, f32 max, `expf`
/// above over 16-wide chunks each reduced with `reduce_add16` into an f64 sum, then every
/// value multiplied by `(f32)(1 / sum)`. `-inf` entries (masked) come out as 0. Rows are
/// treated as padded with `-inf` to a multiple of 16, as llama.cpp's padded KV cache is.
pub fn softmax_row_portable(x: &mut [f32], scale: f32) -> () {
    let mut max = f32::NEG_INFINITY;
    for v in x.iter_mut() {
        *v *= scale;
        if *v > max {
            max = *v;
        }
    }
    let mut sum = 0f64;
    for chunk in x.chunks_mut(16) {
        let mut lanes = [0f32; 16];
        for (l, v) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *v = expf(*v - max);
            *l = *v;
        }
        sum += reduce_add16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}
}

/// Rounds every value to the nearest f16 (ties to even) and back, in place: what storing to
/// and loading from an f16 buffer does. Sixteen at a time with F16C/AVX-512 conversions where
/// present (the same rounding), one at a time otherwise.
pub fn round_f16_slice(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 && std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: the features were detected at run time.
        unsafe { round_f16_avx512(x) };
        return;
    }
    for v in x {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn round_f16_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        let v = _mm512_loadu_ps(c.as_ptr());
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        _mm512_storeu_ps(c.as_mut_ptr(), _mm512_cvtph_ps(h));
    }
    for v in chunks.into_remainder() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// `softmax_row_portable` with sixteen `expf` lanes per instruction where AVX-512 is present
/// (the same operations lane for lane, `vscalefps` being what the portable `scalef` models).
pub fn softmax_row(x: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 {
        // SAFETY: detected at run time.
        unsafe { avx512::softmax_row(x, scale) };
        return;
    }
    softmax_row_portable(x, scale)
}

/// `x[i] = expf(x[i] - m)` in place; returns the sum of the results (`-inf` entries give 0).
pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 {
        // SAFETY: detected at run time.
        return unsafe { avx512::exp_sub_sum(x, m) };
    }
    x.iter_mut()
        .map(|v| {
            *v = expf(*v - m);
            *v
        })
        .sum()
}

/// AVX-512 versions of the two dot orders (the same operations, lane for lane).
#[cfg(target_arch = "x86_64")]
mod avx512 {
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
    unsafe fn load(p: &[f32], at: usize, n: usize) -> __m512 {
        unsafe {
            if at + 16 <= n {
                _mm512_loadu_ps(p.as_ptr().add(at))
            } else {
                let k: __mmask16 = ((1u32 << (n - at)) - 1) as __mmask16;
                _mm512_maskz_loadu_ps(k, p.as_ptr().add(at))
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
    #[inline]
    pub unsafe fn dot_batched(a: &[f32], b: &[f32]) -> f32 {
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
    pub unsafe fn dot_single(a: &[f32], b: &[f32], padded: bool) -> f32 {
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
                sum += (a[k] * b[k]) as f64;
            }
            sum as f32
        }
    }

    /// `pv_runs` with every lane's sum in a register: per 16 output elements, each lane's
    /// chain of fused multiply-adds over its keys (in increasing order, zeros skipped), then
    /// the finish's additions in its order.
    #[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn pv_runs(
        probs: &[f32],
        runs: &[(usize, &[f32])],
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
                4 => pv_runs_w::<4>(probs, runs, stride, lanes, lane0, out),
                8 => pv_runs_w::<8>(probs, runs, stride, lanes, lane0, out),
                16 => pv_runs_w::<16>(probs, runs, stride, lanes, lane0, out),
                w => {
                    for e0 in (0..w).map(|i| i * 16) {
                        let o = &mut out[e0..e0 + 16];
                        let rs: Vec<(usize, &[f32])> =
                            runs.iter().map(|&(s, v)| (s, &v[e0..])).collect();
                        pv_runs_w::<1>(probs, &rs, stride, lanes, lane0, o);
                    }
                }
            }
        }
    }

    /// `pv_runs` for `d = 16 * W`: each lane's chain over its keys with the whole row in `W`
    /// registers; the finish's first additions per lane group, then its tree per 16 elements.
    #[target_feature(enable = "avx512f,avx512dq,fma,avx2")]
    unsafe fn pv_runs_w<const W: usize>(
        probs: &[f32],
        runs: &[(usize, &[f32])],
        stride: usize,
        lanes: usize,
        lane0: usize,
        out: &mut [f32],
    ) {
        let n = probs.len();
        unsafe {
            // Lane `x`'s sum: its keys j = first, first + lanes, ... in order.
            let chain = |x: usize| -> [__m512; W] {
                let mut acc = [_mm512_setzero_ps(); W];
                let mut j = (x + lanes - lane0 % lanes) % lanes;
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
                            *a = _mm512_fmadd_ps(pb, _mm512_loadu_ps(row.add(16 * w)), *a);
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
    pub unsafe fn dot_rows(q: &[f32], k: &[f32], stride: usize, single: bool, out: &mut [f32]) {
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
}

/// `out[j] = dot_single(k_j, q)` (`single`) or `dot_batched(k_j, q)` for the rows
/// `k_j = k[j * stride..][..q.len()]`, `j < out.len()`: one query against a run of cached keys,
/// each with the bits of its own call.
pub fn dot_rows(q: &[f32], k: &[f32], stride: usize, single: bool, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 {
        // SAFETY: detected at run time.
        unsafe { avx512::dot_rows(q, k, stride, single, out) };
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        let kr = &k[j * stride..j * stride + q.len()];
        *o = if single {
            dot_single_impl(kr, q, false)
        } else {
            dot_batched_portable(kr, q)
        };
    }
}

/// `dot_batched` (AVX-512 when present; same bits).
pub fn dot_batched(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 {
        // SAFETY: detected at run time.
        return unsafe { avx512::dot_batched(a, b) };
    }
    dot_batched_portable(a, b)
}

/// Dot product as `ggml_vec_dot_f16` does it for a single-row (decode) product: four 16-lane
/// accumulators over 64-element steps, reduced `(s0 + s2) + (s1 + s3)` then `reduce_add16`,
/// with a tail beyond the last full step added in f64.
pub fn dot_single(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 {
        // SAFETY: detected at run time.
        return unsafe { avx512::dot_single(a, b, false) };
    }
    dot_single_impl(a, b, false)
}

/// `dot_single` over vectors that llama.cpp stores zero-padded to a multiple of 64 (a row of
/// the padded KV cache), so there is no tail: the last step runs in the vector lanes.
pub fn dot_single_padded(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 {
        // SAFETY: detected at run time.
        return unsafe { avx512::dot_single(a, b, true) };
    }
    dot_single_impl(a, b, true)
}

fma_dispatch! {
/// Dot product the way llamafile's tinyBLAS does an f16 batched product (`T >= 2` rows; pass
/// f16-representable values to reproduce it exactly): 16 lanes, lane `l` accumulating elements `16i + l` with fused
/// multiply-adds, then `reduce_add16`. The length is treated as zero-padded to 16.
pub fn dot_batched_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (ca, cb) in a.chunks(16).zip(b.chunks(16)) {
        for l in 0..ca.len() {
            acc[l] = ca[l].mul_add(cb[l], acc[l]);
        }
    }
    reduce_add16(&acc)
}
}

fma_dispatch! {
/// The body of `dot_single` and `dot_single_padded`.
pub fn dot_single_impl(a: &[f32], b: &[f32], padded: bool) -> f32 {
    let n = a.len().min(b.len());
    let np = if padded { n.div_ceil(64) * 64 } else { n & !63 };
    let mut acc = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, accj) in acc.iter_mut().enumerate() {
            for (l, al) in accj.iter_mut().enumerate() {
                let k = i + j * 16 + l;
                if k < n {
                    *al = a[k].mul_add(b[k], *al);
                }
            }
        }
    }
    let mut s = [0f32; 16];
    for l in 0..16 {
        s[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let mut sum = reduce_add16(&s) as f64;
    for k in np.min(n)..n {
        sum += (a[k] * b[k]) as f64;
    }
    sum as f32
}
}

fma_dispatch! {
/// The accumulation half of `p . v` for one query row and many output elements at once:
/// `acc` holds `lanes` rows of `d` (zeroed by the caller); cached position `j` (value row
/// `v[j * stride..][..d]`) goes to lane `(lane0 + j) % lanes`, in increasing `j` (`lane0`: the
/// slot of `probs[0]` when a row is accumulated run by run, as over a paged cache). With `lanes = 16` and
/// `finish_batched`, each output equals `dot_batched` over the value column; with `lanes = 64`
/// and `finish_single`, `dot_single_padded`. Zero probabilities (masked) are skipped: adding
/// `0 * v` leaves a lane unchanged.
#[allow(clippy::too_many_arguments)]
pub fn pv_accumulate_portable(probs: &[f32], v: &[f32], stride: usize, d: usize, lanes: usize, lane0: usize, acc: &mut [f32]) -> () {
    for (j, &p) in probs.iter().enumerate() {
        if p == 0.0 {
            continue;
        }
        let vr = &v[j * stride..j * stride + d];
        let l = (lane0 + j) % lanes;
        let a = &mut acc[l * d..(l + 1) * d];
        for (ae, &ve) in a.iter_mut().zip(vr) {
            *ae = p.mul_add(ve, *ae);
        }
    }
}
}

/// `pv_accumulate_portable`, with 512-bit vectors where present and `d` allows.
pub fn pv_accumulate(
    probs: &[f32],
    v: &[f32],
    stride: usize,
    d: usize,
    lanes: usize,
    lane0: usize,
    acc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 && d.is_multiple_of(16) {
        // SAFETY: detected at run time.
        unsafe { avx512::pv_accumulate(probs, v, stride, d, lanes, lane0, acc) };
        return;
    }
    pv_accumulate_portable(probs, v, stride, d, lanes, lane0, acc)
}

/// `p · v` for one query whose value rows lie in runs (a paged cache): `runs[r] = (index of
/// its first key in probs, its rows v[i * stride..][..d])`, in order. The bits of zeroed
/// lanes, [`pv_accumulate`] run by run (lane offset `lane0 + start`) and
/// [`pv_finish_single`] (`lanes = 64`) or [`pv_finish_batched`] (`lanes = 16`), which it
/// is with no vector unit; with AVX-512 every lane's sum stays in a register.
#[allow(clippy::too_many_arguments)]
pub fn pv_runs(
    probs: &[f32],
    runs: &[(usize, &[f32])],
    stride: usize,
    d: usize,
    lanes: usize,
    lane0: usize,
    acc: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert!((lanes == 16 || lanes == 64) && out.len() >= d);
    assert!(runs.windows(2).all(|w| w[0].0 < w[1].0) && runs.first().is_none_or(|r| r.0 == 0));
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 && d.is_multiple_of(16) {
        // SAFETY: detected at run time; rows' lengths asserted inside.
        unsafe { avx512::pv_runs(probs, runs, stride, d, lanes, lane0, out) };
        return;
    }
    acc.clear();
    acc.resize(lanes * d, 0.0);
    for (r, &(start, v)) in runs.iter().enumerate() {
        let end = runs
            .get(r + 1)
            .map_or(probs.len(), |x| x.0)
            .min(probs.len());
        if start < end {
            pv_accumulate(&probs[start..end], v, stride, d, lanes, lane0 + start, acc);
        }
    }
    if lanes == 64 {
        pv_finish_single(acc, d, out)
    } else {
        pv_finish_batched(acc, d, out)
    }
}

/// `reduce_add16` of lanes `lane(0..16)` for 16 consecutive elements at once: the same
/// additions per element, as whole-row vector operations.
fn reduce16_rows(lane: impl Fn(usize) -> [f32; 16]) -> [f32; 16] {
    let add = |x: [f32; 16], y: [f32; 16]| -> [f32; 16] { std::array::from_fn(|i| x[i] + y[i]) };
    let a: [[f32; 16]; 8] = std::array::from_fn(|i| add(lane(i + 8), lane(i)));
    let b: [[f32; 16]; 4] = std::array::from_fn(|i| add(a[i + 4], a[i]));
    add(add(b[0], b[2]), add(b[1], b[3]))
}

/// The 16 elements `e..e + 16` of lane `l`.
fn lane16(acc: &[f32], d: usize, l: usize, e: usize) -> [f32; 16] {
    acc[l * d + e..l * d + e + 16].try_into().unwrap()
}

/// Reduces 16 lanes of `pv_accumulate` into `out` (tinyBLAS order).
pub fn pv_finish_batched(acc: &[f32], d: usize, out: &mut [f32]) {
    let mut e = 0;
    while e + 16 <= d {
        out[e..e + 16].copy_from_slice(&reduce16_rows(|l| lane16(acc, d, l, e)));
        e += 16;
    }
    for (e, o) in out.iter_mut().enumerate().take(d).skip(e) {
        let mut l16 = [0f32; 16];
        for (l, x) in l16.iter_mut().enumerate() {
            *x = acc[l * d + e];
        }
        *o = reduce_add16(&l16);
    }
}

/// Reduces 64 lanes of `pv_accumulate` into `out` (`ggml_vec_dot_f16` order).
pub fn pv_finish_single(acc: &[f32], d: usize, out: &mut [f32]) {
    let mut e = 0;
    while e + 16 <= d {
        let r = reduce16_rows(|l| {
            let (x0, x32, x16, x48) = (
                lane16(acc, d, l, e),
                lane16(acc, d, 32 + l, e),
                lane16(acc, d, 16 + l, e),
                lane16(acc, d, 48 + l, e),
            );
            std::array::from_fn(|i| (x0[i] + x32[i]) + (x16[i] + x48[i]))
        });
        out[e..e + 16].copy_from_slice(&r);
        e += 16;
    }
    for (e, o) in out.iter_mut().enumerate().take(d).skip(e) {
        let mut l16 = [0f32; 16];
        for (l, x) in l16.iter_mut().enumerate() {
            *x = (acc[l * d + e] + acc[(32 + l) * d + e])
                + (acc[(16 + l) * d + e] + acc[(48 + l) * d + e]);
        }
        *o = reduce_add16(&l16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register path of `pv_runs` against its portable body (accumulate run by run, then
    /// finish): random probabilities with zeros, several runs, lane offsets, both lane counts.
    #[test]
    fn pv_runs_gives_the_bits_of_accumulate_and_finish() {
        let mut x = 7u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for (n, d, lanes, lane0, cuts) in [
            (1usize, 64usize, 64usize, 0usize, vec![]),
            (80, 64, 64, 16, vec![16, 32]),
            (300, 64, 64, 5, vec![7, 100, 250]),
            (130, 32, 16, 3, vec![64]),
            (45, 128, 16, 0, vec![]),
        ] {
            let stride = d * 3;
            let probs: Vec<f32> = (0..n)
                .map(|j| if j % 7 == 3 { 0.0 } else { rnd() })
                .collect();
            let v: Vec<f32> = (0..n * stride).map(|_| rnd()).collect();
            let mut starts = vec![0];
            starts.extend(cuts);
            let runs: Vec<(usize, &[f32])> =
                starts.iter().map(|&s| (s, &v[s * stride..])).collect();
            let mut want = vec![0f32; lanes * d];
            pv_accumulate_portable(&probs, &v, stride, d, lanes, lane0, &mut want);
            let mut o1 = vec![0f32; d];
            if lanes == 64 {
                pv_finish_single(&want, d, &mut o1);
            } else {
                pv_finish_batched(&want, d, &mut o1);
            }
            let mut o2 = vec![0f32; d];
            pv_runs(
                &probs,
                &runs,
                stride,
                d,
                lanes,
                lane0,
                &mut Vec::new(),
                &mut o2,
            );
            assert_eq!(
                o1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                o2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "n={n} d={d} lanes={lanes}"
            );
        }
    }

    #[test]
    fn vector_pv_finish_gives_the_per_element_bits() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for d in [8usize, 24, 64, 80, 256] {
            let acc: Vec<f32> = (0..64 * d).map(|_| rnd() * 1e3).collect();
            let (mut single, mut batched) = (vec![0f32; d], vec![0f32; d]);
            pv_finish_single(&acc, d, &mut single);
            pv_finish_batched(&acc, d, &mut batched);
            for e in 0..d {
                let s16: [f32; 16] = std::array::from_fn(|l| {
                    (acc[l * d + e] + acc[(32 + l) * d + e])
                        + (acc[(16 + l) * d + e] + acc[(48 + l) * d + e])
                });
                let b16: [f32; 16] = std::array::from_fn(|l| acc[l * d + e]);
                assert_eq!(
                    single[e].to_bits(),
                    reduce_add16(&s16).to_bits(),
                    "d {d} e {e}"
                );
                assert_eq!(
                    batched[e].to_bits(),
                    reduce_add16(&b16).to_bits(),
                    "d {d} e {e}"
                );
            }
        }
    }

    #[test]
    fn vector_softmax_and_pv_give_the_portable_bits() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for n in [1usize, 7, 16, 33, 64, 100, 517] {
            let mut x: Vec<f32> = (0..n).map(|_| rnd() * 40.0).collect();
            for i in (0..n).step_by(5) {
                x[i] = f32::NEG_INFINITY;
            }
            x[n / 2] = rnd() * 90.0;
            let (mut a, mut b) = (x.clone(), x.clone());
            softmax_row(&mut a, 0.125);
            softmax_row_portable(&mut b, 0.125);
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "softmax n={n}"
            );
            for (d, lanes) in [(64usize, 64usize), (256, 16), (48, 16)] {
                let stride = d + 16;
                let v: Vec<f32> = (0..n * stride).map(|_| rnd()).collect();
                let (mut a1, mut a2) = (vec![0f32; lanes * d], vec![0f32; lanes * d]);
                let lane0 = n % 7;
                pv_accumulate(&a, &v, stride, d, lanes, lane0, &mut a1);
                pv_accumulate_portable(&a, &v, stride, d, lanes, lane0, &mut a2);
                assert_eq!(
                    a1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    a2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "pv n={n} d={d}"
                );
            }
        }
        // expf's edges: huge, tiny, subnormal results, NaN, infinities.
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::features().avx512 {
            use std::arch::x86_64::*;
            let mut xs: Vec<f32> =
                vec![-200.0, -100.0, -87.5, -103.9, -0.0, 88.0, 88.8, 89.0, 200.0];
            xs.extend([
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                -126.5,
                -149.0,
                -150.5,
                1e-8,
            ]);
            xs.extend((0..4000).map(|_| rnd() * 110.0));
            for c in xs.chunks_exact(16) {
                let mut out = [0f32; 16];
                // SAFETY: AVX-512 was detected.
                unsafe {
                    _mm512_storeu_ps(
                        out.as_mut_ptr(),
                        avx512::expf16(_mm512_loadu_ps(c.as_ptr())),
                    )
                };
                for (o, &x) in out.iter().zip(c) {
                    let want = expf(x);
                    assert!(
                        o.to_bits() == want.to_bits() || (o.is_nan() && want.is_nan()),
                        "expf({x:e}) {o:e} vs {want:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn f16_rounding_matches_the_half_crate_on_every_class_of_value() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut xs: Vec<f32> = (0..10_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                f32::from_bits(seed as u32)
            })
            .collect();
        xs.extend([
            0.0,
            -0.0,
            65504.0,
            65520.0,
            1e-8,
            -6.1e-5,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        xs.extend((0..100).map(|i| 1.0 + i as f32 * 2f32.powi(-11))); // ties
        let mut fast = xs.clone();
        round_f16_slice(&mut fast);
        for (a, &x) in fast.iter().zip(&xs) {
            let want = half::f16::from_f32(x).to_f32();
            assert!(
                a.to_bits() == want.to_bits() || (a.is_nan() && want.is_nan()),
                "{x:e}"
            );
        }
    }

    fn ulps(a: f32, b: f32) -> i64 {
        (a.to_bits() as i64 - b.to_bits() as i64).abs()
    }

    #[test]
    fn expf_is_within_two_ulps_of_exp() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp() as f32;
            worst = worst.max(ulps(expf(x), exact));
            x += 0.0137;
        }
        assert!(worst <= 2, "worst {worst} ulps");
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-200.0), 0.0);
        assert_eq!(expf(200.0), f32::INFINITY);
        assert_eq!(expf(0.0), 1.0);
    }

    /// The vector SiLU gives the lane-at-a-time bits, over the whole range (saturation,
    /// underflow, signed zeros, a ragged tail).
    #[test]
    fn vector_silu_equals_portable() {
        let mut x: Vec<f32> = (0..40_011).map(|i| (i as f32 - 20_000.0) * 0.011).collect();
        x.extend([
            0.0, -0.0, 88.7, -88.7, 103.0, -104.0, 1e-40, -1e-40, 1e30, -1e30,
        ]);
        let (mut a, mut b) = (x.clone(), x);
        silu_slice(&mut a);
        silu_slice_portable(&mut b);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert_eq!(p.to_bits(), q.to_bits(), "element {i}");
        }
    }

    /// Vector rope equals the pair-at-a-time loop, both layouts, with ragged pair counts.
    #[test]
    fn vector_rope_equals_portable() {
        let mut st = 5u64;
        let mut rnd = move || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            (st >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        };
        for n in [1usize, 8, 13, 16, 32, 40, 64] {
            for adjacent in [true, false] {
                let (stride, offset) = if adjacent { (2, 1) } else { (1, n) };
                let x: Vec<f32> = (0..2 * n).map(|_| rnd()).collect();
                let cache: Vec<f32> = (0..2 * n).map(|_| rnd()).collect();
                let mut a = x.clone();
                rope_pairs(&mut a, &cache, n, stride, offset);
                let mut b = x;
                for i in 0..n {
                    let (c, s) = (cache[2 * i], cache[2 * i + 1]);
                    let p = i * stride;
                    let (x0, x1) = (b[p], b[p + offset]);
                    b[p] = x0.mul_add(c, -(x1 * s));
                    b[p + offset] = x0.mul_add(s, x1 * c);
                }
                assert_eq!(
                    a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "n={n} adjacent={adjacent}"
                );
            }
        }
    }

    #[test]
    fn silu_matches_formula() {
        for i in -400..400 {
            let x = i as f32 * 0.05;
            let exact = (x as f64 / (1.0 + (-x as f64).exp())) as f32;
            assert!(ulps(silu(x), exact) <= 3, "{x}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_masks() {
        let mut row = vec![1.0, 2.0, f32::NEG_INFINITY, 3.0, 0.5];
        softmax_row(&mut row, 0.5);
        assert_eq!(row[2], 0.0);
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        let e: Vec<f64> = [0.5f64, 1.0, 1.5, 0.25].iter().map(|v| v.exp()).collect();
        let z: f64 = e.iter().sum();
        assert!((row[3] as f64 - e[2] / z).abs() < 1e-6);
    }

    #[test]
    fn pv_accumulation_equals_the_column_dots() {
        let (s, d) = (77usize, 5usize);
        let v: Vec<f32> = (0..s * d)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 333.0)
            .collect();
        let mut p: Vec<f32> = (0..s).map(|j| ((j * 31 % 17) as f32) / 40.0).collect();
        p[3] = 0.0;
        for (lanes, batched) in [(16usize, true), (64, false)] {
            let mut acc = vec![0f32; lanes * d];
            pv_accumulate(&p, &v, d, d, lanes, 0, &mut acc);
            let mut out = vec![0f32; d];
            if batched {
                pv_finish_batched(&acc, d, &mut out);
            } else {
                pv_finish_single(&acc, d, &mut out);
            }
            for e in 0..d {
                let col: Vec<f32> = (0..s).map(|j| v[j * d + e]).collect();
                let want = if batched {
                    dot_batched(&col, &p)
                } else {
                    dot_single_padded(&col, &p)
                };
                assert_eq!(out[e].to_bits(), want.to_bits(), "lanes {lanes} e {e}");
            }
        }
    }

    #[test]
    fn dots_agree_with_f64() {
        for n in [1usize, 15, 16, 17, 63, 64, 65, 200, 256] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot_batched(&a, &b) as f64 - exact).abs() < 1e-4, "{n}");
            assert!((dot_single(&a, &b) as f64 - exact).abs() < 1e-4, "{n}");
            assert!(
                (dot_single_padded(&a, &b) as f64 - exact).abs() < 1e-4,
                "{n}"
            );
            assert_eq!(
                dot_batched(&a, &b).to_bits(),
                dot_batched_portable(&a, &b).to_bits(),
                "{n}"
            );
            assert_eq!(
                dot_single(&a, &b).to_bits(),
                dot_single_impl(&a, &b, false).to_bits(),
                "{n}"
            );
            assert_eq!(
                dot_single_padded(&a, &b).to_bits(),
                dot_single_impl(&a, &b, true).to_bits(),
                "{n}"
            );
        }
    }
}
