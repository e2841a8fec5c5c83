//! Leaf components of the block: norms, rotary embeddings, activations, the feed-forward and
//! attention sub-layers. Each reads its behaviour from a spec enum.

use crate::kv::LayerKv;
use crate::linear::Linear;
use crate::spec::*;
use crate::trace::trace;
use anyhow::Result;
use candle_core::{Device, Tensor};

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
            NormKind::Rms => {
                let dims = x.dims().to_vec();
                let c = *dims.last().unwrap_or(&1);
                let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
                let w: Vec<f32> = self.weight.to_vec1()?;
                let mut y = vec![0f32; xs.len()];
                for (xr, yr) in xs.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
                    rms_norm_row(xr, &w, self.spec.eps, yr);
                }
                Tensor::from_vec(y, dims, x.device())?
            }
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

/// RMSNorm of one row with llama.cpp's rounding: squares summed in f64, `scale = 1/sqrt(mean + eps)`
/// in f32, then `(x * scale) * w`. Matching it to the last bit matters: the next matrix product
/// quantizes its input to int8, and a one-ulp change flips roundings there.
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
        *y = x * scale * w;
    }
}

pub fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => {
            let mut v: Vec<f32> = x.flatten_all()?.to_vec1()?;
            ferrolm_kernels::numerics::silu_slice(&mut v);
            Tensor::from_vec(v, x.dims(), x.device())?
        }
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

/// llama.cpp's table GELU: f16 input, f16 output, exact outside (-10, 10). The table holds
/// `f16(gelu(x))` for every f16 `x`, computed as ggml's initialisation computes it (its build
/// contracts `1 + a*x*x` into a fused multiply-add, which decides some f16 roundings).
pub fn gelu_tanh_f16(x: f32) -> f32 {
    use half::f16;
    use std::sync::OnceLock;
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let table = TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const A: f32 = 0.044_715;
        (0..=u16::MAX)
            .map(|bits| {
                let x = f16::from_bits(bits).to_f32();
                let inner = (A * x).mul_add(x, 1.0);
                f16::from_f32(0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh()))
            })
            .collect()
    });
    table[f16::from_f32(x).to_bits() as usize].to_f32()
}

/// Per-position `(cos, sin)` pairs for one RoPE spec, computed as llama.cpp does: angle
/// `theta_i = p * base^(-2i/dims)` by repeated f32 multiplication, then `cosf`/`sinf`.
/// `out` gets `dims` floats: `cos_0, sin_0, cos_1, sin_1, ...`.
pub fn rope_cache(spec: &RopeSpec, p: usize, out: &mut Vec<f32>) {
    let freq_scale = match spec.scaling {
        RopeScaling::None => 1.0f32,
        RopeScaling::Linear { factor } => 1.0 / factor,
    };
    let theta_scale = spec.theta.powf(-2.0 / spec.dims as f32);
    out.clear();
    let mut theta = p as f32;
    for _ in 0..spec.dims / 2 {
        let t = freq_scale * theta;
        out.push(t.cos());
        out.push(t.sin());
        theta *= theta_scale;
    }
}

/// Rotates one head vector `x` (length `>= spec.dims`) in place with a `rope_cache` row.
pub fn rope_head(spec: &RopeSpec, cache: &[f32], x: &mut [f32]) {
    let (offset, stride) = match spec.layout {
        RopeLayout::Interleaved => (1, 2),
        RopeLayout::Half => (spec.dims / 2, 1),
    };
    for i in 0..spec.dims / 2 {
        let (c, s) = (cache[2 * i], cache[2 * i + 1]);
        let a = i * stride;
        let (x0, x1) = (x[a], x[a + offset]);
        // llama.cpp's build contracts these into fused multiply-adds; so do we.
        x[a] = x0.mul_add(c, -(x1 * s));
        x[a + offset] = x0.mul_add(s, x1 * c);
    }
}

/// The rope caches `(T, dims)` for the positions of one call.
pub fn rope_tables(spec: &RopeSpec, pos: &[usize]) -> Vec<f32> {
    let mut all = Vec::with_capacity(pos.len() * spec.dims);
    let mut row = Vec::with_capacity(spec.dims);
    for &p in pos {
        rope_cache(spec, p, &mut row);
        all.extend_from_slice(&row);
    }
    all
}

