//! The candidate set that flows through a sampler chain: token ids, logits and probabilities.
//!
//! Invariants (checked in debug builds by [`Candidates::debug_check`]):
//! - `ids`, `logits` and `probs` always have the same length (one entry per candidate);
//! - `probs` holds meaningful values only while `probs_valid` is true: a softmax over
//!   exactly the current candidate set;
//! - `sorted` means the candidates are in descending logit order, ties by ascending id;
//! - no logit is NaN: [`Candidates::from_logits`] turns NaN into `-inf`, and processors must
//!   not create NaN (a NaN that slips through is still ordered and weighted as `-inf`).
//!
//! Layout: structure of arrays, so processors that only touch logits stream one `Vec<f32>`.
//! Reordering goes through a permutation gathered into private scratch buffers, which are
//! reused between steps, so the full-vocabulary passes allocate nothing once warm.

use crate::TokenId;

/// Candidate tokens with logits and (after softmax) probabilities; processors may sort,
/// reorder and truncate them.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    /// Token id of each candidate.
    pub ids: Vec<TokenId>,
    /// Logit of each candidate (never NaN).
    pub logits: Vec<f32>,
    /// Probability of each candidate; valid only when `probs_valid`.
    pub probs: Vec<f32>,
    /// Candidates are in descending logit order (ties: ascending id).
    pub sorted: bool,
    /// `probs` is the softmax of `logits` over the current set.
    pub probs_valid: bool,
    scratch: Scratch,
}

/// Reusable buffers for permutations.
#[derive(Debug, Clone, Default)]
struct Scratch {
    order: Vec<usize>,
    ranked: Vec<(u64, usize)>,
    ids: Vec<TokenId>,
    logits: Vec<f32>,
    probs: Vec<f32>,
}

/// A logit as a sort key: NaN counts as `-inf`, and -0.0 as 0.0.
#[inline]
fn key(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else if logit == 0.0 {
        0.0
    } else {
        logit
    }
}

/// Rank of a candidate, smaller is better: descending logit, then ascending id. A total
/// order (ids are unique), so every sort and selection is deterministic, and comparing
/// plain integers keeps large-vocabulary sorts cheap.
#[inline]
fn rank(logit: f32, id: TokenId) -> u64 {
    let bits = key(logit).to_bits();
    // Monotone map of f32 onto u32 (ascending), flipped so larger logits rank first.
    let ascending = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    (u64::from(!ascending) << 32) | u64::from(id)
}

/// Selecting the best `k` of `n` uses a bounded heap (O(n log k), one cheap compare per
/// candidate) when `k * SMALL_K_RATIO <= n`, and `select_nth_unstable` otherwise.
const SMALL_K_RATIO: usize = 8;

impl Candidates {
    /// One candidate per vocabulary entry, id = index. NaN logits become `-inf`.
    ///
    /// # Panics
    /// If the row has more than `u32::MAX` entries.
    pub fn from_logits(logits: &[f32]) -> Self {
        let mut c = Self::default();
        c.reset_from_logits(logits);
        c
    }

    /// Builds candidates from explicit `(id, logit)` pairs (any order, ids unique).
    /// NaN becomes `-inf`.
    pub fn from_pairs(pairs: &[(TokenId, f32)]) -> Self {
        let mut c = Self {
            ids: pairs.iter().map(|&(id, _)| id).collect(),
            logits: pairs.iter().map(|&(_, l)| key(l)).collect(),
            ..Self::default()
        };
        c.probs.resize(c.ids.len(), 0.0);
        c
    }

