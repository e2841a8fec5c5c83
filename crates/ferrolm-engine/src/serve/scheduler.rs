//! The scheduler thread: the continuous-batching loop over the paged KV cache, sampling and events.

use super::blocks::{block_hashes, BlockHash, BlockPool, Pages};
use super::{Event, Finish, Job, ServeConfig, Sink, TokenLogprob};
use crate::generate::Utf8Stream;
use crate::load::LoadedModel;
use anyhow::Result;
use ferrolm_model::layers::Scratch;
use ferrolm_model::KvCache;
use ferrolm_sample::{SamplerChain, StopMatcher, StopState};
use std::collections::VecDeque;

/// How prompts are cut: into pieces of whole multiples of this many rows, never leaving (nor
/// starting after a cached prefix with) fewer. Every prompt row then sits in a piece of at
/// least 8 rows, at a position that is the same modulo 8 however the prompt is cut, and that
/// is what the products' orders depend on: the 32-block kernels give every row the same bits
/// regardless, and the K-quant kernels (llama.cpp's orders) pick theirs by a piece's row count
/// below 8 and by its rows modulo 4. So a request's answer does not depend on the batch.
const MIN_PIECE: usize = 8;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::engine::{Msg, Shared};
/// A running sequence.
struct Seq {
    id: u64,
    job: Job,
    sink: Sink,
    deadline: Option<Instant>,
    kv: KvCache,
    /// Prompt then generated tokens; `fed` of them are in the cache.
    tokens: Vec<u32>,
    fed: usize,
    prompt_len: usize,
    /// Positions before the prompt taken by a prompt adapter's virtual tokens.
    soft: usize,
    cached_tokens: usize,
    generated: usize,
    chain: SamplerChain,
    stops: StopMatcher,
    utf8: Utf8Stream,
    /// Blocks the sequence owns in the pool (its prompt's published blocks are the cache's).
    blocks: usize,
    /// Pages of the prefix cache the sequence reads (reused or published by it).
    cached_pages: usize,
    /// Hashes of the prompt's full blocks, and how many are in the prefix cache already.
    hashes: Vec<BlockHash>,
    published: usize,
    done: Option<Finish>,
    /// An `Error` event was sent; no `Done` follows.
    errored: bool,
}

pub(super) struct Worker {
    lm: Arc<LoadedModel>,
    cfg: ServeConfig,
    shared: Arc<Shared>,
    pool: BlockPool,
    /// (id, job, sink, deadline counted from submission).
    waiting: VecDeque<(u64, Job, Sink, Option<Instant>)>,
    running: Vec<Seq>,
    /// Sequences pushed out for room, to be recomputed before new jobs are admitted.
    preempted: VecDeque<(u64, Seq)>,
    scratch: Scratch,
    eog: Vec<u32>,
    /// Prefix caching needs every position's keys kept (no sliding windows).
    prefix_cache: bool,
    shutdown: Option<Instant>,
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max
        + row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&v| (v as f64 - lse) as f32).collect()
}

