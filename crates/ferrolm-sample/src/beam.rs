//! Beam search, step for step the one of Hugging Face transformers 5.x
//! (`generate(num_beams=..)`, i.e. `GenerationMixin._beam_search`, with `do_sample=False`).
//!
//! The search is model-agnostic: the caller owns the model and one KV cache per beam, and
//! implements [`BeamModel`]; [`beam_search`] only sees logits rows. Legend: `N` = `num_beams`,
//! `V` = vocabulary size, `K` = `N * max(2, 1 + eos.len())` candidates kept per step,
//! `t` = number of tokens generated so far.
//!
//! One step (HF's names in brackets):
//!
//! 1. log-probs = `log_softmax(logits)` in f32, per running beam; no logits processor is applied
//!    (HF applies none by default; `min_length`, `repetition_penalty`, `no_repeat_ngram_size`,
//!    ... would act on these log-probs, after the softmax and without renormalising).
//! 2. Candidate score = beam score + log-prob (f32). At the start only beam 0 is live: the other
//!    `N - 1` beams (copies of the prompt) start at `-1e9`, so their candidates lose.
//! 3. The top `K` candidates over the flattened `N x V` scores (`_get_top_k_continuations`).
//!    A candidate "hits a stopping criterion" if its token is an eos, or if `t + 1` reaches
//!    `max_new_tokens`.
//! 4. New running beams: the top `N` candidates after adding `-1e9` to those that hit
//!    (`_get_running_beams_for_next_iteration`).
//! 5. Finished hypotheses (`_update_finished_beams`): a candidate ranked within the first `N`
//!    of the `K` that hit becomes a hypothesis with score `sum_logprobs / (t + 1) ^
//!    length_penalty`: the length is the number of generated tokens, the eos included, the
//!    prompt (or an encoder-decoder's start token) not. The `N` old hypotheses and the `K`
//!    new ones (`-1e9` added to those that do not qualify) are merged and the best `N` kept.
//!    At `max_new_tokens` every candidate hits, so the best `N` unfinished continuations are
//!    added this way.
//! 6. Stop (`_check_early_stop_heuristic`, `_beam_search_has_unfinished_sequences`) when any of:
//!    - all `N` hypothesis slots are filled and `early_stopping` is `True`;
//!    - all `N` slots are filled and `best_running / L ^ length_penalty <= worst hypothesis`,
//!      where `best_running` is the best running beam's sum of log-probs and `L` is `t + 1`,
//!      except for `Never` with `length_penalty > 0`, where `L = max_new_tokens` (this
//!      condition, once true, stays true);
//!    - every one of the `K` candidates hit (that is, at `max_new_tokens`).
//!
//! The result is the first `num_return` hypothesis slots, best first, with HF's
//! `sequences_scores` as their score.
//!
//! Ties: `torch.topk` on CPU orders equal values in no documented order (it varies with the
//! size of the input), so exact ties cannot be matched in general. Here every top-k is a stable
//! sort: equal scores keep their index order (beam-major, then token id; old hypotheses before
//! new ones). Ties matter only between exactly equal f32 scores, which real models rarely give.
//!
//! Parameters of HF that have no field here: `num_beams == 1` makes HF's `generate` run
//! greedy search instead (here it runs this algorithm with one beam); `prompt_len` is not
//! needed, since neither the length penalty nor `max_new_tokens` depends on it.

use std::cmp::Ordering;

use anyhow::{bail, ensure, Result};

use crate::TokenId;

/// HF's score for beams and hypotheses that must lose (`-1.0e9`).
const LOSE: f32 = -1.0e9;

/// When the search may stop before `max_new_tokens`: HF's `early_stopping` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `True`: stop as soon as there are `num_beams` finished hypotheses.
    True,
    /// `False` (HF's default): stop when the best running beam, scored at its current
    /// length, cannot beat the worst finished hypothesis.
    #[default]
    False,
    /// `"never"`: as `False`, but with a positive length penalty the running beam is scored at
    /// `max_new_tokens`, the best it could reach; this is the exact (canonical) stopping rule.
    Never,
}

