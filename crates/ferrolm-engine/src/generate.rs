//! Generation: prompt prefill, then one token at a time through the sampler chain, with stop
//! conditions (max tokens, end-of-generation ids, stop strings, a completed constraint,
//! cancellation) and streaming of UTF-8-complete text.

use crate::decode::{
    contrastive_pick, dola_contrast, drafter, unit, Decoding, Drafter, SpecStats, Speculative,
};
use crate::load::LoadedModel;
use anyhow::{bail, Result};
use ferrolm_constrain::Constraint;
use ferrolm_model::spec::Topology;
use ferrolm_model::{KvCache, Logits, Probe};
use ferrolm_sample::{SamplerChain, SamplingParams, StopMatcher, StopState};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Only tokens that keep the output valid under this grammar are sampled (the others'
    /// logits are `-inf`); generation stops when it is complete. Built by
    /// [`LoadedModel::constraint`].
    pub constraint: Option<Constraint>,
    /// Contrastive search or DoLa instead of the plain chain.
    pub decoding: Decoding,
    /// Draft-and-verify decoding; the output is the same as without it.
    pub speculative: Option<Speculative>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// An end-of-generation token, a stop string, or a completed constraint.
    Stop,
    Cancelled,
}

pub struct GenerateOutput {
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Drafted and accepted tokens (speculative decoding).
    pub speculative: Option<SpecStats>,
    /// Seconds spent on the prompt (up to the first token's logits) and on the rest.
    pub prompt_seconds: f64,
    pub decode_seconds: f64,
}

/// Accumulates token bytes and hands out text only when it is complete UTF-8.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let s = s.to_string();
                self.pending.clear();
                s
            }
            Err(e) if e.error_len().is_none() => {
                // An incomplete sequence at the end: emit the valid prefix, keep the rest.
                let valid = e.valid_up_to();
                let s = String::from_utf8_lossy(&self.pending[..valid]).to_string();
                self.pending.drain(..valid);
                s
            }
            Err(_) => {
                let s = String::from_utf8_lossy(&self.pending).to_string();
                self.pending.clear();
                s
            }
        }
    }
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).to_string();
        self.pending.clear();
        s
    }
}

/// What a step hands the picker: logits rows to pick from in turn (with the draft token
/// each row after the first was computed behind), or a token the decoding rule chose.
enum Step {
    Rows {
        rows: Vec<Vec<f32>>,
        drafts: Vec<u32>,
    },
    Chosen(u32),
}

/// Where the next token comes from; holds the state between steps. `kv` holds every
/// committed token except, for the row-based sources, the last one (`pending`).
enum Source<'a> {
    /// One row per step: the model's logits, or DoLa's contrast over these premature layers.
    Rows {
        dola: Option<Vec<usize>>,
        row: Option<Vec<f32>>,
        pending: Option<u32>,
    },
    Speculative {
        row: Option<Vec<f32>>,
        pending: Option<u32>,
        drafter: Box<dyn Drafter + 'a>,
        max: usize,
        /// The current draft length: transformers' heuristic schedule (+2 after a fully
        /// accepted draft, -1 after a rejection, within 1..=max).
        len: usize,
        /// Where the last verification pass started (`None` before the first).
        base: Option<usize>,
        /// Steps left without drafting, and the current back-off: a draft with nothing
        /// accepted doubles it (1, 2, 4, .. 16 steps), an accepted token resets it, so text
        /// the drafter cannot predict runs at nearly plain speed.
        skip: usize,
        backoff: usize,
        stats: SpecStats,
    },
    Contrastive {
        alpha: f32,
        k: usize,
        row: Vec<f32>,
        /// Unit-length final hidden states of the context, `C` each.
        context: Vec<f32>,
    },
}

/// DoLa's next row after running `tokens`.
fn dola_row(
    lm: &LoadedModel,
    tokens: &[u32],
    kv: &mut KvCache,
    layers: &[usize],
) -> Result<Vec<f32>> {
    let mut probe = Probe {
        taps: layers.to_vec(),
        ..Probe::default()
    };
    let h = lm.model.forward_probe(tokens, kv, &mut probe)?;
    let c = lm.model.config.hidden;
    let last = lm.model.logits_rows(&h[h.len() - c..])?;
    let early: Vec<f32> = probe.tapped.concat();
    let v = last.len();
    let premature: Vec<Vec<f32>> = lm
        .model
        .head_rows(&early)?
        .chunks(v)
        .map(<[f32]>::to_vec)
        .collect();
    Ok(dola_contrast(&last, &premature))
}

