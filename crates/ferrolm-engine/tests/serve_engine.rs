//! The serving engine on SmolLM2: concurrent requests give each the answer it gets alone and
//! finish faster than one after another; a shared prompt prefix is served from the prefix
//! cache with the same answers; cancellation frees the blocks; bad jobs are refused.

use ferrolm_engine::serve::{Engine, Event, Finish, Job, ServeConfig, SubmitError};
use ferrolm_engine::{load, LoadedModel};
use ferrolm_sample::SamplingParams;
use ferrolm_tokenize::ChatMessage;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

fn model() -> Option<Arc<LoadedModel>> {
    let p = ferrolm_format::test_models::file("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    Some(Arc::new(load(p.to_str().unwrap(), true).unwrap()))
}

fn chat(lm: &LoadedModel, system: Option<&str>, user: &str) -> Vec<u32> {
    let mut m = Vec::new();
    if let Some(s) = system {
        m.push(ChatMessage {
            role: "system".into(),
            content: s.into(),
        });
    }
    m.push(ChatMessage {
        role: "user".into(),
        content: user.into(),
    });
    let text = lm.template.render(&m, true).unwrap();
    lm.tok().unwrap().encode(&text, false, true).unwrap()
}

fn job(prompt: Vec<u32>, n: usize) -> Job {
    Job {
        prompt,
        max_tokens: n,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop: Vec::new(),
        ignore_eos: false,
        logprobs: None,
        timeout: None,
        constraint: None,
        decoding: Default::default(),
        speculative: None,
        adapter: None,
        soft_prompt: None,
    }
}

/// Submits and returns a receiver of (text, finish, cached tokens, time to first token).
fn start(e: &Engine, j: Job) -> mpsc::Receiver<(String, Finish, usize, Duration)> {
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    let mut text = String::new();
    let mut first: Option<Duration> = None;
    e.submit(
        j,
        Box::new(move |ev| {
            match ev {
                Event::Token { text: t, .. } => {
                    first.get_or_insert(t0.elapsed());
                    text.push_str(&t);
                }
                Event::Done {
                    finish,
                    cached_tokens,
                    ..
                } => {
                    let _ = tx.send((
                        std::mem::take(&mut text),
                        finish,
                        cached_tokens,
                        first.unwrap_or_default(),
                    ));
                }
                Event::Error { message } => panic!("{message}"),
            }
            true
        }),
    )
    .unwrap();
    rx
}

const QUESTIONS: [&str; 8] = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about rain.",
    "What is 12 times 12?",
    "Who wrote Hamlet?",
    "Give me a word that rhymes with cat.",
    "What is the boiling point of water?",
    "Say hello in Spanish.",
];

#[test]
fn concurrent_requests_equal_alone_and_run_faster() {
    let Some(lm) = model() else { return };
    let e = Engine::start(
        lm.clone(),
        ServeConfig {
            n_ctx: 2048,
            ..Default::default()
        },
    )
    .unwrap();
    let prompts: Vec<Vec<u32>> = (0..24)
        .map(|i| chat(&lm, None, &format!("{} ({})", QUESTIONS[i % 8], i / 8)))
        .collect();
    let t = Instant::now();
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| start(&e, job(p.clone(), 32)).recv().unwrap().0)
        .collect();
    let sequential = t.elapsed();
    let t = Instant::now();
    ferrolm_model::profile::enable(std::env::var_os("FERROLM_PROFILE").is_some());
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| start(&e, job(p.clone(), 32)))
        .collect();
    let together: Vec<String> = rxs.iter().map(|r| r.recv().unwrap().0).collect();
    let concurrent = t.elapsed();
    for (name, secs, calls) in ferrolm_model::profile::take() {
        println!("  {name:<28} {:>8.1} ms {calls:>7} calls", secs * 1e3);
    }
    ferrolm_model::profile::enable(false);
    let speedup = sequential.as_secs_f64() / concurrent.as_secs_f64();
    println!("24 requests x 32 tokens: one after another {sequential:.2?}, concurrently {concurrent:.2?}: {speedup:.2}x");
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "request {i}");
    }
    // Batching must pay off clearly even on a busy 2-core machine (the figure is reported).
    assert!(speedup > 1.3, "{speedup}");
    let m = e.metrics();
    assert_eq!(m.requests_finished, 48);
    assert_eq!(m.running, 0);
}

