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
mod tests {
    use super::*;

    /// The toy LM of `scripts/beam_reference.py`: logits are a function of the last token and
    /// the sequence length (prompt included), with no ties inside a row.
    struct ToyModel {
        vocab: usize,
        /// `[N][len]`, prompt included.
        beams: Vec<Vec<TokenId>>,
        advances: usize,
    }

    const TOY_EOS: usize = 0;

    impl ToyModel {
        fn new(vocab: usize, prompt: &[TokenId]) -> Self {
            assert!(
                vocab < 31,
                "rows of the toy are tie-free only for vocab < 31"
            );
            Self {
                vocab,
                beams: vec![prompt.to_vec()],
                advances: 0,
            }
        }

        fn logits(&self, seq: &[TokenId]) -> Vec<f32> {
            let (last, len) = (*seq.last().unwrap() as usize, seq.len());
            (0..self.vocab)
                .map(|v| {
                    let mut k = (7 * v + 11 * last + 5 * len) % 31;
                    if v == TOY_EOS && (len + last) % 4 == 0 {
                        k += 31;
                    }
                    k as f32 * 0.09f32
                })
                .collect()
        }
    }

    impl BeamModel for ToyModel {
        fn start(&mut self) -> Result<Vec<f32>> {
            Ok(self.logits(&self.beams[0]))
        }

        fn advance(&mut self, parents: &[usize], tokens: &[TokenId]) -> Result<Vec<Vec<f32>>> {
            self.advances += 1;
            self.beams = parents
                .iter()
                .zip(tokens)
                .map(|(&b, &tok)| {
                    let mut seq = self.beams[b].clone();
                    seq.push(tok);
                    seq
                })
                .collect();
            Ok(self.beams.iter().map(|s| self.logits(s)).collect())
        }
    }

    /// A model whose log-probs are given by a table: `table(generated) -> logits`.
    struct TableModel<F: Fn(&[TokenId]) -> Vec<f32>> {
        table: F,
        beams: Vec<Vec<TokenId>>,
        advances: usize,
    }

    impl<F: Fn(&[TokenId]) -> Vec<f32>> TableModel<F> {
        fn new(table: F) -> Self {
            Self {
                table,
                beams: vec![Vec::new()],
                advances: 0,
            }
        }
    }

    impl<F: Fn(&[TokenId]) -> Vec<f32>> BeamModel for TableModel<F> {
        fn start(&mut self) -> Result<Vec<f32>> {
            Ok((self.table)(&[]))
        }

        fn advance(&mut self, parents: &[usize], tokens: &[TokenId]) -> Result<Vec<Vec<f32>>> {
            self.advances += 1;
            self.beams = parents
                .iter()
                .zip(tokens)
                .map(|(&b, &tok)| [self.beams[b].as_slice(), &[tok]].concat())
                .collect();
            Ok(self.beams.iter().map(|s| (self.table)(s)).collect())
        }
    }

    fn params(num_beams: usize, max_new_tokens: usize, eos: &[TokenId]) -> BeamParams {
        BeamParams {
            num_beams,
            num_return: num_beams,
            max_new_tokens,
            eos: eos.to_vec(),
            ..BeamParams::default()
        }
    }