    /// Refills this set from a full logits row, reusing the allocations.
    pub fn reset_from_logits(&mut self, logits: &[f32]) {
        let n = u32::try_from(logits.len()).expect("vocabulary larger than u32::MAX");
        self.ids.clear();
        self.ids.extend(0..n);
        self.logits.clear();
        self.logits.extend(logits.iter().map(|&l| key(l)));
        self.probs.clear();
        self.probs.resize(logits.len(), 0.0);
        self.sorted = false;
        self.probs_valid = false;
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when no candidate is left.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Marks logits as edited in place: probabilities are stale and the order may be broken.
    pub fn logits_changed(&mut self) {
        self.sorted = false;
        self.probs_valid = false;
    }

    /// Index of the largest logit; ties go to the lowest token id. `None` when empty.
    pub fn argmax(&self) -> Option<usize> {
        if self.sorted {
            return (!self.is_empty()).then_some(0);
        }
        // Two cheap passes instead of one that compares (logit, id) pairs.
        let max = self.max_logit();
        let mut best: Option<usize> = None;
        for (i, &l) in self.logits.iter().enumerate() {
            if l == max && best.is_none_or(|b| self.ids[i] < self.ids[b]) {
                best = Some(i);
            }
        }
        // No logit equals the max only if all are NaN: then all tie.
        best.or_else(|| (0..self.len()).min_by_key(|&i| self.ids[i]))
    }

    /// Largest logit (NaN ignored); `-inf` when empty.
    pub fn max_logit(&self) -> f32 {
        // Eight independent lanes so the loop vectorizes; `if l > m` skips NaN.
        const LANES: usize = 8;
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let chunks = self.logits.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for (m, &l) in lanes.iter_mut().zip(chunk) {
                *m = if l > *m { l } else { *m };
            }
        }
        lanes
            .iter()
            .chain(tail)
            .fold(f32::NEG_INFINITY, |m, &l| if l > m { l } else { m })
    }

    /// Index of token `id`, if it is a candidate. O(1) while the set is still in
    /// vocabulary order (as it is before any reordering processor), O(n) otherwise.
    pub fn position_of(&self, id: TokenId) -> Option<usize> {
        let i = id as usize;
        if self.ids.get(i) == Some(&id) {
            return Some(i);
        }
        self.ids.iter().position(|&x| x == id)
    }

    /// Sets `probs` to the softmax of `logits` over the current set.
    ///
    /// Robust to infinities: if some logits are `+inf` they share all the mass equally;
    /// if every logit is `-inf` (everything banned) the mass is spread uniformly, so the
    /// set can still be sampled instead of yielding NaN.
    pub fn softmax(&mut self) {
        let n = self.len();
        self.probs.resize(n, 0.0);
        if n == 0 {
            self.probs_valid = true;
            return;
        }
        let max = self.max_logit();
        if max == f32::INFINITY {
            let count = self.logits.iter().filter(|&&l| l == f32::INFINITY).count();
            let share = 1.0 / count as f32;
            for (p, &l) in self.probs.iter_mut().zip(&self.logits) {
                *p = if l == f32::INFINITY { share } else { 0.0 };
            }
        } else if max == f32::NEG_INFINITY {
            self.probs.fill(1.0 / n as f32);
        } else {
            let mut sum = 0.0f64;
            for (p, &l) in self.probs.iter_mut().zip(&self.logits) {
                let e = (l - max).exp();
                // NaN can only come from a NaN logit, which counts as -inf.
                *p = if e.is_nan() { 0.0 } else { e };
                sum += f64::from(*p);
            }
            // sum >= 1: the max element contributes exp(0).
            let inv = (1.0 / sum) as f32;
            for p in &mut self.probs {
                *p *= inv;
            }
        }
        self.probs_valid = true;
    }

    /// Sorts all candidates by descending logit (ties: ascending id).
    pub fn sort_desc(&mut self) {
        self.sort_top(self.len());
    }

    /// Moves the `k` best candidates to the front in descending order; the rest follow in
    /// unspecified order. `k >= len` sorts everything. Cheaper than a full sort for small `k`.
    pub fn sort_top(&mut self, k: usize) {
        let n = self.len();
        if self.sorted || n == 0 || k == 0 {
            return;
        }
        let k = k.min(n);
        let order = self.top_order(k, true);
        self.permute(&order);
        self.scratch.order = order;
        // Everything is in order once at most one element trails the sorted prefix.
        self.sorted = k + 1 >= n;
    }

    /// Keeps only the `k` best candidates, sorted. Only those `k` are moved:
    /// O(n log k) for small `k` rather than a full sort of a large vocabulary.
    pub fn keep_top(&mut self, k: usize) {
        if self.sorted || k == 0 || k >= self.len() {
            self.sort_desc();
            self.truncate(k);
            return;
        }
        let order = self.top_order(k, false);
        self.permute(&order);
        self.scratch.order = order;
        self.sorted = true;
    }

