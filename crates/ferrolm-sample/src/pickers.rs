//! Terminal token pickers: `Greedy` (argmax) and `Dist` (seeded sampling from the softmax).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::{Candidates, TokenId, TokenPicker};

/// Picks the highest logit; ties go to the lowest token id. Leaves `probs` untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct Greedy;

impl TokenPicker for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }

    fn pick(&mut self, c: &mut Candidates) -> TokenId {
        let i = c.argmax().expect("greedy: no candidates to pick from");
        c.ids[i]
    }

    fn pick_raw(&mut self, logits: &[f32]) -> Option<TokenId> {
        Some(argmax(logits))
    }
}

/// Index of the highest logit in a raw row (ties: lowest id; NaN counts as lowest). Greedy
/// decoding without building a candidate set, e.g. for benchmarks and reference checks.
pub fn argmax(logits: &[f32]) -> TokenId {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as TokenId
}

/// Samples from the softmax of the remaining candidates with a seeded ChaCha20 stream.
///
/// Exactly one uniform draw per pick (even with a single candidate), so the random
/// stream, and hence the output, depends only on the seed and the sequence of picks.
#[derive(Debug, Clone)]
pub struct Dist {
    seed: u64,
    rng: ChaCha20Rng,
}

impl Dist {
    /// A sampler whose draws are fully determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// The seed this sampler was built with (and returns to on reset).
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl TokenPicker for Dist {
    fn name(&self) -> &'static str {
        "dist"
    }

    fn describe(&self) -> String {
        format!("dist(seed={})", self.seed)
    }

    fn pick(&mut self, c: &mut Candidates) -> TokenId {
        assert!(!c.is_empty(), "dist: no candidates to pick from");
        c.softmax();
        let u: f64 = self.rng.gen(); // [0, 1)
        let total: f64 = c.probs.iter().map(|&p| f64::from(p)).sum();
        let target = u * total;
        // First candidate whose cumulative mass passes the target; a strict comparison
        // never selects a zero-probability candidate.
        let mut run = 0.0f64;
        for (i, &p) in c.probs.iter().enumerate() {
            run += f64::from(p);
            if run > target {
                return c.ids[i];
            }
        }
        // Only reachable through rounding when u is within an ulp of 1.
        let last = c
            .probs
            .iter()
            .rposition(|&p| p > 0.0)
            .unwrap_or(c.len() - 1);
        c.ids[last]
    }

    fn reset(&mut self) {
        self.rng = ChaCha20Rng::seed_from_u64(self.seed);
    }
}

/// Mirostat 2.0 (Basu et al., "Mirostat: a neural text decoding algorithm that directly
/// controls perplexity"): keeps the tokens whose surprise `-log2 p` is at most `mu`, samples
/// among them, and moves `mu` toward the target surprise `tau` by `eta` times the error, so
/// the text's perplexity stays near `2^tau`. `mu` starts at `2 tau`. As llama.cpp's
/// `mirostat_v2` (one uniform draw per pick, as [`Dist`]).
#[derive(Debug, Clone)]
pub struct Mirostat2 {
    pub tau: f32,
    pub eta: f32,
    mu: f32,
    dist: Dist,
}

impl Mirostat2 {
    pub fn new(tau: f32, eta: f32, seed: u64) -> Self {
        Self {
            tau,
            eta,
            mu: 2.0 * tau,
            dist: Dist::new(seed),
        }
    }

    /// The current surprise threshold.
    pub fn mu(&self) -> f32 {
        self.mu
    }
}

