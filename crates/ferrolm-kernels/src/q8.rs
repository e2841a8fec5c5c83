//! Activation quantization to Q8_1 blocks (32 values, `d`, `s = d * sum(q)`), as llama.cpp's
//! x86 `quantize_row_q8_1` does: `id = 127 / amax`, round half to even, `s` rounded once.

use half::f16;

pub const QK: usize = 32;

#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f32,
    /// `d * sum(qs)`, rounded through f16 as ggml stores it.
    pub s: f32,
    pub qs: [i8; QK],
}

/// Quantizes `x` (length a multiple of 32) into `out`.
pub fn quantize_q8_1(x: &[f32], out: &mut Vec<BlockQ8_1>) {
    #[cfg(target_arch = "x86_64")]
    {
        let f = crate::cpu::features();
        if f.avx512 && f.vnni {
            // SAFETY: the features were detected at run time; the same operations per block.
            return unsafe { quantize_avx512(x, out) };
        }
        #[target_feature(enable = "sse4.1,avx2,f16c")]
        unsafe fn fast(x: &[f32], out: &mut Vec<BlockQ8_1>) {
            quantize_body(x, out)
        }
        if std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were detected at run time; the arithmetic is the same
            // (round-half-even is one instruction there instead of a libm call).
            return unsafe { fast(x, out) };
        }
    }
    quantize_body(x, out)
}

/// `quantize_body` with a block in two 512-bit registers: the same maximum, the same
/// products rounded half to even (the conversion's default rounding), the same sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,f16c,avx2")]
unsafe fn quantize_avx512(x: &[f32], out: &mut Vec<BlockQ8_1>) {
    use std::arch::x86_64::*;
    debug_assert_eq!(x.len() % QK, 0);
    out.clear();
    out.reserve(x.len() / QK);
    let f16_round = |v: f32| -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(
            _mm_set_ss(v),
        )))
    };
    for chunk in x.chunks_exact(QK) {
        unsafe {
            let lo = _mm512_loadu_ps(chunk.as_ptr());
            let hi = _mm512_loadu_ps(chunk.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let idv = _mm512_set1_ps(id);
            let qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, idv));
            let qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, idv));
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
            let mut b = BlockQ8_1 {
                d: f16_round(d),
                s: f16_round(d * sum as f32),
                qs: [0; QK],
            };
            _mm_storeu_si128(b.qs.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(qlo));
            _mm_storeu_si128(
                b.qs.as_mut_ptr().add(16) as *mut __m128i,
                _mm512_cvtepi32_epi8(qhi),
            );
            out.push(b);
        }
    }
}

/// The portable quantizer, for tests comparing it with the vector path.
pub fn quantize_q8_1_portable(x: &[f32], out: &mut Vec<BlockQ8_1>) {
    quantize_body(x, out)
}

#[inline(always)]
fn quantize_body(x: &[f32], out: &mut Vec<BlockQ8_1>) {
    debug_assert_eq!(x.len() % QK, 0);
    out.clear();
    for chunk in x.chunks_exact(QK) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut b = BlockQ8_1 {
            d: f16::from_f32(d).to_f32(),
            ..Default::default()
        };
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(chunk) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        b.s = f16::from_f32(d * sum as f32).to_f32();
        out.push(b);
    }
}

#[cfg(test)]
mod vector_tests {
    use super::*;

    /// The AVX-512 quantizer gives the portable one's bytes: random blocks at many scales,
    /// all-zero blocks, ties at .5, values at the extremes.
    #[test]
    fn vector_quantizer_equals_portable() {
        let mut s = 11u64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut x: Vec<f32> = (0..QK * 400)
            .map(|i| rnd() * 10f32.powi((i / QK % 9) as i32 - 4))
            .collect();
        x[QK * 3..QK * 4].iter_mut().for_each(|v| *v = 0.0);
        for (i, v) in x[QK * 5..QK * 6].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 0.5 * (127.0 / 8.0) / 127.0 * 8.0; // halves after scaling
        }
        x[QK * 7] = f32::MAX / 4.0;
        x[QK * 8] = -1e-30;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        quantize_q8_1(&x, &mut a);
        quantize_q8_1_portable(&x, &mut b);
        assert_eq!(a.len(), b.len());
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert_eq!(
                (p.d.to_bits(), p.s.to_bits(), p.qs),
                (q.d.to_bits(), q.s.to_bits(), q.qs),
                "block {i}"
            );
        }
    }
}
