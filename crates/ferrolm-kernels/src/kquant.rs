//! K-quant weight rows (Q4_K, Q6_K; 256 values a super-block) times Q8_K activations.
//!
//! Two summation orders, both llama.cpp's, because llama.cpp itself uses two: products with
//! eight or more activation rows go through its tiled kernel (one exact integer per
//! super-block, scaled and added in order), fewer rows through `ggml_vec_dot_*_q8_K` (eight
//! float lanes with fused multiply-adds). Which one a caller gets is decided by `matmul` from
//! the row count, exactly as llama.cpp decides, so prefill and decode both agree with it.

use crate::qdot::hsum8;
use half::f16;

pub const QK_K: usize = 256;

/// K-quant formats with kernels here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KQuantKind {
    /// `d, dmin: f16, scales: [u8; 12] (8 x 6-bit scale + min), qs: [u8; 128]` (144 bytes).
    Q4K,
    /// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16` (210 bytes).
    Q6K,
}

impl KQuantKind {
    pub fn block_bytes(self) -> usize {
        match self {
            KQuantKind::Q4K => 144,
            KQuantKind::Q6K => 210,
        }
    }
}

/// One super-block of activations: `d` in f32, 256 int8 codes, and sums of each 16 codes.
#[derive(Clone, Debug)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; 16],
}

/// `quantize_row_q8_K_ref`: scale `-127 / max` by the signed value of largest magnitude,
/// round half to even, clamp at 127, `d = 1 / scale`.
pub fn quantize_q8_k(x: &[f32], out: &mut Vec<BlockQ8K>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "sse4.1,avx2")]
        unsafe fn fast(x: &[f32], out: &mut Vec<BlockQ8K>) {
            quantize_q8_k_body(x, out)
        }
        if std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("avx2")
        {
            // SAFETY: detected at run time; same arithmetic.
            return unsafe { fast(x, out) };
        }
    }
    quantize_q8_k_body(x, out)
}

#[inline(always)]
fn quantize_q8_k_body(x: &[f32], out: &mut Vec<BlockQ8K>) {
    assert_eq!(
        x.len() % QK_K,
        0,
        "length {} is not a multiple of {QK_K}",
        x.len()
    );
    out.clear();
    for xb in x.chunks_exact(QK_K) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut b = BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; 16],
        };
        if amax != 0.0 {
            let iscale = -127.0f32 / max;
            for (q, &v) in b.qs.iter_mut().zip(xb) {
                // Round half to even through the magic-number add, as `nearest_int`.
                let r = ((iscale * v) + 12_582_912.0) - 12_582_912.0;
                *q = (r as i32).min(127) as i8;
            }
            for (j, s) in b.bsums.iter_mut().enumerate() {
                *s = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
            }
            b.d = 1.0 / iscale;
        }
        out.push(b);
    }
}

/// A decoded weight super-block: unsigned codes, integer sub-block scales (and mins), f32 `d`.
pub(crate) struct Decoded {
    pub(crate) q: [u8; QK_K],
    /// Per 32 values (Q4_K, 8 used) or per 16 values (Q6_K, 16 used).
    pub(crate) scales: [i32; 16],
    pub(crate) mins: [i32; 8],
    pub(crate) d: f32,
    pub(crate) dmin: f32,
}