impl TokenPicker for Mirostat2 {
    fn name(&self) -> &'static str {
        "mirostat-v2"
    }

    fn describe(&self) -> String {
        format!(
            "mirostat-v2(tau={}, eta={}, seed={})",
            self.tau,
            self.eta,
            self.dist.seed()
        )
    }

    fn pick(&mut self, c: &mut Candidates) -> TokenId {
        assert!(!c.is_empty(), "mirostat: no candidates to pick from");
        c.sort_desc();
        c.softmax();
        let keep = c
            .probs
            .iter()
            .position(|&p| -p.log2() > self.mu)
            .unwrap_or(c.len())
            .max(1);
        c.truncate(keep);
        let token = self.dist.pick(c);
        let p = c.position_of(token).map_or(1.0, |i| c.probs[i]);
        let surprise = -p.log2();
        self.mu -= self.eta * (surprise - self.tau);
        token
    }

    fn reset(&mut self) {
        self.mu = 2.0 * self.tau;
        self.dist.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirostat2_truncates_by_surprise_and_tracks_tau() {
        // mu = 2 tau = 2 bits: only tokens with p >= 1/4 survive the first pick.
        let mut m = Mirostat2::new(1.0, 0.1, 3);
        let logits = [3.0f32.ln(), 1.0f32.ln(), 0.5f32.ln(), 0.5f32.ln()]; // p = .6 .2 .1 .1
        for _ in 0..50 {
            let mut c = Candidates::from_logits(&logits);
            let mu = m.mu();
            let t = m.pick(&mut c);
            // Every surviving candidate has surprise <= mu (or it is the single best).
            let mut full = Candidates::from_logits(&logits);
            full.softmax();
            let p = full.probs[t as usize];
            assert!(
                -p.log2() <= mu || t == 0,
                "picked {t} with p {p} at mu {mu}"
            );
        }
        // The threshold settles near where the observed surprise averages tau.
        assert!(m.mu().is_finite());
        m.reset();
        assert_eq!(m.mu(), 2.0);
        // Deterministic for a seed.
        let run = |m: &mut Mirostat2| -> Vec<TokenId> {
            (0..30)
                .map(|_| m.pick(&mut Candidates::from_logits(&logits)))
                .collect()
        };
        let a = run(&mut Mirostat2::new(2.0, 0.2, 9));
        assert_eq!(a, run(&mut Mirostat2::new(2.0, 0.2, 9)));
    }

    #[test]
    fn mirostat2_mu_update_follows_the_formula() {
        // One candidate: p = 1, surprise 0, so mu moves by eta * tau downward... upward:
        // mu' = mu - eta (0 - tau) = mu + eta tau.
        let mut m = Mirostat2::new(3.0, 0.5, 0);
        m.pick(&mut Candidates::from_logits(&[0.0]));
        assert!((m.mu() - (6.0 + 1.5)).abs() < 1e-6);
    }

    #[test]
    fn greedy_argmax_and_ties() {
        let mut c = Candidates::from_logits(&[1.0, 5.0, 5.0, -2.0]);
        assert_eq!(Greedy.pick(&mut c), 1);
        let mut c = Candidates::from_pairs(&[(8, 2.0), (3, 2.0), (1, 0.0)]);
        assert_eq!(Greedy.pick(&mut c), 3);
        let mut c = Candidates::from_logits(&[f32::NAN, f32::NEG_INFINITY, 0.5]);
        assert_eq!(Greedy.pick(&mut c), 2);
    }

    #[test]
    fn dist_never_picks_zero_probability() {
        let mut d = Dist::new(1);
        for _ in 0..2000 {
            let mut c = Candidates::from_logits(&[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]);
            assert_eq!(d.pick(&mut c), 1);
        }
    }

    #[test]
    fn dist_is_deterministic_and_resets() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |d: &mut Dist| -> Vec<TokenId> {
            (0..100)
                .map(|_| d.pick(&mut Candidates::from_logits(&logits)))
                .collect()
        };
        let mut a = Dist::new(42);
        let first = run(&mut a);
        assert_eq!(first, run(&mut Dist::new(42)));
        a.reset();
        assert_eq!(first, run(&mut a));
        assert_ne!(first, run(&mut Dist::new(43)));
    }

    #[test]
    fn dist_normalizes_probs() {
        let mut c = Candidates::from_logits(&[0.0, 0.0, 2f32.ln()]);
        Dist::new(0).pick(&mut c);
        assert!(c.probs_valid);
        let expect = [0.25, 0.25, 0.5];
        for (p, e) in c.probs.iter().zip(expect) {
            assert!((p - e).abs() < 1e-6);
        }
    }
}
