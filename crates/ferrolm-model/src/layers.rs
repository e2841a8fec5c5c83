//! Leaf components of the block: norms, rotary embeddings, activations, the feed-forward and
//! attention sub-layers. Each reads its behaviour from a spec enum.

use crate::kv::LayerKv;
use crate::linear::Linear;
use crate::profile::scope;
use crate::spec::*;
use crate::trace::trace;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// RMSNorm or LayerNorm over the last dimension; weights already carry any load-time fix-ups.
pub struct Norm {
    pub spec: NormSpec,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
}

impl Norm {
    pub fn new(spec: NormSpec, weight: &Tensor, bias: Option<&Tensor>) -> Result<Norm> {
        Ok(Norm {
            spec,
            w: weight.flatten_all()?.to_vec1()?,
            b: match bias {
                Some(b) => Some(b.flatten_all()?.to_vec1()?),
                None => None,
            },
        })
    }

    /// Width of the normalised rows.
    pub fn dim(&self) -> usize {
        self.w.len()
    }

    fn row(&self, x: &[f32], y: &mut [f32]) {
        match self.spec.kind {
            NormKind::Rms => rms_norm_row(x, &self.w, self.spec.eps, y),
            NormKind::Layer => layer_norm_row(x, &self.w, self.b.as_deref(), self.spec.eps, y),
        }
    }

    /// Normalises each row of `x` into `y` (rows in parallel when there are many).
    pub fn rows(&self, x: &[f32], y: &mut [f32]) {
        let c = self.dim();
        ferrolm_kernels::pool::par_rows(y, c, |r0, run| {
            for (i, yr) in run.chunks_exact_mut(c).enumerate() {
                self.row(&x[(r0 + i) * c..(r0 + i + 1) * c], yr);
            }
        });
    }

    /// Normalises each row of `x` in place.
    pub fn rows_in_place(&self, x: &mut [f32]) {
        let c = self.dim();
        ferrolm_kernels::pool::par_rows(x, c, |_, run| {
            let mut tmp = vec![0f32; c];
            for xr in run.chunks_exact_mut(c) {
                self.row(xr, &mut tmp);
                xr.copy_from_slice(&tmp);
            }
        });
    }
}

/// LayerNorm of one row as ggml computes it: mean and variance summed in f64, then
/// `(x - mean) * (1 / sqrt(var + eps)) * w + b`.
pub fn layer_norm_row(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    let n = x.len() as f64;
    let mean = (x.iter().map(|&v| v as f64).sum::<f64>() / n) as f32;
    let var: f64 = x
        .iter()
        .map(|&v| ((v - mean) * (v - mean)) as f64)
        .sum::<f64>()
        / n;
    let scale = 1.0f32 / (var as f32 + eps).sqrt();
    for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
        *y = (x - mean) * scale * w[i] + b.map_or(0.0, |b| b[i]);
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

/// Applies `act` in place.
pub fn activate_slice(act: Activation, x: &mut [f32]) {
    match act {
        Activation::Silu => ferrolm_kernels::numerics::silu_slice(x),
        Activation::GeluTanhF16 => x.iter_mut().for_each(|v| *v = gelu_tanh_f16(*v)),
        Activation::GeluTanh => x.iter_mut().for_each(|v| {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            let u = SQRT_2_OVER_PI * (*v + 0.044_715 * *v * *v * *v);
            *v = 0.5 * *v * (1.0 + u.tanh());
        }),
        Activation::Gelu => x
            .iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v as f64 / std::f64::consts::SQRT_2) as f32)),
        Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

/// The error function in f64 (series below 2, continued fraction above; ~1e-15).
fn erf(x: f64) -> f64 {
    (1.0 - erfc_pos(x.abs())).copysign(x)
}