/// Beam search parameters; the defaults are HF's.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamParams {
    /// Beams kept per step, >= 1. Default 1 (HF then runs greedy search; see the module docs).
    pub num_beams: usize,
    /// Hypotheses returned, in 1..=`num_beams`. Default 1.
    pub num_return: usize,
    /// Exponent of the generated length dividing a hypothesis' sum of log-probs: > 0 favours
    /// longer, < 0 shorter sequences. Finite. Default 1.
    pub length_penalty: f32,
    /// Stopping rule. Default [`EarlyStopping::False`].
    pub early_stopping: EarlyStopping,
    /// Tokens generated at most, >= 1. Default 20.
    pub max_new_tokens: usize,
    /// End-of-sequence tokens; empty: none.
    pub eos: Vec<TokenId>,
}

impl Default for BeamParams {
    fn default() -> Self {
        Self {
            num_beams: 1,
            num_return: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            max_new_tokens: 20,
            eos: Vec::new(),
        }
    }
}

impl BeamParams {
    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.num_beams >= 1, "num_beams must be >= 1, got 0");
        ensure!(
            (1..=self.num_beams).contains(&self.num_return),
            "num_return must be in 1..=num_beams ({}), got {}",
            self.num_beams,
            self.num_return
        );
        ensure!(
            self.length_penalty.is_finite(),
            "length_penalty must be finite, got {}",
            self.length_penalty
        );
        ensure!(
            self.max_new_tokens >= 1,
            "max_new_tokens must be >= 1, got 0"
        );
        Ok(())
    }

    /// `K`: candidates kept per step, enough that `num_beams` of them do not end in an eos.
    fn kept_per_step(&self) -> usize {
        self.num_beams * 2.max(1 + self.eos.len())
    }
}

/// One returned hypothesis.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamHyp {
    /// Generated tokens only (no prompt), including a final eos when it ended on one.
    pub ids: Vec<TokenId>,
    /// `sum of log-probs / ids.len() ^ length_penalty` (HF's `sequences_scores`).
    pub score: f32,
}

/// The model side of [`beam_search`]: the caller owns the model and one KV cache per beam.
pub trait BeamModel {
    /// Raw logits (length `V`) for the first generated token, after the prompt: one row.
    fn start(&mut self) -> Result<Vec<f32>>;

    /// Re-forms the beams: new beam `i` is old beam `parents[i]` followed by `tokens[i]` (the
    /// caller copies or reorders its KV caches to match), and returns raw next-token logits for
    /// each new beam (`parents.len()` rows of length `V`). Several new beams may share a
    /// parent. On the first call the only old beam is the prompt, and every parent is 0.
    fn advance(&mut self, parents: &[usize], tokens: &[TokenId]) -> Result<Vec<Vec<f32>>>;
}

/// Runs HF's beam search; returns `num_return` hypotheses, best first.
///
/// Calls `model.start()` once and `model.advance` once per step but the last, always with
/// `num_beams` beams. Errors if `p` is invalid, if the model fails or returns rows of the wrong
/// number or length, if a row has no finite maximum (NaN counts as `-inf`), or if
/// `num_beams * V` is smaller than the `num_beams * max(2, 1 + eos.len())` candidates kept per
/// step (HF's `torch.topk` fails there too).
///
/// In degenerate cases (e.g. rows that are mostly `-inf`) fewer than `num_return` hypotheses may
/// ever qualify; the remaining slots come back as HF returns them: unfinished sequences or empty
/// placeholders, scored near `-1e9`.
pub fn beam_search(p: &BeamParams, model: &mut dyn BeamModel) -> Result<Vec<BeamHyp>> {
    p.validate()?;
    let mut search = Search::new(p);
    // At step 0 all beams are the prompt: one row stands for all of them.
    let mut rows = vec![log_softmax(&model.start()?)?];
    let vocab = rows[0].len();
    ensure!(
        p.num_beams * vocab >= p.kept_per_step(),
        "num_beams * vocab ({} * {vocab}) must be >= num_beams * max(2, 1 + eos count) ({})",
        p.num_beams,
        p.kept_per_step()
    );
    for t in 0..p.max_new_tokens {
        let Some((mut parents, tokens)) = search.step(&rows, t) else {
            break;
        };
        if t == 0 {
            parents.fill(0);
        }
        let logits = model.advance(&parents, &tokens)?;
        ensure!(
            logits.len() == p.num_beams,
            "advance returned {} logits rows for {} beams",
            logits.len(),
            p.num_beams
        );
        rows = logits
            .iter()
            .map(|l| log_softmax(l))
            .collect::<Result<_>>()?;
        if let Some(bad) = rows.iter().find(|r| r.len() != vocab) {
            bail!(
                "advance returned a logits row of length {}, expected {vocab}",
                bad.len()
            );
        }
    }
    Ok(search.finished[..p.num_return]
        .iter()
        .map(|s| BeamHyp {
            ids: s.ids.clone(),
            score: s.score,
        })
        .collect())
}