fn decode_scales(kind: KQuantKind, b: &[u8], out: &mut Decoded) {
    let rd16 = |at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    match kind {
        KQuantKind::Q4K => {
            out.d = rd16(0);
            out.dmin = rd16(2);
            let s = &b[4..16];
            for j in 0..8 {
                let (sc, m) = if j < 4 {
                    (s[j] & 63, s[j + 4] & 63)
                } else {
                    (
                        (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                        (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                    )
                };
                out.scales[j] = sc as i32;
                out.mins[j] = m as i32;
            }
        }
        KQuantKind::Q6K => {
            out.d = rd16(208);
            out.dmin = 0.0;
            for (o, &s) in out.scales.iter_mut().zip(&b[192..208]) {
                *o = s as i8 as i32;
            }
        }
    }
}

pub(crate) fn decode(kind: KQuantKind, b: &[u8], out: &mut Decoded) {
    decode_scales(kind, b, out);
    match kind {
        KQuantKind::Q4K => {
            let qs = &b[16..144];
            for c in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * c + l];
                    out.q[64 * c + l] = byte & 0xF;
                    out.q[64 * c + 32 + l] = byte >> 4;
                }
            }
        }
        KQuantKind::Q6K => {
            let (ql, qh) = (&b[0..128], &b[128..192]);
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                let base = 128 * half;
                for l in 0..32 {
                    let h = qh[l];
                    out.q[base + l] = (ql[l] & 0xF) | ((h & 3) << 4);
                    out.q[base + 32 + l] = (ql[32 + l] & 0xF) | (((h >> 2) & 3) << 4);
                    out.q[base + 64 + l] = (ql[l] >> 4) | (((h >> 4) & 3) << 4);
                    out.q[base + 96 + l] = (ql[32 + l] >> 4) | (((h >> 6) & 3) << 4);
                }
            }
        }
    }
}

/// `lanes[c][k]`: the exact integer `sum code * q8` over elements `32c + 4k .. 32c + 4k + 4`.
/// Every summation order below is built from these integers, so the SIMD and scalar producers
/// give identical results.
type Lanes = [[i32; 8]; 8];

fn lanes_scalar(q: &[u8; QK_K], y: &BlockQ8K) -> Lanes {
    let mut l = [[0i32; 8]; 8];
    for (c, lc) in l.iter_mut().enumerate() {
        for (k, v) in lc.iter_mut().enumerate() {
            let e = 32 * c + 4 * k;
            *v = (e..e + 4).map(|e| q[e] as i32 * y.qs[e] as i32).sum();
        }
    }
    l
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn lanes_vnni(kind: KQuantKind, b: &[u8], y: &BlockQ8K) -> Lanes {
    use std::arch::x86_64::*;
    let codes = codes_vnni(kind, b);
    let mut out = [[0i32; 8]; 8];
    for c in 0..8 {
        let yq = _mm256_loadu_si256(y.qs.as_ptr().add(32 * c) as *const __m256i);
        let l = _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes[c], yq);
        _mm256_storeu_si256(out[c].as_mut_ptr() as *mut __m256i, l);
    }
    out
}

/// `dot_row_single` with the lanes kept in registers: the integer lanes are formed with vector
/// multiplies (`vpmulld`, and `vpmaddwd` for Q6_K's offset terms) and the float steps are the
/// same fused multiply-adds, so the bits are the portable order's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_row_single_vnni(kind: KQuantKind, row: &[u8], x: &[BlockQ8K]) -> f32 {
    use std::arch::x86_64::*;
    let mut dec = new_decoded();
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = [0f32; 4];
    for (b, y) in row.chunks_exact(kind.block_bytes()).zip(x) {
        decode_scales(kind, b, &mut dec);
        let codes = codes_vnni(kind, b);
        let yq = |c: usize| _mm256_loadu_si256(y.qs.as_ptr().add(32 * c) as *const __m256i);
        let mut lanes = _mm256_setzero_si256();
        match kind {
            KQuantKind::Q4K => {
                let dmin = -y.d * dec.dmin;
                for (i, am) in acc_m.iter_mut().enumerate() {
                    let sb = |s: usize| y.bsums[2 * s] as i32 + y.bsums[2 * s + 1] as i32;
                    let prod = dec.mins[2 * i] * sb(2 * i) + dec.mins[2 * i + 1] * sb(2 * i + 1);
                    *am = dmin.mul_add(prod as f32, *am);
                }
                for s in 0..8 {
                    let l = _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes[s], yq(s));
                    let sc = _mm256_set1_epi32(dec.scales[s]);
                    lanes = _mm256_add_epi32(lanes, _mm256_mullo_epi32(l, sc));
                }
            }
            KQuantKind::Q6K => {
                for c in 0..8 {
                    let l = _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes[c], yq(c));
                    let sc = _mm256_set_m128i(
                        _mm_set1_epi32(dec.scales[2 * c + 1]),
                        _mm_set1_epi32(dec.scales[2 * c]),
                    );
                    lanes = _mm256_add_epi32(lanes, _mm256_mullo_epi32(l, sc));
                }
                // Lane k: bsums[2k] * scale[2k] + bsums[2k+1] * scale[2k+1], times 32.
                let bs = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(192) as *const _));
                let sub = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
                lanes = _mm256_sub_epi32(lanes, sub);
            }
        }
        let d = y.d * dec.d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
    }
    let mut a = [0f32; 8];
    _mm256_storeu_ps(a.as_mut_ptr(), acc);
    let h = hsum8(&a);
    match kind {
        KQuantKind::Q4K => h + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3])),
        KQuantKind::Q6K => h,
    }
}