    /// Candidate positions, best `k` first and in order (1 <= k <= len); with `all`, the
    /// other positions follow unordered. Takes the scratch buffer: the caller returns it.
    fn top_order(&mut self, k: usize, all: bool) -> Vec<usize> {
        let n = self.len();
        let mut order = std::mem::take(&mut self.scratch.order);
        order.clear();
        let ranked = (0..n).map(|i| (rank(self.logits[i], self.ids[i]), i));
        if k * SMALL_K_RATIO <= n {
            // Max-heap of the k best seen so far; its top is the worst of them.
            let mut heap = std::collections::BinaryHeap::with_capacity(k);
            for item in ranked {
                if heap.len() < k {
                    heap.push(item);
                } else if let Some(mut worst) = heap.peek_mut() {
                    if item < *worst {
                        *worst = item;
                    }
                }
            }
            order.extend(heap.into_sorted_vec().into_iter().map(|(_, i)| i));
            if all {
                let mut chosen = order.clone();
                chosen.sort_unstable();
                let mut next = chosen.into_iter().peekable();
                for i in 0..n {
                    if next.peek() == Some(&i) {
                        next.next();
                    } else {
                        order.push(i);
                    }
                }
            }
        } else {
            let mut keyed = std::mem::take(&mut self.scratch.ranked);
            keyed.clear();
            keyed.extend(ranked);
            if k < n {
                keyed.select_nth_unstable(k - 1);
                keyed[..k].sort_unstable();
            } else {
                keyed.sort_unstable();
            }
            let take = if all { n } else { k };
            order.extend(keyed[..take].iter().map(|&(_, i)| i));
            self.scratch.ranked = keyed;
        }
        order
    }