#[test]
fn a_shared_system_prompt_comes_from_the_prefix_cache() {
    let Some(lm) = model() else { return };
    let e = Engine::start(
        lm.clone(),
        ServeConfig {
            n_ctx: 2048,
            ..Default::default()
        },
    )
    .unwrap();
    let system = "You are a careful assistant for a library. ".repeat(60);
    let prompts: Vec<Vec<u32>> = QUESTIONS
        .iter()
        .map(|q| chat(&lm, Some(&system), q))
        .collect();
    println!(
        "prompt lengths {:?}",
        prompts.iter().map(|p| p.len()).collect::<Vec<_>>()
    );
    // Cold: a fresh engine per request; warm: one engine, the prefix cached after the first.
    let mut cold = Vec::new();
    for p in &prompts {
        let e1 = Engine::start(
            lm.clone(),
            ServeConfig {
                n_ctx: 2048,
                ..Default::default()
            },
        )
        .unwrap();
        cold.push(start(&e1, job(p.clone(), 16)).recv().unwrap());
    }
    let warm: Vec<_> = prompts
        .iter()
        .map(|p| start(&e, job(p.clone(), 16)).recv().unwrap())
        .collect();
    let m = e.metrics();
    println!(
        "prefix cache: {} of {} lookups hit, {} prompt tokens reused",
        m.prefix_cache_hits, m.prefix_cache_queries, m.prefix_cache_tokens
    );
    let ms = |v: &[(String, Finish, usize, Duration)]| {
        let mut t: Vec<f64> = v.iter().map(|x| x.3.as_secs_f64() * 1e3).collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    println!(
        "median time to first token: cold {:.1} ms, warm {:.1} ms",
        ms(&cold),
        ms(&warm[1..])
    );
    for (i, (c, w)) in cold.iter().zip(&warm).enumerate() {
        assert_eq!(c.0, w.0, "request {i}");
    }
    assert_eq!(m.prefix_cache_hits, (prompts.len() - 1) as u64);
    assert!(
        warm[1..].iter().all(|w| w.2 >= 500),
        "cached tokens {:?}",
        warm.iter().map(|w| w.2).collect::<Vec<_>>()
    );
}

#[test]
fn cancelled_jobs_free_their_blocks_and_bad_jobs_are_refused() {
    let Some(lm) = model() else { return };
    let e = Engine::start(
        lm.clone(),
        ServeConfig {
            n_ctx: 512,
            queue_capacity: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let idle = e.metrics().kv_blocks_used;
    // A client that goes away after three tokens.
    let (tx, rx) = mpsc::channel();
    let mut seen = 0;
    e.submit(
        job(chat(&lm, None, "Tell me a long story."), 200),
        Box::new(move |ev| {
            if let Event::Done { finish, .. } = ev {
                let _ = tx.send(finish);
                return false;
            }
            seen += 1;
            seen < 3
        }),
    )
    .unwrap();
    assert_eq!(rx.recv().unwrap(), Finish::Cancelled);
    std::thread::sleep(Duration::from_millis(100));
    let m = e.metrics();
    assert_eq!((m.running, m.requests_cancelled), (0, 1));
    assert!(
        m.kv_blocks_used <= idle + 200 / 16,
        "held blocks were not freed: {m:?}"
    );
    assert_eq!(
        e.submit(job(vec![1; 500], 100), Box::new(|_| true)),
        Err(SubmitError::TooLong {
            prompt: 500,
            max_tokens: 100,
            n_ctx: 512
        })
    );
    assert_eq!(
        e.submit(job(vec![], 1), Box::new(|_| true)),
        Err(SubmitError::EmptyPrompt)
    );
    e.shutdown(Duration::from_secs(1));
    assert_eq!(
        e.submit(job(vec![1], 1), Box::new(|_| true)),
        Err(SubmitError::ShuttingDown)
    );
}

#[test]
fn running_out_of_kv_blocks_preempts_and_recomputes() {
    let Some(lm) = model() else { return };
    // 12 blocks of 16 positions: six ~30-token prompts are admitted, then cannot all grow to 62.
    let cfg = ServeConfig {
        n_ctx: 512,
        kv_blocks: 12,
        ..Default::default()
    };
    let e = Engine::start(lm.clone(), cfg).unwrap();
    let rxs: Vec<_> = QUESTIONS[..6]
        .iter()
        .map(|q| {
            let mut j = job(chat(&lm, None, q), 32);
            j.ignore_eos = true;
            start(&e, j)
        })
        .collect();
    for r in &rxs {
        let (text, finish, _, _) = r.recv_timeout(Duration::from_secs(120)).unwrap();
        assert_eq!(finish, Finish::Length, "{text}");
        assert!(!text.is_empty());
    }
    let m = e.metrics();
    assert_eq!((m.requests_finished, m.running), (6, 0), "{m:?}");
    assert!(m.preemptions > 0, "{m:?}");
    // A preempted sequence looks its prompt up in the prefix cache again when it comes back.
    assert_eq!(m.prefix_cache_queries, 6 + m.preemptions, "{m:?}");
    assert!(m.kv_blocks_used <= 12);
}

#[test]
fn a_long_prompt_prefilling_beside_decoding_sequences() {
    // The long prompt takes several steps to prefill (chunks of 64) while the short one,
    // admitted after it, already decodes: rows of both kinds in one step, in either order.
    let Some(lm) = model() else { return };
    let cfg = ServeConfig {
        n_ctx: 1024,
        prefill_chunk: 64,
        ..Default::default()
    };
    let e = Engine::start(lm.clone(), cfg).unwrap();
    let long = chat(
        &lm,
        None,
        &"Summarise this sentence about libraries. ".repeat(30),
    );
    let alone: Vec<String> = [long.clone(), chat(&lm, None, QUESTIONS[0])]
        .iter()
        .map(|p| {
            start(&e, job(p.clone(), 16))
                .recv_timeout(Duration::from_secs(60))
                .unwrap()
                .0
        })
        .collect();
    // A fresh engine, so the long prompt is not served from the prefix cache.
    let e = Engine::start(
        lm.clone(),
        ServeConfig {
            n_ctx: 1024,
            prefill_chunk: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let rl = start(&e, job(long, 16));
    let rs = start(&e, job(chat(&lm, None, QUESTIONS[0]), 16));
    let together = [rl, rs].map(|r| {
        r.recv_timeout(Duration::from_secs(60))
            .expect("the engine answered")
            .0
    });
    assert_eq!(alone, together);
}

#[test]
fn decoding_rules_run_beside_the_batch_with_their_own_answers() {
    let Some(lm) = model() else { return };
    let e = Engine::start(
        lm.clone(),
        ServeConfig {
            n_ctx: 1024,
            ..Default::default()
        },
    )
    .unwrap();
    let p = chat(
        &lm,
        None,
        "Repeat exactly: the red fox and the red fox and the red fox.",
    );
    let alone = |rule: ferrolm_engine::Decoding, spec: Option<ferrolm_engine::Speculative>| {
        let req = ferrolm_engine::GenerateRequest {
            prompt: p.clone(),
            max_tokens: 24,
            sampling: job(p.clone(), 24).sampling,
            decoding: rule,
            speculative: spec,
            ..Default::default()
        };
        let mut kv = lm.model.new_cache(1024);
        ferrolm_engine::generate(
            &lm,
            &mut kv,
            &req,
            &std::sync::atomic::AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap()
        .text
    };
    let plain = start(&e, job(p.clone(), 24));
    let contrastive = ferrolm_engine::Decoding::Contrastive { alpha: 0.6, k: 4 };
    let spec = ferrolm_engine::Speculative {
        draft: ferrolm_engine::Draft::Ngram { max_ngram: 3 },
        max: 6,
    };
    let c = start(
        &e,
        Job {
            decoding: contrastive.clone(),
            ..job(p.clone(), 24)
        },
    );
    let s = start(
        &e,
        Job {
            speculative: Some(spec.clone()),
            ..job(p.clone(), 24)
        },
    );
    let (plain, c, s) = (plain.recv().unwrap(), c.recv().unwrap(), s.recv().unwrap());
    assert_eq!(
        c.0,
        alone(contrastive, None),
        "contrastive in the server = alone"
    );
    // Speculative decoding never changes the answer.
    assert_eq!(s.0, plain.0);
    assert_eq!(s.0, alone(ferrolm_engine::Decoding::Sample, Some(spec)));
    // Cancelling a job outside the batch ends it with Cancelled.
    let (tx, rx) = mpsc::channel();
    let id = e
        .submit(
            Job {
                decoding: ferrolm_engine::Decoding::Contrastive { alpha: 0.6, k: 4 },
                ignore_eos: true,
                ..job(p.clone(), 500)
            },
            Box::new(move |ev| {
                if let Event::Done { finish, .. } = ev {
                    let _ = tx.send(finish);
                }
                true
            }),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // It counts as running (outside the batch) even while the batch's scheduler publishes.
    let short = start(&e, job(p.clone(), 2)).recv().unwrap();
    assert!(!short.0.is_empty());
    let m = e.metrics();
    assert_eq!((m.running, m.solo_running), (1, 1));
    e.cancel(id);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        Finish::Cancelled
    );
    let m = e.metrics();
    assert_eq!((m.running, m.solo_running), (0, 0));
}

/// Requests with one prompt arriving together (the choices of `n > 1`): the first prefills
/// it, the others wait for its blocks and take them from the prefix cache, with the same
/// answers; the blocks are shared, not copied (the pool never holds the prompt four times).
#[test]
fn requests_sharing_a_prompt_prefill_it_once() {
    let Some(lm) = model() else { return };
    let e = Engine::start(
        lm.clone(),
        ServeConfig {
            n_ctx: 2048,
            ..Default::default()
        },
    )
    .unwrap();
    let system = "You answer in one short sentence, citing the encyclopedia. ".repeat(20);
    let p = chat(&lm, Some(&system), "What is the capital of France?");
    let rxs: Vec<_> = (0..4).map(|_| start(&e, job(p.clone(), 12))).collect();
    // The pool's blocks in use, sampled while the four run.
    let mut peak = 0;
    let mut got = Vec::new();
    for r in &rxs {
        loop {
            peak = peak.max(e.metrics().kv_blocks_used);
            match r.recv_timeout(Duration::from_millis(1)) {
                Ok(g) => break got.push(g),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(err) => panic!("{err}"),
            }
        }
    }
    let cached: Vec<usize> = got.iter().map(|g| g.2).collect();
    let blocks = (p.len() + 12).div_ceil(16);
    println!(
        "prompt {} tokens; cached per request {cached:?}; peak KV blocks {peak} (copies would need {})",
        p.len(),
        4 * blocks + p.len() / 16
    );
    assert!(peak > 0 && peak <= blocks + 4 * 3, "{peak}");
    assert!(got.iter().all(|g| g.0 == got[0].0));
    assert_eq!(cached[0], 0);
    assert!(
        cached[1..].iter().all(|&c| c + 2 * 16 >= p.len()),
        "{cached:?}"
    );
}

/// Gemma 3 (Q4_K_M: Q4_K and Q6_K matrices, whose llama.cpp orders depend on a call's row
/// count): concurrent requests, decoding beside each other and beside prompt pieces, each get
/// the answer they get alone.
#[test]
fn k_quant_requests_in_a_batch_equal_alone() {
    let Some(p) = ferrolm_format::test_models::file("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    let lm = Arc::new(load(p.to_str().unwrap(), true).unwrap());
    let e = Engine::start(
        lm.clone(),
        ServeConfig {
            n_ctx: 1024,
            // Small steps, so prompts are cut into pieces beside decoding sequences.
            max_step_tokens: 40,
            ..Default::default()
        },
    )
    .unwrap();
    let prompts: Vec<Vec<u32>> = QUESTIONS.iter().map(|q| chat(&lm, None, q)).collect();
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| start(&e, job(p.clone(), 24)).recv().unwrap().0)
        .collect();
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| start(&e, job(p.clone(), 24)))
        .collect();
    for (i, (a, r)) in alone.iter().zip(rxs).enumerate() {
        assert_eq!(a, &r.recv().unwrap().0, "request {i}");
    }
    let m = e.metrics();
    println!(
        "gemma3: {} requests, {} steps",
        m.requests_finished, m.steps
    );
}
