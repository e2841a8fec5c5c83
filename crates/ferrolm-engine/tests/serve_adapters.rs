//! Per-request LoRA adapters in the serving engine: requests with an adapter and requests
//! without share batched steps, and each gets the tokens it gets alone (the base model alone,
//! or the model with the adapter applied to every row); the prefix cache keeps the adapters'
//! keys and values apart.

use ferrolm_engine::lora::{apply, AdapterArg};
use ferrolm_engine::serve::{Engine, Event, Job, ServeConfig};
use ferrolm_engine::{load, LoadedModel};
use ferrolm_sample::SamplingParams;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny llama fixture, with the PEFT adapter `fixtures/lora/llama-all` routed as adapter 0
/// (`Some(route)`) or applied to everything (`None`), or no adapter.
fn model(adapter: Option<Option<usize>>) -> Arc<LoadedModel> {
    let mut lm = load(root().join("fixtures/hf/llama").to_str().unwrap(), true).unwrap();
    if let Some(route) = adapter {
        let a = AdapterArg {
            dir: root().join("fixtures/lora/llama-all"),
            scale: 1.0,
            route,
        };
        apply(&mut lm.model, false, &a).unwrap();
    }
    Arc::new(lm)
}

fn job(prompt: &[u32], adapter: Option<usize>) -> Job {
    Job {
        prompt: prompt.to_vec(),
        max_tokens: 12,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop: Vec::new(),
        ignore_eos: true,
        logprobs: None,
        timeout: None,
        constraint: None,
        decoding: Default::default(),
        speculative: None,
        adapter,
        soft_prompt: None,
    }
}

fn start(e: &Engine, j: Job) -> mpsc::Receiver<Vec<u32>> {
    let (tx, rx) = mpsc::channel();
    let mut ids = Vec::new();
    e.submit(
        j,
        Box::new(move |ev| {
            match ev {
                Event::Token { id, .. } => ids.push(id),
                Event::Done { .. } => {
                    let _ = tx.send(std::mem::take(&mut ids));
                }
                Event::Error { message } => panic!("{message}"),
            }
            true
        }),
    )
    .unwrap();
    rx
}

fn config() -> ServeConfig {
    ServeConfig {
        n_ctx: 64,
        ..Default::default()
    }
}

#[test]
fn requests_with_and_without_an_adapter_share_a_batch_and_equal_alone() {
    // Two prompts of 40 tokens sharing their first 32 (two full prefix-cache blocks).
    let shared: Vec<u32> = (0..32).map(|k| (7 + 5 * k) % 128).collect();
    let prompts: Vec<Vec<u32>> = (0..2u32)
        .map(|i| {
            let mut p = shared.clone();
            p.extend((0..8).map(|k| (11 * i + 3 * k + 1) % 128));
            p
        })
        .collect();
    let alone = |lm: Arc<LoadedModel>, p: &[u32]| {
        let e = Engine::start(lm, config()).unwrap();
        start(&e, job(p, None)).recv().unwrap()
    };
    let base: Vec<Vec<u32>> = prompts.iter().map(|p| alone(model(None), p)).collect();
    let adapted: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| alone(model(Some(None)), p))
        .collect();
    assert_ne!(base, adapted, "the adapter changes the greedy tokens");
    // One engine, the adapter routed: base and adapter requests interleaved, submitted at once.
    let e = Engine::start(model(Some(Some(0))), config()).unwrap();
    let mut rxs = Vec::new();
    for round in 0..2 {
        for (i, p) in prompts.iter().enumerate() {
            let a = (i + round) % 2 == 1;
            rxs.push((i, a, start(&e, job(p, a.then_some(0)))));
        }
    }
    for (i, a, rx) in rxs {
        let got = rx.recv().unwrap();
        let want = if a { &adapted[i] } else { &base[i] };
        assert_eq!(&got, want, "prompt {i}, adapter {a}");
    }
    // Again, one at a time: the shared prefix now comes from the cache, each adapter's own.
    for (i, p) in prompts.iter().enumerate() {
        for a in [false, true] {
            let got = start(&e, job(p, a.then_some(0))).recv().unwrap();
            let want = if a { &adapted[i] } else { &base[i] };
            assert_eq!(&got, want, "again: prompt {i}, adapter {a}");
        }
    }
    let m = e.metrics();
    assert!(m.prefix_cache_hits >= 4, "{} hits", m.prefix_cache_hits);
    println!(
        "{} requests in {} steps; prefix cache: {} of {} lookups hit",
        m.requests_finished, m.steps, m.prefix_cache_hits, m.prefix_cache_queries
    );
    // Fewer steps than the requests one after another would take: they shared the batch.
    assert!(m.steps < 8 * 12, "{} steps", m.steps);
}

/// A job with a prompt adapter's virtual tokens (run outside the batch, beside batched jobs)
/// gives the tokens of a cache prefilled with them and then the prompt.
#[test]
fn a_prompt_adapter_job_equals_its_prefilled_generation() {
    let lm = model(None);
    let c = lm.model.config.hidden;
    let virt: Vec<f32> = (0..3 * c)
        .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.2)
        .collect();
    let prompt: Vec<u32> = (0..20).map(|k| (5 + 7 * k) % 128).collect();
    let mut kv = lm.model.new_cache(64);
    lm.model.prefill_soft(&virt, &mut kv).unwrap();
    let req = ferrolm_engine::GenerateRequest {
        prompt: prompt.clone(),
        max_tokens: 12,
        sampling: job(&prompt, None).sampling,
        ignore_eos: true,
        ..Default::default()
    };
    let want = ferrolm_engine::generate(
        &lm,
        &mut kv,
        &req,
        &std::sync::atomic::AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap()
    .ids;
    let want = want[want.len() - 12..].to_vec();
    let e = Engine::start(lm.clone(), config()).unwrap();
    let plain = start(&e, job(&prompt, None));
    let soft = start(
        &e,
        Job {
            soft_prompt: Some(Arc::new(virt)),
            ..job(&prompt, None)
        },
    );
    let (plain, soft) = (plain.recv().unwrap(), soft.recv().unwrap());
    assert_eq!(soft, want);
    assert_ne!(soft, plain, "the virtual tokens change the answer");
    // They take positions: a prompt that fits alone but not after them is refused.
    let long: Vec<u32> = (0..50).map(|k| k % 128).collect();
    assert!(e.submit(job(&long, None), Box::new(|_| true)).is_ok());
    let r = e.submit(
        Job {
            soft_prompt: Some(Arc::new(vec![0.0; 3 * c])),
            ..job(&long, None)
        },
        Box::new(|_| true),
    );
    assert!(r.is_err());
}