/// A super-block's 256 unsigned codes as eight vectors of 32 (values `32c .. 32c + 32`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn codes_vnni(kind: KQuantKind, b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    let m4 = _mm256_set1_epi8(0x0F);
    let mut codes = [_mm256_setzero_si256(); 8];
    match kind {
        KQuantKind::Q4K => {
            for c in 0..4 {
                let v = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * c) as *const __m256i);
                codes[2 * c] = _mm256_and_si256(v, m4);
                codes[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            }
        }
        KQuantKind::Q6K => {
            let m3 = _mm256_set1_epi8(3);
            for half in 0..2 {
                let ql0 = _mm256_loadu_si256(b.as_ptr().add(64 * half) as *const __m256i);
                let ql1 = _mm256_loadu_si256(b.as_ptr().add(64 * half + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * half) as *const __m256i);
                let hb = |shift: i32| {
                    let h = match shift {
                        0 => qh,
                        2 => _mm256_srli_epi16(qh, 2),
                        4 => _mm256_srli_epi16(qh, 4),
                        _ => _mm256_srli_epi16(qh, 6),
                    };
                    _mm256_slli_epi16(_mm256_and_si256(h, m3), 4)
                };
                let c0 = 4 * half;
                codes[c0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), hb(0));
                codes[c0 + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), hb(2));
                codes[c0 + 2] =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hb(4));
                codes[c0 + 3] =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hb(6));
            }
        }
    }
    codes
}

/// Decodes the block's scales into `dec` and returns its lanes against `y`.
#[inline(always)]
fn block_lanes(kind: KQuantKind, b: &[u8], y: &BlockQ8K, dec: &mut Decoded, simd: bool) -> Lanes {
    #[cfg(target_arch = "x86_64")]
    if simd {
        decode_scales(kind, b, dec);
        // SAFETY: `simd` is only true when `crate::cpu::features().vnni` detected the features.
        return unsafe { lanes_vnni(kind, b, y) };
    }
    let _ = simd;
    decode(kind, b, dec);
    lanes_scalar(&dec.q, y)
}

fn chunk_sum(l: &[i32; 8]) -> i32 {
    l.iter().sum()
}

/// Tiled order (llama.cpp's `tiled` K-quant kernel): per super-block one exact integer
/// (`s1 = sum scale * raw`, `s2 = sum min * bsums`), then
/// `fma(f32(s1) * d - dmin * f32(s2), d_x, total)`.
#[inline(always)]
fn dot_row_tiled(
    kind: KQuantKind,
    row: &[u8],
    x: &[BlockQ8K],
    dec: &mut Decoded,
    simd: bool,
) -> f32 {
    let mut total = 0f32;
    for (b, y) in row.chunks_exact(kind.block_bytes()).zip(x) {
        let l = block_lanes(kind, b, y, dec, simd);
        let r = match kind {
            KQuantKind::Q4K => {
                let (mut s1, mut s2) = (0i32, 0i32);
                for s in 0..8 {
                    s1 += dec.scales[s] * chunk_sum(&l[s]);
                    s2 += dec.mins[s] * (y.bsums[2 * s] as i32 + y.bsums[2 * s + 1] as i32);
                }
                (-dec.dmin).mul_add(s2 as f32, s1 as f32 * dec.d)
            }
            KQuantKind::Q6K => {
                let mut s1 = 0i32;
                for s in 0..16 {
                    let half = &l[s / 2][4 * (s % 2)..4 * (s % 2) + 4];
                    let raw = half.iter().sum::<i32>() - 32 * y.bsums[s] as i32;
                    s1 += dec.scales[s] * raw;
                }
                s1 as f32 * dec.d
            }
        };
        // llama.cpp's build fuses this multiply-add.
        total = r.mul_add(y.d, total);
    }
    total
}

