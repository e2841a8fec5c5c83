//! The logits processors, one small struct each, with llama.cpp's semantics (`min_keep` = 1).
//!
//! | processor    | keeps / changes                                                     |
//! |--------------|---------------------------------------------------------------------|
//! | `LogitBias`  | adds a bias per token; `-inf` bans                                  |
//! | `Penalties`  | repeat / frequency / presence penalties over the last `last_n` tokens |
//! | `TopK`       | the `k` highest logits (ties: lowest id)                            |
//! | `TailFree`   | cuts where the normalized |2nd derivative| of sorted probs passes `z` |
//! | `Typical`    | tokens whose surprisal is closest to the entropy, mass > `p`        |
//! | `TopP`       | the shortest prefix of sorted probs with mass >= `p`                |
//! | `MinP`       | tokens with prob >= `p` * max prob                                  |
//! | `Temperature`| divides logits by `t` (`t <= 0`: keeps only the argmax)             |
//!
//! Filters that need probabilities recompute the softmax over the set they receive, so
//! each stage sees the distribution left by the stages before it.

use std::collections::{HashMap, VecDeque};

use crate::{Candidates, LogitsProcessor, TokenId};

/// Every filter keeps at least this many candidates.
const MIN_KEEP: usize = 1;

/// Adds `bias` to the logit of each listed token; `f32::NEG_INFINITY` bans it.
/// Repeated entries for one token add up. Tokens not among the candidates are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct LogitBias {
    biases: Vec<(TokenId, f32)>,
}

impl LogitBias {
    /// Biases as `(token, bias)` pairs.
    pub fn new(biases: Vec<(TokenId, f32)>) -> Self {
        Self { biases }
    }
}

impl LogitsProcessor for LogitBias {
    fn name(&self) -> &'static str {
        "logit-bias"
    }

    fn describe(&self) -> String {
        format!("logit-bias({} tokens)", self.biases.len())
    }

    fn apply(&mut self, c: &mut Candidates) {
        for &(tok, bias) in &self.biases {
            if let Some(i) = c.position_of(tok) {
                let l = c.logits[i] + bias;
                // inf + -inf: a ban wins over anything, and NaN means -inf anyway.
                c.logits[i] = if l.is_nan() { f32::NEG_INFINITY } else { l };
            }
        }
        c.logits_changed();
    }
}

/// Settings of [`Penalties`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PenaltyConfig {
    /// How many of the most recent accepted tokens are penalized (0 disables).
    pub last_n: usize,
    /// Repetition penalty: positive logits are divided by it, negative ones multiplied (1 = off).
    pub repeat: f32,
    /// Subtracted once per occurrence in the window (0 = off).
    pub frequency: f32,
    /// Subtracted once if the token occurs in the window at all (0 = off).
    pub presence: f32,
}

impl PenaltyConfig {
    /// True when applying the penalties could not change any logit.
    pub fn is_disabled(&self) -> bool {
        self.last_n == 0 || (self.repeat == 1.0 && self.frequency == 0.0 && self.presence == 0.0)
    }
}

/// Repetition, frequency and presence penalties over a window of accepted tokens
/// (prompt and generated alike, as fed through `accept`).
#[derive(Debug, Clone)]
pub struct Penalties {
    cfg: PenaltyConfig,
    /// The last `cfg.last_n` accepted tokens, oldest first.
    window: VecDeque<TokenId>,
    /// Occurrences of each token in `window` (entries are > 0).
    counts: HashMap<TokenId, u32>,
}

impl Penalties {
    /// Penalties with an empty history.
    pub fn new(cfg: PenaltyConfig) -> Self {
        Self {
            cfg,
            window: VecDeque::with_capacity(cfg.last_n.min(4096)),
            counts: HashMap::new(),
        }
    }

    /// Occurrences of `token` in the current window.
    pub fn count(&self, token: TokenId) -> u32 {
        self.counts.get(&token).copied().unwrap_or(0)
    }
}

