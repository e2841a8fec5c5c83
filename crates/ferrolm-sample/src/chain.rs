//! The sampler chain: logits processors applied in order, then one terminal token picker.
//!
//! Per generated token: logits row -> [`Candidates`] -> each processor's `apply` ->
//! picker's `pick` -> every processor's `accept(token)`. Prompt tokens reach stateful
//! processors (penalties) through [`SamplerChain::accept`]. `reset` returns every stage
//! to its freshly built state (history cleared, RNG reseeded).

use std::fmt;

use crate::{Candidates, TokenId};

/// One stage of the chain: filters or reshapes the candidate set.
pub trait LogitsProcessor: Send {
    /// Short stable name, e.g. `"top-k"`.
    fn name(&self) -> &'static str;
    /// Name with parameters, e.g. `"top-k(40)"`; used by [`SamplerChain::describe`].
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// Edits `c` in place. Must leave at least one candidate if it got any.
    fn apply(&mut self, c: &mut Candidates);
    /// Observes a token that became part of the sequence (prompt or generated).
    fn accept(&mut self, _token: TokenId) {}
    /// Forgets all observed tokens.
    fn reset(&mut self) {}
}

/// Terminal step: picks one token from the (non-empty) candidate set.
pub trait TokenPicker: Send {
    /// Short stable name, e.g. `"dist"`.
    fn name(&self) -> &'static str;
    /// Name with parameters, e.g. `"dist(seed=42)"`.
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// Returns the chosen token id.
    ///
    /// # Panics
    /// If `c` is empty.
    fn pick(&mut self, c: &mut Candidates) -> TokenId;
    /// The pick straight from a raw logits row when no processor runs before it, where the
    /// picker can do without a candidate set (greedy); `None` to go through the candidates.
    fn pick_raw(&mut self, _logits: &[f32]) -> Option<TokenId> {
        None
    }
    /// Returns to the initial state (e.g. reseeds the RNG).
    fn reset(&mut self) {}
}

/// Processors in order, ending in a picker. Owns a reusable candidate buffer.
pub struct SamplerChain {
    processors: Vec<Box<dyn LogitsProcessor>>,
    picker: Box<dyn TokenPicker>,
    candidates: Candidates,
}

impl SamplerChain {
    /// An empty chain that only runs `picker`.
    pub fn new(picker: Box<dyn TokenPicker>) -> Self {
        Self {
            processors: Vec::new(),
            picker,
            candidates: Candidates::default(),
        }
    }

    /// Appends a processor (runs after those already pushed).
    pub fn push(&mut self, p: Box<dyn LogitsProcessor>) -> &mut Self {
        self.processors.push(p);
        self
    }

    /// By-value [`push`](Self::push), for building a chain in one expression.
    pub fn with(mut self, p: Box<dyn LogitsProcessor>) -> Self {
        self.processors.push(p);
        self
    }

    /// Samples one token from a full logits row (`logits[id]`), then feeds it to
    /// every processor's `accept`.
    ///
    /// # Panics
    /// If `logits` is empty, or a processor empties the candidate set.
    pub fn sample(&mut self, logits: &[f32]) -> TokenId {
        assert!(!logits.is_empty(), "cannot sample from an empty logits row");
        if self.processors.is_empty() {
            // Plain greedy decoding: no candidate set to build (the same token).
            if let Some(token) = self.picker.pick_raw(logits) {
                return token;
            }
        }
        let c = &mut self.candidates;
        c.reset_from_logits(logits);
        for p in &mut self.processors {
            p.apply(c);
            c.debug_check();
            assert!(
                !c.is_empty(),
                "processor {} emptied the candidates",
                p.name()
            );
        }
        let token = self.picker.pick(c);
        self.accept(token);
        token
    }

    /// Runs the processors on a logits row without picking or accepting, and returns the
    /// candidates with their probabilities (decoding rules that choose the token themselves,
    /// such as contrastive search, still honour biases and penalties). Feed the chosen token
    /// back with [`accept`](Self::accept).
    pub fn process(&mut self, logits: &[f32]) -> &Candidates {
        assert!(!logits.is_empty(), "cannot sample from an empty logits row");
        let c = &mut self.candidates;
        c.reset_from_logits(logits);
        for p in &mut self.processors {
            p.apply(c);
        }
        c.softmax();
        &self.candidates
    }

    /// Feeds a token to every processor without sampling (e.g. prompt tokens).
    pub fn accept(&mut self, token: TokenId) {
        for p in &mut self.processors {
            p.accept(token);
        }
    }

