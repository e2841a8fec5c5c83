//! Decoding rules beyond "sample the next row": where the logits rows come from and who
//! picks the token.
//!
//! - [`Decoding::Sample`]: one row per step, the sampler chain picks (greedy or sampling).
//! - [`Speculative`]: a drafter proposes up to `max` tokens; one forward pass scores them all,
//!   and the chain picks at each position in turn as it would without drafting, stopping at
//!   the first token that differs from the draft. The chain sees the same rows in the same
//!   state, so the output is the output of plain decoding: identical ids for greedy, and for
//!   sampling the same tokens at the same seed (with a deterministic draft, "sample and
//!   compare" is exactly speculative sampling's accept/reject rule). Drafters: prompt lookup
//!   (n-grams of the context), the model's own first layers (self-speculative early exit),
//!   or a smaller model with the same vocabulary.
//! - [`Decoding::Contrastive`]: contrastive search (Su et al. 2022, as transformers'
//!   `penalty_alpha` + `top_k`): each of the `k` most likely tokens is run one step ahead; the
//!   chosen one maximises `(1 - alpha) p - alpha * max cos(h, context)`.
//! - [`Decoding::Dola`]: DoLa (Chuang et al. 2023, as transformers' `dola_layers`): the next
//!   row is `log p_final - log p_premature` under the relative-top plausibility filter, the
//!   premature layer chosen per step by the largest Jensen-Shannon divergence.

use crate::load::LoadedModel;
use anyhow::{bail, Result};
use ferrolm_model::{KvCache, Logits, Model, Probe};
use std::sync::Arc;

/// How the next token is decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Decoding {
    /// The sampler chain on the model's logits.
    #[default]
    Sample,
    /// Contrastive search: `alpha` in [0, 1] (0 is greedy), `k` candidates (>= 1).
    Contrastive { alpha: f32, k: usize },
    /// DoLa over these candidate premature layers.
    Dola { layers: DolaLayers },
}

/// DoLa's candidate premature layers, as transformers names them.
#[derive(Clone, Debug, PartialEq)]
pub enum DolaLayers {
    Low,
    High,
    /// `hidden_states` indices (0 = the embedding output, `i` = after block `i - 1`).
    List(Vec<usize>),
}

impl std::str::FromStr for DolaLayers {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "low" => DolaLayers::Low,
            "high" => DolaLayers::High,
            list => DolaLayers::List(
                list.split(',')
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "DoLa layers '{s}': give low, high, or comma-separated layer numbers"
                        )
                    })?,
            ),
        })
    }
}

impl DolaLayers {
    /// The candidate layers for a model of `n` blocks, as transformers' `_dola_decoding`:
    /// `low` = `range(start, n / 2, 2)`, `high` = `range(n / 2, n, 2)` (for `n <= 40`; else
    /// the first / last 20 layers, every other one), where `start` skips the embedding output
    /// when the head is tied to the embeddings (it would contrast the logits with themselves).
    pub fn resolve(&self, n: usize, tied: bool) -> Result<Vec<usize>> {
        let start = match (tied, n) {
            (false, _) => 0,
            (true, n) if n > 2 => 2,
            (true, 2) => 1,
            _ => 0,
        };
        let layers: Vec<usize> = match self {
            DolaLayers::Low if start == n / 2 => vec![start],
            DolaLayers::Low if n <= 40 => (start..n / 2).step_by(2).collect(),
            DolaLayers::Low => (start..20).step_by(2).collect(),
            DolaLayers::High if n <= 40 => (n / 2..n).step_by(2).collect(),
            DolaLayers::High => (n - 20..n).step_by(2).collect(),
            DolaLayers::List(l) => l.iter().copied().filter(|&i| i < n).collect(),
        };
        if layers.is_empty() {
            bail!("no DoLa premature layer below the final layer ({n}); give layers 0..{n}");
        }
        Ok(layers)
    }
}

/// Where draft tokens come from.
#[derive(Clone)]
pub enum Draft {
    /// Prompt lookup: the tokens that followed the latest earlier occurrence of the context's
    /// last `n`-gram, `n` from `max_ngram` down to 1.
    Ngram { max_ngram: usize },
    /// The model's own first `layer` blocks, then its final norm and head.
    EarlyExit { layer: usize },
    /// Another model with the same vocabulary (greedy drafts).
    Model(Arc<LoadedModel>),
}

/// Speculative decoding: drafts of up to `max` tokens, verified in one pass.
#[derive(Clone)]
pub struct Speculative {
    pub draft: Draft,
    pub max: usize,
}