impl<'a> Source<'a> {
    fn new(lm: &'a LoadedModel, req: &'a GenerateRequest, kv: &mut KvCache) -> Result<Self> {
        crate::decode::check(lm, &req.decoding, req.speculative.as_ref()).map_err(|(_, e)| e)?;
        if req.speculative.is_some() && req.decoding != Decoding::Sample {
            bail!("speculative decoding verifies the plain sampler's choices; it does not combine with contrastive search or DoLa");
        }
        if req.constraint.is_some() && req.decoding != Decoding::Sample {
            bail!("constrained output does not combine with contrastive search or DoLa; leave one out");
        }
        if req.speculative.is_some() && kv.long.is_some() {
            bail!("speculative decoding takes back rejected positions, which a long-context cache (streaming, memory, ReRoPE, Self-Extend) cannot; leave one out");
        }
        if let Some(spec) = &req.speculative {
            kv.set_slack(spec.max + 1);
            let row = crate::search::first_logits(&lm.model, &req.prompt, None, kv)?;
            return Ok(Source::Speculative {
                row: Some(row),
                pending: None,
                drafter: drafter(spec, lm, kv.n_ctx)?,
                max: spec.max,
                len: spec.max,
                base: None,
                skip: 0,
                backoff: 0,
                stats: SpecStats::default(),
            });
        }
        match &req.decoding {
            Decoding::Sample => Ok(Source::Rows {
                row: Some(crate::search::first_logits(
                    &lm.model,
                    &req.prompt,
                    lm.decoder_start(),
                    kv,
                )?),
                dola: None,
                pending: None,
            }),
            Decoding::Dola { layers } => {
                let layers =
                    layers.resolve(lm.model.n_blocks(), lm.model.config.tied_embeddings)?;
                let row = dola_row(lm, &req.prompt, kv, &layers)?;
                Ok(Source::Rows {
                    dola: Some(layers),
                    row: Some(row),
                    pending: None,
                })
            }
            &Decoding::Contrastive { alpha, k } => {
                let h = lm.model.forward_hidden_chunked(&req.prompt, kv)?;
                let h: Vec<f32> = h.flatten_all()?.to_vec1()?;
                let c = lm.model.config.hidden;
                let row = lm.model.logits_rows(&h[h.len() - c..])?;
                let context = h.chunks_exact(c).flat_map(unit).collect();
                Ok(Source::Contrastive {
                    alpha,
                    k,
                    row,
                    context,
                })
            }
        }
    }

    /// The next step. `ctx` is every committed token (prompt and output); `room` how many more
    /// tokens may be generated.
    fn step(
        &mut self,
        lm: &LoadedModel,
        kv: &mut KvCache,
        chain: &mut SamplerChain,
        ctx: &[u32],
        room: usize,
    ) -> Result<Step> {
        let one = |rows: Vec<f32>| Step::Rows {
            rows: vec![rows],
            drafts: Vec::new(),
        };
        match self {
            Source::Rows { dola, row, pending } => {
                if let Some(r) = row.take() {
                    return Ok(one(r));
                }
                let t = pending
                    .take()
                    .expect("a pending token after the first step");
                Ok(one(match dola {
                    Some(layers) => dola_row(lm, &[t], kv, layers)?,
                    None => lm
                        .model
                        .forward(&[t], kv, Logits::Last)?
                        .flatten_all()?
                        .to_vec1()?,
                }))
            }
            Source::Speculative {
                row,
                pending,
                drafter,
                len,
                base,
                stats,
                skip,
                ..
            } => {
                if let Some(r) = row.take() {
                    return Ok(one(r));
                }
                let t = pending
                    .take()
                    .expect("a pending token after the first step");
                let space = kv.n_ctx.saturating_sub(kv.next_pos + 1);
                let k = if *skip > 0 {
                    *skip -= 1;
                    0
                } else {
                    (*len).min(room.saturating_sub(1)).min(space)
                };
                let drafts = if k > 0 {
                    drafter.draft(ctx, k)?
                } else {
                    Vec::new()
                };
                *base = Some(kv.next_pos);
                let mut tokens = vec![t];
                tokens.extend_from_slice(&drafts);
                // Decode arithmetic for every row: the bits token-by-token decoding gets.
                let mut probe = Probe {
                    as_decode: true,
                    ..Probe::default()
                };
                let h = lm.model.forward_probe(&tokens, kv, &mut probe)?;
                let logits = lm.model.logits_rows(&h)?;
                let rows: Vec<Vec<f32>> = logits
                    .chunks(logits.len() / tokens.len())
                    .map(<[f32]>::to_vec)
                    .collect();
                if !drafts.is_empty() {
                    stats.steps += 1;
                    stats.drafted += drafts.len();
                }
                Ok(Step::Rows { rows, drafts })
            }
            Source::Contrastive {
                alpha,
                k,
                row,
                context,
            } => {
                // The chain's processors (biases, penalties) shape the probabilities.
                let cands = chain.process(row);
                let by_prob = |&a: &usize, &b: &usize| {
                    cands.probs[b]
                        .total_cmp(&cands.probs[a])
                        .then(cands.ids[a].cmp(&cands.ids[b]))
                };
                let mut order: Vec<usize> = (0..cands.len()).collect();
                let k = (*k).min(order.len());
                if k < order.len() {
                    order.select_nth_unstable_by(k - 1, by_prob);
                    order.truncate(k);
                }
                order.sort_by(by_prob);
                let ids: Vec<u32> = order.iter().map(|&i| cands.ids[i]).collect();
                let probs: Vec<f32> = order.iter().map(|&i| cands.probs[i]).collect();
                // Each candidate one step ahead, batched, on its own copy of the cache.
                let mut forks: Vec<KvCache> = ids
                    .iter()
                    .map(|_| kv.fork(ferrolm_model::kv::PAGE_ROWS))
                    .collect();
                let toks: Vec<[u32; 1]> = ids.iter().map(|&t| [t]).collect();
                let mut seqs: Vec<(&[u32], &mut KvCache)> = toks
                    .iter()
                    .zip(forks.iter_mut())
                    .map(|(t, kv)| (&t[..], kv))
                    .collect();
                let mut scratch = std::mem::take(&mut kv.scratch);
                let hidden = lm.model.forward_batch_hidden(&mut seqs, &mut scratch);
                let hidden = hidden?;
                let c = lm.model.config.hidden;
                let pick = contrastive_pick(&probs, &hidden, context, c, *alpha);
                context.extend(unit(&hidden[pick * c..(pick + 1) * c]));
                *row = lm.model.logits_rows(&hidden[pick * c..(pick + 1) * c])?;
                *kv = forks.swap_remove(pick);
                kv.scratch = scratch;
                chain.accept(ids[pick]);
                Ok(Step::Chosen(ids[pick]))
            }
        }
    }