    /// Returns every stage to its freshly built state.
    pub fn reset(&mut self) {
        for p in &mut self.processors {
            p.reset();
        }
        self.picker.reset();
    }

    /// The candidate set as the picker left it after the last [`sample`](Self::sample):
    /// the surviving tokens; `probs` valid when `probs_valid` (after `dist`, not `greedy`).
    /// A greedy chain without processors picks from the raw row and leaves it as it was.
    pub fn candidates(&self) -> &Candidates {
        &self.candidates
    }

    /// Number of processors (the picker not counted).
    pub fn len(&self) -> usize {
        self.processors.len()
    }

    /// True when the chain is just a picker.
    pub fn is_empty(&self) -> bool {
        self.processors.is_empty()
    }

    /// Human-readable stages, e.g. `"penalties(..) -> top-k(40) -> temp(0.8) -> dist(seed=1)"`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.processors.iter().map(|p| p.describe()).collect();
        parts.push(self.picker.describe());
        parts.join(" -> ")
    }
}

impl fmt::Debug for SamplerChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SamplerChain")
            .field(&self.describe())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dist, Greedy, LogitBias, TopK};

    use std::sync::{Arc, Mutex};

    /// What a [`Spy`] observed.
    #[derive(Default)]
    struct Log {
        accepted: Vec<TokenId>,
        seen: Vec<usize>,
    }

    /// Records accepted tokens and the candidate count it saw, into a shared log.
    struct Spy(Arc<Mutex<Log>>);

    impl LogitsProcessor for Spy {
        fn name(&self) -> &'static str {
            "spy"
        }
        fn apply(&mut self, c: &mut Candidates) {
            self.0.lock().unwrap().seen.push(c.len());
        }
        fn accept(&mut self, token: TokenId) {
            self.0.lock().unwrap().accepted.push(token);
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().accepted.clear();
        }
    }

    #[test]
    fn sample_runs_processors_in_order_and_accepts() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut chain = SamplerChain::new(Box::new(Greedy));
        chain
            .push(Box::new(TopK(2)))
            .push(Box::new(Spy(log.clone())));
        chain.accept(7);
        let t = chain.sample(&[0.0, 5.0, 1.0, 3.0]);
        assert_eq!(t, 1);
        {
            let log = log.lock().unwrap();
            assert_eq!(log.seen, vec![2], "spy runs after top-k");
            assert_eq!(log.accepted, vec![7, 1]);
        }
        chain.reset();
        assert!(log.lock().unwrap().accepted.is_empty());
    }

    #[test]
    fn describe_lists_stages() {
        let chain = SamplerChain::new(Box::new(Dist::new(3)))
            .with(Box::new(LogitBias::new(vec![(1, -1.0)])))
            .with(Box::new(TopK(5)));
        assert_eq!(
            chain.describe(),
            "logit-bias(1 tokens) -> top-k(5) -> dist(seed=3)"
        );
        assert_eq!(chain.len(), 2);
        assert_eq!(
            format!("{chain:?}"),
            format!("SamplerChain({:?})", chain.describe())
        );
    }

    #[test]
    fn raw_greedy_picks_what_the_candidates_pick() {
        let nan = f32::NAN;
        let ninf = f32::NEG_INFINITY;
        for row in [
            vec![1.0, 3.0, 3.0, 2.0],
            vec![nan, 0.5, nan, 0.5],
            vec![nan, nan],
            vec![ninf, ninf, ninf],
            vec![-0.0, 0.0, -1.0],
            vec![ninf, nan, -3.0],
        ] {
            let mut c = Candidates::default();
            c.reset_from_logits(&row);
            let want = Greedy.pick(&mut c);
            assert_eq!(
                SamplerChain::new(Box::new(Greedy)).sample(&row),
                want,
                "{row:?}"
            );
        }
    }

    #[test]
    fn candidates_exposes_last_step() {
        let mut chain = SamplerChain::new(Box::new(Dist::new(0))).with(Box::new(TopK(2)));
        chain.sample(&[1.0, 2.0, 3.0]);
        let c = chain.candidates();
        assert_eq!(c.len(), 2);
        assert!(c.probs_valid);
        assert!((c.probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    #[should_panic(expected = "empty logits")]
    fn empty_logits_panics_clearly() {
        SamplerChain::new(Box::new(Greedy)).sample(&[]);
    }
}
