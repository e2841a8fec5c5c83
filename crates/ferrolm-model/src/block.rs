//! The one transformer block. Every family runs through this code; what differs is data:
//! the spec enums in `ModelConfig` (norm placement, residual wiring) and the per-layer `LayerPlan`.

use crate::kv::LayerKv;
use crate::layers::{sized, trace_rows, Attention, FfnLayer, Norm, Scratch, StepCtx};
use crate::profile::scope;
use crate::spec::{LayerPlan, NormPlacement, Residual};
use anyhow::Result;

pub struct Block {
    /// Layer number, for tracing.
    pub index: usize,
    pub plan: LayerPlan,
    pub placement: NormPlacement,
    pub residual: Residual,
    /// Before attention (`Pre`, `Sandwich`, parallel), or after its residual add (`Post`).
    pub attn_norm: Norm,
    pub attn: Attention,
    /// Present for `NormPlacement::Sandwich`.
    pub post_attn_norm: Option<Norm>,
    /// Cross-attention to the encoder's output (decoder layers of encoder-decoder models),
    /// with its norm (placed like the others).
    pub cross: Option<(Norm, Attention)>,
    /// The feed-forward's norm; `None` in a parallel block whose attention norm feeds both.
    pub ffn_norm: Option<Norm>,
    pub ffn: FfnLayer,
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

/// A sub-layer: `s.n -> s.h`.
enum Sub<'a, 'b> {
    SelfAttn(&'a mut [&'b mut LayerKv]),
    Cross(&'a LayerKv, &'a Attention),
    Ffn,
}

impl Block {
    /// `x: (T, C)` in place: the rows of the sequences in `ctx.segments`, `kvs[i]` the cache of
    /// sequence `i`. `cross_kv` holds the encoder's keys and values for layers with
    /// cross-attention (one sequence). Works in `s`'s buffers.
    pub fn forward_rows(
        &self,
        x: &mut [f32],
        ctx: &StepCtx,
        kvs: &mut [&mut LayerKv],
        cross_kv: Option<&LayerKv>,
        s: &mut Scratch,
    ) -> Result<()> {
        let l = Some(self.index);
        let c = self.attn_norm.dim();
        let t = x.len() / c;
        if let Residual::Parallel { .. } = self.residual {
            self.norm_into(&self.attn_norm, x, s, t * c);
            self.attn
                .forward_rows(t, &self.plan, ctx, kvs, self.index, s)?;
            std::mem::swap(&mut s.h, &mut s.a);
            if let Some(n) = &self.ffn_norm {
                self.norm_into(n, x, s, t * c);
            }
            self.ffn.forward_rows(t, l, s)?;
            let (a, h) = (&s.a[..t * c], &s.h[..t * c]);
            trace_rows("attn_out", l, a, &[t, c]);
            trace_rows("ffn_out", l, h, &[t, c]);
            scope("residual adds").run(|| {
                add_into(x, a, c);
                add_into(x, h, c)
            });
            trace_rows("l_out", l, x, &[t, c]);
            return Ok(());
        }
        self.sub(
            x,
            ctx,
            Sub::SelfAttn(kvs),
            &self.attn_norm,
            self.post_attn_norm.as_ref(),
            s,
        )?;
        if let Some((norm, attn)) = &self.cross {
            let ckv = cross_kv.ok_or_else(|| {
                anyhow::anyhow!("cross-attention layer run without encoder output")
            })?;
            self.sub(x, ctx, Sub::Cross(ckv, attn), norm, None, s)?;
        }
        let norm = self
            .ffn_norm
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("sequential block without a feed-forward norm"))?;
        self.sub(x, ctx, Sub::Ffn, norm, self.post_ffn_norm.as_ref(), s)?;
        trace_rows("l_out", l, x, &[t, c]);
        Ok(())
    }

    fn norm_into(&self, n: &Norm, x: &[f32], s: &mut Scratch, len: usize) {
        let _p = scope("norms");
        n.rows(x, sized(&mut s.n, len));
    }

    /// One residual sub-layer with its norms where the placement puts them.
    fn sub(
        &self,
        x: &mut [f32],
        ctx: &StepCtx,
        f: Sub,
        norm: &Norm,
        post: Option<&Norm>,
        s: &mut Scratch,
    ) -> Result<()> {
        let l = Some(self.index);
        let c = norm.dim();
        let t = x.len() / c;
        let post_ln = self.placement == NormPlacement::Post;
        if post_ln {
            sized(&mut s.n, t * c).copy_from_slice(x);
        } else {
            self.norm_into(norm, x, s, t * c);
        }
        let name = match f {
            Sub::SelfAttn(_) => "attn",
            Sub::Cross(..) => "cross",
            Sub::Ffn => "ffn",
        };
        if crate::trace::enabled() {
            trace_rows(&format!("{name}_norm"), l, &s.n[..t * c], &[t, c]);
        }
        match f {
            Sub::SelfAttn(kvs) => self
                .attn
                .forward_rows(t, &self.plan, ctx, kvs, self.index, s)?,
            Sub::Cross(kv, attn) => attn.forward_cross(t, ctx, kv, s)?,
            Sub::Ffn => self.ffn.forward_rows(t, l, s)?,
        }
        let h = &mut s.h[..t * c];
        if let Some(n) = post {
            let _p = scope("norms");
            n.rows_in_place(h);
        }
        if crate::trace::enabled() {
            trace_rows(&format!("{name}_out"), l, h, &[t, c]);
        }
        scope("residual adds").run(|| add_into(x, h, c));
        if post_ln {
            let _p = scope("norms");
            norm.rows_in_place(x);
        }
        // llama.cpp names the residual after attention `ffn_inp` (LLaMA) and `sa_out` (Gemma).
        if name == "attn" {
            trace_rows("ffn_inp", l, x, &[t, c]);
            trace_rows("sa_out", l, x, &[t, c]);
        }
        Ok(())
    }
}
