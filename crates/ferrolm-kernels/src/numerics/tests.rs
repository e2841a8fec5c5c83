//! The numerics against their references: each vector path bit for bit against its
//! lane-at-a-time body, and the bodies against f64 formulas.

use super::*;

/// Uniform values in [-1, 1) from a xorshift generator.
fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// The register path of `pv_runs` against its portable body (accumulate run by run, then
/// finish): random probabilities with zeros, several runs, lane offsets, both lane counts.
#[test]
fn pv_runs_gives_the_bits_of_accumulate_and_finish() {
    let mut u = uniform(7);
    let mut rnd = move || u() * 0.5;
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
        let runs: Vec<(usize, &[f32])> = starts.iter().map(|&s| (s, &v[s * stride..])).collect();
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
    let mut rnd = uniform(0x2545_F491_4F6C_DD1D);
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
    let mut rnd = uniform(0x9E37_79B9_7F4A_7C15);
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
        let mut xs: Vec<f32> = vec![-200.0, -100.0, -87.5, -103.9, -0.0, 88.0, 88.8, 89.0, 200.0];
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
    let mut u = uniform(5);
    let mut rnd = move || u() * 4.0;
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

#[test]
fn dot_rows_gives_each_rows_own_bits() {
    let mut u = uniform(77);
    for d in [16, 32, 64, 80, 128] {
        for stride in [d, d * 3 + 16] {
            let n = 37;
            let q: Vec<f32> = (0..d).map(|_| u()).collect();
            let k: Vec<f32> = (0..n * stride).map(|_| u()).collect();
            for single in [false, true] {
                for len in [0, 5, 16, 33, n] {
                    let mut out = vec![0f32; len];
                    dot_rows(&q, &k, stride, single, &mut out);
                    for (j, o) in out.iter().enumerate() {
                        let kr = &k[j * stride..j * stride + d];
                        let want = if single {
                            dot_single_impl(kr, &q, false)
                        } else {
                            dot_batched_portable(kr, &q)
                        };
                        assert_eq!(o.to_bits(), want.to_bits(), "d={d} single={single} j={j}");
                    }
                }
            }
        }
    }
}

/// Keys and values stored as f16 give the bits of the same values as f32 (the widening is
/// exact, the arithmetic the same), on the vector and the portable paths.
#[test]
fn f16_rows_give_the_bits_of_their_f32_values() {
    let mut u = uniform(91);
    for d in [64, 80, 128] {
        let (n, stride) = (37, d * 3);
        let q: Vec<f32> = (0..d).map(|_| u()).collect();
        let k16: Vec<half::f16> = (0..n * stride).map(|_| half::f16::from_f32(u())).collect();
        let k32: Vec<f32> = k16.iter().map(|x| x.to_f32()).collect();
        for single in [false, true] {
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            dot_rows(&q, &k16, stride, single, &mut a);
            dot_rows(&q, &k32, stride, single, &mut b);
            assert_eq!(a, b, "dots d={d} single={single}");
        }
        let probs: Vec<f32> = (0..n).map(|_| u().abs()).collect();
        for lanes in [16, 64] {
            let runs16 = [(0, &k16[..]), (20, &k16[20 * stride..])];
            let runs32 = [(0, &k32[..]), (20, &k32[20 * stride..])];
            let (mut a, mut b) = (vec![0f32; d], vec![0f32; d]);
            let mut acc = Vec::new();
            pv_runs(&probs, &runs16, stride, d, lanes, 3, &mut acc, &mut a);
            pv_runs(&probs, &runs32, stride, d, lanes, 3, &mut acc, &mut b);
            assert_eq!(a, b, "p.v d={d} lanes={lanes}");
        }
    }
}

#[test]
fn vector_f16_conversion_matches_the_half_crate() {
    let mut u = uniform(5);
    let mut x: Vec<f32> = (0..203).map(|_| u() * 70000.0).collect();
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-8,
        -6.1e-5,
        65520.0,
    ]);
    let mut out = vec![half::f16::ONE];
    extend_f16(&x, &mut out);
    assert_eq!(out[0], half::f16::ONE);
    for (a, b) in out[1..].iter().zip(&x) {
        assert_eq!(a.to_bits(), half::f16::from_f32(*b).to_bits(), "{b}");
    }
}