impl std::fmt::Debug for Speculative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = match &self.draft {
            Draft::Ngram { max_ngram } => format!("ngram({max_ngram})"),
            Draft::EarlyExit { layer } => format!("early-exit({layer})"),
            Draft::Model(m) => format!("model({})", m.name),
        };
        write!(f, "Speculative({d}, max {})", self.max)
    }
}

/// Drafted and accepted token counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Verification passes.
    pub steps: usize,
    pub drafted: usize,
    pub accepted: usize,
}

impl SpecStats {
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// Proposes continuations of a context.
pub(crate) trait Drafter {
    /// Up to `k` tokens likely to follow `ctx` (may be fewer, or none).
    fn draft(&mut self, ctx: &[u32], k: usize) -> Result<Vec<u32>>;
}

struct NgramDrafter {
    max_ngram: usize,
}

impl Drafter for NgramDrafter {
    fn draft(&mut self, ctx: &[u32], k: usize) -> Result<Vec<u32>> {
        Ok(ngram_draft(ctx, self.max_ngram, k))
    }
}

/// Prompt lookup: for `n` from `max_ngram` down to 1, the latest earlier occurrence of the
/// last `n` tokens of `ctx`; returns up to `k` tokens that followed it.
pub fn ngram_draft(ctx: &[u32], max_ngram: usize, k: usize) -> Vec<u32> {
    let len = ctx.len();
    for n in (1..=max_ngram.min(len.saturating_sub(1))).rev() {
        let tail = &ctx[len - n..];
        // Occurrences that end before the tail itself, latest first.
        for start in (0..len - n).rev() {
            if &ctx[start..start + n] == tail {
                let from = start + n;
                return ctx[from..(from + k).min(len)].to_vec();
            }
        }
    }
    Vec::new()
}

/// A model drafting greedily on its own cache, kept in step with the context by its longest
/// common prefix (rejected drafts are taken back).
struct ModelDrafter<'m> {
    model: &'m Model,
    exit: Option<usize>,
    kv: KvCache,
    fed: Vec<u32>,
}

impl ModelDrafter<'_> {
    fn run(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.fed.extend_from_slice(tokens);
        match self.exit {
            None => Ok(self
                .model
                .forward(tokens, &mut self.kv, Logits::Last)?
                .flatten_all()?
                .to_vec1()?),
            Some(layer) => {
                let mut probe = Probe {
                    exit: Some(layer),
                    ..Probe::default()
                };
                let h = self.model.forward_probe(tokens, &mut self.kv, &mut probe)?;
                let c = self.model.config.hidden;
                self.model.logits_rows(&h[h.len() - c..])
            }
        }
    }
}

impl Drafter for ModelDrafter<'_> {
    fn draft(&mut self, ctx: &[u32], k: usize) -> Result<Vec<u32>> {
        let common = self
            .fed
            .iter()
            .zip(ctx)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ctx.len().saturating_sub(1));
        self.kv.truncate(common)?;
        self.fed.truncate(common);
        // Long contexts go in pieces of the model's micro-batch.
        let mut row = Vec::new();
        for chunk in ctx[common..].chunks(512) {
            row = self.run(chunk)?;
        }
        let mut out = Vec::with_capacity(k);
        while out.len() < k && self.kv.next_pos < self.kv.n_ctx {
            let t = ferrolm_sample::argmax(&row);
            out.push(t);
            if out.len() < k {
                row = self.run(&[t])?;
            }
        }
        Ok(out)
    }
}

/// Checks a decoding rule and speculative setting against the model before any work, naming
/// the option at fault (`decoding`, `dola_layers`, `penalty_alpha`, `speculative`).
pub fn check(
    lm: &LoadedModel,
    rule: &Decoding,
    spec: Option<&Speculative>,
) -> Result<(), (&'static str, anyhow::Error)> {
    let n = lm.model.n_blocks();
    if lm.model.topology() != ferrolm_model::spec::Topology::Decoder
        && (*rule != Decoding::Sample || spec.is_some())
    {
        let what = if spec.is_some() {
            "speculative"
        } else {
            "decoding"
        };
        return Err((what, anyhow::anyhow!("{what} is for decoder-only models")));
    }
    match rule {
        Decoding::Dola { layers } => {
            layers
                .resolve(n, lm.model.config.tied_embeddings)
                .map_err(|e| ("dola_layers", e))?;
        }
        &Decoding::Contrastive { alpha, k } if !(0.0..=1.0).contains(&alpha) || k == 0 => {
            return Err((
                "penalty_alpha",
                anyhow::anyhow!("contrastive search needs 0 <= penalty_alpha <= 1 and top_k >= 1"),
            ))
        }
        _ => {}
    }
    if let Some(Speculative {
        draft: Draft::EarlyExit { layer },
        ..
    }) = spec
    {
        if *layer == 0 || *layer >= n {
            return Err((
                "speculative",
                anyhow::anyhow!(
                    "early-exit layer {layer} is out of range: this model has {n} layers; give 1..{}",
                    n - 1
                ),
            ));
        }
    }
    Ok(())
}

