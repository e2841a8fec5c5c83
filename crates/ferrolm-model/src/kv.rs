//! KV memory, owned by the caller and passed into `forward`: weights stay immutable, so two
//! sequences can share one model. Each layer keeps its keys and values with their positions;
//! global layers grow, sliding-window layers drop keys no future query can see.
//!
//! A layer's slots are paged: first a run of shared, immutable [`KvPage`]s (reference counted;
//! the server's prefix cache and a beam's forks hold the same pages), then the sequence's own
//! rows, where new positions are appended. Sharing is copy on write: a fork
//! ([`KvCache::fork`]) seals its full blocks of own rows into pages and copies only the last,
//! partial block; a change to shared rows (taking positions back into a page, a window sliding
//! past one, a long-context policy) first copies the pages into the sequence's own rows
//! ([`LayerKv::own_pages`]). Attention reads slots run by run ([`LayerKv::runs`]).

use anyhow::{bail, Result};
use std::sync::Arc;

/// Precision of cached keys and values. `F16` is llama.cpp's default: keys, values, and the
/// operands of the two attention products (queries, probabilities) are rounded to f16, so
/// results agree with it; keys and values are stored as f16 (see [`KvRows`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    #[default]
    F16,
    F32,
}

impl KvPrecision {
    /// Rounds values in place to this precision (f16 round-to-nearest-even, as ggml stores).
    pub fn round_slice(self, x: &mut [f32]) {
        if self == KvPrecision::F16 {
            ferrolm_kernels::numerics::round_f16_slice(x);
        }
    }
}

/// Cached keys or values of one layer: f16 for an f16 cache (half the memory and half the
/// bytes attention reads; the values are f16-rounded before they are stored, so nothing is
/// lost), f32 otherwise and under a long-context policy (whose paths work on f32 rows).
#[derive(Clone, Debug)]
pub enum KvRows {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl Default for KvRows {
    fn default() -> Self {
        KvRows::F32(Vec::new())
    }
}

/// A borrowed run of [`KvRows`].
#[derive(Clone, Copy, Debug)]
pub enum KvRun<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

impl KvRun<'_> {
    /// The elements as f32 (a copy; tests compare rows with it).
    #[cfg(test)]
    pub fn to_vec(self) -> Vec<f32> {
        match self {
            KvRun::F32(s) => s.to_vec(),
            KvRun::F16(s) => s.iter().map(|x| x.to_f32()).collect(),
        }
    }
    /// The run from element `at` on.
    pub fn from(self, at: usize) -> Self {
        match self {
            KvRun::F32(s) => KvRun::F32(&s[at..]),
            KvRun::F16(s) => KvRun::F16(&s[at..]),
        }
    }
}