    /// After a `Rows` step: `accepted` drafts were confirmed and `tok` was picked after them.
    fn settle(&mut self, kv: &mut KvCache, accepted: usize, tok: u32) -> Result<()> {
        match self {
            Source::Rows { pending, .. } => *pending = Some(tok),
            Source::Speculative {
                pending,
                base,
                stats,
                len,
                max,
                skip,
                backoff,
                ..
            } => {
                if let Some(b) = *base {
                    let drafted = kv.next_pos - b - 1;
                    kv.truncate(b + 1 + accepted)?;
                    if drafted > 0 {
                        if accepted == 0 {
                            *backoff = (*backoff * 2).clamp(1, 16);
                            *skip = *backoff;
                        } else {
                            *backoff = 0;
                        }
                        *len = if accepted == drafted {
                            (*len + 2).min(*max)
                        } else {
                            len.saturating_sub(1).max(1)
                        };
                    }
                }
                stats.accepted += accepted;
                *pending = Some(tok);
            }
            Source::Contrastive { .. } => {}
        }
        Ok(())
    }

    fn stats(&self) -> Option<SpecStats> {
        match self {
            Source::Speculative { stats, .. } => Some(*stats),
            _ => None,
        }
    }
}

/// Generates from `req.prompt` appended to whatever `kv` already holds (decoder-only models),
/// or from the encoder's reading of `req.prompt` (encoder-decoder models: the decoder starts
/// afresh from its start token). `on_text` receives each streamable piece; `cancel` stops
/// generation between tokens.
pub fn generate(
    lm: &LoadedModel,
    kv: &mut KvCache,
    req: &GenerateRequest,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str),
) -> Result<GenerateOutput> {
    generate_tokens(lm, kv, req, cancel, &mut |_, text| {
        on_text(text);
        true
    })
}

