//! Times the Q4_1 product a server decode step makes per layer on SmolLM2's shapes (24
//! activation rows; gate/up 1536x576, down 576x1536, q 576x576, k/v 192x576), weights larger
//! than the caches as in a real model (30 layers' worth, cycled). `cargo run --release
//! --example gemm_bench [ROWS]`; prints the median of 5 rounds.
use ferrolm_kernels::{matmul, QuantKind};
use std::time::Instant;

fn main() {
    let m: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(24);
    let shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    // A second argument: distinct layers' weights (1 keeps them in cache; timing still per 30).
    let layers: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let bb = QuantKind::Q4_1.block_bytes();
    let mut s = 1u64;
    let mut byte = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 32) as u8
    };
    let mats: Vec<Vec<(usize, usize, Vec<u8>)>> = (0..layers)
        .map(|_| {
            shapes
                .iter()
                .map(|&(n, k)| {
                    let mut w = vec![0u8; n * k / 32 * bb];
                    for blk in w.chunks_exact_mut(bb) {
                        blk[0..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                        blk[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
                        blk[4..].iter_mut().for_each(|b| *b = byte());
                    }
                    (n, k, w)
                })
                .collect()
        })
        .collect();
    let x: Vec<f32> = (0..m * 1536)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
        .collect();
    let mut y = vec![0f32; m * 1536];
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..4 {
            for layer in mats.iter().cycle().take(30) {
                for (n, k, w) in layer {
                    matmul(QuantKind::Q4_1, w, *n, *k, &x[..m * k], &mut y[..m * n]);
                }
            }
        }
        times.push(t.elapsed().as_secs_f64() * 1e3 / 4.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{m} rows through 30 layers of SmolLM2-shaped Q4_1 products: median {:.2} ms per step",
        times[2]
    );
}
