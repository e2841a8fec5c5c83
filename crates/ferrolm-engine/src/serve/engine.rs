//! The engine handle: admission (bounded queue, refusals), cancellation, embeddings, metrics
//! and shutdown, in front of the scheduler thread (`scheduler.rs`); jobs with their own
//! decoding rule run on threads of their own here.

use super::scheduler::{done, Worker};
use super::{Event, Finish, Job, Metrics, Overflow, ServeConfig, Sink, SubmitError};
use crate::load::LoadedModel;
use anyhow::{bail, Result};
use ferrolm_model::spec::Topology;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) enum Msg {
    Submit(u64, Box<Job>, Sink, Instant),
    Cancel(u64),
    Embed(Vec<Vec<u32>>, mpsc::Sender<Result<Vec<Vec<f32>>>>),
    Shutdown(Instant),
}

/// State shared between the engine thread and the callers.
pub(super) struct Shared {
    pub(super) metrics: Mutex<Metrics>,
    pub(super) accepting: AtomicBool,
    pub(super) waiting: AtomicUsize,
}

/// One model's inference thread. Dropping it shuts the thread down (cancelling what runs).
pub struct Engine {
    tx: Mutex<mpsc::Sender<Msg>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    next_id: AtomicU64,
    cfg: ServeConfig,
    lm: Arc<LoadedModel>,
    /// Cancel flags of the jobs running outside the batch ([`Job::is_solo`]).
    solo: Arc<Mutex<std::collections::HashMap<u64, Arc<AtomicBool>>>>,
}