impl KvRows {
    pub fn len(&self) -> usize {
        match self {
            KvRows::F32(v) => v.len(),
            KvRows::F16(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Empty rows of the storage a layer of `precision` uses (f32 under a long-context policy).
    pub fn new(precision: KvPrecision, long: bool) -> KvRows {
        if precision == KvPrecision::F16 && !long {
            KvRows::F16(Vec::new())
        } else {
            KvRows::F32(Vec::new())
        }
    }
    /// Rows holding `x` (already rounded to `precision`) in that precision's storage.
    pub fn from_values(x: &[f32], precision: KvPrecision) -> KvRows {
        let mut r = KvRows::new(precision, false);
        r.extend(x);
        r
    }
    /// Appends values (already rounded to the cache's precision, so f16 storage is exact).
    pub fn extend(&mut self, x: &[f32]) {
        match self {
            KvRows::F32(v) => v.extend_from_slice(x),
            KvRows::F16(v) => ferrolm_kernels::numerics::extend_f16(x, v),
        }
    }
    /// Elements `r`, borrowed.
    pub fn run(&self, r: std::ops::Range<usize>) -> KvRun<'_> {
        match self {
            KvRows::F32(v) => KvRun::F32(&v[r]),
            KvRows::F16(v) => KvRun::F16(&v[r]),
        }
    }
    /// Elements `r`, copied.
    pub fn copy(&self, r: std::ops::Range<usize>) -> KvRows {
        match self {
            KvRows::F32(v) => KvRows::F32(v[r].to_vec()),
            KvRows::F16(v) => KvRows::F16(v[r].to_vec()),
        }
    }
    pub fn drain(&mut self, r: std::ops::Range<usize>) {
        match self {
            KvRows::F32(v) => drop(v.drain(r)),
            KvRows::F16(v) => drop(v.drain(r)),
        }
    }
    pub fn truncate(&mut self, n: usize) {
        match self {
            KvRows::F32(v) => v.truncate(n),
            KvRows::F16(v) => v.truncate(n),
        }
    }
    /// Appends `other`'s elements (of the same storage, or either empty).
    pub fn append_rows(&mut self, other: &KvRows) {
        match (&mut *self, other) {
            (KvRows::F32(a), KvRows::F32(b)) => a.extend_from_slice(b),
            (KvRows::F16(a), KvRows::F16(b)) => a.extend_from_slice(b),
            (_, b) if b.is_empty() => {}
            (a, b) if a.is_empty() => *a = b.clone(),
            _ => unreachable!("f16 and f32 rows in one layer"),
        }
    }
    /// The rows as f32, for the long-context paths (whose layers store f32).
    pub fn f32(&self) -> &[f32] {
        match self {
            KvRows::F32(v) => v,
            KvRows::F16(v) if v.is_empty() => &[],
            KvRows::F16(_) => unreachable!("a long-context layer keeps f32 rows"),
        }
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            KvRows::F32(v) => v.len() * 4,
            KvRows::F16(v) => v.len() * 2,
        }
    }
}

/// Slots per page when a cache is forked (beams, contrastive search's candidates); the
/// server's pages are its `block_size`.
pub const PAGE_ROWS: usize = 16;

/// A block of cached rows shared by reference: `rows` rows of `Hkv * D` keys and values. Never
/// changed once shared; see the module's notes on copy on write.
#[derive(Debug, Default)]
pub struct KvPage {
    pub k: KvRows,
    pub v: KvRows,
    pub rows: usize,
}

/// One layer's cache: rows of `Hkv * D` values per cached position, in slot order. Slots
/// `0..paged` lie in `pages`, slots `paged..` in the own rows `k`, `v`
/// (`k[(s - paged) * Hkv * D + g * D + e]`); `pos[s]` is the position of slot `s`.
#[derive(Clone, Default)]
pub struct LayerKv {
    /// Shared pages, in slot order, before the own rows.
    pub pages: Vec<Arc<KvPage>>,
    /// Slots held in `pages`.
    pub paged: usize,
    pub k: KvRows,
    pub v: KvRows,
    pub pos: Vec<usize>,
    /// `Some(W)`: rotating (keeps the last `W - 1` positions between calls).
    pub window: Option<usize>,
    pub precision: KvPrecision,
    /// Extra positions a rotating layer keeps past its window, so the newest `slack`
    /// positions can be taken back ([`KvCache::truncate`]) without losing what the window
    /// then needs again.
    pub slack: usize,
    /// Long-context state (streaming, memory, far positions) when the sequence has a policy.
    pub long: Option<Box<crate::longctx::LongLayer>>,
}

impl LayerKv {
    pub fn len(&self) -> usize {
        self.pos.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    /// Appends new rows (`T` rows of `Hkv * D`, already rounded to the cache precision).
    pub fn append(&mut self, k: &[f32], v: &[f32], pos: &[usize]) {
        self.k.extend(k);
        self.v.extend(v);
        self.pos.extend_from_slice(pos);
    }

    /// Values per slot (`Hkv * D`), 0 while empty.
    pub fn row_width(&self) -> usize {
        match self.pages.first() {
            Some(p) => p.k.len() / p.rows.max(1),
            None => self.k.len() / (self.pos.len() - self.paged).max(1),
        }
    }

    /// The slots `lo..hi` as contiguous runs `(first slot, rows, keys, values)`, each slice
    /// starting at its first slot's row (`rows * Hkv * D` values): one per page touched, then
    /// the own rows.
    pub fn runs(
        &self,
        lo: usize,
        hi: usize,
    ) -> impl Iterator<Item = (usize, usize, KvRun<'_>, KvRun<'_>)> {
        let w = self.row_width();
        let mut start = 0;
        let pages = self.pages.iter().map(move |p| {
            let s = start;
            start += p.rows;
            (s, p.rows, &p.k, &p.v)
        });
        let own = (self.paged, self.pos.len() - self.paged, &self.k, &self.v);
        pages
            .chain(std::iter::once(own))
            .filter_map(move |(s, n, k, v)| {
                let (a, b) = (lo.max(s), hi.min(s + n));
                (a < b).then(|| {
                    let r = (a - s) * w..(b - s) * w;
                    (a, b - a, k.run(r.clone()), v.run(r))
                })
            })
    }

    /// Copy on write: the shared pages' rows become this sequence's own (before the own rows),
    /// so they can be changed. Nothing to do without pages.
    pub fn own_pages(&mut self) {
        if self.pages.is_empty() {
            return;
        }
        let (mut k, mut v) = (KvRows::default(), KvRows::default());
        for p in self.pages.drain(..) {
            k.append_rows(&p.k);
            v.append_rows(&p.v);
        }
        k.append_rows(&self.k);
        v.append_rows(&self.v);
        (self.k, self.v, self.paged) = (k, v, 0);
    }

    /// Moves own rows into shared pages of `rows` slots each, while whole pages fit below slot
    /// `upto` (call it with the length of the pages the sequence already holds a multiple of
    /// `rows`, as the server and beam forks do).
    pub fn seal(&mut self, rows: usize, upto: usize) {
        let w = self.row_width();
        let n = upto.min(self.pos.len()).saturating_sub(self.paged) / rows.max(1);
        for i in 0..n {
            let r = i * rows * w..(i + 1) * rows * w;
            self.pages.push(Arc::new(KvPage {
                k: self.k.copy(r.clone()),
                v: self.v.copy(r),
                rows,
            }));
        }
        self.k.drain(0..n * rows * w);
        self.v.drain(0..n * rows * w);
        self.paged += n * rows;
    }

    /// Takes a shared page as the next slots (only before any own rows).
    pub fn push_page(&mut self, page: Arc<KvPage>, pos: impl IntoIterator<Item = usize>) {
        assert!(self.paged == self.pos.len(), "a page after own rows");
        self.pos.extend(pos);
        self.paged += page.rows;
        self.pages.push(page);
        debug_assert_eq!(self.paged, self.pos.len());
    }

    /// Drops what a rotating layer will never attend to again (call after attending).
    pub fn trim(&mut self) {
        let (Some(w), Some(&max)) = (self.window, self.pos.iter().max()) else {
            return;
        };
        let keep_from = self
            .pos
            .iter()
            .position(|&p| p + w + self.slack > max + 1)
            .unwrap_or(self.pos.len());
        if keep_from > 0 {
            self.own_pages();
            let row = self.row_width();
            self.k.drain(0..keep_from * row);
            self.v.drain(0..keep_from * row);
            self.pos.drain(..keep_from);
        }
    }
}

/// The whole model's KV memory for one sequence.
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    /// Maximum number of positions this sequence may use (the context size).
    pub n_ctx: usize,
    /// Next position to fill.
    pub next_pos: usize,
    /// The encoder's keys and values per cross-attention layer (encoder-decoder models).
    pub cross: Vec<LayerKv>,
    /// The forward pass's working buffers for this sequence (reused across calls).
    pub scratch: crate::layers::Scratch,
    /// The long-context policy ([`KvCache::set_long`]); streaming lifts the `n_ctx` limit.
    pub long: Option<std::sync::Arc<crate::longctx::LongCtx>>,
}

impl Clone for KvCache {
    /// A copy of the cached state (for beam forks); working buffers are not copied.
    fn clone(&self) -> Self {
        Self {
            layers: self.layers.clone(),
            n_ctx: self.n_ctx,
            next_pos: self.next_pos,
            cross: self.cross.clone(),
            scratch: Default::default(),
            long: self.long.clone(),
        }
    }
}

impl KvCache {
    pub fn new(
        windows: impl IntoIterator<Item = Option<usize>>,
        n_ctx: usize,
        precision: KvPrecision,
    ) -> Self {
        let layers = windows
            .into_iter()
            .map(|window| LayerKv {
                window,
                precision,
                k: KvRows::new(precision, false),
                v: KvRows::new(precision, false),
                ..Default::default()
            })
            .collect();
        Self {
            layers,
            n_ctx,
            next_pos: 0,
            cross: Vec::new(),
            scratch: Default::default(),
            long: None,
        }
    }