    /// Keeps the first `n` candidates. Probabilities become stale (no longer normalized).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        self.ids.truncate(n);
        self.logits.truncate(n);
        self.probs.truncate(n);
        self.probs_valid = false;
    }

    /// Keeps the candidates for which `keep(id, logit)` holds, preserving their order.
    pub fn retain(&mut self, mut keep: impl FnMut(TokenId, f32) -> bool) {
        let n = self.len();
        let mut w = 0;
        for r in 0..n {
            if keep(self.ids[r], self.logits[r]) {
                self.ids[w] = self.ids[r];
                self.logits[w] = self.logits[r];
                self.probs[w] = self.probs[r];
                w += 1;
            }
        }
        if w < n {
            self.truncate(w);
        }
    }

    /// Rearranges candidates so that new position `j` holds old candidate `order[j]`.
    /// `order` may name a subset (that drops the others). `sorted` is left to the caller.
    pub fn permute(&mut self, order: &[usize]) {
        let old_len = self.len();
        let s = &mut self.scratch;
        s.ids.clear();
        s.ids.extend(order.iter().map(|&i| self.ids[i]));
        s.logits.clear();
        s.logits.extend(order.iter().map(|&i| self.logits[i]));
        s.probs.clear();
        s.probs.extend(order.iter().map(|&i| self.probs[i]));
        std::mem::swap(&mut self.ids, &mut s.ids);
        std::mem::swap(&mut self.logits, &mut s.logits);
        std::mem::swap(&mut self.probs, &mut s.probs);
        if order.len() != old_len {
            self.probs_valid = false;
        }
    }

    /// Asserts the structural invariants (debug builds only).
    pub fn debug_check(&self) {
        debug_assert_eq!(self.ids.len(), self.logits.len());
        debug_assert_eq!(self.ids.len(), self.probs.len());
        debug_assert!(self.logits.iter().all(|l| !l.is_nan()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn from_logits_maps_nan_to_neg_inf() {
        let c = Candidates::from_logits(&[1.0, f32::NAN, 2.0]);
        assert_eq!(c.ids, vec![0, 1, 2]);
        assert_eq!(c.logits, vec![1.0, f32::NEG_INFINITY, 2.0]);
        assert!(!c.sorted && !c.probs_valid);
    }

    #[test]
    fn softmax_hand_computed() {
        // exp(0)=1, exp(ln 3)=3 -> 0.25, 0.75
        let mut c = Candidates::from_logits(&[0.0, 3f32.ln(), f32::NEG_INFINITY]);
        c.softmax();
        assert_close(&c.probs, &[0.25, 0.75, 0.0]);
        assert!(c.probs_valid);
    }

    #[test]
    fn softmax_infinities() {
        let mut c = Candidates::from_logits(&[f32::INFINITY, 1.0, f32::INFINITY]);
        c.softmax();
        assert_close(&c.probs, &[0.5, 0.0, 0.5]);
        let mut c = Candidates::from_logits(&[f32::NEG_INFINITY; 4]);
        c.softmax();
        assert_close(&c.probs, &[0.25; 4]);
    }

    #[test]
    fn sort_desc_breaks_ties_by_id() {
        let mut c = Candidates::from_pairs(&[(7, 1.0), (3, 2.0), (5, 1.0), (1, 2.0)]);
        c.softmax();
        let p_of_3 = c.probs[1];
        c.sort_desc();
        assert_eq!(c.ids, vec![1, 3, 5, 7]);
        assert_eq!(c.logits, vec![2.0, 2.0, 1.0, 1.0]);
        assert!(c.sorted && c.probs_valid);
        assert_eq!(c.probs[1], p_of_3, "probs travel with their token");
    }

    #[test]
    fn sort_paths_agree() {
        // Heap path (small k) and select path (large k) against a full sort.
        let logits: Vec<f32> = (0..500u32)
            .map(|i| ((i * 7919) % 61) as f32 - 30.0)
            .collect();
        let mut full = Candidates::from_logits(&logits);
        full.sort_desc();
        for k in [1, 10, 62, 63, 100, 499, 500] {
            let mut c = Candidates::from_logits(&logits);
            c.sort_top(k);
            assert_eq!(c.ids[..k], full.ids[..k], "sort_top({k})");
            let mut rest = c.ids.clone();
            rest.sort_unstable();
            assert_eq!(
                rest,
                (0..500).collect::<Vec<_>>(),
                "sort_top({k}) is a permutation"
            );
            let mut c = Candidates::from_logits(&logits);
            c.keep_top(k);
            assert_eq!(c.ids, full.ids[..k], "keep_top({k})");
        }
    }

    #[test]
    fn sort_top_puts_best_first() {
        let mut c = Candidates::from_logits(&[0.1, 0.9, 0.5, 0.7, 0.3]);
        c.sort_top(2);
        assert_eq!(&c.ids[..2], &[1, 3]);
        assert!(!c.sorted);
        let mut rest = c.ids[2..].to_vec();
        rest.sort_unstable();
        assert_eq!(rest, vec![0, 2, 4]);
    }

    #[test]
    fn keep_top_truncates_sorted() {
        let mut c = Candidates::from_logits(&[0.1, 0.9, 0.5, 0.7, 0.3]);
        c.softmax();
        c.keep_top(3);
        assert_eq!(c.ids, vec![1, 3, 2]);
        assert!(c.sorted && !c.probs_valid);
        c.keep_top(1);
        assert_eq!(c.ids, vec![1]);
    }

    #[test]
    fn argmax_ties_lowest_id() {
        let c = Candidates::from_pairs(&[(9, 5.0), (2, 5.0), (4, 1.0)]);
        assert_eq!(c.argmax(), Some(1));
        let c = Candidates::from_pairs(&[(9, -0.0), (2, 0.0), (4, -1.0)]);
        assert_eq!(c.argmax(), Some(1));
        let mut c = Candidates::from_pairs(&[(9, 1.0), (2, 2.0), (4, 3.0)]);
        c.logits = vec![f32::NAN; 3]; // bypassing the constructor's NaN mapping
        assert_eq!(c.argmax(), Some(1));
        let c = Candidates::from_pairs(&[(9, f32::NEG_INFINITY), (2, f32::NEG_INFINITY)]);
        assert_eq!(c.argmax(), Some(1));
        assert_eq!(Candidates::default().argmax(), None);
    }

    #[test]
    fn retain_truncate_permute() {
        let mut c = Candidates::from_logits(&[1.0, 2.0, 3.0, 4.0]);
        c.softmax();
        c.retain(|id, _| id % 2 == 1);
        assert_eq!(c.ids, vec![1, 3]);
        assert!(!c.probs_valid);
        c.permute(&[1, 0]);
        assert_eq!(c.ids, vec![3, 1]);
        assert_eq!(c.logits, vec![4.0, 2.0]);
        c.truncate(1);
        assert_eq!(c.ids, vec![3]);
        c.debug_check();
    }

    #[test]
    fn position_of_fast_and_slow_paths() {
        let mut c = Candidates::from_logits(&[1.0, 3.0, 2.0]);
        assert_eq!(c.position_of(2), Some(2));
        c.sort_desc();
        assert_eq!(c.position_of(2), Some(1));
        assert_eq!(c.position_of(9), None);
    }
}