impl Worker {
    pub(super) fn new(lm: Arc<LoadedModel>, cfg: ServeConfig, shared: Arc<Shared>) -> Worker {
        let eog = lm.end_of_generation_ids();
        let prefix_cache = lm.model.config.layers.iter().all(|l| l.window.is_none());
        Worker {
            pool: BlockPool::new(cfg.kv_blocks),
            lm,
            cfg,
            shared,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preempted: VecDeque::new(),
            scratch: Scratch::default(),
            eog,
            prefix_cache,
            shutdown: None,
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let idle =
                self.running.is_empty() && self.waiting.is_empty() && self.preempted.is_empty();
            if idle && self.shutdown.is_some() {
                break;
            }
            // Block for work when idle; otherwise take what has arrived and step.
            let first = if idle {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(m) => Some(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                None
            };
            for m in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                self.handle(m);
            }
            if let Some(d) = self.shutdown {
                if Instant::now() >= d {
                    self.cancel_all();
                    break;
                }
            }
            self.expire();
            self.admit();
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("internal error (a panic) in this step")));
            if let Err(e) = stepped {
                // A failed step fails the jobs in it, never the engine.
                for s in &mut self.running {
                    let _ = (s.sink)(Event::Error {
                        message: format!("inference failed: {e:#}"),
                    });
                    s.done = Some(Finish::Cancelled);
                    s.errored = true;
                }
            }
            self.reap();
            self.publish_metrics();
        }
        self.cancel_all();
        self.publish_metrics();
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Submit(id, job, sink, at) => {
                let deadline = job.timeout.map(|t| at + t);
                self.waiting.push_back((id, *job, sink, deadline))
            }
            Msg::Cancel(id) => {
                if let Some(s) = self.running.iter_mut().find(|s| s.id == id) {
                    s.done = Some(Finish::Cancelled);
                }
                if let Some(i) = self.waiting.iter().position(|w| w.0 == id) {
                    let (_, job, mut sink, _) = self.waiting.remove(i).unwrap();
                    self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                    let _ = sink(done(Finish::Cancelled, job.prompt.len(), 0, 0));
                    self.count_cancelled();
                }
            }
            Msg::Embed(inputs, reply) => {
                let _ = reply.send(self.embed(&inputs));
            }
            Msg::Shutdown(deadline) => self.shutdown = Some(deadline),
        }
    }

    fn embed(&mut self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let (pooling, normalize) = self.lm.pooling();
        let c = self.lm.model.config.hidden;
        inputs
            .iter()
            .map(|ids| {
                let hidden = self.lm.hidden_states(ids)?;
                Ok(ferrolm_format::hf::pool(&hidden, c, pooling, normalize))
            })
            .collect()
    }

    fn count_cancelled(&self) {
        if let Ok(mut m) = self.shared.metrics.lock() {
            m.requests_cancelled += 1;
        }
    }

    fn cancel_all(&mut self) {
        for s in &mut self.running {
            s.done.get_or_insert(Finish::Cancelled);
        }
        self.reap();
        while let Some((_, job, mut sink, _)) = self.waiting.pop_front() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            let _ = sink(done(Finish::Cancelled, job.prompt.len(), 0, 0));
            self.count_cancelled();
        }
        while let Some((_, mut s)) = self.preempted.pop_front() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            let _ = (s.sink)(done(
                Finish::Cancelled,
                s.prompt_len,
                s.generated,
                s.cached_tokens,
            ));
            self.count_cancelled();
        }
    }

    /// Ends jobs past their deadline, running or still waiting.
    fn expire(&mut self) {
        let now = Instant::now();
        for s in &mut self.running {
            if s.done.is_none() && s.deadline.is_some_and(|d| now >= d) {
                s.done = Some(Finish::Timeout);
            }
        }
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].3.is_some_and(|d| now >= d) {
                let (_, job, mut sink, _) = self.waiting.remove(i).unwrap();
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                let _ = sink(done(Finish::Timeout, job.prompt.len(), 0, 0));
                self.count_cancelled();
            } else {
                i += 1;
            }
        }
    }

    /// Blocks a sequence of `positions` needs.
    fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.cfg.block_size)
    }

    /// Moves waiting jobs into the running set while there is room, with their cached prefix.
    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_running
            && self.shutdown.is_none()
            && self.preempted.is_empty()
        {
            let Some((_, job, _, _)) = self.waiting.front() else {
                break;
            };
            let hashes = self.prompt_hashes(job);
            let prompt_len = job.prompt.len();
            let soft = job
                .soft_prompt
                .as_ref()
                .map_or(0, |v| v.len() / self.lm.model.config.hidden);
            // The cached prefix's pages are held (so not evicted) before blocks are taken.
            let Some(hits) = self.cached_prefix(&hashes, prompt_len) else {
                break;
            };
            let need = self.blocks_for(soft + prompt_len + 1) - hits.len();
            if !self.pool.take(need) {
                break;
            }
            let (id, job, sink, deadline) = self.waiting.pop_front().unwrap();
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            let mut seq = self.new_seq(id, job, sink, need);
            seq.deadline = deadline;
            self.reuse_prefix(&mut seq, hits);
            self.prefill_soft(&mut seq);
            self.running.push(seq);
        }
    }

    /// Runs a prompt adapter's virtual tokens into a sequence's empty cache (the batch feeds
    /// the prompt after them). A failure ends the job with the error.
    fn prefill_soft(&self, s: &mut Seq) {
        let Some(v) = s.job.soft_prompt.clone() else {
            return;
        };
        if let Err(e) = self.lm.model.prefill_soft(&v, &mut s.kv) {
            let _ = (s.sink)(Event::Error {
                message: format!("{e:#}"),
            });
            s.done = Some(Finish::Cancelled);
            s.errored = true;
        }
    }

    /// The prefix-cache keys of a job's full prompt blocks (none with the cache off).
    fn prompt_hashes(&self, job: &Job) -> Vec<BlockHash> {
        // Behind virtual tokens the prompt's keys and values are its own.
        if !self.prefix_cache || job.soft_prompt.is_some() {
            return Vec::new();
        }
        // Blocks computed under an adapter hold its keys and values: another adapter's
        // requests must not reuse them.
        let salt = job.adapter.map_or(0, |k| k as u64 + 1);
        block_hashes(&job.prompt, self.cfg.block_size)
            .into_iter()
            .map(|h| h ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect()
    }

    fn new_seq(&self, id: u64, job: Job, sink: Sink, blocks: usize) -> Seq {
        let mut chain = job.sampling.build_chain();
        for &t in &job.prompt {
            chain.accept(t);
        }
        let hashes = self.prompt_hashes(&job);
        Seq {
            id,
            deadline: job.timeout.map(|t| Instant::now() + t),
            kv: self.lm.model.new_cache(self.cfg.n_ctx),
            tokens: job.prompt.clone(),
            fed: 0,
            prompt_len: job.prompt.len(),
            soft: job
                .soft_prompt
                .as_ref()
                .map_or(0, |v| v.len() / self.lm.model.config.hidden),
            cached_tokens: 0,
            generated: 0,
            chain,
            stops: StopMatcher::new(job.stop.clone()),
            utf8: Utf8Stream::default(),
            blocks,
            cached_pages: 0,
            hashes,
            published: 0,
            done: None,
            errored: false,
            job,
            sink,
        }
    }

    /// The pages of the longest cached prefix of a job's prompt. At least `MIN_PIECE` prompt
    /// tokens are left to compute (see `MIN_PIECE`), so the arithmetic of a prompt does not
    /// depend on what was cached.
    ///
    /// `None` when a running sequence is still computing the first block the prompt would
    /// have to compute itself: the job waits for it to publish that block and then takes it
    /// from the cache (requests with one prompt, as the choices of `n > 1`, or a shared
    /// system prompt arriving together, prefill it once).
    fn cached_prefix(&mut self, hashes: &[BlockHash], prompt_len: usize) -> Option<Vec<Pages>> {
        let bs = self.cfg.block_size;
        let mut hits: Vec<Pages> = hashes.iter().map_while(|h| self.pool.lookup(*h)).collect();
        let b = hits.len();
        if let Some(next) = hashes.get(b) {
            // Hashes are chained, so an equal hash means an equal prefix up to this block.
            let coming = self
                .running
                .iter()
                .any(|r| r.done.is_none() && r.published <= b && r.hashes.get(b) == Some(next));
            if coming {
                return None;
            }
        }
        while !hits.is_empty() && prompt_len - hits.len() * bs < MIN_PIECE {
            hits.pop();
        }
        Some(hits)
    }

    /// Gives a new sequence the cached prefix's pages: shared, not copied.
    fn reuse_prefix(&mut self, s: &mut Seq, hits: Vec<Pages>) {
        if !self.prefix_cache || s.hashes.is_empty() {
            return;
        }
        let bs = self.cfg.block_size;
        let hit = hits.len();
        if let Ok(mut m) = self.shared.metrics.lock() {
            m.prefix_cache_queries += 1;
            if hit > 0 {
                m.prefix_cache_hits += 1;
                m.prefix_cache_tokens += (hit * bs) as u64;
            }
        }
        for (b, pages) in hits.into_iter().enumerate() {
            for (layer, page) in s.kv.layers.iter_mut().zip(pages) {
                layer.push_page(page, b * bs..(b + 1) * bs);
            }
        }
        s.kv.next_pos = hit * bs;
        s.fed = hit * bs;
        s.cached_tokens = s.fed;
        s.published = hit;
        s.cached_pages = hit;
    }

    /// One batched forward over every running sequence's next tokens.
    fn step(&mut self) -> Result<()> {
        let mut budget = self.cfg.max_step_tokens;
        // (index into running, tokens this step)
        let mut plan: Vec<(usize, usize)> = Vec::new();
        // Decoding sequences first (one token each), then prompt chunks.
        for pass in 0..2 {
            for (i, s) in self.running.iter().enumerate() {
                let pending = s.tokens.len() - s.fed;
                if s.done.is_some() || pending == 0 || budget == 0 {
                    continue;
                }
                let decoding = pending == 1;
                if (pass == 0) != decoding {
                    continue;
                }
                let mut n = pending.min(self.cfg.prefill_chunk).min(budget);
                if n < pending {
                    // A prompt cut into pieces: whole multiples of MIN_PIECE rows, leaving
                    // at least MIN_PIECE (see MIN_PIECE).
                    n = (n / MIN_PIECE * MIN_PIECE)
                        .min(pending.saturating_sub(MIN_PIECE) / MIN_PIECE * MIN_PIECE);
                }
                if n == 0 {
                    continue;
                }
                plan.push((i, n));
                budget -= n;
            }
        }
        if plan.is_empty() {
            return Ok(());
        }
        // In running order (decoders were planned first); the order of a batch's rows changes
        // no result.
        plan.sort_unstable();
        let rows = {
            let mut want = plan.iter().peekable();
            let mut batch: Vec<(&[u32], &mut KvCache)> = Vec::with_capacity(plan.len());
            let mut adapters = Vec::with_capacity(plan.len());
            for (i, s) in self.running.iter_mut().enumerate() {
                if let Some(&(_, n)) = want.next_if(|p| p.0 == i) {
                    batch.push((&s.tokens[s.fed..s.fed + n], &mut s.kv));
                    adapters.push(s.job.adapter);
                }
            }
            let (model, scratch) = (&self.lm.model, &mut self.scratch);
            ferrolm_model::lora::with_sequence_adapters(adapters, || {
                model.forward_batch(&mut batch, scratch)
            })?
        };
        let vocab = rows.len() / plan.len();
        for (&(i, n), logits) in plan.iter().zip(rows.chunks_exact(vocab)) {
            self.running[i].fed += n;
            self.publish_prefix(i);
            if self.running[i].fed == self.running[i].tokens.len() {
                self.sample(i, logits);
            }
        }
        if let Ok(mut m) = self.shared.metrics.lock() {
            m.steps += 1;
        }
        Ok(())
    }

    /// Publishes the sequence's newly completed prompt blocks: its rows are sealed into shared
    /// pages and the prefix cache takes them over (no copy; the sequence keeps reading them).
    fn publish_prefix(&mut self, i: usize) {
        if !self.prefix_cache {
            return;
        }
        let bs = self.cfg.block_size;
        let s = &mut self.running[i];
        let full = (s.fed.min(s.prompt_len) / bs).min(s.hashes.len());
        if s.published >= full {
            return;
        }
        for l in &mut s.kv.layers {
            l.seal(bs, full * bs);
        }
        while s.published < full {
            let b = s.published;
            let pages: Pages = s.kv.layers.iter().map(|l| l.pages[b].clone()).collect();
            if self.pool.adopt(s.hashes[b], pages) {
                s.blocks -= 1;
                s.cached_pages += 1;
            }
            s.published += 1;
        }
    }

    /// Samples the next token of sequence `i` from `logits` and reports it.
    fn sample(&mut self, i: usize, logits: &[f32]) {
        let eog = &self.eog;
        let tok_ref = self.lm.tokenizer.as_ref();
        let s = &mut self.running[i];
        if s.done.is_some() {
            return;
        }
        let tok = match s.job.constraint.as_mut() {
            None => s.chain.sample(logits),
            Some(c) => match c.sample(&mut s.chain, logits) {
                Ok(t) => t,
                Err(e) => {
                    let _ = (s.sink)(Event::Error {
                        message: e.to_string(),
                    });
                    s.done = Some(Finish::Cancelled);
                    s.errored = true;
                    return;
                }
            },
        };
        let logprob = s.job.logprobs.map(|k| {
            let lp = log_softmax(logits);
            let text = |id: u32| -> (String, Vec<u8>) {
                let bytes = tok_ref
                    .map(|t| t.token_bytes(id, false))
                    .unwrap_or_default();
                (String::from_utf8_lossy(&bytes).to_string(), bytes)
            };
            let mut order: Vec<usize> = (0..lp.len()).collect();
            let k = k.min(lp.len());
            order.select_nth_unstable_by(k.saturating_sub(1).min(lp.len() - 1), |&a, &b| {
                lp[b].total_cmp(&lp[a])
            });
            let mut top: Vec<usize> = order[..k].to_vec();
            top.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
            let (token, bytes) = text(tok);
            TokenLogprob {
                token,
                bytes,
                logprob: lp[tok as usize],
                top: top
                    .into_iter()
                    .map(|j| {
                        let (t, b) = text(j as u32);
                        (t, b, lp[j])
                    })
                    .collect(),
            }
        });
        s.generated += 1;
        s.tokens.push(tok);
        let mut alive = true;
        if !s.job.ignore_eos && eog.contains(&tok) {
            s.done = Some(Finish::Stop);
            // The end-of-generation token itself is not text; its log-probability still counts.
            if logprob.is_some() {
                alive = (s.sink)(Event::Token {
                    id: tok,
                    text: String::new(),
                    logprob,
                });
            }
        } else {
            let bytes = tok_ref
                .map(|t| t.token_bytes(tok, false))
                .unwrap_or_default();
            let piece = s.utf8.push(&bytes);
            let text = match s.stops.push(&piece) {
                StopState::Continue { emit } => emit,
                StopState::Stop { emit } => {
                    s.done = Some(Finish::Stop);
                    emit
                }
            };
            alive = (s.sink)(Event::Token {
                id: tok,
                text,
                logprob,
            });
            if s.done.is_none() && s.job.constraint.as_ref().is_some_and(|c| c.is_finished()) {
                s.done = Some(Finish::Stop);
            }
            if s.done.is_none()
                && (s.generated >= s.job.max_tokens || s.soft + s.tokens.len() >= s.kv.n_ctx)
            {
                s.done = Some(Finish::Length);
            }
        }
        if !alive {
            s.done = Some(Finish::Cancelled);
            return;
        }
        if s.done.is_none() {
            // Room for the next position; when the pool is out, the newest other sequence is
            // preempted (its work recomputed later), and failing that this one waits.
            let need = (s.soft + s.tokens.len()).div_ceil(self.cfg.block_size) - s.cached_pages;
            if need > s.blocks {
                if self.pool.take(need - s.blocks) {
                    self.running[i].blocks = need;
                } else {
                    self.preempt(i, need);
                }
            }
        }
    }

    /// Frees the newest sequence other than `keep` (back to the queue's front, to be
    /// recomputed from its prompt and what it has generated) until `keep` gets its blocks.
    fn preempt(&mut self, keep: usize, need: usize) {
        loop {
            let have = self.running[keep].blocks;
            if self.pool.take(need - have) {
                self.running[keep].blocks = need;
                return;
            }
            let victim = (0..self.running.len()).rev().find(|&j| {
                j != keep && self.running[j].done.is_none() && self.running[j].blocks > 0
            });
            let Some(j) = victim else {
                // Nothing to free: this sequence ends here.
                self.running[keep].done = Some(Finish::Length);
                return;
            };
            if let Ok(mut m) = self.shared.metrics.lock() {
                m.preemptions += 1;
            }
            let v = &mut self.running[j];
            self.pool.release(v.blocks);
            v.blocks = 0;
            v.cached_pages = 0;
            v.kv.clear();
            v.fed = 0;
            v.published = v.hashes.len();
        }
    }

    /// Removes finished sequences, reporting `Done` and freeing their blocks; sequences
    /// preempted to zero blocks go back to the queue.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            if s.done.is_none() && s.blocks > 0 {
                i += 1;
                continue;
            }
            let mut s = self.running.swap_remove(i);
            self.pool.release(s.blocks);
            // Counters first, so a client that reads /metrics after its answer sees it gone.
            self.publish_metrics();
            match s.done {
                Some(_) if s.errored => self.count_cancelled(),
                Some(f) => {
                    // Text held back while it might have begun a stop string is sent now,
                    // unless a stop string did match (then it is the stop string's).
                    let matched = s.stops.is_stopped();
                    let rest = s.utf8.flush();
                    let mut tail = match s.stops.push(&rest) {
                        StopState::Continue { emit } | StopState::Stop { emit } => emit,
                    };
                    tail += &s.stops.flush();
                    if !tail.is_empty() && !matched {
                        let _ = (s.sink)(Event::Token {
                            id: u32::MAX,
                            text: tail,
                            logprob: None,
                        });
                    }
                    if let Ok(mut m) = self.shared.metrics.lock() {
                        m.prompt_tokens_total += s.prompt_len as u64;
                        m.generated_tokens_total += s.generated as u64;
                        match f {
                            Finish::Cancelled | Finish::Timeout => m.requests_cancelled += 1,
                            _ => m.requests_finished += 1,
                        }
                    }
                    let _ = (s.sink)(done(f, s.prompt_len, s.generated, s.cached_tokens));
                }
                None => {
                    // Preempted: recompute later from everything it has so far.
                    if self.readmit(&mut s) {
                        self.running.push(s);
                    } else {
                        let id = s.id;
                        self.shared.waiting.fetch_add(1, Ordering::SeqCst);
                        self.preempted.push_front((id, s));
                    }
                }
            }
        }
        // Preempted sequences come back first.
        while let Some((_, mut s)) = self.preempted.pop_front() {
            if self.running.len() >= self.cfg.max_running || !self.readmit(&mut s) {
                self.preempted.push_front((s.id, s));
                break;
            }
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            self.running.push(s);
        }
    }

    /// Takes blocks for a preempted sequence to recompute what it has, with its prompt's
    /// cached prefix read from the prefix cache rather than recomputed. False (nothing held)
    /// when the blocks are not there.
    fn readmit(&mut self, s: &mut Seq) -> bool {
        let hits = self
            .cached_prefix(&s.hashes, s.prompt_len)
            .unwrap_or_default();
        let need = self.blocks_for(s.soft + s.tokens.len() + 1) - hits.len();
        if !self.pool.take(need) {
            return false;
        }
        s.blocks = need;
        // The usage report keeps what the first admission found cached.
        let cached = s.cached_tokens;
        self.reuse_prefix(s, hits);
        s.cached_tokens = cached;
        if s.kv.next_pos == 0 {
            self.prefill_soft(s);
        }
        true
    }

    fn publish_metrics(&self) {
        if let Ok(mut m) = self.shared.metrics.lock() {
            m.running = self.running.len() + m.solo_running;
            m.kv_blocks_used = self.pool.used();
            m.kv_blocks_cached = self.pool.used() - self.pool.held();
            m.kv_blocks_total = self.pool.total();
        }
    }
}

pub(super) fn done(finish: Finish, prompt: usize, generated: usize, cached: usize) -> Event {
    Event::Done {
        finish,
        prompt_tokens: prompt,
        completion_tokens: generated,
        cached_tokens: cached,
    }
}