/// `erfc(x)` for `x >= 0` by its series (x small) or continued fraction (x large).
fn erfc_pos(x: f64) -> f64 {
    if x < 2.0 {
        // Maclaurin series of erf.
        let (mut term, mut sum, x2) = (x, x, x * x);
        for n in 1..60 {
            term *= -x2 / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        1.0 - sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // Lentz's continued fraction for erfc.
        let mut f = x;
        for n in (1..60).rev() {
            f = x + (n as f64 / 2.0) / f;
        }
        (-x * x).exp() / (f * std::f64::consts::PI.sqrt())
    }
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

/// Per-sequence working buffers for the block's slice path, grown on demand and reused, so a
/// decode step allocates nothing here.
#[derive(Default)]
pub struct Scratch {
    /// The residual stream `(T, C)`.
    pub x: Vec<f32>,
    /// Normed input of the current sub-layer `(T, C)`.
    pub n: Vec<f32>,
    /// Sub-layer output `(T, C)`.
    pub h: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub att: Vec<f32>,
    pub g: Vec<f32>,
    pub u: Vec<f32>,
}

/// `v[..n]`, grown to `n` first when shorter.
pub fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// `x (t, cols)` as a tensor for tracing (only built when tracing is on).
pub fn trace_rows(name: &str, layer: Option<usize>, x: &[f32], dims: &[usize]) {
    if crate::trace::enabled() {
        if let Ok(t) = Tensor::from_slice(x, dims, &Device::Cpu) {
            trace(name, layer, &t);
        }
    }
}

impl FeedForward {
    /// `s.n (T, C) -> s.h (T, C)`; `layer` names traced tensors.
    pub fn forward_rows(&self, t: usize, layer: Option<usize>, s: &mut Scratch) -> Result<()> {
        let f = self.up.out_dim();
        let c = self.down.out_dim();
        let n = &s.n[..t * self.up.in_dim()];
        let u = sized(&mut s.u, t * f);
        scope("matmul: ffn gate, up").run(|| self.up.forward_slice(n, u))?;
        let act_out: &mut [f32] = match (self.spec, &self.gate) {
            (Ffn::Gated { act }, Some(gate)) => {
                let g = sized(&mut s.g, t * f);
                scope("matmul: ffn gate, up").run(|| gate.forward_slice(n, g))?;
                let u = &s.u[..t * f];
                let _p = scope("activation");
                ferrolm_kernels::pool::par_rows(g, f, |r0, run| {
                    activate_slice(act, run);
                    for (gv, &uv) in run.iter_mut().zip(&u[r0 * f..]) {
                        *gv *= uv;
                    }
                });
                g
            }
            (Ffn::Plain { act }, _) => {
                let _p = scope("activation");
                ferrolm_kernels::pool::par_rows(u, f, |_, run| activate_slice(act, run));
                u
            }
            (Ffn::Gated { .. }, None) => anyhow::bail!("gated feed-forward without a gate weight"),
        };
        trace_rows("ffn_act", layer, act_out, &[t, f]);
        scope("matmul: ffn down").run(|| self.down.forward_slice(act_out, sized(&mut s.h, t * c)))
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
    /// `s.n (T, C) -> s.h (T, C)`, reading and extending the layer's cache.
    pub fn forward_rows(
        &self,
        t: usize,
        plan: &LayerPlan,
        ctx: &StepCtx,
        kv: &mut LayerKv,
        layer: usize,
        s: &mut Scratch,
    ) -> Result<()> {
        let l = Some(layer);
        let a = &self.spec;
        let (h, hkv, d) = (a.n_heads, a.n_kv_heads, a.head_dim);
        let n = &s.n[..t * self.q.in_dim()];
        let q = sized(&mut s.q, t * h * d);
        let k = sized(&mut s.k, t * hkv * d);
        let v = sized(&mut s.v, t * hkv * d);
        {
            let _p = scope("matmul: attention q, k, v");
            self.q.forward_slice(n, q)?;
            self.k.forward_slice(n, k)?;
            self.v.forward_slice(n, v)?;
        }
        {
            let _p = scope("norms");
            if let Some(norm) = &self.q_norm {
                norm.rows_in_place(q);
            }
            if let Some(norm) = &self.k_norm {
                norm.rows_in_place(k);
            }
        }
        trace_rows("Qpre", l, q, &[t, h, d]);
        if let Position::Rope(spec) = &plan.position {
            let tables = ctx
                .tables(spec)
                .ok_or_else(|| anyhow::anyhow!("missing rope tables"))?;
            let dims = spec.dims;
            let _p = scope("rope");
            ferrolm_kernels::pool::par_rows(q, h * d, |r0, run| {
                apply_rope(spec, &tables[r0 * dims..], run, h, d)
            });
            apply_rope(spec, tables, k, hkv, d);
        }
        trace_rows("Qcur", l, q, &[t, h, d]);
        trace_rows("Kcur", l, k, &[t, hkv, d]);
        trace_rows("Vcur", l, v, &[t, hkv, d]);
        let p = scope("attention");
        if a.scale_at == ScaleAt::Queries {
            q.iter_mut().for_each(|x| *x *= a.scale);
        }
        // Rounded to the cache precision as llama.cpp stores them.
        kv.precision.round_slice(q);
        kv.precision.round_slice(k);
        kv.precision.round_slice(v);
        kv.append(k, v, ctx.pos);
        let out = attend(a, q, kv, ctx.pos, plan.window, l);
        kv.trim();
        drop(p);
        trace_rows("kqv_out", l, &out, &[t, h * d]);
        let c = self.o.out_dim();
        scope("matmul: attention output").run(|| self.o.forward_slice(&out, sized(&mut s.h, t * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (-1.5, -0.966_105_146_475_310_7),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (6.0, 1.0),
        ] {
            assert!(
                (erf(x) - want).abs() < 1e-13,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn layer_norm_row_normalises() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut y = [0f32; 4];
        layer_norm_row(&x, &[1.0; 4], Some(&[0.5; 4]), 1e-5, &mut y);
        let mean: f32 = y.iter().sum::<f32>() / 4.0;
        let var: f32 = y.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
        assert!(
            (mean - 0.5).abs() < 1e-6 && (var - 1.0).abs() < 1e-4,
            "{y:?}"
        );
    }
}
