//! Leaf components of the block: norms, rotary embeddings, activations, the feed-forward
//! sub-layer and the per-sequence scratch buffers. Each reads its behaviour from a spec enum.
//! (Attention is in `attention.rs`, re-exported here.)

use crate::linear::Linear;
use crate::profile::scope;
use crate::spec::*;
use crate::trace::trace;
use anyhow::Result;

pub use crate::attention::{
    alibi_slopes, attend, attend_many, relative_bucket, Attention, Mask, ScoreBias, StepCtx,
};
use candle_core::{Device, Tensor};

/// RMSNorm or LayerNorm over the last dimension; weights already carry any load-time fix-ups.
pub struct Norm {
    pub spec: NormSpec,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
}

impl Norm {
    pub fn from_vecs(spec: NormSpec, w: Vec<f32>, b: Option<Vec<f32>>) -> Norm {
        Norm { spec, w, b }
    }
    pub fn weight(&self) -> &[f32] {
        &self.w
    }
    pub fn bias(&self) -> Option<&[f32]> {
        self.b.as_deref()
    }
    /// The scale and bias, mutable (full fine-tuning).
    pub fn params_mut(&mut self) -> (&mut [f32], Option<&mut [f32]>) {
        (&mut self.w, self.b.as_deref_mut())
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
pub fn erf(x: f64) -> f64 {
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
/// `out` gets `dims` floats: `cos_0, sin_0, cos_1, sin_1, ...`. (Unscaled and linear RoPE only;
/// the other scalings go through [`rope_freqs`].)
pub fn rope_cache(spec: &RopeSpec, p: usize, out: &mut Vec<f32>) {
    let freq_scale = match spec.scaling {
        RopeScaling::Linear { factor } => 1.0 / factor,
        _ => 1.0f32,
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

/// The inverse frequencies (`dims / 2`) and the cos/sin multiplier of a scaled RoPE for a call
/// reaching `seq_len` positions, as Hugging Face's `modeling_rope_utils` computes them (f32).
pub fn rope_freqs(spec: &RopeSpec, seq_len: usize) -> (Vec<f32>, f32) {
    let dims = spec.dims;
    let base_pow = |base: f32| -> Vec<f32> {
        (0..dims / 2)
            .map(|i| base.powf((2 * i) as f32 / dims as f32))
            .collect()
    };
    let inv = |base: f32| -> Vec<f32> { base_pow(base).iter().map(|b| 1.0 / b).collect() };
    match &spec.scaling {
        RopeScaling::None => (inv(spec.theta), 1.0),
        RopeScaling::Linear { factor } => {
            (inv(spec.theta).iter().map(|f| f / factor).collect(), 1.0)
        }
        RopeScaling::Dynamic { factor, orig } => {
            let n = seq_len.max(*orig) as f32;
            let d = dims as f32;
            let base =
                spec.theta * ((factor * n / *orig as f32) - (factor - 1.0)).powf(d / (d - 2.0));
            (inv(base), 1.0)
        }
        RopeScaling::Yarn {
            factor,
            orig,
            beta_fast,
            beta_slow,
            attn_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            let get_mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let f = *factor as f64;
            let af = attn_factor.map(|a| a as f64).unwrap_or_else(|| {
                if *mscale != 0.0 && *mscale_all_dim != 0.0 {
                    get_mscale(f, *mscale as f64) / get_mscale(f, *mscale_all_dim as f64)
                } else {
                    get_mscale(f, 1.0)
                }
            });
            let base = spec.theta as f64;
            let corr = |rot: f64| {
                (dims as f64 * (*orig as f64 / (rot * 2.0 * std::f64::consts::PI)).ln())
                    / (2.0 * base.ln())
            };
            let (mut low, mut high) = (corr(*beta_fast as f64), corr(*beta_slow as f64));
            if *truncate {
                low = low.floor();
                high = high.ceil();
            }
            let (low, mut high) = (low.max(0.0) as f32, high.min(dims as f64 - 1.0) as f32);
            if low == high {
                high += 0.001;
            }
            let pos = base_pow(spec.theta);
            let freqs = pos
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let extra = 1.0 - ramp;
                    let (fe, fi) = (1.0 / p, 1.0 / (factor * p));
                    fi * (1.0 - extra) + fe * extra
                })
                .collect();
            (freqs, af as f32)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            orig,
        } => {
            let old = *orig as f32;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let freqs = inv(spec.theta)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    if medium {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect();
            (freqs, 1.0)
        }
        RopeScaling::LongRope {
            short,
            long,
            orig,
            attn_factor,
        } => {
            let ext = if seq_len > *orig { long } else { short };
            let freqs = base_pow(spec.theta)
                .iter()
                .zip(ext.iter())
                .map(|(b, e)| 1.0 / (e * b))
                .collect();
            (freqs, *attn_factor)
        }
    }
}

/// Rotates one head vector `x` (length `>= spec.dims`) in place with a `rope_cache` row.
pub fn rope_head(spec: &RopeSpec, cache: &[f32], x: &mut [f32]) {
    let (offset, stride) = match spec.layout {
        RopeLayout::Interleaved => (1, 2),
        RopeLayout::Half => (spec.dims / 2, 1),
    };
    // llama.cpp's build contracts the rotation into fused multiply-adds; so do we.
    ferrolm_kernels::numerics::rope_pairs(x, cache, spec.dims / 2, stride, offset);
}

/// The rope caches `(T, dims)` for the positions of one call.
pub fn rope_tables(spec: &RopeSpec, pos: &[usize]) -> Vec<f32> {
    let mut all = Vec::with_capacity(pos.len() * spec.dims);
    if !matches!(spec.scaling, RopeScaling::None | RopeScaling::Linear { .. }) {
        let seq_len = pos.iter().max().map_or(0, |p| p + 1);
        let (freqs, af) = rope_freqs(spec, seq_len);
        return rope_tables_at(&freqs, af, pos.iter().map(|&p| p as f32));
    }
    let mut row = Vec::with_capacity(spec.dims);
    for &p in pos {
        rope_cache(spec, p, &mut row);
        all.extend_from_slice(&row);
    }
    all
}

/// Rope rows (cos, sin pairs times the attention factor `af`) for frequencies `freqs` at
/// positions that may be fractional (Leaky ReRoPE's far positions).
pub fn rope_tables_at(freqs: &[f32], af: f32, pos: impl Iterator<Item = f32>) -> Vec<f32> {
    let mut all = Vec::new();
    for p in pos {
        for f in freqs {
            let a = p * f;
            all.push(a.cos() * af);
            all.push(a.sin() * af);
        }
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
    /// `Plain` or `Gated` (the dense form; a mixture's experts are dense feed-forwards).
    pub spec: Ffn,
    pub gate: Option<Box<dyn Linear>>,
    pub up: Box<dyn Linear>,
    pub down: Box<dyn Linear>,
}

/// A mixture-of-experts feed-forward (`Ffn::Moe`).
pub struct Moe {
    pub spec: MoeSpec,
    /// `(C) -> (experts)` router logits.
    pub router: Box<dyn Linear>,
    pub experts: Vec<FeedForward>,
    /// The always-on expert and its `(C) -> 1` gate (Qwen2-MoE).
    pub shared: Option<(FeedForward, Box<dyn Linear>)>,
}

/// A block's feed-forward: dense or a mixture.
pub enum FfnLayer {
    Dense(FeedForward),
    Moe(Moe),
}

impl FfnLayer {
    /// `s.n (T, C) -> s.h (T, C)`.
    pub fn forward_rows(&self, t: usize, layer: Option<usize>, s: &mut Scratch) -> Result<()> {
        match self {
            FfnLayer::Dense(f) => f.forward_rows(t, layer, s),
            FfnLayer::Moe(m) => m.forward_rows(t, s),
        }
    }
}

/// A token's routing from its router logits: the softmax over all experts (f32, like the
/// references), then the top `k` (ties to the lower index) with their weights, renormalised
/// to sum to 1 with `norm_topk`. Returns `(probabilities, [(expert, weight)])`.
pub fn route(logits: &[f32], k: usize, norm_topk: bool) -> (Vec<f32>, Vec<(usize, f32)>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exps: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let probs: Vec<f32> = exps.iter().map(|x| x / sum).collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let chosen = &order[..k.min(logits.len())];
    let norm: f32 = if norm_topk {
        chosen.iter().map(|&j| probs[j]).sum()
    } else {
        1.0
    };
    let w = chosen.iter().map(|&j| (j, probs[j] / norm)).collect();
    (probs, w)
}

impl Moe {
    fn forward_rows(&self, t: usize, s: &mut Scratch) -> Result<()> {
        let c = self.router.in_dim();
        let e = self.experts.len();
        let n = &s.n[..t * c];
        let mut logits = vec![0f32; t * e];
        scope("matmul: moe router").run(|| self.router.forward_slice(n, &mut logits))?;
        // Per token: softmax over all experts (f32, like the references), keep the top k,
        // optionally renormalise. `routes[expert]` = (token, weight).
        let mut routes: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
        for (ti, row) in logits.chunks_exact(e).enumerate() {
            for (j, w) in route(row, self.spec.top_k, self.spec.norm_topk).1 {
                routes[j].push((ti, w));
            }
        }
        let mut out = vec![0f32; t * c];
        let mut es = Scratch::default();
        for (expert, route) in self.experts.iter().zip(&routes) {
            if route.is_empty() {
                continue;
            }
            let rows = sized(&mut es.n, route.len() * c);
            for (r, &(ti, _)) in route.iter().enumerate() {
                rows[r * c..(r + 1) * c].copy_from_slice(&n[ti * c..(ti + 1) * c]);
            }
            expert.forward_rows(route.len(), None, &mut es)?;
            for (r, &(ti, w)) in route.iter().enumerate() {
                for (o, &h) in out[ti * c..(ti + 1) * c].iter_mut().zip(&es.h[r * c..]) {
                    *o += w * h;
                }
            }
        }
        if let Some((shared, gate)) = &self.shared {
            let mut g = vec![0f32; t];
            gate.forward_slice(n, &mut g)?;
            sized(&mut es.n, t * c).copy_from_slice(n);
            shared.forward_rows(t, None, &mut es)?;
            for ti in 0..t {
                let w = 1.0 / (1.0 + (-g[ti]).exp());
                for (o, &h) in out[ti * c..(ti + 1) * c].iter_mut().zip(&es.h[ti * c..]) {
                    *o += w * h;
                }
            }
        }
        sized(&mut s.h, t * c).copy_from_slice(&out);
        Ok(())
    }
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
    /// The attention output of a parallel block, kept while the feed-forward runs.
    pub a: Vec<f32>,
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
            (Ffn::Moe(_), _) => anyhow::bail!("a mixture's experts must be dense feed-forwards"),
        };
        trace_rows("ffn_act", layer, act_out, &[t, f]);
        scope("matmul: ffn down").run(|| self.down.forward_slice(act_out, sized(&mut s.h, t * c)))
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
