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

#[cfg(test)]
mod tests {
    use super::*;

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