/// A token sequence (generated tokens only) and its score.
#[derive(Debug, Clone)]
struct Beam {
    ids: Vec<TokenId>,
    score: f32,
}

/// A hypothesis slot; `finished` is false for the `-1e9` placeholders HF starts with.
#[derive(Debug, Clone)]
struct Slot {
    ids: Vec<TokenId>,
    score: f32,
    finished: bool,
}

/// The search state, HF's tensors for a batch of one.
struct Search<'a> {
    p: &'a BeamParams,
    /// `[N]`, best first after step 0 (`running_sequences`, `running_beam_scores`).
    running: Vec<Beam>,
    /// `[N]`, best first (`sequences`, `beam_scores`, `is_sent_finished`).
    finished: Vec<Slot>,
    /// `is_early_stop_heuristic_unsatisfied`.
    can_improve: bool,
}

impl<'a> Search<'a> {
    fn new(p: &'a BeamParams) -> Self {
        let running = (0..p.num_beams)
            .map(|b| Beam {
                ids: Vec::new(),
                score: if b == 0 { 0.0 } else { LOSE },
            })
            .collect();
        let placeholder = Slot {
            ids: Vec::new(),
            score: LOSE,
            finished: false,
        };
        Self {
            p,
            running,
            finished: vec![placeholder; p.num_beams],
            can_improve: true,
        }
    }

