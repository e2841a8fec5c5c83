//! Generation: prompt prefill, then one token at a time through the sampler chain, with stop
//! conditions (max tokens, end-of-generation ids, stop strings, a completed constraint,
//! cancellation) and streaming of UTF-8-complete text.

use crate::load::LoadedModel;
use anyhow::Result;
use ferrolm_constrain::Constraint;
use ferrolm_model::{KvCache, Logits};
use ferrolm_sample::{SamplingParams, StopMatcher, StopState};
use std::sync::atomic::{AtomicBool, Ordering};

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
    if req.prompt.is_empty() {
        anyhow::bail!("the prompt is empty: give some text (or --ids) to start from");
    }
    let mut chain = req.sampling.build_chain();
    let mut constraint = req.constraint.clone();
    let seq2seq = lm.model.topology() == ferrolm_model::spec::Topology::EncoderDecoder;
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
    let mut text = String::new();
    let mut row = crate::search::first_logits(&lm.model, &req.prompt, lm.decoder_start(), kv)?;
    let mut finish = FinishReason::Length;
    // Text held back by the stop matcher is dropped only when a stop string matched.
    let mut stop_string = false;
    while ids.len() < req.max_tokens {
        if cancel.load(Ordering::Relaxed) {
            finish = FinishReason::Cancelled;
            break;
        }
        // generation_config.json's forced tokens: the first (forced_bos) and the last allowed
        // (forced_eos) new token, as transformers' logits processors force them.
        let forced = match (ids.len(), forced) {
            (0, (Some(b), _)) => Some(b),
            (n, (_, Some(e))) if n + 1 == req.max_tokens && !req.ignore_eos => Some(e),
            _ => None,
        };
        let tok = match (forced, constraint.as_mut()) {
            (Some(t), None) if (t as usize) < row.len() => {
                chain.accept(t);
                t
            }
            (_, Some(c)) => c.sample(&mut chain, &row)?,
            _ => chain.sample(&row),
        };
        ids.push(tok);
        if !req.ignore_eos && eog.contains(&tok) {
            finish = FinishReason::Stop;
            break;
        }
        let bytes = lm.tokenizer.as_ref().map(|t| t.token_bytes(tok, false));
        let piece = utf8.push(&bytes.unwrap_or_default());
        match stops.push(&piece) {
            StopState::Continue { emit } => {
                on_text(&emit);
                text.push_str(&emit);
            }
            StopState::Stop { emit } => {
                on_text(&emit);
                text.push_str(&emit);
                finish = FinishReason::Stop;
                stop_string = true;
                break;
            }
        }
        if constraint.as_ref().is_some_and(Constraint::is_finished) {
            finish = FinishReason::Stop;
            break;
        }
        if ids.len() >= req.max_tokens || kv.next_pos >= kv.n_ctx {
            break;
        }
        row = lm
            .model
            .forward(&[tok], kv, Logits::Last)?
            .flatten_all()?
            .to_vec1()?;
    }
    if !stop_string {
        let mut rest = stops.push(&utf8.flush());
        let tail = match &mut rest {
            StopState::Continue { emit } | StopState::Stop { emit } => std::mem::take(emit),
        };
        let tail = tail + &stops.flush();
        on_text(&tail);
        text.push_str(&tail);
    }
    Ok(GenerateOutput {
        ids,
        text,
        finish,
        prompt_tokens: req.prompt.len(),
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