impl LogitsProcessor for Penalties {
    fn name(&self) -> &'static str {
        "penalties"
    }

    fn describe(&self) -> String {
        let PenaltyConfig {
            last_n,
            repeat,
            frequency,
            presence,
        } = self.cfg;
        format!(
            "penalties(last_n={last_n}, repeat={repeat}, freq={frequency}, presence={presence})"
        )
    }

    fn apply(&mut self, c: &mut Candidates) {
        if self.cfg.is_disabled() {
            return;
        }
        let PenaltyConfig {
            repeat,
            frequency,
            presence,
            ..
        } = self.cfg;
        for (&tok, &count) in &self.counts {
            let Some(i) = c.position_of(tok) else {
                continue;
            };
            let l = &mut c.logits[i];
            // Dividing a negative logit would raise its probability, so multiply instead.
            if *l <= 0.0 {
                *l *= repeat;
            } else {
                *l /= repeat;
            }
            *l -= count as f32 * frequency + presence;
        }
        c.logits_changed();
    }

    fn accept(&mut self, token: TokenId) {
        if self.cfg.last_n == 0 {
            return;
        }
        self.window.push_back(token);
        *self.counts.entry(token).or_insert(0) += 1;
        if self.window.len() > self.cfg.last_n {
            let old = self.window.pop_front().expect("window is non-empty");
            let n = self
                .counts
                .get_mut(&old)
                .expect("windowed token is counted");
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&old);
            }
        }
    }

    fn reset(&mut self) {
        self.window.clear();
        self.counts.clear();
    }
}

/// Divides logits by `t`. `t <= 0` keeps only the argmax (a chain built from
/// [`SamplingParams`](crate::SamplingParams) uses [`Greedy`](crate::Greedy) instead).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature(pub f32);

impl LogitsProcessor for Temperature {
    fn name(&self) -> &'static str {
        "temp"
    }

    fn describe(&self) -> String {
        format!("temp({})", self.0)
    }

    fn apply(&mut self, c: &mut Candidates) {
        let t = self.0;
        if t <= 0.0 {
            if let Some(i) = c.argmax() {
                c.permute(&[i]);
                c.sorted = true;
            }
            return;
        }
        // A tiny t can overflow every logit to -inf (all negative) and lose the argmax;
        // shifting by the max first gives the same softmax without overflowing it.
        let max = c.max_logit();
        let shift = if max.is_finite() && !(max / t).is_finite() {
            max
        } else {
            0.0
        };
        for l in &mut c.logits {
            *l = (*l - shift) / t;
        }
        // Dividing by a positive number keeps the order.
        c.probs_valid = false;
    }
}

/// Keeps the `k` highest logits (ties: lowest id); `k = 0` disables. Leaves them sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK(pub usize);

impl LogitsProcessor for TopK {
    fn name(&self) -> &'static str {
        "top-k"
    }

    fn describe(&self) -> String {
        format!("top-k({})", self.0)
    }

    fn apply(&mut self, c: &mut Candidates) {
        let k = self.0.max(MIN_KEEP);
        if self.0 == 0 || k >= c.len() {
            return;
        }
        c.keep_top(k);
    }
}

/// Nucleus sampling: keeps the shortest prefix of the probability-sorted candidates
/// whose mass reaches `p`; `p >= 1` disables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopP(pub f32);

impl LogitsProcessor for TopP {
    fn name(&self) -> &'static str {
        "top-p"
    }

    fn describe(&self) -> String {
        format!("top-p({})", self.0)
    }

    fn apply(&mut self, c: &mut Candidates) {
        let p = f64::from(self.0);
        let n = c.len();
        if p >= 1.0 || n <= MIN_KEEP {
            return;
        }
        c.softmax();
        // With a large unsorted vocabulary the nucleus is usually small: sort a prefix
        // first and fall back to a full sort only if the prefix holds too little mass.
        let mut k = if !c.sorted && n > 1024 { 256 } else { n };
        loop {
            c.sort_top(k);
            let mut cum = 0.0f64;
            for (i, &q) in c.probs[..k].iter().enumerate() {
                cum += f64::from(q);
                if cum >= p && i + 1 >= MIN_KEEP {
                    c.truncate(i + 1);
                    c.sorted = true;
                    return;
                }
            }
            if k == n {
                return; // rounding kept the total below p: keep everything
            }
            k = n;
        }
    }
}