/// Builds the drafter for `spec` against the model `lm` whose context holds `n_ctx` positions.
pub(crate) fn drafter<'a>(
    spec: &'a Speculative,
    lm: &'a LoadedModel,
    n_ctx: usize,
) -> Result<Box<dyn Drafter + 'a>> {
    if spec.max == 0 {
        bail!("a speculative draft needs at least 1 token (--draft-max)");
    }
    let slack = spec.max + 1;
    Ok(match &spec.draft {
        Draft::Ngram { max_ngram } => {
            if *max_ngram == 0 {
                bail!("the n-gram drafter needs n >= 1");
            }
            Box::new(NgramDrafter {
                max_ngram: *max_ngram,
            })
        }
        // The layer's range is checked by `check`.
        Draft::EarlyExit { layer } => {
            let mut kv = lm.model.new_cache(n_ctx);
            kv.set_slack(slack);
            Box::new(ModelDrafter {
                model: &lm.model,
                exit: Some(*layer),
                kv,
                fed: Vec::new(),
            })
        }
        Draft::Model(d) => {
            check_same_vocab(lm, d)?;
            let mut kv = d.model.new_cache(n_ctx);
            kv.set_slack(slack);
            Box::new(ModelDrafter {
                model: &d.model,
                exit: None,
                kv,
                fed: Vec::new(),
            })
        }
    })
}

/// A draft model must speak the target's vocabulary: same size (up to padding of the head)
/// and the same bytes for every token the tokenizers share.
fn check_same_vocab(lm: &LoadedModel, d: &LoadedModel) -> Result<()> {
    if d.model.topology() != ferrolm_model::spec::Topology::Decoder {
        bail!("the draft model {} is not a decoder-only model", d.name);
    }
    let (va, vb) = (lm.model.config.vocab_size, d.model.config.vocab_size);
    let differ = match (lm.tokenizer.as_ref(), d.tokenizer.as_ref()) {
        (Some(a), Some(b)) if a.vocab_size() == b.vocab_size() => {
            (0..a.vocab_size() as u32).find(|&t| a.token_bytes(t, true) != b.token_bytes(t, true))
        }
        (Some(a), Some(b)) => Some(a.vocab_size().min(b.vocab_size()) as u32),
        // Token ids only (no tokenizers): the vocabularies must at least be the same size.
        _ => None,
    };
    if va != vb || differ.is_some() {
        bail!(
            "the draft model {} has a different vocabulary from {} ({vb} vs {va} tokens{}); use a draft model from the same family",
            d.name,
            lm.name,
            differ.map(|t| format!(", token {t} differs")).unwrap_or_default()
        );
    }
    Ok(())
}