impl Engine {
    /// Starts the engine thread for `lm`.
    pub fn start(lm: Arc<LoadedModel>, mut cfg: ServeConfig) -> Result<Engine> {
        if cfg.block_size == 0 || cfg.max_running == 0 || cfg.max_step_tokens < 2 {
            bail!("serve config: block size, running sequences and step tokens must be positive");
        }
        cfg.n_ctx = cfg.n_ctx.min(lm.model.config.context_length.max(1));
        cfg.prefill_chunk = cfg.prefill_chunk.clamp(2, cfg.max_step_tokens);
        let shared = Arc::new(Shared {
            metrics: Mutex::new(Metrics {
                kv_blocks_total: cfg.kv_blocks,
                ..Default::default()
            }),
            accepting: AtomicBool::new(true),
            waiting: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let worker = Worker::new(lm.clone(), cfg.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name(format!("ferrolm-engine-{}", lm.name))
            .spawn(move || worker.run(rx))?;
        Ok(Engine {
            tx: Mutex::new(tx),
            shared,
            thread: Mutex::new(Some(thread)),
            next_id: AtomicU64::new(1),
            cfg,
            lm,
            solo: Default::default(),
        })
    }

    pub fn config(&self) -> &ServeConfig {
        &self.cfg
    }

    fn send(&self, m: Msg) -> bool {
        self.tx.lock().map(|tx| tx.send(m).is_ok()).unwrap_or(false)
    }

    /// Admits a job into the queue; its events go to `sink`. Returns the job's id.
    pub fn submit(&self, mut job: Job, sink: Sink) -> Result<u64, SubmitError> {
        let refuse = |e: SubmitError| {
            if let Ok(mut m) = self.shared.metrics.lock() {
                m.requests_rejected += 1;
            }
            Err(e)
        };
        if !self.shared.accepting.load(Ordering::SeqCst) {
            return refuse(SubmitError::ShuttingDown);
        }
        if self.lm.model.topology() != Topology::Decoder {
            return refuse(SubmitError::NotGenerative);
        }
        if job.prompt.is_empty() {
            return refuse(SubmitError::EmptyPrompt);
        }
        let n_ctx = self.cfg.n_ctx;
        let mut stream = None;
        // Virtual tokens take positions too.
        let soft = job
            .soft_prompt
            .as_ref()
            .map_or(0, |v| v.len() / self.lm.model.config.hidden);
        if soft + job.prompt.len() + job.max_tokens > n_ctx {
            let too_long = SubmitError::TooLong {
                prompt: soft + job.prompt.len(),
                max_tokens: job.max_tokens,
                n_ctx,
            };
            match self.cfg.overflow {
                Overflow::Error => return refuse(too_long),
                Overflow::Truncate if soft + job.max_tokens >= n_ctx => return refuse(too_long),
                Overflow::Truncate => {
                    let bos = self.lm.tokenizer.as_ref().and_then(|t| t.bos_id());
                    job.prompt = truncate_prompt(&job.prompt, n_ctx - soft - job.max_tokens, bos);
                }
                Overflow::Stream { sinks } => stream = Some(sinks),
            }
        }
        let waiting = self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.cfg.queue_capacity {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return refuse(SubmitError::QueueFull { waiting });
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut m) = self.shared.metrics.lock() {
            m.requests_total += 1;
        }
        if job.is_solo() || stream.is_some() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            if let Err((param, e)) =
                crate::decode::check(&self.lm, &job.decoding, job.speculative.as_ref())
            {
                return refuse(SubmitError::Unsupported {
                    param,
                    message: e.to_string(),
                });
            }
            return self.start_solo(id, job, sink, stream);
        }
        if !self.send(Msg::Submit(id, Box::new(job), sink, Instant::now())) {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(id)
    }

    /// Cancels a job (its sink gets `Done { finish: Cancelled }`).
    pub fn cancel(&self, id: u64) {
        if let Some(flag) = self.solo.lock().ok().and_then(|m| m.get(&id).cloned()) {
            flag.store(true, Ordering::SeqCst);
            return;
        }
        self.send(Msg::Cancel(id));
    }

    /// A job with its own decoding rule, or one that streams past the context (`Some(sinks)`),
    /// on a thread of its own (`generate_tokens`), with the batch's events, cancellation and
    /// timeout.
    fn start_solo(
        &self,
        id: u64,
        job: Job,
        mut sink: Sink,
        stream: Option<usize>,
    ) -> Result<u64, SubmitError> {
        let cancel = Arc::new(AtomicBool::new(false));
        if let Ok(mut m) = self.solo.lock() {
            m.insert(id, cancel.clone());
        }
        let (lm, shared, solo, n_ctx) = (
            self.lm.clone(),
            self.shared.clone(),
            self.solo.clone(),
            self.cfg.n_ctx,
        );
        let spawned = std::thread::Builder::new()
            .name(format!("ferrolm-solo-{id}"))
            .spawn(move || {
                if let Ok(mut m) = shared.metrics.lock() {
                    m.solo_running += 1;
                    m.running += 1;
                }
                let deadline = job.timeout.map(|t| Instant::now() + t);
                let req = crate::GenerateRequest {
                    prompt: job.prompt.clone(),
                    max_tokens: job.max_tokens,
                    sampling: job.sampling.clone(),
                    stop: job.stop.clone(),
                    ignore_eos: job.ignore_eos,
                    constraint: job.constraint.clone(),
                    decoding: job.decoding.clone(),
                    speculative: job.speculative.clone(),
                };
                let (mut timed_out, mut gone, mut n) = (false, false, 0usize);
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut kv = lm.model.new_cache(n_ctx);
                    if let Some(sinks) = stream {
                        kv.set_long(crate::longctx::streaming(sinks, n_ctx))?;
                    }
                    if let Some(v) = &job.soft_prompt {
                        lm.model.prefill_soft(v, &mut kv)?;
                    }
                    let adapter = job.adapter;
                    ferrolm_model::lora::with_adapter(adapter, || crate::generate_tokens(&lm, &mut kv, &req, &cancel, &mut |tok, text| {
                        if deadline.is_some_and(|d| Instant::now() > d) {
                            timed_out = true;
                            return false;
                        }
                        if tok.is_none() && text.is_empty() {
                            return true;
                        }
                        n += usize::from(tok.is_some());
                        let ok = sink(Event::Token {
                            id: tok.unwrap_or(u32::MAX),
                            text: text.to_string(),
                            logprob: None,
                        });
                        gone |= !ok;
                        ok
                    }))
                }));
                let finish = match &res {
                    _ if timed_out => Some(Finish::Timeout),
                    Ok(Ok(o)) => Some(match o.finish {
                        crate::FinishReason::Length => Finish::Length,
                        crate::FinishReason::Stop => Finish::Stop,
                        crate::FinishReason::Cancelled => Finish::Cancelled,
                    }),
                    _ => None,
                };
                if let Ok(mut m) = shared.metrics.lock() {
                    m.solo_running = m.solo_running.saturating_sub(1);
                    m.running = m.running.saturating_sub(1);
                    m.prompt_tokens_total += job.prompt.len() as u64;
                    m.generated_tokens_total += n as u64;
                    match finish {
                        Some(Finish::Length | Finish::Stop) => m.requests_finished += 1,
                        _ => m.requests_cancelled += 1,
                    }
                }
                if let Ok(mut m) = solo.lock() {
                    m.remove(&id);
                }
                match (finish, res) {
                    (Some(f), _) => {
                        if !gone {
                            let _ = sink(done(f, job.prompt.len(), n, 0));
                        }
                    }
                    (None, Ok(Err(e))) => {
                        let _ = sink(Event::Error {
                            message: e.to_string(),
                        });
                    }
                    (None, _) => {
                        let _ = sink(Event::Error {
                            message: "internal error while generating (this is a bug in ferrolm; please report it)".into(),
                        });
                    }
                }
            });
        if spawned.is_err() {
            if let Ok(mut m) = self.solo.lock() {
                m.remove(&id);
            }
            return Err(SubmitError::ShuttingDown);
        }
        Ok(id)
    }