/// Keeps tokens whose probability is at least `p` times the largest; `p <= 0` disables.
/// Works on logits (`l >= l_max + ln p`), so no softmax is needed. Preserves order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinP(pub f32);

impl LogitsProcessor for MinP {
    fn name(&self) -> &'static str {
        "min-p"
    }

    fn describe(&self) -> String {
        format!("min-p({})", self.0)
    }

    fn apply(&mut self, c: &mut Candidates) {
        let p = self.0;
        if p <= 0.0 || c.is_empty() {
            return;
        }
        let min_logit = c.max_logit() + p.ln();
        let kept = c.logits.iter().filter(|&&l| l >= min_logit).count();
        if kept >= MIN_KEEP {
            c.retain(|_, l| l >= min_logit);
        } else if let Some(i) = c.argmax() {
            // Only possible for p > 1: keep the best token.
            c.permute(&[i]);
            c.sorted = true;
        }
    }
}

/// Locally typical sampling: orders tokens by how close their surprisal `-ln p` is to
/// the entropy and keeps the first ones whose mass exceeds `p`; `p >= 1` disables.
/// The result is in typicality order, not logit order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Typical(pub f32);

impl LogitsProcessor for Typical {
    fn name(&self) -> &'static str {
        "typical"
    }

    fn describe(&self) -> String {
        format!("typical({})", self.0)
    }

    fn apply(&mut self, c: &mut Candidates) {
        let p = f64::from(self.0);
        if p >= 1.0 || c.len() <= MIN_KEEP {
            return;
        }
        c.softmax();
        c.sort_desc();
        let probs: Vec<f64> = c.probs.iter().map(|&q| f64::from(q)).collect();
        let entropy: f64 = probs
            .iter()
            .filter(|&&q| q > 0.0)
            .map(|&q| -q * q.ln())
            .sum();
        // Distance of each surprisal from the entropy (inf for zero-probability tokens).
        let shifted: Vec<f64> = probs.iter().map(|&q| (-q.ln() - entropy).abs()).collect();
        let mut order: Vec<usize> = (0..probs.len()).collect();
        // Stable: equally typical tokens stay in probability order.
        order.sort_by(|&a, &b| shifted[a].total_cmp(&shifted[b]));
        let mut cum = 0.0f64;
        let mut keep = order.len();
        for (i, &j) in order.iter().enumerate() {
            cum += probs[j];
            if cum > p && i + 1 >= MIN_KEEP {
                keep = i + 1;
                break;
            }
        }
        c.permute(&order[..keep]);
        c.sorted = false;
    }
}

/// Tail-free sampling: on probability-sorted candidates, takes the absolute second
/// differences of the probabilities, normalizes them to sum 1, and cuts where their
/// running sum first exceeds `z`; `z >= 1` disables. (Removed from recent llama.cpp;
/// semantics follow its last implementation.)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TailFree(pub f32);