/// DoLa's next-token scores from the final logits and the candidate layers' logits (each a
/// full row): transformers' `_dola_select_contrast` + `_relative_top_filter` (relative top
/// 0.1: tokens below a tenth of the best final probability get `-inf`).
pub fn dola_contrast(final_logits: &[f32], premature: &[Vec<f32>]) -> Vec<f32> {
    let lf = log_softmax(final_logits);
    let chosen = if premature.len() == 1 {
        0
    } else {
        let pf: Vec<f64> = lf.iter().map(|&x| x.exp()).collect();
        let v = lf.len() as f64;
        let mut best = (0, f64::NEG_INFINITY);
        for (i, row) in premature.iter().enumerate() {
            let lp = log_softmax(row);
            // JS = (KL(m || final) + KL(m || premature)) / 2 with m the average, each KL as
            // torch's kl_div(log q, m) = m (log m - log q), averaged over the vocabulary.
            let (mut kl1, mut kl2) = (0.0f64, 0.0f64);
            for ((&a, &lq), &pa) in lf.iter().zip(&lp).zip(&pf) {
                let m = 0.5 * (pa + lq.exp());
                if m > 0.0 {
                    let lm = m.ln();
                    kl1 += m * (lm - a);
                    kl2 += m * (lm - lq);
                }
            }
            let js = 0.5 * (kl1 / v + kl2 / v);
            if js > best.1 {
                best = (i, js);
            }
        }
        best.0
    };
    let lb = log_softmax(&premature[chosen]);
    let max = lf.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let thresh = max + 0.1f64.ln();
    lf.iter()
        .zip(&lb)
        .map(|(&f, &b)| {
            if f < thresh {
                f32::NEG_INFINITY
            } else {
                (f - b) as f32
            }
        })
        .collect()
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// The index of the contrastive-search choice: `(1 - alpha) * probs[i] - alpha * max_j
/// cos(cands[i], context[j])`, first best on ties (as `torch.max`). `context` rows and
/// `cands` rows are `C` wide; `context` rows are already unit length.
pub fn contrastive_pick(
    probs: &[f32],
    cands: &[f32],
    context: &[f32],
    c: usize,
    alpha: f32,
) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, (h, &p)) in cands.chunks_exact(c).zip(probs).enumerate() {
        let h = unit(h);
        let sim = context
            .chunks_exact(c)
            .map(|r| r.iter().zip(&h).map(|(a, b)| a * b).sum::<f32>())
            .fold(f32::NEG_INFINITY, f32::max);
        let score = (1.0 - alpha) * p - alpha * sim;
        if score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

/// `x / |x|` (a zero row stays zero).
pub fn unit(x: &[f32]) -> Vec<f32> {
    let n = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    let inv = if n > 0.0 { 1.0 / n } else { 0.0 };
    x.iter().map(|v| v * inv).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_lookup_takes_the_latest_longest_match() {
        let ctx = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3];
        // "1 2 3" last occurred at 4..7, followed by 7 8 5.
        assert_eq!(ngram_draft(&ctx, 3, 2), vec![7, 8]);
        assert_eq!(ngram_draft(&ctx, 3, 10), vec![7, 8, 5, 1, 2, 3]);
        // No 2-gram match: falls back to 1-grams.
        assert_eq!(ngram_draft(&[4, 6, 5, 4], 2, 3), vec![6, 5, 4]);
        assert!(ngram_draft(&[1, 2, 3], 3, 4).is_empty());
        assert!(ngram_draft(&[], 3, 4).is_empty());
        assert!(ngram_draft(&[5], 3, 4).is_empty());
    }

    #[test]
    fn dola_layers_as_transformers() {
        assert_eq!(
            DolaLayers::Low.resolve(30, true).unwrap(),
            vec![2, 4, 6, 8, 10, 12, 14]
        );
        assert_eq!(
            DolaLayers::High.resolve(30, true).unwrap(),
            vec![15, 17, 19, 21, 23, 25, 27, 29]
        );
        assert_eq!(DolaLayers::Low.resolve(4, false).unwrap(), vec![0]);
        assert_eq!(DolaLayers::Low.resolve(2, true).unwrap(), vec![1]);
        assert_eq!(DolaLayers::High.resolve(4, false).unwrap(), vec![2]);
        assert_eq!(
            DolaLayers::High.resolve(60, false).unwrap(),
            (40..60).step_by(2).collect::<Vec<_>>()
        );
        assert_eq!(
            "1,3,9"
                .parse::<DolaLayers>()
                .unwrap()
                .resolve(4, false)
                .unwrap(),
            vec![1, 3]
        );
        assert!("9"
            .parse::<DolaLayers>()
            .unwrap()
            .resolve(4, false)
            .is_err());
        assert!("x".parse::<DolaLayers>().is_err());
    }

    #[test]
    fn dola_single_layer_is_filtered_difference() {
        let f = [2.0f32, 1.0, -5.0];
        let b = [1.0f32, 1.0, 1.0];
        let out = dola_contrast(&f, &[b.to_vec()]);
        let lf = log_softmax(&f);
        let lb = log_softmax(&b);
        assert!((out[0] as f64 - (lf[0] - lb[0])).abs() < 1e-6);
        assert!((out[1] as f64 - (lf[1] - lb[1])).abs() < 1e-6);
        // p(2) / p(0) = e^-7 < 0.1: filtered.
        assert_eq!(out[2], f32::NEG_INFINITY);
    }

    #[test]
    fn dola_picks_the_most_divergent_layer() {
        let f = [3.0f32, 0.0, 0.0];
        let near = vec![2.9f32, 0.0, 0.0];
        let far = vec![0.0f32, 3.0, 0.0];
        let out = dola_contrast(&f, &[near, far.clone()]);
        assert_eq!(out, dola_contrast(&f, &[far]));
    }

    #[test]
    fn contrastive_alpha_zero_is_most_likely_and_penalty_prefers_novel() {
        let ctx = unit(&[1.0, 0.0]);
        let cands = [1.0, 0.0, 0.0, 1.0]; // candidate 0 repeats the context, 1 is orthogonal
        assert_eq!(contrastive_pick(&[0.6, 0.4], &cands, &ctx, 2, 0.0), 0);
        assert_eq!(contrastive_pick(&[0.6, 0.4], &cands, &ctx, 2, 0.6), 1);
    }
}