/// Applies RoPE in place to `x: (T, heads, D)` flattened.
pub fn apply_rope(spec: &RopeSpec, tables: &[f32], x: &mut [f32], heads: usize, d: usize) {
    for (t, tok) in x.chunks_exact_mut(heads * d).enumerate() {
        let cache = &tables[t * spec.dims..(t + 1) * spec.dims];
        for head in tok.chunks_exact_mut(d) {
            rope_head(spec, cache, head);
        }
    }
}

pub struct FeedForward {
    pub spec: Ffn,
    pub gate: Option<Box<dyn Linear>>,
    pub up: Box<dyn Linear>,
    pub down: Box<dyn Linear>,
}

impl FeedForward {
    /// `x: (T, C) -> (T, C)`; `layer` names traced tensors.
    pub fn forward(&self, x: &Tensor, layer: Option<usize>) -> Result<Tensor> {
        let h = match (self.spec, &self.gate) {
            (Ffn::Gated { act }, Some(gate)) => {
                (activate(act, &gate.forward(x)?)? * self.up.forward(x)?)?
            }
            (Ffn::Plain { act }, _) => activate(act, &self.up.forward(x)?)?,
            (Ffn::Gated { .. }, None) => anyhow::bail!("gated feed-forward without a gate weight"),
        };
        trace("ffn_act", layer, &h);
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
    /// One `rope_tables` per distinct RoPE spec.
    pub rope: Vec<(RopeSpec, Vec<f32>)>,
}

impl StepCtx<'_> {
    fn tables(&self, spec: &RopeSpec) -> Option<&[f32]> {
        self.rope
            .iter()
            .find(|(s, _)| s == spec)
            .map(|(_, t)| t.as_slice())
    }
}

/// Attention of `q: (T, H, D)` over the layer's cache (which already holds this call's keys
/// and values) with llama.cpp's arithmetic: `q . k` (operands f16-rounded under
/// `KvPrecision::F16`), scaled softmax with masked entries at `-inf`, probabilities rounded like
/// the values, then `p . v`. Sums follow llama.cpp's batched order when `T >= 2` and its
/// single-row order for `T = 1`, which is where llama.cpp disagrees with itself. Heads run in
/// parallel. Returns `(T, H * D)`.
pub fn attend(
    a: &AttentionSpec,
    q: &[f32],
    kv: &LayerKv,
    q_pos: &[usize],
    window: Option<usize>,
    layer: Option<usize>,
) -> Vec<f32> {
    use ferrolm_kernels::numerics::{
        dot_batched, dot_single, pv_accumulate, pv_finish_batched, pv_finish_single, softmax_row,
    };
    use ferrolm_kernels::pool::{global, SharedOut};
    let (h, hkv, d) = (a.n_heads, a.n_kv_heads, a.head_dim);
    let (t, s) = (q_pos.len(), kv.len());
    let (k, v, k_pos) = (&kv.k, &kv.v, &kv.pos);
    let stride = hkv * d;
    let n_rep = h / hkv;
    let batched = t >= 2;
    let lanes = if batched { 16 } else { 64 };
    let visible = |qp: usize, kp: usize| kp <= qp && window.is_none_or(|w| qp - kp < w);
    let scale = match a.scale_at {
        ScaleAt::Scores => a.scale,
        ScaleAt::Queries => 1.0,
    };
    let tracing = crate::trace::enabled();
    let mut out = vec![0f32; t * h * d];
    let mut probs = if tracing {
        vec![0f32; h * t * s]
    } else {
        Vec::new()
    };
    let (o_ptr, p_ptr) = (SharedOut::new(&mut out), SharedOut::new(&mut probs));
    // Tasks are (head, run of queries), so few heads still fill every thread.
    let q_chunk = t
        .div_ceil((global().threads() * 4).div_ceil(h))
        .clamp(1, 64);
    let chunks = t.div_ceil(q_chunk);
    global().run(h * chunks, |task| {
        let (hh, qc) = (task / chunks, task % chunks);
        let g = hh / n_rep;
        let mut row = vec![0f32; s];
        let mut acc = vec![0f32; lanes * d];
        for ti in qc * q_chunk..((qc + 1) * q_chunk).min(t) {
            let qp = q_pos[ti];
            let qv = &q[(ti * h + hh) * d..(ti * h + hh + 1) * d];
            // Visible keys lie in lo..hi; whole 16-wide chunks outside it are masked, and
            // their softmax terms are exact zeros, so only c0..c1 is computed.
            let lo = k_pos.iter().position(|&kp| visible(qp, kp)).unwrap_or(s);
            let hi = k_pos
                .iter()
                .rposition(|&kp| visible(qp, kp))
                .map_or(lo, |j| j + 1);
            let (c0, c1) = (lo / 16 * 16, hi.next_multiple_of(16).min(s));
            row.iter_mut().for_each(|x| *x = 0.0);
            for j in c0..c1 {
                let kp = k_pos[j];
                row[j] = if visible(qp, kp) {
                    let kr = &k[j * stride + g * d..j * stride + (g + 1) * d];
                    let mut sc = if batched {
                        dot_batched(kr, qv)
                    } else {
                        dot_single(kr, qv)
                    };
                    if let Some(cap) = a.softcap {
                        sc = (sc * (1.0 / cap)).tanh() * cap;
                    }
                    sc
                } else {
                    f32::NEG_INFINITY
                };
            }
            if c1 > c0 {
                softmax_row(&mut row[c0..c1], scale);
            }
            if tracing {
                // SAFETY: (head, query) rows of `probs` belong to one task each.
                unsafe { p_ptr.slice((hh * t + ti) * s, s) }.copy_from_slice(&row);
            }
            kv.precision.round_slice(&mut row[c0..c1]);
            acc.iter_mut().for_each(|x| *x = 0.0);
            pv_accumulate(&row[..c1], &v[g * d..], stride, d, lanes, &mut acc);
            // SAFETY: (head, query) output rows belong to one task each.
            let o = unsafe { o_ptr.slice((ti * h + hh) * d, d) };
            if batched {
                pv_finish_batched(&acc, d, o);
            } else {
                pv_finish_single(&acc, d, o);
            }
        }
    });
    if tracing {
        if let Ok(p) = Tensor::from_vec(probs, (h, t, s), &Device::Cpu) {
            crate::trace::trace("kq_soft_max", layer, &p);
        }
    }
    out
}

