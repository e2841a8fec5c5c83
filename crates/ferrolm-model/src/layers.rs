//! Leaf components of the block: norms, rotary embeddings, activations, the feed-forward and
//! attention sub-layers. Each reads its behaviour from a spec enum.

use crate::kv::LayerKv;
use crate::linear::Linear;
use crate::spec::*;
use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};

/// RMSNorm or LayerNorm over the last dimension; weights already carry any load-time fix-ups.
pub struct Norm {
    pub spec: NormSpec,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(match self.spec.kind {
            NormKind::Rms => candle_nn::ops::rms_norm(&x, &self.weight, self.spec.eps)?,
            NormKind::Layer => {
                let bias = match &self.bias {
                    Some(b) => b.clone(),
                    None => self.weight.zeros_like()?,
                };
                candle_nn::ops::layer_norm(&x, &self.weight, &bias, self.spec.eps)?
            }
        })
    }
}

pub fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => candle_nn::ops::silu(x)?,
        Activation::GeluTanh => x.gelu()?,
        Activation::GeluTanhF16 => {
            let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let y: Vec<f32> = v.into_iter().map(gelu_tanh_f16).collect();
            Tensor::from_vec(y, x.dims(), x.device())?
        }
        Activation::Gelu => x.gelu_erf()?,
        Activation::Relu => x.relu()?,
    })
}

/// Tanh GELU in f32 (the formula of the reference implementations).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// llama.cpp's table GELU: f16 input, f16 output, exact outside (-10, 10).
pub fn gelu_tanh_f16(x: f32) -> f32 {
    use half::f16;
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        f16::from_f32(gelu_tanh(f16::from_f32(x).to_f32())).to_f32()
    }
}

/// Cosines and sines `(T, dims/2)` of RoPE angles for the given positions.
pub fn rope_tables(spec: &RopeSpec, pos: &[usize]) -> Result<(Tensor, Tensor)> {
    let half = spec.dims / 2;
    let scale = match spec.scaling {
        RopeScaling::None => 1.0,
        RopeScaling::Linear { factor } => 1.0 / factor as f64,
    };
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| (spec.theta as f64).powf(-2.0 * i as f64 / spec.dims as f64))
        .collect();
    let mut cos = Vec::with_capacity(pos.len() * half);
    let mut sin = Vec::with_capacity(pos.len() * half);
    for &p in pos {
        for f in &inv_freq {
            let a = (p as f64 * scale * f) as f32;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (pos.len(), half), &Device::Cpu)?,
        Tensor::from_vec(sin, (pos.len(), half), &Device::Cpu)?,
    ))
}

/// Applies RoPE to `x: (1, H, T, D)` on its first `spec.dims` dimensions.
pub fn apply_rope(spec: &RopeSpec, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let rot = if spec.dims < d {
        x.narrow(D::Minus1, 0, spec.dims)?.contiguous()?
    } else {
        x.contiguous()?
    };
    let rotated = match spec.layout {
        RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&rot, cos, sin)?,
        RopeLayout::Half => candle_nn::rotary_emb::rope(&rot, cos, sin)?,
    };
    Ok(if spec.dims < d {
        Tensor::cat(
            &[&rotated, &x.narrow(D::Minus1, spec.dims, d - spec.dims)?],
            D::Minus1,
        )?
    } else {
        rotated
    })
}

pub struct FeedForward {
    pub spec: Ffn,
    pub gate: Option<Box<dyn Linear>>,
    pub up: Box<dyn Linear>,
    pub down: Box<dyn Linear>,
}

impl FeedForward {
    /// `x: (T, C) -> (T, C)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match (self.spec, &self.gate) {
            (Ffn::Gated { act }, Some(gate)) => {
                (activate(act, &gate.forward(x)?)? * self.up.forward(x)?)?
            }
            (Ffn::Plain { act }, _) => activate(act, &self.up.forward(x)?)?,
            (Ffn::Gated { .. }, None) => anyhow::bail!("gated feed-forward without a gate weight"),
        };
        self.down.forward(&h)
    }
}

pub struct Attention {
    pub spec: AttentionSpec,
    pub q: Box<dyn Linear>,
    pub k: Box<dyn Linear>,
    pub v: Box<dyn Linear>,
    pub o: Box<dyn Linear>,
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
}

