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
