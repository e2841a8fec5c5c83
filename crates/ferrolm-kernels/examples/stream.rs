//! Weight-streaming rate of the single-token product: `cargo run --release --example stream
//! [MB] [K]` multiplies one activation row by a Q4_1 matrix of about MB megabytes (default
//! 256, larger than the L3 cache) and prints GB/s, next to a plain 64-byte-stride read of the
//! same bytes (the memory bandwidth the product can hope for).
use ferrolm_kernels::{matmul, QuantKind};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let mb = args.first().copied().unwrap_or(256);
    let k = args.get(1).copied().unwrap_or(576);
    let kind = if std::env::var("KIND").is_ok_and(|k| k == "q8_0") {
        QuantKind::Q8_0
    } else {
        QuantKind::Q4_1
    };
    let row_bytes = k / 32 * kind.block_bytes();
    let n = mb * 1_000_000 / row_bytes / 64 * 64;
    let w: Vec<u8> = (0..n * row_bytes)
        .map(|i| (i * 7 + 3) as u8 & 0x77)
        .collect();
    let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0f32; n];
    let bytes = (n * row_bytes) as f64;
    let mut best = 0f64;
    for _ in 0..8 {
        let t = Instant::now();
        matmul(kind, &w, n, k, &x, &mut y);
        best = best.max(bytes / t.elapsed().as_secs_f64() / 1e9);
    }
    println!(
        "matmul  {n} x {k} {kind:?} ({:.0} MB): {best:.1} GB/s",
        bytes / 1e6
    );
    let pool = ferrolm_kernels::pool::global();
    let mut best = 0f64;
    let chunks = pool.threads() * 4;
    let per = w.len().div_ceil(chunks);
    for _ in 0..8 {
        let t = Instant::now();
        let sums = pool.map(chunks, |c| {
            let part = &w[(c * per).min(w.len())..((c + 1) * per).min(w.len())];
            part.chunks(64).map(|l| l[0] as u64).sum::<u64>()
        });
        std::hint::black_box(sums);
        best = best.max(bytes / t.elapsed().as_secs_f64() / 1e9);
    }
    println!("read    same bytes, one byte per 64: {best:.1} GB/s");
    decode_shapes();
}

/// SmolLM2-shaped decode without attention: 30 layers of q, k, v, o, gate, up, down products
/// plus a 49152-row Q8_0 head, one activation row, weights far larger than the L3 cache.
#[allow(dead_code)]
pub fn decode_shapes() {
    let (c, f, kvd, layers, vocab) = (576usize, 1536usize, 192usize, 30usize, 49152usize);
    let q41 = QuantKind::Q4_1;
    let mk = |n: usize, k: usize, kind: QuantKind| -> Vec<u8> {
        (0..n * k / 32 * kind.block_bytes())
            .map(|i| (i * 7 + 3) as u8 & 0x77)
            .collect()
    };
    let shapes = [(c, c), (kvd, c), (kvd, c), (c, c), (f, c), (f, c), (c, f)];
    let ws: Vec<Vec<Vec<u8>>> = (0..layers)
        .map(|_| shapes.iter().map(|&(n, k)| mk(n, k, q41)).collect())
        .collect();
    let head = mk(vocab, c, QuantKind::Q8_0);
    let x: Vec<f32> = (0..f).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0f32; vocab];
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        for l in &ws {
            for (w, &(n, k)) in l.iter().zip(&shapes) {
                matmul(q41, w, n, k, &x[..k], &mut y[..n]);
            }
        }
        matmul(QuantKind::Q8_0, &head, vocab, c, &x[..c], &mut y);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let bytes: usize = ws.iter().flatten().map(|w| w.len()).sum::<usize>() + head.len();
    println!(
        "decode-shaped products: {:.0} tok/s, {:.1} GB/s ({:.0} MB a token)",
        1.0 / times[10],
        bytes as f64 / times[10] / 1e9,
        bytes as f64 / 1e6
    );
}