/// Per-call inputs shared by every layer: positions and the RoPE tables for them.
pub struct StepCtx<'a> {
    pub pos: &'a [usize],
    /// One `(cos, sin)` per distinct RoPE spec, in `rope_specs` order.
    pub rope: Vec<(RopeSpec, Tensor, Tensor)>,
}

impl StepCtx<'_> {
    fn tables(&self, spec: &RopeSpec) -> Option<(&Tensor, &Tensor)> {
        self.rope
            .iter()
            .find(|(s, _, _)| s == spec)
            .map(|(_, c, s)| (c, s))
    }
}

/// Additive mask `(T, S)`: 0 where query `t` may see key `s`, `-inf` elsewhere.
pub fn attention_mask(
    q_pos: &[usize],
    k_pos: &[usize],
    window: Option<usize>,
) -> Result<Option<Tensor>> {
    let visible = |qp: usize, kp: usize| kp <= qp && window.is_none_or(|w| qp - kp < w);
    let all = q_pos
        .iter()
        .all(|&qp| k_pos.iter().all(|&kp| visible(qp, kp)));
    if all {
        return Ok(None);
    }
    let mut m = Vec::with_capacity(q_pos.len() * k_pos.len());
    for &qp in q_pos {
        for &kp in k_pos {
            m.push(if visible(qp, kp) {
                0f32
            } else {
                f32::NEG_INFINITY
            });
        }
    }
    Ok(Some(Tensor::from_vec(
        m,
        (q_pos.len(), k_pos.len()),
        &Device::Cpu,
    )?))
}

impl Attention {
    /// `x: (T, C) -> (T, C)`, reading and extending the layer's cache.
    pub fn forward(
        &self,
        x: &Tensor,
        plan: &LayerPlan,
        ctx: &StepCtx,
        kv: &mut LayerKv,
    ) -> Result<Tensor> {
        let a = &self.spec;
        let t = x.dim(0)?;
        let (h, hkv, d) = (a.n_heads, a.n_kv_heads, a.head_dim);
        let q = self.q.forward(x)?.reshape((t, h, d))?;
        let k = self.k.forward(x)?.reshape((t, hkv, d))?;
        let v = self.v.forward(x)?.reshape((t, hkv, d))?;
        let q = match &self.q_norm {
            Some(n) => n.forward(&q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(&k)?,
            None => k,
        };
        // (1, H, T, D) for the rope kernels.
        let mut q = q.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        let mut k = k.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        if let Position::Rope(spec) = &plan.position {
            let (cos, sin) = ctx
                .tables(spec)
                .ok_or_else(|| anyhow::anyhow!("missing rope tables"))?;
            q = apply_rope(spec, &q, cos, sin)?;
            k = apply_rope(spec, &k, cos, sin)?;
        }
        let r = |x: Tensor| kv.precision.round(x);
        let q = r((q.squeeze(0)? * a.scale as f64)?)?; // (H, T, D)
        let k = r(k.squeeze(0)?)?; // (Hkv, T, D)
        let v = r(v.transpose(0, 1)?.contiguous()?)?; // (Hkv, T, D)
        let (k_all, v_all, pos_all) = kv.append(&k, &v, ctx.pos)?;
        let s = pos_all.len();
        let n_rep = h / hkv;
        // Heads of one KV group are adjacent: (H, T, D) -> (Hkv, n_rep*T, D) shares K/V without copies.
        let qg = q.reshape((hkv, n_rep * t, d))?;
        let mut scores = qg.matmul(&k_all.t()?)?; // (Hkv, n_rep*T, S)
        if let Some(cap) = a.softcap {
            scores = ((scores / cap as f64)?.tanh()? * cap as f64)?;
        }
        if let Some(mask) = attention_mask(ctx.pos, &pos_all, plan.window)? {
            scores = scores
                .reshape((hkv, n_rep, t, s))?
                .broadcast_add(&mask)?
                .reshape((hkv, n_rep * t, s))?;
        }
        let probs = kv
            .precision
            .round(candle_nn::ops::softmax_last_dim(&scores)?)?;
        let out = probs.matmul(&v_all)?; // (Hkv, n_rep*T, D)
        kv.store(k_all, v_all, pos_all)?;
        let out = out
            .reshape((h, t, d))?
            .transpose(0, 1)?
            .reshape((t, h * d))?;
        debug_assert_eq!(out.dtype(), DType::F32);
        self.o.forward(&out)
    }
}
