//! The one transformer block. Every family runs through this code; what differs is data:
//! the spec enums in `ModelConfig` and the per-layer `LayerPlan`.

use crate::kv::LayerKv;
use crate::layers::{Attention, FeedForward, Norm, StepCtx};
use crate::spec::LayerPlan;
use anyhow::Result;
use candle_core::Tensor;

pub struct Block {
    pub plan: LayerPlan,
    pub attn_norm: Norm,
    pub attn: Attention,
    /// Present for `NormPlacement::Sandwich`.
    pub post_attn_norm: Option<Norm>,
    pub ffn_norm: Norm,
    pub ffn: FeedForward,
    pub post_ffn_norm: Option<Norm>,
}

fn post(norm: &Option<Norm>, x: Tensor) -> Result<Tensor> {
    match norm {
        Some(n) => n.forward(&x),
        None => Ok(x),
    }
}

impl Block {
    /// `x: (T, C) -> (T, C)`: pre-norm residual sub-layers, with post-norms when the
    /// placement is `Sandwich` (they are `None` otherwise).
    pub fn forward(&self, x: &Tensor, ctx: &StepCtx, kv: &mut LayerKv) -> Result<Tensor> {
        let h = self
            .attn
            .forward(&self.attn_norm.forward(x)?, &self.plan, ctx, kv)?;
        let x = (x + post(&self.post_attn_norm, h)?)?;
        let h = self.ffn.forward(&self.ffn_norm.forward(&x)?)?;
        Ok((x + post(&self.post_ffn_norm, h)?)?)
    }
}
