//! KV memory, owned by the caller and passed into `forward`: weights stay immutable, so two
//! sequences can share one model. Each layer keeps its keys and values with their positions;
//! global layers grow contiguously, sliding-window layers drop keys no future query can see.

use anyhow::{bail, Result};
use candle_core::Tensor;

/// Precision of cached keys and values. `F16` is llama.cpp's default: keys, values, and the
/// operands of the two attention products (queries, probabilities) are rounded to f16, so
/// results agree with it; the values are kept in f32 tensors for now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    #[default]
    F16,
    F32,
}

impl KvPrecision {
    pub fn round(self, x: Tensor) -> Result<Tensor> {
        Ok(match self {
            KvPrecision::F32 => x,
            KvPrecision::F16 => x
                .to_dtype(candle_core::DType::F16)?
                .to_dtype(candle_core::DType::F32)?,
        })
    }
}

/// One layer's cache. `k`, `v`: `(Hkv, S, D)`; `pos[s]` is the position of slot `s`.
#[derive(Clone, Default)]
pub struct LayerKv {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
    pub pos: Vec<usize>,
    /// `Some(W)`: rotating (keeps the last `W - 1` positions between calls).
    pub window: Option<usize>,
    pub precision: KvPrecision,
}

impl LayerKv {
    pub fn len(&self) -> usize {
        self.pos.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    /// Appends new keys/values `(Hkv, T, D)` and returns the full `(k, v, pos)` to attend over.
    pub fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        pos: &[usize],
    ) -> Result<(Tensor, Tensor, Vec<usize>)> {
        let (k_all, v_all) = match (&self.k, &self.v) {
            (Some(ko), Some(vo)) => (Tensor::cat(&[ko, k], 1)?, Tensor::cat(&[vo, v], 1)?),
            _ => (k.clone(), v.clone()),
        };
        let mut pos_all = self.pos.clone();
        pos_all.extend_from_slice(pos);
        Ok((k_all, v_all, pos_all))
    }

    /// Stores the attended `(k, v, pos)` back, trimmed to what a rotating layer still needs.
    pub fn store(&mut self, k: Tensor, v: Tensor, pos: Vec<usize>) -> Result<()> {
        let keep_from = match (self.window, pos.iter().max()) {
            (Some(w), Some(&max)) => pos
                .iter()
                .position(|&p| p + w > max + 1)
                .unwrap_or(pos.len()),
            _ => 0,
        };
        if keep_from > 0 {
            let n = pos.len() - keep_from;
            self.k = Some(k.narrow(1, keep_from, n)?.contiguous()?);
            self.v = Some(v.narrow(1, keep_from, n)?.contiguous()?);
            self.pos = pos[keep_from..].to_vec();
        } else {
            self.k = Some(k);
            self.v = Some(v);
            self.pos = pos;
        }
        Ok(())
    }
}

/// The whole model's KV memory for one sequence.
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    /// Maximum number of positions this sequence may use (the context size).
    pub n_ctx: usize,
    /// Next position to fill.
    pub next_pos: usize,
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
        }
    }

    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = LayerKv {
                window: l.window,
                precision: l.precision,
                ..Default::default()
            };
        }
        self.next_pos = 0;
    }

    /// Positions for `n` new tokens, or an error when they would pass the context size.
    pub fn reserve(&mut self, n: usize) -> Result<Vec<usize>> {
        if self.next_pos + n > self.n_ctx {
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