/// `ggml_vec_dot_*_q8_K` order (AVX2): lane `k` of eight holds the integer sum over the
/// elements `4k..4k+4` of every 32 (weighted by their sub-block scales); per super-block
/// `acc_k = fma(d_x * d, f32(lane_k), acc_k)`; Q4_K's minimum terms go to four more lanes.
#[inline(always)]
fn dot_row_single(
    kind: KQuantKind,
    row: &[u8],
    x: &[BlockQ8K],
    dec: &mut Decoded,
    simd: bool,
) -> f32 {
    let mut acc = [0f32; 8];
    let mut acc_m = [0f32; 4];
    for (b, y) in row.chunks_exact(kind.block_bytes()).zip(x) {
        let l = block_lanes(kind, b, y, dec, simd);
        let d = y.d * dec.d;
        let mut lanes = [0i32; 8];
        match kind {
            KQuantKind::Q4K => {
                let dmin = -y.d * dec.dmin;
                for (i, am) in acc_m.iter_mut().enumerate() {
                    let sb = |s: usize| y.bsums[2 * s] as i32 + y.bsums[2 * s + 1] as i32;
                    let prod = dec.mins[2 * i] * sb(2 * i) + dec.mins[2 * i + 1] * sb(2 * i + 1);
                    *am = dmin.mul_add(prod as f32, *am);
                }
                for (k, lane) in lanes.iter_mut().enumerate() {
                    for (s, ls) in l.iter().enumerate() {
                        *lane += dec.scales[s] * ls[k];
                    }
                }
            }
            KQuantKind::Q6K => {
                for (k, lane) in lanes.iter_mut().enumerate() {
                    for (c, lc) in l.iter().enumerate() {
                        *lane += dec.scales[2 * c + k / 4] * lc[k];
                    }
                    let sub = y.bsums[2 * k] as i32 * dec.scales[2 * k]
                        + y.bsums[2 * k + 1] as i32 * dec.scales[2 * k + 1];
                    *lane -= sub << 5;
                }
            }
        }
        for (a, &v) in acc.iter_mut().zip(&lanes) {
            *a = d.mul_add(v as f32, *a);
        }
    }
    let h = hsum8(&acc);
    match kind {
        KQuantKind::Q4K => h + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3])),
        KQuantKind::Q6K => h,
    }
}

/// Row count from which llama.cpp uses its tiled kernel.
pub const TILED_MIN_ROWS: usize = 8;

pub(crate) fn new_decoded() -> Decoded {
    Decoded {
        q: [0; QK_K],
        scales: [0; 16],
        mins: [0; 8],
        d: 0.0,
        dmin: 0.0,
    }
}

/// Q4_K in llama.cpp's x86 repacked layout (`q4_K_8x8`, used whenever the output count is a
/// multiple of 8): integer sums per group of `group` values (64 in its 4-row gemm, 256 in its
/// gemv), each added as `fma(f32(sum), d * d_x, acc)`; minimum terms in a second accumulator,
/// subtracted at the end.
#[inline(always)]
fn dot_row_q4k_repacked(
    row: &[u8],
    x: &[BlockQ8K],
    group: usize,
    dec: &mut Decoded,
    simd: bool,
) -> f32 {
    let (mut acc, mut acc_m) = (0f32, 0f32);
    let per = group / 32;
    for (b, y) in row.chunks_exact(KQuantKind::Q4K.block_bytes()).zip(x) {
        let l = block_lanes(KQuantKind::Q4K, b, y, dec, simd);
        let (dd, dm) = (dec.d * y.d, dec.dmin * y.d);
        for g in 0..QK_K / group {
            let (mut i, mut im) = (0i32, 0i32);
            for s in g * per..(g + 1) * per {
                i += dec.scales[s] * chunk_sum(&l[s]);
                im += dec.mins[s] * (y.bsums[2 * s] as i32 + y.bsums[2 * s + 1] as i32);
            }
            acc = (i as f32).mul_add(dd, acc);
            acc_m = (im as f32).mul_add(dm, acc_m);
        }
    }
    acc - acc_m
}

