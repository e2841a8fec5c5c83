//! The one transformer block. Every family runs through this code; what differs is data:
//! the spec enums in `ModelConfig` and the per-layer `LayerPlan`.

use crate::kv::LayerKv;
use crate::layers::{sized, trace_rows, Attention, FeedForward, Norm, Scratch, StepCtx};
use crate::profile::scope;
use crate::spec::LayerPlan;
use anyhow::Result;

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

/// `x += h`, in parallel over rows when large.
fn add_into(x: &mut [f32], h: &[f32], c: usize) {
    ferrolm_kernels::pool::par_rows(x, c, |r0, run| {
        for (xv, &hv) in run.iter_mut().zip(&h[r0 * c..]) {
            *xv += hv;
        }
    });
}

impl Block {
    /// `x: (T, C)` in place: pre-norm residual sub-layers, with post-norms when the
    /// placement is `Sandwich` (they are `None` otherwise). Works in `s`'s buffers.
    pub fn forward_rows(
        &self,
        x: &mut [f32],
        ctx: &StepCtx,
        kv: &mut LayerKv,
        s: &mut Scratch,
    ) -> Result<()> {
        let l = Some(self.index);
        let c = self.attn_norm.dim();
        let t = x.len() / c;
        {
            let _p = scope("norms");
            self.attn_norm.rows(x, sized(&mut s.n, t * c));
        }
        trace_rows("attn_norm", l, &s.n[..t * c], &[t, c]);
        self.attn
            .forward_rows(t, &self.plan, ctx, kv, self.index, s)?;
        let h = &mut s.h[..t * c];
        trace_rows("attn_out", l, h, &[t, c]);
        if let Some(n) = &self.post_attn_norm {
            let _p = scope("norms");
            n.rows_in_place(h);
            trace_rows("attn_post_norm", l, h, &[t, c]);
        }
        scope("residual adds").run(|| add_into(x, h, c));
        // llama.cpp names this `ffn_inp` in LLaMA graphs and `sa_out` in Gemma's.
        trace_rows("ffn_inp", l, x, &[t, c]);
        trace_rows("sa_out", l, x, &[t, c]);
        {
            let _p = scope("norms");
            self.ffn_norm.rows(x, sized(&mut s.n, t * c));
        }
        trace_rows("ffn_norm", l, &s.n[..t * c], &[t, c]);
        self.ffn.forward_rows(t, l, s)?;
        let h = &mut s.h[..t * c];
        trace_rows("ffn_out", l, h, &[t, c]);
        if let Some(n) = &self.post_ffn_norm {
            let _p = scope("norms");
            n.rows_in_place(h);
            trace_rows("ffn_post_norm", l, h, &[t, c]);
        }
        scope("residual adds").run(|| add_into(x, h, c));
        trace_rows("l_out", l, x, &[t, c]);
        Ok(())
    }
}