    /// Pooled sentence embeddings (or last-token hidden states for decoders) of each input, on
    /// the engine thread.
    pub fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        let (tx, rx) = mpsc::channel();
        if !self.send(Msg::Embed(inputs, tx)) {
            bail!("the engine has stopped");
        }
        rx.recv()
            .map_err(|_| anyhow::anyhow!("the engine stopped before answering"))?
    }

    pub fn metrics(&self) -> Metrics {
        let mut m = self
            .shared
            .metrics
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        m.queue_depth = self.shared.waiting.load(Ordering::SeqCst);
        m
    }

    /// Stops accepting, lets running jobs finish until `deadline` has passed, cancels the
    /// rest, and waits for the engine thread.
    pub fn shutdown(&self, deadline: Duration) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        // Jobs outside the batch: finish until the deadline, then cancel.
        let end = Instant::now() + deadline;
        while self.solo.lock().is_ok_and(|m| !m.is_empty()) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Ok(m) = self.solo.lock() {
            m.values().for_each(|f| f.store(true, Ordering::SeqCst));
        }
        self.send(Msg::Shutdown(Instant::now() + deadline));
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// The last `keep` tokens of `prompt`, with its first token kept when it is `bos`.
fn truncate_prompt(prompt: &[u32], keep: usize, bos: Option<u32>) -> Vec<u32> {
    let keep = keep.max(1);
    if prompt.len() <= keep {
        return prompt.to_vec();
    }
    match prompt.first() {
        Some(&b) if Some(b) == bos && keep >= 2 => std::iter::once(b)
            .chain(prompt[prompt.len() - (keep - 1)..].iter().copied())
            .collect(),
        _ => prompt[prompt.len() - keep..].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncation_keeps_the_end_and_a_leading_bos() {
        use super::truncate_prompt as t;
        assert_eq!(t(&[1, 5, 6, 7, 8], 3, Some(1)), vec![1, 7, 8]);
        assert_eq!(t(&[9, 5, 6, 7, 8], 3, Some(1)), vec![6, 7, 8]);
        assert_eq!(t(&[1, 5, 6], 3, Some(1)), vec![1, 5, 6]);
        assert_eq!(t(&[1, 5, 6, 7], 1, Some(1)), vec![7]);
    }
}