/// Which of llama.cpp's summation orders applies to output `j`'s product with activation
/// row `i` of `m`, for a weight with `n` outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// `ggml_vec_dot_*_q8_K`.
    Single,
    /// The tiled kernel (8 or more rows).
    Tiled,
    /// Repacked Q4_K, integer groups of 64 (rows inside a multiple of 4).
    Repacked64,
    /// Repacked Q4_K, integer groups of 256 (the rows past the last multiple of 4).
    Repacked256,
}

pub fn order_for(kind: KQuantKind, n: usize, m: usize, i: usize) -> Order {
    if kind == KQuantKind::Q4K && n.is_multiple_of(8) {
        if i < m - m % 4 {
            Order::Repacked64
        } else {
            Order::Repacked256
        }
    } else if m >= TILED_MIN_ROWS {
        Order::Tiled
    } else {
        Order::Single
    }
}

fn dot_row_in(
    kind: KQuantKind,
    row: &[u8],
    x: &[BlockQ8K],
    order: Order,
    dec: &mut Decoded,
    simd: bool,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when `crate::cpu::features().vnni` detected these features.
        return unsafe {
            if order == Order::Single {
                dot_row_single_vnni(kind, row, x)
            } else {
                dot_row_in_vnni(kind, row, x, order, dec)
            }
        };
    }
    dot_row_in_body(kind, row, x, order, dec, false)
}

/// `dot_row_in_body` compiled with the features the SIMD lanes need, so `mul_add` is one
/// instruction and the lane producer inlines.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_row_in_vnni(
    kind: KQuantKind,
    row: &[u8],
    x: &[BlockQ8K],
    order: Order,
    dec: &mut Decoded,
) -> f32 {
    dot_row_in_body(kind, row, x, order, dec, true)
}

#[inline(always)]
fn dot_row_in_body(
    kind: KQuantKind,
    row: &[u8],
    x: &[BlockQ8K],
    order: Order,
    dec: &mut Decoded,
    simd: bool,
) -> f32 {
    match order {
        Order::Single => dot_row_single(kind, row, x, dec, simd),
        Order::Tiled => dot_row_tiled(kind, row, x, dec, simd),
        Order::Repacked64 => dot_row_q4k_repacked(row, x, 64, dec, simd),
        Order::Repacked256 => dot_row_q4k_repacked(row, x, 256, dec, simd),
    }
}

/// One weight row times one activation row in the given order.
pub fn dot_row(kind: KQuantKind, row: &[u8], x: &[BlockQ8K], order: Order) -> f32 {
    let mut dec = new_decoded();
    dot_row_in(kind, row, x, order, &mut dec, crate::cpu::features().vnni)
}

/// `dot_row` through the portable integer path (for tests against the SIMD one).
pub fn dot_row_scalar(kind: KQuantKind, row: &[u8], x: &[BlockQ8K], order: Order) -> f32 {
    let mut dec = new_decoded();
    dot_row_in(kind, row, x, order, &mut dec, false)
}

/// `y (M, N) = x (M, K) . W^T` for `w` holding N rows of K values in `kind` super-blocks.
pub fn matmul(kind: KQuantKind, w: &[u8], n: usize, k: usize, x: &[f32], y: &mut [f32]) {
    let m = x.len() / k.max(1);
    matmul_ordered(kind, w, n, k, x, y, |i| order_for(kind, n, m, i))
}