    /// Log-probs from probabilities (the table models give probabilities directly).
    fn ln(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn eos_ends_a_hypothesis_early_and_its_length_counts_the_eos() {
        // Vocab {0 = eos, 1, 2}. Step 0: eos 0.5, "1" 0.3, "2" 0.2. After "1": eos 0.9.
        // After anything else: uniform.
        let table = |g: &[TokenId]| match g {
            [] => ln(&[0.5, 0.3, 0.2]),
            [1] => ln(&[0.9, 0.05, 0.05]),
            _ => ln(&[1.0 / 3.0; 3]),
        };
        let p = BeamParams {
            length_penalty: 1.0,
            ..params(2, 4, &[0])
        };
        let mut model = TableModel::new(table);
        let hyps = beam_search(&p, &mut model).unwrap();
        let (l05, l03, l09) = (0.5f32.ln(), 0.3f32.ln(), 0.9f32.ln());
        // [1, eos] = (ln .3 + ln .9) / 2 = -0.654 beats [eos] = ln .5 = -0.693.
        assert_eq!(hyps[0].ids, vec![1, 0]);
        assert!((hyps[0].score - (l03 + l09) / 2.0).abs() < 1e-6);
        assert_eq!(hyps[1].ids, vec![0]);
        assert!((hyps[1].score - l05).abs() < 1e-6);
        // Both slots are filled after step 1; the best running beam, [2, 1] at
        // ln(.2 / 3) / 2 = -1.35, cannot beat -0.693: stop without a second advance.
        assert_eq!(model.advances, 1);
    }

    #[test]
    fn length_penalty_changes_the_winner() {
        // Short: eos at once with p = 0.4. Long: "1" (0.6) then eos with p 0.55 -> total 0.33.
        // lp = 1: ln(.4) = -0.916 vs ln(.33) / 2 = -0.554 -> long wins.
        // lp = 0: ln(.4) = -0.916 vs ln(.33) = -1.109 -> short wins.
        // Longer sequences: at most .6 * .45 * .45 = .12 (ln / 3 = -0.70), never best.
        let table = |g: &[TokenId]| match g {
            [] => ln(&[0.4, 0.6, 1e-6]),
            [1] => ln(&[0.55, 0.45, 1e-6]),
            _ => ln(&[0.1, 0.45, 0.45]),
        };
        let run = |lp: f32| {
            let p = BeamParams {
                length_penalty: lp,
                num_return: 1,
                early_stopping: EarlyStopping::Never,
                ..params(2, 3, &[0])
            };
            beam_search(&p, &mut TableModel::new(table)).unwrap()
        };
        assert_eq!(run(1.0)[0].ids, vec![1, 0]);
        assert_eq!(run(0.0)[0].ids, vec![0]);
    }

    #[test]
    fn eos_outside_the_top_num_beams_is_not_a_hypothesis() {
        // Step 0 with 2 beams, K = 4: candidates 1 (.4), 2 (.3), eos (.2), 3 (.1). Eos is ranked
        // third, beyond num_beams = 2, so it is dropped; the beams continue with 1 and 2.
        let table = |g: &[TokenId]| match g {
            [] => ln(&[0.2, 0.4, 0.3, 0.1]),
            _ => ln(&[0.25; 4]),
        };
        let p = params(2, 2, &[0]);
        let hyps = beam_search(&p, &mut TableModel::new(table)).unwrap();
        assert!(hyps.iter().all(|h| h.ids != vec![0]), "{hyps:?}");
        assert!(hyps.iter().all(|h| h.ids.len() == 2), "{hyps:?}");
    }

    #[test]
    fn max_length_returns_unfinished_beams() {
        let p = params(3, 4, &[]);
        let mut model = TableModel::new(|g: &[TokenId]| {
            let v = g.len() as f32;
            vec![0.1 * v, 0.3, -0.2, 0.7 - 0.1 * v]
        });
        let hyps = beam_search(&p, &mut model).unwrap();
        assert_eq!(hyps.len(), 3);
        assert!(hyps.iter().all(|h| h.ids.len() == 4));
        assert!(hyps.windows(2).all(|w| w[0].score >= w[1].score));
        assert_eq!(model.advances, 3);
    }

    #[test]
    fn early_stopping_true_stops_once_num_beams_are_finished() {
        // Every row puts most mass on eos: after step 0 one hypothesis ([0]), after step 1 the
        // second. `True` stops there; `False` compares with the best running beam, and `Never`
        // with lp > 0 looks ahead to max_new_tokens (the running beam's score divided by 10).
        let table = |g: &[TokenId]| match g.len() {
            0 => ln(&[0.5, 0.3, 0.2]),
            _ => ln(&[0.6, 0.35, 0.05]),
        };
        let advances = |early_stopping| {
            let p = BeamParams {
                early_stopping,
                length_penalty: 1.0,
                ..params(2, 10, &[0])
            };
            let mut model = TableModel::new(table);
            let hyps = beam_search(&p, &mut model).unwrap();
            (model.advances, hyps)
        };
        let (t, hyps_t) = advances(EarlyStopping::True);
        let (f, _) = advances(EarlyStopping::False);
        let (n, hyps_n) = advances(EarlyStopping::Never);
        assert_eq!(t, 1, "{hyps_t:?}");
        assert!(f >= t && n > f, "{t} {f} {n}");
        assert!(hyps_n[1].score >= hyps_t[1].score);
    }

    #[test]
    fn first_advance_maps_every_parent_to_the_prompt() {
        // Vocab 3, eos {0, 1}, 2 beams: K = 6 takes every candidate of both step-0 beams.
        // Beam 0 has one live token; its eos candidates (ln p ~ -200, then -1e9) rank below
        // beam 1's copy of token 2 (-1e9 + ~0), so a new beam descends from beam 1, which is
        // the prompt as well: the model sees parent 0 (TableModel would panic otherwise).
        let table = |g: &[TokenId]| match g.len() {
            0 => vec![-200.0, -200.0, 0.0],
            _ => vec![0.0, -1.0, -2.0],
        };
        let p = params(2, 3, &[0, 1]);
        let mut model = TableModel::new(table);
        let hyps = beam_search(&p, &mut model).unwrap();
        assert_eq!(model.advances, 1);
        assert_eq!(hyps[0].ids, vec![2, 0]);
    }

    /// Every sequence the model can produce (ended by eos, or `max_len` long), with its score.
    fn exhaustive(model: &ToyModel, prompt: &[TokenId], p: &BeamParams) -> Vec<BeamHyp> {
        let mut out = Vec::new();
        let mut open = vec![(Vec::<TokenId>::new(), 0.0f32)];
        for t in 0..p.max_new_tokens {
            let mut next = Vec::new();
            for (ids, score) in open {
                let seq = [prompt, &ids].concat();
                let lps = log_softmax(&model.logits(&seq)).unwrap();
                for (v, lp) in lps.iter().enumerate() {
                    let ids = [ids.as_slice(), &[v as TokenId]].concat();
                    let s = score + lp;
                    if p.eos.contains(&(v as TokenId)) || t + 1 == p.max_new_tokens {
                        out.push(BeamHyp {
                            score: s / length_pow(t + 1, p.length_penalty),
                            ids,
                        });
                    } else {
                        next.push((ids, s));
                    }
                }
            }
            open = next;
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out
    }

    #[test]
    fn wide_beams_with_never_find_the_exhaustive_best() {
        // With num_beams >= every live prefix, `Never` is exact beam search: the top hypotheses
        // are the best of all sequences, for any length penalty.
        let prompt = [3];
        for lp in [0.0, 1.0, 2.0, -0.5] {
            let p = BeamParams {
                num_return: 6,
                length_penalty: lp,
                early_stopping: EarlyStopping::Never,
                ..params(36, 3, &[0])
            };
            let model = ToyModel::new(4, &prompt);
            let want = exhaustive(&model, &prompt, &p);
            let got = beam_search(&p, &mut ToyModel::new(4, &prompt)).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.ids, w.ids, "lp {lp}: {got:?}");
                assert!((g.score - w.score).abs() < 1e-5, "lp {lp}: {got:?}");
            }
        }
    }