/// [`generate`] reporting each token: `on_token(Some(id), text)` per generated token (`text`
/// may be empty while UTF-8 or a possible stop string is pending), then `on_token(None, tail)`
/// once with any text held back. Returning `false` cancels (as `cancel` does).
pub fn generate_tokens(
    lm: &LoadedModel,
    kv: &mut KvCache,
    req: &GenerateRequest,
    cancel: &AtomicBool,
    on_token: &mut dyn FnMut(Option<u32>, &str) -> bool,
) -> Result<GenerateOutput> {
    let gone = std::cell::Cell::new(false);
    let mut on_text = |tok: Option<u32>, text: &str| {
        if !on_token(tok, text) {
            gone.set(true);
        }
    };
    if req.prompt.is_empty() {
        anyhow::bail!("the prompt is empty: give some text (or --ids) to start from");
    }
    let mut chain = match req.decoding {
        // Contrastive search is deterministic: only biases and penalties shape its scores.
        Decoding::Contrastive { .. } => SamplingParams {
            temperature: 0.0,
            ..req.sampling.clone()
        }
        .build_chain(),
        _ => req.sampling.build_chain(),
    };
    let mut constraint = req.constraint.clone();
    let seq2seq = lm.model.topology() == Topology::EncoderDecoder;
    if !seq2seq {
        for &t in &req.prompt {
            chain.accept(t);
        }
    }
    let eog = lm.end_of_generation_ids();
    let gen = lm.hf.as_ref().and_then(|h| h.generation.as_ref());
    let forced = (
        gen.and_then(|g| g.forced_bos_token_id),
        gen.and_then(|g| g.forced_eos_token_id),
    );
    let mut stops = StopMatcher::new(req.stop.clone());
    let mut utf8 = Utf8Stream::default();
    let mut ids = Vec::new();
    let mut ctx: Vec<u32> = if seq2seq {
        Vec::new()
    } else {
        req.prompt.clone()
    };
    let mut text = String::new();
    let t0 = std::time::Instant::now();
    let mut source = Source::new(lm, req, kv)?;
    let prompt_seconds = t0.elapsed().as_secs_f64();
    let mut finish = FinishReason::Length;
    // Text held back by the stop matcher is dropped only when a stop string matched.
    let mut stop_string = false;
    'outer: while ids.len() < req.max_tokens {
        if cancel.load(Ordering::Relaxed) || gone.get() {
            finish = FinishReason::Cancelled;
            break;
        }
        let step = source.step(lm, kv, &mut chain, &ctx, req.max_tokens - ids.len())?;
        let (rows, drafts, chosen) = match step {
            Step::Rows { rows, drafts } => (rows, drafts, None),
            Step::Chosen(t) => (vec![Vec::new()], Vec::new(), Some(t)),
        };
        for (i, row) in rows.iter().enumerate() {
            let tok = match chosen {
                Some(t) => t,
                None => {
                    // generation_config.json's forced tokens: the first (forced_bos) and the
                    // last allowed (forced_eos) new token, as transformers' logits processors
                    // force them.
                    let forced = match (ids.len(), forced) {
                        (0, (Some(b), _)) => Some(b),
                        (n, (_, Some(e))) if n + 1 == req.max_tokens && !req.ignore_eos => Some(e),
                        _ => None,
                    };
                    match (forced, constraint.as_mut()) {
                        (Some(t), None) if (t as usize) < row.len() => {
                            chain.accept(t);
                            t
                        }
                        (_, Some(c)) => c.sample(&mut chain, row)?,
                        _ => chain.sample(row),
                    }
                }
            };
            let confirmed = drafts.get(i) == Some(&tok);
            if !confirmed {
                source.settle(kv, i, tok)?;
            }
            ids.push(tok);
            ctx.push(tok);
            if !req.ignore_eos && eog.contains(&tok) {
                on_text(Some(tok), "");
                finish = FinishReason::Stop;
                break 'outer;
            }
            let bytes = lm.tokenizer.as_ref().map(|t| t.token_bytes(tok, false));
            let piece = utf8.push(&bytes.unwrap_or_default());
            match stops.push(&piece) {
                StopState::Continue { emit } => {
                    on_text(Some(tok), &emit);
                    text.push_str(&emit);
                }
                StopState::Stop { emit } => {
                    on_text(Some(tok), &emit);
                    text.push_str(&emit);
                    finish = FinishReason::Stop;
                    stop_string = true;
                    break 'outer;
                }
            }
            if constraint.as_ref().is_some_and(Constraint::is_finished) {
                finish = FinishReason::Stop;
                break 'outer;
            }
            if ids.len() >= req.max_tokens || (kv.next_pos >= kv.n_ctx && !kv.is_streaming()) {
                break 'outer;
            }
            if !confirmed {
                break;
            }
        }
    }
    if !stop_string {
        let mut rest = stops.push(&utf8.flush());
        let tail = match &mut rest {
            StopState::Continue { emit } | StopState::Stop { emit } => std::mem::take(emit),
        };
        let tail = tail + &stops.flush();
        on_text(None, &tail);
        text.push_str(&tail);
    }
    Ok(GenerateOutput {
        ids,
        text,
        finish,
        prompt_tokens: req.prompt.len(),
        speculative: source.stats(),
        prompt_seconds,
        decode_seconds: t0.elapsed().as_secs_f64() - prompt_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn utf8_stream_holds_partial_sequences() {
        let mut s = Utf8Stream::default();
        let e = "é🙂".as_bytes();
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.push(&e[1..3]), "é");
        assert_eq!(s.push(&e[3..]), "🙂");
        assert_eq!(s.push(b"ab"), "ab");
        assert_eq!(s.push(&[0xF0]), "");
        assert_eq!(s.flush(), "\u{FFFD}");
    }
}