/// [`matmul`] with each activation row's summation order given: a server's batched step
/// passes every sequence's rows the orders they get in a call of their own (`order_for` with
/// the sequence's row count), so each row gets the bits it gets alone.
pub fn matmul_ordered(
    kind: KQuantKind,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    y: &mut [f32],
    order_of: impl Fn(usize) -> Order + Sync,
) {
    assert_eq!(k % QK_K, 0, "row length {k} is not a multiple of {QK_K}");
    let m = x.len() / k;
    assert_eq!(x.len(), m * k);
    assert_eq!(y.len(), m * n);
    let row_bytes = k / QK_K * kind.block_bytes();
    assert_eq!(w.len(), n * row_bytes);
    let xq: Vec<Vec<BlockQ8K>> = crate::pool::global().map(m, |i| {
        let mut q = Vec::with_capacity(k / QK_K);
        quantize_q8_k(&x[i * k..(i + 1) * k], &mut q);
        q
    });
    let simd = crate::cpu::features().vnni;
    // Many rows: whole 16-row tiles through the K-quant GEMM (same bits) for the rows with a
    // tiled order; the ragged rest of the columns, and rows in the single-row order, row by row.
    let tiled = simd && m >= 2 && (0..m).any(|i| order_of(i) != Order::Single);
    let pool = crate::pool::global();
    let chunk = pool.column_chunk(n).next_multiple_of(crate::kgemm::ROWS);
    let out = crate::pool::SharedOut::new(y);
    let order_of = &order_of;
    pool.run(n.div_ceil(chunk), |c| {
        let (j0, j1) = (c * chunk, ((c + 1) * chunk).min(n));
        let jt = if tiled {
            j0 + (j1 - j0) / crate::kgemm::ROWS * crate::kgemm::ROWS
        } else {
            j0
        };
        let mut dec = new_decoded();
        if jt > j0 {
            // SAFETY: columns j0..j1 belong to this task only.
            unsafe { crate::kgemm::rows_times_acts(kind, w, &xq, n, (j0, jt), order_of, out) };
            // Rows in the single-row order (the kernel skips them).
            for (i, x) in xq.iter().enumerate() {
                if order_of(i) != Order::Single {
                    continue;
                }
                for j in j0..jt {
                    let row = &w[j * row_bytes..(j + 1) * row_bytes];
                    let v = dot_row_in(kind, row, x, Order::Single, &mut dec, simd);
                    // SAFETY: as above.
                    unsafe { out.slice(i * n + j, 1)[0] = v };
                }
            }
        }
        for j in jt..j1 {
            let row = &w[j * row_bytes..(j + 1) * row_bytes];
            for (i, x) in xq.iter().enumerate() {
                let v = dot_row_in(kind, row, x, order_of(i), &mut dec, simd);
                // SAFETY: as above.
                unsafe { out.slice(i * n + j, 1)[0] = v };
            }
        }
    });
}

