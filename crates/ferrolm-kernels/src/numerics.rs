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

/// Appends `x` to `out` as f16 (round to nearest even, as [`round_f16_slice`]): sixteen at a
/// time with AVX-512 where present.
pub fn extend_f16(x: &[f32], out: &mut Vec<half::f16>) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 && std::arch::is_x86_feature_detected!("f16c") {
        let at = out.len();
        out.resize(at + x.len(), half::f16::ZERO);
        // SAFETY: the features were detected at run time; `out[at..]` holds `x.len()` values.
        unsafe { to_f16_avx512(x, &mut out[at..]) };
        return;
    }
    out.extend(x.iter().map(|&v| half::f16::from_f32(v)));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn to_f16_avx512(x: &[f32], out: &mut [half::f16]) {
    use std::arch::x86_64::*;
    let n = x.len() / 16 * 16;
    for i in (0..n).step_by(16) {
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_loadu_ps(x.as_ptr().add(i)),
        );
        _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, h);
    }
    for i in n..x.len() {
        out[i] = half::f16::from_f32(x[i]);
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

/// An element of cached keys and values: f32, or f16 as llama.cpp stores them (every f16
/// value is an f32 value, so reading one as f32 is exact and the arithmetic is the same).
pub trait KvElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// The slice itself when the elements are f32 already.
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    /// 16 elements at `p` as f32 lanes (for AVX-512 bodies, into which it inlines).
    ///
    /// # Safety
    /// `p..p + 16` must be readable, and the CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// The first `n < 16` elements at `p`, zeros after.
    ///
    /// # Safety
    /// As [`KvElem::load16`], for `p..p + n`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load_first(p: *const Self, n: usize) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> std::arch::x86_64::__m512 {
        let k = ((1u32 << n) - 1) as u16;
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(k, p) }
    }
}

impl KvElem for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[inline(always)]
    fn as_f32(_: &[half::f16]) -> Option<&[f32]> {
        None
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load_first(p: *const half::f16, n: usize) -> std::arch::x86_64::__m512 {
        // Through a zeroed buffer (a row's tail only; masked 16-bit loads would need BW).
        let mut b = [half::f16::ZERO; 16];
        unsafe {
            std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), n);
            Self::load16(b.as_ptr())
        }
    }
}

/// Rows `0..rows` of `v` (`stride` apart, `d` each) as f32, packed `d` apart.
pub(crate) fn rows_f32<T: KvElem>(v: &[T], rows: usize, stride: usize, d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * d);
    for r in 0..rows {
        out.extend(v[r * stride..r * stride + d].iter().map(|x| x.to_f32()));
    }
    out
}

/// AVX-512 versions (the same operations, lane for lane).
#[cfg(target_arch = "x86_64")]
mod avx512;

/// `out[j] = dot_single(k_j, q)` (`single`) or `dot_batched(k_j, q)` for the rows
/// `k_j = k[j * stride..][..q.len()]`, `j < out.len()`: one query against a run of cached keys
/// (f32 or f16, widened exactly), each with the bits of its own call on the f32 values.
pub fn dot_rows<T: KvElem>(q: &[f32], k: &[T], stride: usize, single: bool, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx512 {
        // SAFETY: detected at run time.
        unsafe { avx512::dot_rows(q, k, stride, single, out) };
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        let kr = rows_f32(&k[j * stride..], 1, stride, q.len());
        *o = if single {
            dot_single_impl(&kr, q, false)
        } else {
            dot_batched_portable(&kr, q)
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
/// is with no vector unit; with AVX-512 every lane's sum stays in a register. Values may be
/// f32 or f16 (widened exactly: the bits of the same values as f32).
#[allow(clippy::too_many_arguments)]
pub fn pv_runs<T: KvElem>(
    probs: &[f32],
    runs: &[(usize, &[T])],
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
            let vs = rows_f32(v, end - start, stride, d);
            pv_accumulate(&probs[start..end], &vs, d, d, lanes, lane0 + start, acc);
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
mod tests;
