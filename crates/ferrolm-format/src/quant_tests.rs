//! Unit tests of quant.rs: round-trip error bounds per type, errors for bad lengths, no panics
//! on NaN and infinities, and the scalar helpers (f16/bf16 rounding, `nearest_int`). The
//! byte-for-byte comparison with ggml is tests/quant_golden.rs.

use super::*;
use crate::dequant::dequantize_to_vec;

/// The types quantize writes.
const TYPES: [GgmlType; 13] = {
    use GgmlType::*;
    [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
    ]
};

/// Deterministic pseudo-normal values (xorshift, sum of uniforms) with scale `sigma`.
fn values(n: usize, seed: u64, sigma: f32) -> Vec<f32> {
    let mut s = seed | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n)
        .map(|_| (0..4).map(|_| uniform()).sum::<f32>() * 1.7 * sigma)
        .collect()
}

#[test]
fn can_quantize_lists_exactly_the_written_types() {
    for ty in GgmlType::all() {
        assert_eq!(can_quantize(ty), TYPES.contains(&ty), "{ty}");
    }
}

/// Worst |x - dequant(quant(x))| relative to the block's largest magnitude, per type: the
/// bound is about half a quantization step plus the scale's own rounding.
#[test]
fn round_trip_error_is_within_a_step() {
    let bounds = [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 4e-3),
        (GgmlType::Q8_0, 0.005),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q5_0, 0.07),
        (GgmlType::Q5_1, 0.04),
        (GgmlType::Q5_K, 0.06),
        (GgmlType::Q4_0, 0.13),
        (GgmlType::Q4_1, 0.08),
        (GgmlType::Q4_K, 0.12),
        (GgmlType::Q3_K, 0.3),
        (GgmlType::Q2_K, 0.45),
    ];
    for (seed, sigma) in [(1, 0.02f32), (2, 1.0), (3, 300.0)] {
        let x = values(4 * QK_K, seed, sigma);
        for (ty, bound) in bounds {
            let q = quantize(ty, &x).unwrap();
            let y = dequantize_to_vec(ty, &q, x.len()).unwrap();
            let block = ty.block_size().max(32);
            for (xb, yb) in x.chunks(block).zip(y.chunks(block)) {
                let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                for (a, b) in xb.iter().zip(yb) {
                    let err = (a - b).abs() / amax;
                    assert!(err <= bound, "{ty} sigma {sigma}: {a} -> {b} ({err:.4})");
                }
            }
        }
    }
}

/// Mean squared error falls as the bits rise, and is far below the signal's variance.
#[test]
fn more_bits_give_less_error() {
    let x = values(16 * QK_K, 7, 1.0);
    let var = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let mse = |ty: GgmlType| {
        let y = dequantize_to_vec(ty, &quantize(ty, &x).unwrap(), x.len()).unwrap();
        x.iter()
            .zip(&y)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / x.len() as f32
    };
    use GgmlType::*;
    let order = [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0];
    for pair in order.windows(2) {
        assert!(mse(pair[0]) > mse(pair[1]), "{:?}", pair);
    }
    assert!(mse(Q4_0) > mse(Q5_0) && mse(Q5_0) > mse(Q8_0));
    assert!(mse(Q4_1) > mse(Q5_1));
    assert!(mse(Q2_K) < 0.15 * var, "{}", mse(Q2_K) / var);
}

#[test]
fn zeros_round_trip_exactly_and_constants_closely() {
    for ty in TYPES {
        let n = ty.block_size().max(32) * 2;
        for c in [0.0f32, 0.5, -2.0] {
            let x = vec![c; n];
            let y = dequantize_to_vec(ty, &quantize(ty, &x).unwrap(), n).unwrap();
            // The K-quants and Q8_0 store a constant through a rounded scale or min.
            let tol = if c == 0.0 { 0.0 } else { 0.02 * c.abs() };
            for v in y {
                assert!((v - c).abs() <= tol, "{ty} {c} -> {v}");
            }
        }
    }
}

#[test]
fn wrong_lengths_and_types_are_errors() {
    for ty in TYPES {
        let bs = ty.block_size();
        assert_eq!(quantize(ty, &[]).unwrap(), Vec::<u8>::new());
        if bs > 1 {
            let e = quantize(ty, &vec![1.0; bs + 1]).unwrap_err();
            assert!(e.to_string().contains("block size"), "{e}");
        }
        let mut out = vec![0u8; ty.type_size() + 1];
        assert!(quantize_into(ty, &vec![1.0; bs], &mut out).is_err());
        assert!(quantize_into(ty, &vec![1.0; bs], &mut out[..ty.type_size()]).is_ok());
    }
    let e = quantize(GgmlType::IQ2_XXS, &[0.0; 256]).unwrap_err();
    assert!(
        e.to_string().starts_with("cannot quantize to IQ2_XXS"),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'));
    assert!(quantize(GgmlType::Q8_K, &[0.0; 256]).is_err());
}

#[test]
fn nan_and_infinity_do_not_panic() {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
    ];
    for ty in TYPES {
        for (k, &s) in specials.iter().enumerate() {
            for at in [0, 5, 31, 200] {
                let mut x = values(QK_K, 11 + k as u64, 1.0);
                x[at] = s;
                let q = quantize(ty, &x).unwrap();
                assert_eq!(q.len(), ty.row_bytes(x.len()).unwrap());
                dequantize_to_vec(ty, &q, x.len()).unwrap();
            }
            let q = quantize(ty, &[s; QK_K]).unwrap();
            dequantize_to_vec(ty, &q, QK_K).unwrap();
        }
    }
}

#[test]
fn half_conversions_match_ggml_rounding() {
    // Ties to even, overflow to infinity, subnormals, NaN to the canonical quiet NaN.
    assert_eq!(fp32_to_fp16(1.0), 0x3C00);
    assert_eq!(fp32_to_fp16(1.0 + 2f32.powi(-11)), 0x3C00);
    assert_eq!(fp32_to_fp16(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02);
    assert_eq!(fp32_to_fp16(65520.0), 0x7C00);
    assert_eq!(fp32_to_fp16(-1e9), 0xFC00);
    assert_eq!(fp32_to_fp16(2f32.powi(-24)), 0x0001);
    assert_eq!(fp32_to_fp16(2f32.powi(-26)), 0x0000);
    assert_eq!(fp32_to_fp16(-0.0), 0x8000);
    assert_eq!(fp32_to_fp16(f32::NAN), 0x7E00);
    assert_eq!(fp32_to_fp16(-f32::NAN), 0xFE00);
    for bits in (0..u32::MAX).step_by(4099) {
        let f = f32::from_bits(bits);
        if !f.is_nan() {
            assert_eq!(fp32_to_fp16(f), half::f16::from_f32(f).to_bits(), "{f:e}");
            assert_eq!(fp32_to_bf16(f), half::bf16::from_f32(f).to_bits(), "{f:e}");
        }
    }
    assert_eq!(fp32_to_bf16(f32::from_bits(0x7F80_0001)), 0x7FC0);
}

#[test]
fn nearest_int_rounds_half_to_even() {
    assert_eq!(nearest_int(2.5), 2);
    assert_eq!(nearest_int(3.5), 4);
    assert_eq!(nearest_int(-2.5), -2);
    assert_eq!(nearest_int(-0.4), 0);
    assert_eq!(nearest_int(4_194_303.0), 4_194_303);
    assert_eq!(trunc_i32(f32::NAN), i32::MIN);
    assert_eq!(trunc_i32(3e9), i32::MIN);
    assert_eq!(trunc_i32(-7.9), -7);
}
