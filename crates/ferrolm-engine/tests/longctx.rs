//! Long-context attention (`ferrolm_model::longctx`) on tiny HF fixtures: each policy reduces
//! to plain attention where it should, streaming stays bounded, and the call size does not
//! change what a streamed sequence computes.

use ferrolm_engine::{load, LoadedModel};
use ferrolm_model::longctx::{FarPositions, LongCtx, MemorySpec, Streaming};
use ferrolm_model::{KvCache, Logits};
use std::path::Path;

fn open(name: &str) -> LoadedModel {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/hf")
        .join(name);
    load(&p.to_string_lossy(), true).unwrap()
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + 13) % vocab.max(2)) as u32)
        .collect()
}

/// Logits `(T, V)` of `ids` fed in calls of `call` tokens.
fn logits(lm: &LoadedModel, kv: &mut KvCache, ids: &[u32], call: usize) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for c in ids.chunks(call) {
        let l = lm.model.forward(c, kv, Logits::All).unwrap();
        out.extend(l.to_vec2::<f32>().unwrap());
    }
    out
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

fn with(lm: &LoadedModel, n_ctx: usize, p: LongCtx) -> KvCache {
    let mut kv = lm.model.new_cache(n_ctx);
    kv.set_long(p).unwrap();
    kv
}

#[test]
fn policies_reduce_to_plain_attention_within_their_window() {
    for name in ["llama", "qwen2", "gemma"] {
        let lm = open(name);
        let ids = tokens(48, lm.model.config.vocab_size);
        let plain = logits(&lm, &mut lm.model.new_cache(64), &ids, 48);
        let cases = [
            LongCtx {
                stream: Some(Streaming {
                    sinks: 0,
                    window: 64,
                }),
                ..Default::default()
            },
            LongCtx {
                stream: Some(Streaming {
                    sinks: 4,
                    window: 64,
                }),
                ..Default::default()
            },
            LongCtx {
                far: Some(FarPositions::ReRope { window: 48 }),
                ..Default::default()
            },
            LongCtx {
                far: Some(FarPositions::LeakyReRope { window: 48, k: 4.0 }),
                ..Default::default()
            },
            LongCtx {
                far: Some(FarPositions::SelfExtend {
                    group: 4,
                    window: 48,
                }),
                ..Default::default()
            },
        ];
        for p in cases {
            for call in [48, 5, 1] {
                let got = logits(&lm, &mut with(&lm, 64, p.clone()), &ids, call);
                let d = max_diff(&plain, &got);
                assert!(
                    d < 2e-4,
                    "{name} {p:?} in calls of {call}: logits differ by {d}"
                );
            }
        }
    }
}

#[test]
fn streaming_is_bounded_and_independent_of_the_call_size() {
    let lm = open("llama");
    let ids = tokens(90, lm.model.config.vocab_size);
    let p = LongCtx {
        stream: Some(Streaming {
            sinks: 0,
            window: 8,
        }),
        ..Default::default()
    };
    // The context size does not bound a stream.
    let mut kv = with(&lm, 16, p.clone());
    let whole = logits(&lm, &mut kv, &ids, 90);
    assert!(
        kv.layers.iter().all(|l| l.len() <= 7),
        "kept {}",
        kv.layers[0].len()
    );
    for call in [1, 7, 32] {
        let got = logits(&lm, &mut with(&lm, 16, p.clone()), &ids, call);
        let d = max_diff(&whole, &got);
        assert!(d < 2e-4, "calls of {call}: {d}");
    }
    // With sinks, the first tokens stay.
    let ps = LongCtx {
        stream: Some(Streaming {
            sinks: 3,
            window: 8,
        }),
        ..Default::default()
    };
    let mut kv = with(&lm, 16, ps);
    logits(&lm, &mut kv, &ids, 1);
    assert_eq!(&kv.layers[0].pos[..3], &[0, 1, 2]);
    assert_eq!(kv.layers[0].len(), 3 + 7);
}

#[test]
fn memory_retrieves_within_its_size_and_changes_what_a_stream_sees() {
    let lm = open("llama");
    let ids = tokens(120, lm.model.config.vocab_size);
    // No sinks: the memory's slot then shifts no distance the window sees.
    let stream = Streaming {
        sinks: 0,
        window: 8,
    };
    let plain = logits(
        &lm,
        &mut with(
            &lm,
            16,
            LongCtx {
                stream: Some(stream),
                ..Default::default()
            },
        ),
        &ids,
        1,
    );
    let mem = LongCtx {
        stream: Some(stream),
        memory: Some(MemorySpec {
            topk: 2,
            chunk: 4,
            size: 32,
            layers: None,
        }),
        ..Default::default()
    };
    let mut kv = with(&lm, 16, mem.clone());
    let got = logits(&lm, &mut kv, &ids, 1);
    let m = kv.layers[0].long.as_ref().unwrap().memory.as_ref().unwrap();
    assert_eq!(m.chunks.len(), 8, "size 32 / chunk 4");
    assert!(m.evicted > 0);
    // Before anything leaves the window the memory is empty and changes nothing...
    assert!(max_diff(&plain[..9], &got[..9]) < 2e-4);
    // ...afterwards the retrieved chunks are attended to.
    assert!(max_diff(&plain[20..], &got[20..]) > 1e-3);
    // Deterministic.
    let again = logits(&lm, &mut with(&lm, 16, mem), &ids, 1);
    assert_eq!(max_diff(&got, &again), 0.0);
}