impl LogitsProcessor for TailFree {
    fn name(&self) -> &'static str {
        "tail-free"
    }

    fn describe(&self) -> String {
        format!("tail-free({})", self.0)
    }

    fn apply(&mut self, c: &mut Candidates) {
        let z = self.0;
        if z >= 1.0 || c.len() <= 2 {
            return;
        }
        c.softmax();
        c.sort_desc();
        let p = &c.probs;
        // d2[i] = |(p[i] - p[i+1]) - (p[i+1] - p[i+2])|, i in 0..n-2
        let mut d2: Vec<f32> = p
            .windows(3)
            .map(|w| ((w[0] - w[1]) - (w[1] - w[2])).abs())
            .collect();
        let sum: f32 = d2.iter().sum();
        if sum > 1e-6 {
            for d in &mut d2 {
                *d /= sum;
            }
        } else {
            // A straight line: no knee to cut at.
            let u = 1.0 / d2.len() as f32;
            d2.fill(u);
        }
        let mut cum = 0.0f32;
        let mut keep = c.len();
        for (i, &d) in d2.iter().enumerate() {
            cum += d;
            if cum > z && i >= MIN_KEEP {
                keep = i;
                break;
            }
        }
        c.truncate(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidates whose softmax is `probs` (logits = ln p).
    fn from_probs(probs: &[f32]) -> Candidates {
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        Candidates::from_logits(&logits)
    }

    fn run(p: &mut impl LogitsProcessor, mut c: Candidates) -> Candidates {
        p.apply(&mut c);
        c.debug_check();
        c
    }

    fn sorted_ids(c: &Candidates) -> Vec<TokenId> {
        let mut ids = c.ids.clone();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn logit_bias_adds_and_bans() {
        let c = Candidates::from_logits(&[1.0, 2.0, f32::INFINITY, 0.0]);
        let mut lb = LogitBias::new(vec![
            (0, 0.5),
            (1, f32::NEG_INFINITY),
            (2, f32::NEG_INFINITY),
            (0, 0.25),
            (99, 1.0),
        ]);
        let c = run(&mut lb, c);
        assert_eq!(
            c.logits,
            vec![1.75, f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0]
        );
    }

    #[test]
    fn penalties_hand_computed() {
        let cfg = PenaltyConfig {
            last_n: 8,
            repeat: 2.0,
            frequency: 0.5,
            presence: 0.25,
        };
        let mut pen = Penalties::new(cfg);
        for t in [0, 1, 0] {
            pen.accept(t);
        }
        let c = run(&mut pen, Candidates::from_logits(&[2.0, -1.0, 0.5, 3.0]));
        // t0: 2/2 - 2*0.5 - 0.25 = -0.25; t1: -1*2 - 0.5 - 0.25 = -2.75; others untouched
        assert_eq!(c.logits, vec![-0.25, -2.75, 0.5, 3.0]);
    }

    #[test]
    fn penalties_window_slides_and_resets() {
        let mut pen = Penalties::new(PenaltyConfig {
            last_n: 2,
            repeat: 1.0,
            frequency: 1.0,
            presence: 0.0,
        });
        for t in [0, 1, 2, 2] {
            pen.accept(t);
        }
        assert_eq!((pen.count(0), pen.count(1), pen.count(2)), (0, 0, 2));
        let c = run(&mut pen, Candidates::from_logits(&[0.0, 0.0, 0.0]));
        assert_eq!(c.logits, vec![0.0, 0.0, -2.0]);
        pen.reset();
        assert_eq!(pen.count(2), 0);
        let c = run(&mut pen, Candidates::from_logits(&[0.0, 0.0, 0.0]));
        assert_eq!(c.logits, vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn penalties_last_n_zero_keeps_no_history() {
        let cfg = PenaltyConfig {
            last_n: 0,
            repeat: 1.5,
            frequency: 0.0,
            presence: 0.0,
        };
        assert!(cfg.is_disabled());
        let mut pen = Penalties::new(cfg);
        pen.accept(1);
        assert_eq!(pen.count(1), 0);
    }

    #[test]
    fn temperature_scales_and_zero_is_argmax() {
        let c = run(&mut Temperature(0.5), Candidates::from_logits(&[1.0, -2.0]));
        assert_eq!(c.logits, vec![2.0, -4.0]);
        let c = run(
            &mut Temperature(0.0),
            Candidates::from_logits(&[1.0, 3.0, 3.0]),
        );
        assert_eq!(c.ids, vec![1]);
        // tiny t: logits are shifted by the max rather than all overflowing to -inf
        let mut c = run(
            &mut Temperature(1e-38),
            Candidates::from_logits(&[-30.0, -20.0]),
        );
        assert_eq!(c.logits, vec![f32::NEG_INFINITY, 0.0]);
        c.softmax();
        assert_eq!(c.probs, vec![0.0, 1.0]);
    }

    #[test]
    fn top_k_hand_computed() {
        let c = run(
            &mut TopK(2),
            Candidates::from_logits(&[1.0, 3.0, 2.0, 5.0, 4.0]),
        );
        assert_eq!(c.ids, vec![3, 4]);
        assert!(c.sorted);
        // ties: lowest ids win
        let c = run(&mut TopK(2), Candidates::from_logits(&[1.0, 1.0, 1.0]));
        assert_eq!(c.ids, vec![0, 1]);
        // k = 0 and k >= n are no-ops
        assert_eq!(
            run(&mut TopK(0), Candidates::from_logits(&[1.0, 2.0])).len(),
            2
        );
        assert_eq!(
            run(&mut TopK(9), Candidates::from_logits(&[1.0, 2.0])).len(),
            2
        );
    }

    #[test]
    fn top_p_hand_computed() {
        let probs = [0.15, 0.5, 0.05, 0.3];
        let keep = |p: f32| run(&mut TopP(p), from_probs(&probs)).ids;
        assert_eq!(keep(0.4), vec![1]);
        assert_eq!(keep(0.7), vec![1, 3]);
        assert_eq!(keep(0.85), vec![1, 3, 0]);
        assert_eq!(keep(0.99), vec![1, 3, 0, 2]);
        assert_eq!(keep(1.0).len(), 4, "p = 1 disables (and keeps order)");
    }

    #[test]
    fn top_p_large_vocab_uses_partial_sort_correctly() {
        // 2000 tokens: token 1500 has most of the mass, the rest is flat.
        let mut logits = vec![0.0f32; 2000];
        logits[1500] = 10.0;
        let c = run(&mut TopP(0.5), Candidates::from_logits(&logits));
        assert_eq!(c.ids, vec![1500]);
        // Flat: the nucleus is larger than the 256-token prefix.
        let c = run(&mut TopP(0.5), Candidates::from_logits(&vec![0.0f32; 2000]));
        assert_eq!(c.len(), 1000);
        assert_eq!(c.ids[..3], [0, 1, 2]);
    }

    #[test]
    fn min_p_hand_computed() {
        let probs = [0.15, 0.5, 0.05, 0.3];
        let keep = |p: f32| run(&mut MinP(p), from_probs(&probs)).ids;
        assert_eq!(keep(0.2), vec![0, 1, 3], "threshold 0.1, order preserved");
        assert_eq!(keep(0.7), vec![1]);
        assert_eq!(keep(0.0), vec![0, 1, 2, 3]);
        assert_eq!(keep(1.5), vec![1], "never empty");
    }

    #[test]
    fn typical_hand_computed() {
        // p = [0.5, 0.3, 0.15, 0.05]: H = 1.1421; |-ln p - H| = [0.449, 0.062, 0.755, 1.854]
        // typicality order: t1, t0, t2, t3
        let probs = [0.5, 0.3, 0.15, 0.05];
        let keep = |p: f32| run(&mut Typical(p), from_probs(&probs)).ids;
        assert_eq!(
            keep(0.2),
            vec![1],
            "the most typical token is not the most likely"
        );
        assert_eq!(keep(0.5), vec![1, 0]);
        assert_eq!(keep(0.9), vec![1, 0, 2]);
        assert_eq!(keep(1.0), vec![0, 1, 2, 3]);
    }

    #[test]
    fn tail_free_hand_computed() {
        // p = [0.4, 0.3, 0.2, 0.08, 0.02]: d1 = [.1, .1, .12, .06], |d2| = [0, .02, .06]
        // normalized [0, .25, .75]; running sum [0, .25, 1.0]
        let probs = [0.3, 0.02, 0.4, 0.08, 0.2];
        let keep = |z: f32| sorted_ids(&run(&mut TailFree(z), from_probs(&probs)));
        assert_eq!(keep(0.2), vec![2], "cut at i = 1");
        assert_eq!(keep(0.5), vec![0, 2], "cut at i = 2");
        assert_eq!(keep(1.0), vec![0, 1, 2, 3, 4]);
        // two or fewer candidates: untouched
        assert_eq!(run(&mut TailFree(0.1), from_probs(&[0.9, 0.1])).len(), 2);
    }

    #[test]
    fn filters_survive_all_banned() {
        let banned = || Candidates::from_logits(&[f32::NEG_INFINITY; 5]);
        let mut procs: Vec<Box<dyn LogitsProcessor>> = vec![
            Box::new(TopK(2)),
            Box::new(TopP(0.5)),
            Box::new(MinP(0.5)),
            Box::new(Typical(0.5)),
            Box::new(TailFree(0.5)),
            Box::new(Temperature(0.7)),
        ];
        for p in &mut procs {
            let mut c = banned();
            p.apply(&mut c);
            assert!(!c.is_empty(), "{} emptied the set", p.name());
        }
    }
}