    /// A copy of this cache that shares its history (a beam fork, a second choice): the full
    /// blocks of `page_rows` slots of own rows are sealed into shared pages first, so both
    /// caches hold the same pages and only the last, partial block is copied. Rotating and
    /// long-context layers, whose rows change as they go, are copied whole.
    pub fn fork(&mut self, page_rows: usize) -> KvCache {
        for l in &mut self.layers {
            if l.window.is_none() && l.long.is_none() {
                let n = l.len();
                l.seal(page_rows, n);
            }
        }
        self.clone()
    }

    pub fn clear(&mut self) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            *l = LayerKv {
                window: l.window,
                precision: l.precision,
                k: KvRows::new(l.precision, l.long.is_some()),
                v: KvRows::new(l.precision, l.long.is_some()),
                slack: l.slack,
                long: l
                    .long
                    .as_ref()
                    .map(|s| Box::new(crate::longctx::LongLayer::new(s.policy.clone(), i))),
                ..Default::default()
            };
        }
        self.next_pos = 0;
        self.cross.clear();
    }

    /// Gives the sequence a long-context policy (before its first token): every global layer
    /// then attends through [`crate::longctx`]; sliding-window layers keep their own window.
    pub fn set_long(&mut self, policy: crate::longctx::LongCtx) -> Result<()> {
        policy.validate()?;
        if self.next_pos > 0 {
            bail!("a long-context policy must be set before the first token");
        }
        let policy = std::sync::Arc::new(policy);
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.long = (l.window.is_none() && policy.is_active())
                .then(|| Box::new(crate::longctx::LongLayer::new(policy.clone(), i)));
            // The long-context paths work on f32 rows.
            (l.k, l.v) = (
                KvRows::new(l.precision, l.long.is_some()),
                KvRows::new(l.precision, l.long.is_some()),
            );
        }
        self.long = policy.is_active().then_some(policy);
        Ok(())
    }

    /// Bytes of keys and values this sequence reads (with a long-context policy's far keys and
    /// memory), shared pages counted in full.
    pub fn bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        self.layers
            .iter()
            .map(|l| {
                let mut n = l.k.bytes() + l.v.bytes();
                n += l
                    .pages
                    .iter()
                    .map(|p| p.k.bytes() + p.v.bytes())
                    .sum::<usize>();
                if let Some(s) = &l.long {
                    n += s.k_far.len() * f;
                    if let Some(m) = &s.memory {
                        n += m
                            .chunks
                            .iter()
                            .map(|c| c.k.len() + c.v.len())
                            .sum::<usize>()
                            * f;
                    }
                }
                n
            })
            .sum::<usize>()
    }

    /// Streaming (attention sinks): the cache stays bounded however many positions pass.
    pub fn is_streaming(&self) -> bool {
        self.long.as_ref().is_some_and(|l| l.stream.is_some())
    }

    /// Lets rotating layers keep `n` positions past their window, so up to `n` of the newest
    /// positions can be taken back with [`truncate`](Self::truncate) (speculative decoding).
    pub fn set_slack(&mut self, n: usize) {
        self.layers.iter_mut().for_each(|l| l.slack = n);
    }

    /// Forgets every position from `len` on (rejected draft tokens): the cache then holds what
    /// it held after its first `len` positions. Errors if a rotating layer already dropped a
    /// position the window needs again (more taken back than [`set_slack`](Self::set_slack)).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.next_pos {
            return Ok(());
        }
        if self.long.is_some() {
            bail!("positions cannot be taken back under a long-context policy");
        }
        for l in &mut self.layers {
            let keep = l.pos.iter().take_while(|&&p| p < len).count();
            if keep < l.paged {
                l.own_pages();
            }
            if l.pos[keep..].iter().any(|&p| p < len) {
                bail!("KV cache slots out of position order");
            }
            if let (Some(w), Some(&first)) = (l.window, l.pos.first()) {
                // The next query (at `len`) sees positions from `len + 1 - w` on.
                if first > (len + 1).saturating_sub(w) {
                    bail!(
                        "cannot take back {} positions: a rotating layer kept only {} past its window (set_slack)",
                        self.next_pos - len,
                        l.slack
                    );
                }
            }
            let row = l.row_width();
            l.k.truncate((keep - l.paged) * row);
            l.v.truncate((keep - l.paged) * row);
            l.pos.truncate(keep);
        }
        self.next_pos = len;
        Ok(())
    }

    /// Positions for `n` new tokens, or an error when they would pass the context size.
    pub fn reserve(&mut self, n: usize) -> Result<Vec<usize>> {
        if self.next_pos + n > self.n_ctx && !self.is_streaming() {
            bail!(
                "the input has {n} tokens but the context holds {} (with {} already used); use a larger --ctx or a shorter prompt",
                self.n_ctx,
                self.next_pos
            );
        }
        let pos = (self.next_pos..self.next_pos + n).collect();
        self.next_pos += n;
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(n: usize, w: usize) -> KvCache {
        let mut c = KvCache::new([None, Some(4)], 1024, KvPrecision::F32);
        let k: Vec<f32> = (0..n * w).map(|i| i as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        let pos: Vec<usize> = c.reserve(n).unwrap();
        for l in &mut c.layers {
            l.append(&k, &v, &pos);
        }
        c
    }

    fn rows(l: &LayerKv) -> (Vec<f32>, Vec<f32>) {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for (_, _, a, b) in l.runs(0, l.len()) {
            k.extend(a.to_vec());
            v.extend(b.to_vec());
        }
        (k, v)
    }

    /// Forks share their full blocks by reference and copy only the partial one; changing
    /// shared rows in one fork (taking positions back) copies them first and leaves the
    /// other fork as it was.
    #[test]
    fn forks_share_full_pages_and_copy_on_write() {
        let w = 6;
        let mut a = cache(37, w);
        let before = rows(&a.layers[0]);
        let mut b = a.fork(16);
        let (la, lb) = (&a.layers[0], &b.layers[0]);
        assert_eq!((la.pages.len(), la.paged, la.k.len()), (2, 32, 5 * w));
        assert!(la
            .pages
            .iter()
            .zip(&lb.pages)
            .all(|(x, y)| Arc::ptr_eq(x, y)));
        assert_eq!(rows(la), before);
        assert_eq!(rows(lb), before);
        // The rotating layer is copied whole, never paged.
        assert!(a.layers[1].pages.is_empty() && b.layers[1].pages.is_empty());
        assert_eq!(Arc::strong_count(&la.pages[0]), 2);
        // Appending goes to own rows; taking back into a page copies the pages (b only).
        let pos = b.reserve(1).unwrap();
        b.layers[0].append(&[7.0; 6], &[8.0; 6], &pos);
        b.truncate(20).unwrap();
        let lb = &b.layers[0];
        assert!(lb.pages.is_empty());
        assert_eq!(rows(lb).0, before.0[..20 * w].to_vec());
        assert_eq!(Arc::strong_count(&a.layers[0].pages[0]), 1);
        assert_eq!(rows(&a.layers[0]), before, "the other fork is unchanged");
        // Runs cut at page boundaries.
        let cuts: Vec<(usize, usize)> = a.layers[0].runs(10, 36).map(|r| (r.0, r.1)).collect();
        assert_eq!(cuts, [(10, 6), (16, 16), (32, 4)]);
        // Bytes count what each fork reads, shared pages in full: 37 and 20 slots, 2 layers.
        assert_eq!(
            (a.bytes(), b.bytes()),
            (37 * 2 * w * 2 * 4, 20 * 2 * w * 2 * 4)
        );
    }
}
