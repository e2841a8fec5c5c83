//! Fast kernels against the slow references, over random blocks and ragged shapes.

use ferrolm_format::{dequantize, GgmlType};
use ferrolm_kernels::q8::{quantize_q8_1, QK};
use ferrolm_kernels::qdot::{dot_row, dot_row_many, dot_row_scalar, matmul, QuantKind};
use ferrolm_kernels::reference::{dequant_row, dot_row_ref};
use half::f16;
use proptest::prelude::*;

fn random_row(kind: QuantKind, blocks: usize, seed: u64) -> Vec<u8> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut row = Vec::new();
    for _ in 0..blocks {
        let d = f16::from_f32((next() % 1000) as f32 / 50_000.0 + 1e-4);
        row.extend_from_slice(&d.to_le_bytes());
        let mut start = 2;
        if kind.has_min() {
            let m = f16::from_f32(-((next() % 1000) as f32) / 20_000.0);
            row.extend_from_slice(&m.to_le_bytes());
            start = 4;
        }
        for _ in start..kind.block_bytes() {
            row.push(next() as u8);
        }
    }
    row
}

const KINDS: [QuantKind; 5] = [
    QuantKind::Q4_0,
    QuantKind::Q4_1,
    QuantKind::Q5_0,
    QuantKind::Q5_1,
    QuantKind::Q8_0,
];

fn ggml(kind: QuantKind) -> GgmlType {
    match kind {
        QuantKind::Q4_0 => GgmlType::Q4_0,
        QuantKind::Q4_1 => GgmlType::Q4_1,
        QuantKind::Q5_0 => GgmlType::Q5_0,
        QuantKind::Q5_1 => GgmlType::Q5_1,
        QuantKind::Q8_0 => GgmlType::Q8_0,
    }
}

proptest! {
    #[test]
    fn dot_matches_reference(blocks in 1usize..24, seed in any::<u64>(), k in 0usize..5, xs in prop::collection::vec(-4.0f32..4.0, 32*24)) {
        let kind = KINDS[k];
        let row = random_row(kind, blocks, seed);
        let mut xq = Vec::new();
        quantize_q8_1(&xs[..blocks * QK], &mut xq);
        let fast = dot_row(kind, &row, &xq) as f64;
        let slow = dot_row_ref(kind, &row, &xq);
        // `s` is rounded through f16 as ggml stores it, so allow that rounding.
        let tol = 1e-3 * (1.0 + slow.abs()) + xq.iter().map(|b| (b.s as f64).abs() * 1e-3).sum::<f64>() * 0.05;
        prop_assert!((fast - slow).abs() <= tol, "fast {fast} slow {slow}");
    }

    /// The SIMD path must return the scalar body's bits (both follow llama.cpp's lane order).
    #[test]
    fn simd_dot_is_bit_identical_to_scalar(blocks in 1usize..24, seed in any::<u64>(), k in 0usize..5, xs in prop::collection::vec(-4.0f32..4.0, 32*24)) {
        let kind = KINDS[k];
        let row = random_row(kind, blocks, seed);
        let mut xq = Vec::new();
        quantize_q8_1(&xs[..blocks * QK], &mut xq);
        prop_assert_eq!(dot_row(kind, &row, &xq).to_bits(), dot_row_scalar(kind, &row, &xq).to_bits());
        // Many activation rows against one weight row (the prefill path), 70 rows: two tiles.
        let xs: Vec<Vec<_>> = (0..70).map(|r| {
            let mut q = Vec::new();
            let shifted: Vec<f32> = xs[..blocks * QK].iter().enumerate().map(|(i, v)| v * (1.0 + ((i + r) % 7) as f32 * 0.1)).collect();
            quantize_q8_1(&shifted, &mut q);
            q
        }).collect();
        let mut many = vec![0f32; 70];
        dot_row_many(kind, &row, &xs, &mut many);
        for (x, got) in xs.iter().zip(&many) {
            prop_assert_eq!(got.to_bits(), dot_row_scalar(kind, &row, x).to_bits());
        }
    }

    #[test]
    fn unpacking_matches_ggml_dequantization(seed in any::<u64>(), k in 0usize..5) {
        let kind = KINDS[k];
        let row = random_row(kind, 3, seed);
        let mut want = vec![0f32; 96];
        dequantize(ggml(kind), &row, &mut want).unwrap();
        prop_assert_eq!(dequant_row(kind, &row), want);
    }
}

#[test]
fn matmul_matches_rowwise_dots_on_ragged_shapes() {
    for &(m, n, k) in &[(1, 1, 32), (3, 65, 64), (5, 130, 96), (1, 64, 576)] {
        for kind in KINDS {
            let w: Vec<u8> = (0..n)
                .flat_map(|j| random_row(kind, k / QK, j as u64 + 7))
                .collect();
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let mut y = vec![0f32; m * n];
            matmul(kind, &w, n, k, &x, &mut y);
            let rb = k / QK * kind.block_bytes();
            for i in 0..m {
                let mut xq = Vec::new();
                quantize_q8_1(&x[i * k..(i + 1) * k], &mut xq);
                for j in 0..n {
                    let want = dot_row_ref(kind, &w[j * rb..(j + 1) * rb], &xq);
                    let got = y[i * n + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-2 * (1.0 + want.abs()),
                        "({m},{n},{k}) [{i},{j}] {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn q8_1_sum_is_rounded_once_like_ggml() {
    let x: Vec<f32> = (0..32).map(|i| 1.0 + i as f32 * 0.37).collect();
    let mut q = Vec::new();
    quantize_q8_1(&x, &mut q);
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let sum: i32 = q[0].qs.iter().map(|&v| v as i32).sum();
    assert_eq!(q[0].s, f16::from_f32(d * sum as f32).to_f32());
    assert_eq!(q[0].qs[31], 127);
}
