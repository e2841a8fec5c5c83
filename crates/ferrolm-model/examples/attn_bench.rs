//! Times a server decode step's attention: 24 sequences, one query each, SmolLM2's shape
//! (9 heads over 3 KV heads of 64), f16 KV, 80 cached keys; `cargo run --release --example
//! attn_bench`. Prints the median of 5 rounds of 1,200 calls (40 steps x 30 layers).
use ferrolm_model::attention::{attend_many, Mask, ScoreBias};
use ferrolm_model::kv::{KvPrecision, KvRows, LayerKv};
use ferrolm_model::spec::{AttentionSpec, ScaleAt};
use std::time::Instant;

fn main() {
    let (h, hkv, d, s, seqs) = (9, 3, 64, 80, 24);
    let mut x = 1u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        half::f16::from_f32((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_f32()
    };
    let a = AttentionSpec {
        n_heads: h,
        n_kv_heads: hkv,
        head_dim: d,
        scale: 0.125,
        scale_at: ScaleAt::Scores,
        softcap: None,
        qk_norm: false,
    };
    let kvs: Vec<LayerKv> = (0..seqs)
        .map(|i| LayerKv {
            k: KvRows::from_values(
                &(0..(s + i) * hkv * d).map(|_| rnd()).collect::<Vec<_>>(),
                KvPrecision::F16,
            ),
            v: KvRows::from_values(
                &(0..(s + i) * hkv * d).map(|_| rnd()).collect::<Vec<_>>(),
                KvPrecision::F16,
            ),
            pos: (0..s + i).collect(),
            precision: KvPrecision::F16,
            ..Default::default()
        })
        .collect();
    let qs: Vec<Vec<f32>> = (0..seqs)
        .map(|_| (0..h * d).map(|_| rnd()).collect())
        .collect();
    let poss: Vec<Vec<usize>> = (0..seqs).map(|i| vec![s + i - 1]).collect();
    let parts: Vec<(&[f32], &LayerKv, &[usize])> = (0..seqs)
        .map(|i| (&qs[i][..], &kvs[i], &poss[i][..]))
        .collect();
    let mask = Mask {
        causal: true,
        window: None,
        bias: ScoreBias::None,
        as_decode: true,
    };
    let mut times = Vec::new();
    let mut check = 0f32;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..1200 {
            check += attend_many(&a, &parts, &mask, None)[7];
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "1200 decode attention calls: median {:.1} ms ({check})",
        times[2]
    );
}
