//! Dot products of GGUF weight rows (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with Q8 activations, and the threaded
//! matrix product over them. Weight bytes are read in place (no repacking yet).

use crate::q8::{quantize_q8_1, BlockQ8_1, QK};
use half::f16;

/// Weight block formats these kernels take (32 values a block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    /// `d: f16, qs: [u8; 16]`, value `d * (q - 8)` (18 bytes).
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]`, value `d * q + m` (20 bytes).
    Q4_1,
    /// `d: f16, qh: u32, qs: [u8; 16]`, value `d * (q - 16)` (22 bytes).
    Q5_0,
    /// `d: f16, m: f16, qh: u32, qs: [u8; 16]`, value `d * q + m` (24 bytes).
    Q5_1,
    /// `d: f16, qs: [i8; 32]`, value `d * q` (34 bytes).
    Q8_0,
}

impl QuantKind {
    pub fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q4_0 => 18,
            QuantKind::Q4_1 => 20,
            QuantKind::Q5_0 => 22,
            QuantKind::Q5_1 => 24,
            QuantKind::Q8_0 => 34,
        }
    }
    /// Whether blocks carry a minimum `m` (the `_1` formats), multiplied by `s` of the activations.
    pub fn has_min(self) -> bool {
        matches!(self, QuantKind::Q4_1 | QuantKind::Q5_1)
    }
}

#[inline(always)]
fn rd16(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline(always)]
fn nibbles(qs: &[u8], offset: i8, out: &mut [i8; QK]) {
    for j in 0..16 {
        out[j] = (qs[j] & 0x0F) as i8 - offset;
        out[j + 16] = (qs[j] >> 4) as i8 - offset;
    }
}

#[inline(always)]
fn nibbles5(qh: u32, qs: &[u8], offset: i8, out: &mut [i8; QK]) {
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        out[j] = ((qs[j] & 0x0F) | (h0 << 4)) as i8 - offset;
        out[j + 16] = ((qs[j] >> 4) | (h1 << 4)) as i8 - offset;
    }
}

/// Unpacks one weight block to signed integer levels and returns its `(d, m)`.
#[inline(always)]
fn levels(kind: QuantKind, blk: &[u8], out: &mut [i8; QK]) -> (f32, f32) {
    let d = rd16(blk, 0);
    match kind {
        QuantKind::Q4_0 => {
            nibbles(&blk[2..18], 8, out);
            (d, 0.0)
        }
        QuantKind::Q4_1 => {
            nibbles(&blk[4..20], 0, out);
            (d, rd16(blk, 2))
        }
        QuantKind::Q5_0 => {
            nibbles5(
                u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]),
                &blk[6..22],
                16,
                out,
            );
            (d, 0.0)
        }
        QuantKind::Q5_1 => {
            nibbles5(
                u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]),
                &blk[8..24],
                0,
                out,
            );
            (d, rd16(blk, 2))
        }
        QuantKind::Q8_0 => {
            for (o, &b) in out.iter_mut().zip(&blk[2..34]) {
                *o = b as i8;
            }
            (d, 0.0)
        }
    }
}

/// `hsum_float_8` of ggml: upper half onto lower, then `(r0 + r2) + (r1 + r3)`.
#[inline(always)]
pub fn hsum8(acc: &[f32; 8]) -> f32 {
    let r = [
        acc[4] + acc[0],
        acc[5] + acc[1],
        acc[6] + acc[2],
        acc[7] + acc[3],
    ];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// One weight row times one quantized activation row, in ggml's AVX2 order: eight lanes, lane
/// `j` taking the integer sum of elements `4j..4j+4` of each block times `d_w * d_x` with a
/// fused multiply-add, `hsum8` at the end, plus the minimum terms `m * s` summed in order.
#[inline(always)]
fn dot_row_body(kind: QuantKind, row: &[u8], x: &[BlockQ8_1]) -> f32 {
    let bb = kind.block_bytes();
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    let mut lv = [0i8; QK];
    for (blk, y) in row.chunks_exact(bb).zip(x) {
        let (d, m) = levels(kind, blk, &mut lv);
        let dd = d * y.d;
        for (j, a) in acc.iter_mut().enumerate() {
            let mut sumi = 0i32;
            for e in 4 * j..4 * j + 4 {
                sumi += lv[e] as i32 * y.qs[e] as i32;
            }
            *a = dd.mul_add(sumi as f32, *a);
        }
        if kind.has_min() {
            summs = m.mul_add(y.s, summs);
        }
    }
    hsum8(&acc) + summs
}

/// The same sums as `dot_row_body`, lane for lane, with AVX-512 VNNI on 256-bit vectors:
/// `vpdpbusd` forms exactly the eight 4-value integer lanes, so the float steps (and the
/// result) are identical to the scalar body's. `K` indexes `KIND_OF`, so the format is a
/// constant inside the block loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_row_vnni<const K: u8>(row: &[u8], x: &[BlockQ8_1]) -> f32 {
    use std::arch::x86_64::*;
    let kind = KIND_OF[K as usize];
    let bb = kind.block_bytes();
    let nb = x.len().min(row.len() / bb);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (i, y) in x.iter().enumerate().take(nb) {
        let blk = row.as_ptr().add(i * bb);
        let (codes, shift) = simd::codes(kind, blk);
        let lanes = simd::lanes(kind, codes, shift, &y.qs);
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(simd::h2f(blk) * y.d),
            _mm256_cvtepi32_ps(lanes),
            acc,
        );
        if kind.has_min() {
            summs = simd::h2f(blk.add(2)).mul_add(y.s, summs);
        }
    }
    let mut a = [0f32; 8];
    _mm256_storeu_ps(a.as_mut_ptr(), acc);
    hsum8(&a) + summs
}

/// Block unpacking shared by the VNNI kernels (inlined into their feature-enabled bodies).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::QuantKind;
    use std::arch::x86_64::*;

    /// An f16 at `p` as f32.
    #[inline(always)]
    pub unsafe fn h2f(p: *const u8) -> f32 {
        unsafe {
            let bits = (p as *const u16).read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }
    }

    /// 16 bytes of nibbles at `qs` -> 32 codes: low nibbles, then high nibbles.
    #[inline(always)]
    pub unsafe fn nib(qs: *const u8) -> __m256i {
        unsafe {
            let low = _mm_set1_epi8(0x0F);
            let q = _mm_loadu_si128(qs as *const __m128i);
            let lo = _mm_and_si128(q, low);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
            _mm256_set_m128i(hi, lo)
        }
    }

    /// The fifth bits of the Q5 formats as `0x10` bytes.
    #[inline(always)]
    pub unsafe fn hbits(qh: u32) -> __m256i {
        unsafe { _mm256_and_si256(_mm256_movm_epi8(qh), _mm256_set1_epi8(0x10)) }
    }

    /// A weight block's 32 codes: unsigned codes and the log2 of the offset that makes them
    /// signed levels (Q4_0: 8, Q5_0: 16), or Q8_0's signed bytes as they are.
    #[inline(always)]
    pub unsafe fn codes(kind: QuantKind, blk: *const u8) -> (__m256i, i32) {
        unsafe {
            match kind {
                QuantKind::Q8_0 => (_mm256_loadu_si256(blk.add(2) as *const __m256i), 0),
                QuantKind::Q4_0 => (nib(blk.add(2)), 3),
                QuantKind::Q4_1 => (nib(blk.add(4)), 0),
                QuantKind::Q5_0 => {
                    let qh = (blk.add(2) as *const u32).read_unaligned();
                    (_mm256_or_si256(nib(blk.add(6)), hbits(qh)), 4)
                }
                QuantKind::Q5_1 => {
                    let qh = (blk.add(4) as *const u32).read_unaligned();
                    (_mm256_or_si256(nib(blk.add(8)), hbits(qh)), 0)
                }
            }
        }
    }

    /// The eight exact integer lanes `sum(level * q)` over elements `4k..4k+4` of a block.
    #[inline(always)]
    pub unsafe fn lanes(kind: QuantKind, codes: __m256i, shift: i32, qs: &[i8; 32]) -> __m256i {
        unsafe {
            let yq = _mm256_loadu_si256(qs.as_ptr() as *const __m256i);
            let zero = _mm256_setzero_si256();
            if kind == QuantKind::Q8_0 {
                return _mm256_dpbusd_epi32(
                    zero,
                    _mm256_abs_epi8(codes),
                    _mm256_sign_epi8(yq, codes),
                );
            }
            let l = _mm256_dpbusd_epi32(zero, codes, yq);
            if shift == 0 {
                return l;
            }
            let ysum = _mm256_dpbusd_epi32(zero, _mm256_set1_epi8(1), yq);
            _mm256_sub_epi32(l, _mm256_sll_epi32(ysum, _mm_cvtsi32_si128(shift)))
        }
    }
}

const KIND_OF: [QuantKind; 5] = [
    QuantKind::Q4_0,
    QuantKind::Q4_1,
    QuantKind::Q5_0,
    QuantKind::Q5_1,
    QuantKind::Q8_0,
];

/// `dot_row_vnni` specialised per format.
///
/// # Safety
/// The CPU must have the features `dot_row_vnni` enables.
#[cfg(target_arch = "x86_64")]
unsafe fn dot_row_vnni_for(kind: QuantKind, row: &[u8], x: &[BlockQ8_1]) -> f32 {
    unsafe {
        match kind {
            QuantKind::Q4_0 => dot_row_vnni::<0>(row, x),
            QuantKind::Q4_1 => dot_row_vnni::<1>(row, x),
            QuantKind::Q5_0 => dot_row_vnni::<2>(row, x),
            QuantKind::Q5_1 => dot_row_vnni::<3>(row, x),
            QuantKind::Q8_0 => dot_row_vnni::<4>(row, x),
        }
    }
}

/// One weight row against many activation rows (`xs`, at most 64): each weight block is
/// unpacked once and used for every row, with one accumulator chain per row. Per output the
/// operations are exactly `dot_row_vnni`'s, so the bits are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_row_many_vnni(kind: QuantKind, row: &[u8], xs: &[Vec<BlockQ8_1>], out: &mut [f32]) {
    use std::arch::x86_64::*;
    const MAX: usize = 64;
    assert!(xs.len() <= MAX && out.len() >= xs.len());
    let bb = kind.block_bytes();
    let nb = xs.iter().fold(row.len() / bb, |n, x| n.min(x.len()));
    let mut acc = [_mm256_setzero_ps(); MAX];
    let mut summs = [0f32; MAX];
    for b in 0..nb {
        let blk = row.as_ptr().add(b * bb);
        let d = simd::h2f(blk);
        let m = if kind.has_min() {
            simd::h2f(blk.add(2))
        } else {
            0.0
        };
        let (codes, shift) = simd::codes(kind, blk);
        for (i, x) in xs.iter().enumerate() {
            let y = &x[b];
            let lanes = simd::lanes(kind, codes, shift, &y.qs);
            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(lanes), acc[i]);
            if kind.has_min() {
                summs[i] = m.mul_add(y.s, summs[i]);
            }
        }
    }
    for i in 0..xs.len() {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), acc[i]);
        out[i] = hsum8(&a) + summs[i];
    }
}

/// `dot_row` of one weight row against each of `xs`, into `out` (same bits as one at a time).
pub fn dot_row_many(kind: QuantKind, row: &[u8], xs: &[Vec<BlockQ8_1>], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().vnni {
        for (xc, oc) in xs.chunks(64).zip(out.chunks_mut(64)) {
            // SAFETY: the features were detected at run time.
            unsafe { dot_row_many_vnni(kind, row, xc, oc) };
        }
        return;
    }
    for (x, o) in xs.iter().zip(out.iter_mut()) {
        *o = dot_row(kind, row, x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_row_avx2(kind: QuantKind, row: &[u8], x: &[BlockQ8_1]) -> f32 {
    dot_row_body(kind, row, x)
}

/// `row . x` for one weight row (`x.len()` blocks), with the best SIMD level of this CPU.
/// Every level returns the same bits.
pub fn dot_row(kind: QuantKind, row: &[u8], x: &[BlockQ8_1]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::features().vnni {
            // SAFETY: the features were detected at run time.
            return unsafe { dot_row_vnni_for(kind, row, x) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { dot_row_avx2(kind, row, x) };
        }
    }
    dot_row_body(kind, row, x)
}

/// The portable body, for tests comparing it with the SIMD path.
pub fn dot_row_scalar(kind: QuantKind, row: &[u8], x: &[BlockQ8_1]) -> f32 {
    dot_row_body(kind, row, x)
}

/// `y (M, N) = x (M, K) . W^T` where `w` holds N rows of K values in `kind` blocks.
pub fn matmul(kind: QuantKind, w: &[u8], n: usize, k: usize, x: &[f32], y: &mut [f32]) {
    assert_eq!(k % QK, 0, "row length {k} is not a multiple of {QK}");
    let m = x.len() / k;
    assert_eq!(x.len(), m * k);
    assert_eq!(y.len(), m * n);
    let row_bytes = k / QK * kind.block_bytes();
    assert_eq!(w.len(), n * row_bytes);
    let pool = crate::pool::global();
    let tiled = m >= 2 && crate::cpu::features().vnni;
    // Each activation row quantized (and laid out for the tiles) in one parallel pass.
    let (xq, acts): (Vec<Vec<BlockQ8_1>>, Vec<Vec<crate::gemm::ActBlock>>) = pool
        .map(m, |i| {
            let mut q = Vec::with_capacity(k / QK);
            quantize_q8_1(&x[i * k..(i + 1) * k], &mut q);
            let mut a = Vec::new();
            if tiled {
                crate::gemm::prepare_acts(kind, &q, &mut a);
            }
            (q, a)
        })
        .into_iter()
        .unzip();
    // Tiled, whole 16-row tiles per task where the rows allow.
    let chunk = if tiled {
        pool.column_chunk(n).next_multiple_of(16).min(n)
    } else {
        pool.column_chunk(n)
    };
    let out = crate::pool::SharedOut::new(y);
    let row = |j: usize| &w[j * row_bytes..(j + 1) * row_bytes];
    pool.run(n.div_ceil(chunk), |c| {
        let (j0, j1) = (c * chunk, ((c + 1) * chunk).min(n));
        if tiled {
            // SAFETY: columns j0..j1 belong to this task only.
            unsafe { crate::gemm16::rows_times_acts(kind, w, &acts, n, j0, j1, out) };
            return;
        }
        if m >= 2 {
            let mut col = vec![0f32; m];
            for j in j0..j1 {
                dot_row_many(kind, row(j), &xq, &mut col);
                for (i, v) in col.iter().enumerate() {
                    // SAFETY: column j of every row belongs to this task only.
                    unsafe { out.slice(i * n + j, 1)[0] = *v };
                }
            }
            return;
        }
        for j in j0..j1 {
            for (i, xr) in xq.iter().enumerate() {
                // SAFETY: column j of every row belongs to this task only.
                unsafe { out.slice(i * n + j, 1)[0] = dot_row(kind, row(j), xr) };
            }
        }
    });
}