    /// One step on `rows` (`[N][V]` log-probs, or one row shared by all beams at step 0), with
    /// `t` tokens generated so far. Returns the new beams' parents and tokens, or `None` when
    /// the search is over.
    fn step(&mut self, rows: &[Vec<f32>], t: usize) -> Option<(Vec<usize>, Vec<TokenId>)> {
        let p = self.p;
        let n = p.num_beams;
        let vocab = rows[0].len();
        let last_step = t + 1 >= p.max_new_tokens;

        // Top-K continuations over the flattened [N * V] scores.
        let scores: Vec<f32> = (0..n)
            .flat_map(|b| {
                let beam_score = self.running[b].score;
                rows[b.min(rows.len() - 1)]
                    .iter()
                    .map(move |&lp| lp + beam_score)
            })
            .collect();
        let top = top_k_desc(&scores, p.kept_per_step());
        let parent: Vec<usize> = top.iter().map(|&i| i / vocab).collect();
        let token: Vec<TokenId> = top.iter().map(|&i| (i % vocab) as TokenId).collect();
        let score: Vec<f32> = top.iter().map(|&i| scores[i]).collect();
        let hits: Vec<bool> = token
            .iter()
            .map(|tok| last_step || p.eos.contains(tok))
            .collect();
        let extend = |k: usize| {
            let mut ids = self.running[parent[k]].ids.clone();
            ids.push(token[k]);
            ids
        };

        // Running beams: the best N candidates that did not hit.
        let live: Vec<f32> = score
            .iter()
            .zip(&hits)
            .map(|(&s, &h)| if h { s + LOSE } else { s })
            .collect();
        let next = top_k_desc(&live, n);
        let running: Vec<Beam> = next
            .iter()
            .map(|&k| Beam {
                ids: extend(k),
                score: live[k],
            })
            .collect();

        // Finished hypotheses: merge the old slots with the candidates that qualify.
        let len_pow = length_pow(t + 1, p.length_penalty);
        let all_filled = self.finished.iter().all(|s| s.finished);
        let full = all_filled && p.early_stopping == EarlyStopping::True;
        let mut merged: Vec<f32> = self.finished.iter().map(|s| s.score).collect();
        for (k, &h) in hits.iter().enumerate() {
            let mut s = score[k] / len_pow;
            if full {
                s += LOSE;
            }
            if !self.can_improve {
                s += LOSE;
            }
            if !(h && k < n) {
                s += LOSE;
            }
            merged.push(s);
        }
        let finished: Vec<Slot> = top_k_desc(&merged, n)
            .into_iter()
            .map(|m| match m.checked_sub(n) {
                None => self.finished[m].clone(),
                Some(k) => Slot {
                    ids: extend(k),
                    score: merged[m],
                    finished: hits[k] && k < n,
                },
            })
            .collect();

        // Stopping rule, at the new length t + 1.
        let best_len = match p.early_stopping {
            EarlyStopping::Never if p.length_penalty > 0.0 => p.max_new_tokens,
            _ => t + 1,
        };
        let best_running = running[0].score / length_pow(best_len, p.length_penalty);
        let worst = finished
            .iter()
            .map(|s| s.score)
            .fold(f32::INFINITY, f32::min);
        self.can_improve &= finished
            .iter()
            .any(|s| best_running > if s.finished { worst } else { LOSE });
        let all_filled = finished.iter().all(|s| s.finished);
        let open = !(all_filled && p.early_stopping == EarlyStopping::True);
        let can_continue = !hits.iter().all(|&h| h);

        let parents = next.iter().map(|&k| parent[k]).collect();
        let tokens = next.iter().map(|&k| token[k]).collect();
        self.running = running;
        self.finished = finished;
        (self.can_improve && open && can_continue).then_some((parents, tokens))
    }
}

/// `len ^ length_penalty` as HF computes it (a Python float), rounded to f32 as torch does
/// when it divides an f32 tensor by it.
fn length_pow(len: usize, length_penalty: f32) -> f32 {
    (len as f64).powf(f64::from(length_penalty)) as f32
}

/// `log_softmax` in f32 the way torch's CPU kernel rounds it: `(x - max) - ln(sum exp(x - max))`,
/// the sum taken in f64 and rounded once. NaN counts as `-inf`; a row without a finite maximum
/// is an error.
fn log_softmax(logits: &[f32]) -> Result<Vec<f32>> {
    let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let max = logits
        .iter()
        .map(|&x| clean(x))
        .fold(f32::NEG_INFINITY, f32::max);
    ensure!(
        max.is_finite(),
        "logits row (length {}) has no finite maximum: {max}",
        logits.len()
    );
    let sum: f64 = logits
        .iter()
        .map(|&x| f64::from(clean(x) - max).exp())
        .sum();
    let log_sum = sum.ln() as f32;
    Ok(logits.iter().map(|&x| (clean(x) - max) - log_sum).collect())
}

/// Indices of the `k` largest values, largest first; equal values keep their index order.
/// Uses `total_cmp`, with `-0.0` read as `0.0` (NaN, which cannot occur here, sorts first).
fn top_k_desc(values: &[f32], k: usize) -> Vec<usize> {
    let key = |i: usize| if values[i] == 0.0 { 0.0 } else { values[i] };
    let order = |&a: &usize, &b: &usize| -> Ordering { key(b).total_cmp(&key(a)).then(a.cmp(&b)) };
    let mut idx: Vec<usize> = (0..values.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k, order);
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
    idx
}

#[cfg(test)]
#[path = "beam_tests.rs"]
mod tests;
