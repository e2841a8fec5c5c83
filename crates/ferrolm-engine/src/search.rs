//! Deterministic searches over any topology: greedy and beam search, for decoder-only models
//! (continuing a prompt) and encoder-decoder models (the encoder runs once on the input; the
//! decoder starts from its start token and cross-attends to the cached encoder keys/values).

use anyhow::{bail, Result};
use ferrolm_model::spec::Topology;
use ferrolm_model::{KvCache, Logits, Model};
use ferrolm_sample::beam::{beam_search, BeamHyp, BeamModel, BeamParams};

/// A model with its cache after the prompt (decoder-only) or after the encoder and the decoder
/// start token (encoder-decoder), and the logits for the first new token.
pub struct Primed<'m> {
    pub model: &'m Model,
    pub kv: KvCache,
    pub logits: Vec<f32>,
}

/// Runs the prompt. `decoder_start` is required for encoder-decoder models (the token the
/// decoder begins with; `generation_config.json`'s `decoder_start_token_id`).
pub fn prime<'m>(
    model: &'m Model,
    prompt: &[u32],
    decoder_start: Option<u32>,
    n_new: usize,
) -> Result<Primed<'m>> {
    if prompt.is_empty() {
        bail!("the prompt is empty; give at least one token");
    }
    let positions = match model.topology() {
        Topology::EncoderDecoder => 1 + n_new,
        _ => prompt.len() + n_new,
    };
    let mut kv = model.new_cache(positions);
    let logits = first_logits(model, prompt, decoder_start, &mut kv)?;
    Ok(Primed { model, kv, logits })
}

/// The logits for the first new token, `kv` holding what they come from: the prompt appended to
/// what `kv` holds (decoder-only), or (encoder-decoder) the encoder's reading of the prompt
/// with the decoder started from `decoder_start` (`kv` is reset).
pub fn first_logits(
    model: &Model,
    prompt: &[u32],
    decoder_start: Option<u32>,
    kv: &mut KvCache,
) -> Result<Vec<f32>> {
    let logits = match model.topology() {
        Topology::Decoder => model.forward(prompt, kv, Logits::Last)?,
        Topology::EncoderDecoder => {
            let start = decoder_start.ok_or_else(|| {
                anyhow::anyhow!("this encoder-decoder model has no decoder start token (decoder_start_token_id in config.json or generation_config.json)")
            })?;
            let enc = model.encode(prompt, None)?;
            model.start_decoder(&enc, kv)?;
            model.forward(&[start], kv, Logits::Last)?
        }
        Topology::Encoder => bail!(
            "{} is an encoder (no LM head); use embed",
            model.config.arch
        ),
    };
    Ok(logits.flatten_all()?.to_vec1()?)
}

/// The `n` greedy (argmax, lowest id on ties) continuation tokens.
pub fn greedy(
    model: &Model,
    prompt: &[u32],
    decoder_start: Option<u32>,
    n: usize,
) -> Result<Vec<u32>> {
    let mut p = prime(model, prompt, decoder_start, n)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let tok = argmax(&p.logits);
        out.push(tok);
        if i + 1 < n {
            p.logits = model
                .forward(&[tok], &mut p.kv, Logits::Last)?
                .flatten_all()?
                .to_vec1()?;
        }
    }
    Ok(out)
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// One KV cache per beam, forked from the primed cache as the search re-forms its beams.
struct Beams<'m> {
    primed: Option<Primed<'m>>,
    model: &'m Model,
    caches: Vec<KvCache>,
}

impl BeamModel for Beams<'_> {
    fn start(&mut self) -> Result<Vec<f32>> {
        let p = self
            .primed
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("beam search started twice"))?;
        Ok(std::mem::take(&mut p.logits))
    }
    fn advance(&mut self, parents: &[usize], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        if let Some(p) = self.primed.take() {
            self.caches = vec![p.kv];
        }
        // Beams share their history's full blocks (copy on write): only the last, partial
        // block of each is copied.
        let mut next: Vec<KvCache> = parents
            .iter()
            .map(|&i| self.caches[i].fork(ferrolm_model::kv::PAGE_ROWS))
            .collect();
        let mut rows = Vec::with_capacity(tokens.len());
        for (kv, &t) in next.iter_mut().zip(tokens) {
            rows.push(
                self.model
                    .forward(&[t], kv, Logits::Last)?
                    .flatten_all()?
                    .to_vec1()?,
            );
        }
        self.caches = next;
        Ok(rows)
    }
}

/// Beam search equal to Hugging Face `generate(num_beams=..)`: best first, new tokens only.
pub fn beam(
    model: &Model,
    prompt: &[u32],
    decoder_start: Option<u32>,
    params: &BeamParams,
) -> Result<Vec<BeamHyp>> {
    params.validate()?;
    let primed = prime(model, prompt, decoder_start, params.max_new_tokens)?;
    let mut b = Beams {
        primed: Some(primed),
        model,
        caches: Vec::new(),
    };
    beam_search(params, &mut b)
}
