//! KV memory, owned by the caller and passed into `forward`: weights stay immutable, so two
//! sequences can share one model. Each layer keeps its keys and values with their positions;
//! global layers grow contiguously, sliding-window layers drop keys no future query can see.

use anyhow::{bail, Result};

/// Precision of cached keys and values. `F16` is llama.cpp's default: keys, values, and the
/// operands of the two attention products (queries, probabilities) are rounded to f16, so
/// results agree with it; the rounded values are stored as f32.
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

/// One layer's cache: rows of `Hkv * D` values per cached position, in slot order
/// (`k[s * Hkv * D + g * D + e]`); `pos[s]` is the position of slot `s`.
#[derive(Clone, Default)]
pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
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
        self.k.extend_from_slice(k);
        self.v.extend_from_slice(v);
        self.pos.extend_from_slice(pos);
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
            let row = self.k.len() / self.pos.len().max(1);
            self.k.drain(..keep_from * row);
            self.v.drain(..keep_from * row);
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

    pub fn clear(&mut self) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            *l = LayerKv {
                window: l.window,
                precision: l.precision,
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
        }
        self.long = policy.is_active().then_some(policy);
        Ok(())
    }

    /// Bytes of keys and values held (with a long-context policy's far keys and memory).
    pub fn bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        self.layers
            .iter()
            .map(|l| {
                let mut n = l.k.len() + l.v.len();
                if let Some(s) = &l.long {
                    n += s.k_far.len();
                    if let Some(m) = &s.memory {
                        n += m
                            .chunks
                            .iter()
                            .map(|c| c.k.len() + c.v.len())
                            .sum::<usize>();
                    }
                }
                n
            })
            .sum::<usize>()
            * f
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
            let row = l.k.len() / l.pos.len().max(1);
            l.k.truncate(keep * row);
            l.v.truncate(keep * row);
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