    #[test]
    fn matches_hugging_face_on_the_toy_model() {
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../tests/golden/beam_toy.json")).unwrap();
        let vocab = golden["vocab"].as_u64().unwrap() as usize;
        let ids = |v: &serde_json::Value| -> Vec<TokenId> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as TokenId)
                .collect()
        };
        let cases = golden["cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        for (i, case) in cases.iter().enumerate() {
            let p = BeamParams {
                num_beams: case["num_beams"].as_u64().unwrap() as usize,
                num_return: case["num_return"].as_u64().unwrap() as usize,
                length_penalty: case["length_penalty"].as_f64().unwrap() as f32,
                early_stopping: match case["early_stopping"].as_str().unwrap() {
                    "true" => EarlyStopping::True,
                    "false" => EarlyStopping::False,
                    _ => EarlyStopping::Never,
                },
                max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as usize,
                eos: ids(&case["eos"]),
            };
            let mut model = ToyModel::new(vocab, &ids(&case["prompt"]));
            let got = beam_search(&p, &mut model).unwrap();
            let want = case["hyps"].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "case {i}");
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g.ids, ids(&w["ids"]), "case {i}: {got:?}");
                let score = w["score"].as_f64().unwrap() as f32;
                assert!(
                    (g.score - score).abs() <= 1e-6 * score.abs().max(1.0),
                    "case {i}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn invalid_params_are_errors() {
        let ok = params(2, 5, &[0]);
        assert!(ok.validate().is_ok());
        let bad = [
            BeamParams {
                num_beams: 0,
                num_return: 0,
                ..ok.clone()
            },
            BeamParams {
                num_return: 3,
                ..ok.clone()
            },
            BeamParams {
                num_return: 0,
                ..ok.clone()
            },
            BeamParams {
                max_new_tokens: 0,
                ..ok.clone()
            },
            BeamParams {
                length_penalty: f32::NAN,
                ..ok.clone()
            },
            BeamParams {
                length_penalty: f32::INFINITY,
                ..ok.clone()
            },
        ];
        for p in &bad {
            let err = beam_search(p, &mut ToyModel::new(5, &[1])).unwrap_err();
            assert!(p.validate().is_err());
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn bad_model_output_is_an_error() {
        let p = params(3, 4, &[0, 1]);
        // K = 3 * 3 = 9 > 3 * 2: vocab too small for the candidates kept per step.
        let e = beam_search(&p, &mut TableModel::new(|_: &[TokenId]| vec![0.0; 2])).unwrap_err();
        assert!(e.to_string().contains("vocab"), "{e}");
        let e = beam_search(&p, &mut TableModel::new(|_: &[TokenId]| vec![f32::NAN; 8]));
        assert!(e.is_err());
        let e = beam_search(&p, &mut TableModel::new(|_: &[TokenId]| Vec::new()));
        assert!(e.is_err());
        let e = beam_search(
            &p,
            &mut TableModel::new(|g: &[TokenId]| vec![0.5; if g.is_empty() { 8 } else { 9 }]),
        );
        assert!(e.unwrap_err().to_string().contains("length"));

        struct Short;
        impl BeamModel for Short {
            fn start(&mut self) -> Result<Vec<f32>> {
                Ok(vec![0.0; 8])
            }
            fn advance(&mut self, _: &[usize], _: &[TokenId]) -> Result<Vec<Vec<f32>>> {
                Ok(vec![vec![0.0; 8]])
            }
        }
        assert!(beam_search(&p, &mut Short)
            .unwrap_err()
            .to_string()
            .contains("rows"));
    }

    #[test]
    fn nan_logits_count_as_minus_infinity() {
        let mut row = vec![0.5f32, f32::NAN, 1.0, -1.0];
        let lps = log_softmax(&row).unwrap();
        assert_eq!(lps[1], f32::NEG_INFINITY);
        row[1] = f32::NEG_INFINITY;
        assert_eq!(lps, log_softmax(&row).unwrap());
    }

    #[test]
    fn top_k_is_stable_on_ties() {
        assert_eq!(
            top_k_desc(&[1.0, 3.0, 3.0, -0.0, 0.0, 3.0], 4),
            vec![1, 2, 5, 0]
        );
        assert_eq!(top_k_desc(&[-0.0, 0.0, -1.0], 3), vec![0, 1, 2]);
        assert_eq!(top_k_desc(&[2.0, 1.0], 2), vec![0, 1]);
        assert!(top_k_desc(&[2.0], 0).is_empty());
    }
}
