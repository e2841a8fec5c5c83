//! The one transformer block. Every family runs through this code; what differs is data:
//! the spec enums in `ModelConfig` and the per-layer `LayerPlan`.

use crate::kv::LayerKv;
use crate::layers::{Attention, FeedForward, Norm, StepCtx};
use crate::spec::LayerPlan;
use crate::trace::trace;
use anyhow::Result;
use candle_core::Tensor;

pub struct Block {
    /// Layer number, for tracing.
    pub index: usize,
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
        let l = Some(self.index);
        let n = self.attn_norm.forward(x)?;
        trace("attn_norm", l, &n);
        let h = self.attn.forward(&n, &self.plan, ctx, kv, self.index)?;
        trace("attn_out", l, &h);
        let h = post(&self.post_attn_norm, h)?;
        trace("attn_post_norm", l, &h);
        let x = (x + h)?;
        // llama.cpp names this `ffn_inp` in LLaMA graphs and `sa_out` in Gemma's.
        trace("ffn_inp", l, &x);
        trace("sa_out", l, &x);
        let n = self.ffn_norm.forward(&x)?;
        trace("ffn_norm", l, &n);
        let h = self.ffn.forward(&n, l)?;
        trace("ffn_out", l, &h);
        let h = post(&self.post_ffn_norm, h)?;
        trace("ffn_post_norm", l, &h);
        let x = (x + h)?;
        trace("l_out", l, &x);
        Ok(x)
    }
}