impl Attention {
    /// `x: (T, C) -> (T, C)`, reading and extending the layer's cache.
    pub fn forward(
        &self,
        x: &Tensor,
        plan: &LayerPlan,
        ctx: &StepCtx,
        kv: &mut LayerKv,
        layer: usize,
    ) -> Result<Tensor> {
        let l = Some(layer);
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
        trace("Qpre", l, &q);
        let (q, k) = match &plan.position {
            Position::Rope(spec) => {
                let tables = ctx
                    .tables(spec)
                    .ok_or_else(|| anyhow::anyhow!("missing rope tables"))?;
                let mut qv: Vec<f32> = q.flatten_all()?.to_vec1()?;
                let mut kv_: Vec<f32> = k.flatten_all()?.to_vec1()?;
                apply_rope(spec, tables, &mut qv, h, d);
                apply_rope(spec, tables, &mut kv_, hkv, d);
                (
                    Tensor::from_vec(qv, (t, h, d), x.device())?,
                    Tensor::from_vec(kv_, (t, hkv, d), x.device())?,
                )
            }
            Position::None => (q, k),
        };
        if crate::trace::enabled() {
            trace("Qcur", l, &q);
            trace("Kcur", l, &k);
            trace("Vcur", l, &v);
        }
        // (T, H, D) and (T, Hkv, D) rows, rounded to the cache precision as llama.cpp does.
        let mut qv: Vec<f32> = match a.scale_at {
            ScaleAt::Queries => (q * a.scale as f64)?,
            ScaleAt::Scores => q,
        }
        .flatten_all()?
        .to_vec1()?;
        let mut kv_new: Vec<f32> = k.flatten_all()?.to_vec1()?;
        let mut v_new: Vec<f32> = v.flatten_all()?.to_vec1()?;
        kv.precision.round_slice(&mut qv);
        kv.precision.round_slice(&mut kv_new);
        kv.precision.round_slice(&mut v_new);
        kv.append(&kv_new, &v_new, ctx.pos);
        let out = attend(a, &qv, kv, ctx.pos, plan.window, l);
        kv.trim();
        let out = Tensor::from_vec(out, (t, h * d), x.device())?;
        trace("kqv_out", l, &out);
        self.o.forward(&out)
    }
}