/// Slow reference: dequantize (gguf-py's formulas) and multiply in f64.
pub fn reference_dot(kind: KQuantKind, row: &[u8], x: &[f32]) -> f64 {
    let mut dec = new_decoded();
    let mut total = 0f64;
    for (bi, b) in row.chunks_exact(kind.block_bytes()).enumerate() {
        decode(kind, b, &mut dec);
        for e in 0..QK_K {
            let w = match kind {
                KQuantKind::Q4K => {
                    dec.d as f64 * dec.scales[e / 32] as f64 * dec.q[e] as f64
                        - dec.dmin as f64 * dec.mins[e / 32] as f64
                }
                KQuantKind::Q6K => {
                    dec.d as f64 * dec.scales[e / 16] as f64 * (dec.q[e] as f64 - 32.0)
                }
            };
            total += w * x[bi * QK_K + e] as f64;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn random_row(kind: KQuantKind, blocks: usize, seed: &mut u64) -> Vec<u8> {
        let mut b: Vec<u8> = (0..blocks * kind.block_bytes())
            .map(|_| rng(seed) as u8)
            .collect();
        // Keep the f16 scales finite and small.
        for blk in b.chunks_exact_mut(kind.block_bytes()) {
            let at: &[usize] = match kind {
                KQuantKind::Q4K => &[0, 2],
                KQuantKind::Q6K => &[208],
            };
            for &a in at {
                let v = f16::from_f32((rng(seed) % 1000) as f32 * 1e-5);
                blk[a..a + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn both_orders_match_the_f64_reference() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for kind in [KQuantKind::Q4K, KQuantKind::Q6K] {
            for blocks in [1usize, 2, 5] {
                let row = random_row(kind, blocks, &mut seed);
                let x: Vec<f32> = (0..blocks * QK_K)
                    .map(|_| (rng(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                    .collect();
                let mut xq = Vec::new();
                quantize_q8_k(&x, &mut xq);
                let exact = reference_dot(kind, &row, &x);
                let scale: f64 = reference_dot(kind, &row, &vec![1.0; x.len()]).abs() + 1.0;
                for order in [
                    Order::Single,
                    Order::Tiled,
                    Order::Repacked64,
                    Order::Repacked256,
                ] {
                    if kind != KQuantKind::Q4K
                        && matches!(order, Order::Repacked64 | Order::Repacked256)
                    {
                        continue;
                    }
                    let got = dot_row(kind, &row, &xq, order) as f64;
                    // The only error is the int8 rounding of x (<= 1/254 of the block max).
                    assert!(
                        (got - exact).abs() <= 0.02 * scale,
                        "{kind:?} blocks {blocks} {order:?}: {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_lanes_give_the_scalar_bits() {
        let mut seed = 7u64;
        for kind in [KQuantKind::Q4K, KQuantKind::Q6K] {
            for blocks in [1usize, 3] {
                for _ in 0..20 {
                    let row = random_row(kind, blocks, &mut seed);
                    let x: Vec<f32> = (0..blocks * QK_K)
                        .map(|_| (rng(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                        .collect();
                    let mut xq = Vec::new();
                    quantize_q8_k(&x, &mut xq);
                    for order in [
                        Order::Single,
                        Order::Tiled,
                        Order::Repacked64,
                        Order::Repacked256,
                    ] {
                        assert_eq!(
                            dot_row(kind, &row, &xq, order).to_bits(),
                            dot_row_scalar(kind, &row, &xq, order).to_bits(),
                            "{kind:?} {order:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q8k_rounds_half_to_even_and_keeps_sums() {
        let mut x = vec![0f32; QK_K];
        x[0] = -127.0;
        x[1] = 0.5;
        x[2] = 1.5;
        x[3] = 2.5;
        let mut q = Vec::new();
        quantize_q8_k(&x, &mut q);
        assert_eq!(q[0].qs[0], -127); // scale -127/max = 1
        assert_eq!(&q[0].qs[1..4], &[0, 2, 2]);
        assert_eq!(q[0].bsums[0], -127 + 4);
        assert_eq!(q[0].d, 1.0);
        x[0] = 127.0; // scale -1: signs flip
        quantize_q8_k(&x, &mut q);
        assert_eq!(&q[0].qs[..4], &[-127, 0, -2, -2]);
        assert_eq!(q[0].d, -1.0);
    }

    #[test]
    fn matmul_picks_the_order_by_row_count() {
        let mut seed = 42u64;
        let (n, k) = (5, 512);
        let w: Vec<u8> = (0..n)
            .flat_map(|_| random_row(KQuantKind::Q4K, 2, &mut seed))
            .collect();
        for m in [1usize, 7, 8, 9] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let mut y = vec![0f32; m * n];
            matmul(KQuantKind::Q4K, &w, n, k, &x, &mut y);
            for i in 0..m {
                let mut xq = Vec::new();
                quantize_q8_k(&x[i * k..(i + 1) * k], &mut xq);
                for j in 0..n {
                    let row = &w[j * 288..(j + 1) * 288];
                    let order = order_for(KQuantKind::Q4K, n, m, i);
                    assert_eq!(y[i * n + j], dot_row(KQuantKind::Q4K, row, &xq, order));
                }
            }
        }
    }
}
