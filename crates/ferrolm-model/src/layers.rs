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
    pub fn from_vecs(spec: NormSpec, w: Vec<f32>, b: Option<Vec<f32>>) -> Norm {
        Norm { spec, w, b }
    }

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
    if !matches!(spec.scaling, RopeScaling::None | RopeScaling::Linear { .. }) {
        let seq_len = pos.iter().max().map_or(0, |p| p + 1);
        let (freqs, af) = rope_freqs(spec, seq_len);
        for &p in pos {
            for f in &freqs {
                let a = p as f32 * f;
                all.push(a.cos() * af);
                all.push(a.sin() * af);
            }
        }
        return all;
    }
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
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let exps: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            let probs: Vec<f32> = exps.iter().map(|x| x / sum).collect();
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let chosen = &order[..self.spec.top_k];
            let norm: f32 = if self.spec.norm_topk {
                chosen.iter().map(|&j| probs[j]).sum()
            } else {
                1.0
            };
            for &j in chosen {
                routes[j].push((ti, probs[j] / norm));
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
    pub att: Vec<f32>,
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

pub struct Attention {
    pub spec: AttentionSpec,
    pub q: Box<dyn Linear>,
    pub k: Box<dyn Linear>,
    pub v: Box<dyn Linear>,
    pub o: Box<dyn Linear>,
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
}

/// Per-call inputs shared by every layer of a stack: positions, the RoPE tables for them,
/// causality, and the stack's score biases.
pub struct StepCtx<'a> {
    pub pos: &'a [usize],
    /// `(first row, rows)` of each sequence in the call (one segment for a single sequence).
    pub segments: &'a [(usize, usize)],
    /// One `rope_tables` per distinct RoPE spec.
    pub rope: Vec<(RopeSpec, Vec<f32>)>,
    /// Queries see only earlier keys (decoders); encoders see all.
    pub causal: bool,
    /// ALiBi slopes per head (empty unless a layer uses `Position::Alibi`).
    pub alibi: &'a [f32],
    /// T5's relative-bias table `(buckets, H)` (empty unless a layer uses `Position::Relative`).
    pub relative: &'a [f32],
}

/// ALiBi slopes for `n` heads.
pub fn alibi_slopes(kind: AlibiSlopes, n: usize) -> Vec<f32> {
    match kind {
        AlibiSlopes::Bloom | AlibiSlopes::BloomScaled => {
            let p = 1usize << (usize::BITS - 1 - n.leading_zeros()); // largest power of 2 <= n
            let base = 2f64.powf(-(2f64.powf(-((p as f64).log2() - 3.0))));
            let mut v: Vec<f32> = (1..=p).map(|i| base.powi(i as i32) as f32).collect();
            if p < n {
                let extra = 2f64.powf(-(2f64.powf(-((2.0 * p as f64).log2() - 3.0))));
                let k = (n - p).min(p);
                v.extend((0..k).map(|i| extra.powi((1 + 2 * i) as i32) as f32));
            }
            v
        }
        AlibiSlopes::Mpt { max_bias } => {
            let np = n.next_power_of_two();
            let m: Vec<f32> = (1..=np)
                .map(|i| 1.0 / 2f32.powf(i as f32 * (max_bias / np as f32)))
                .collect();
            if np == n {
                m
            } else {
                m.iter()
                    .skip(1)
                    .step_by(2)
                    .chain(m.iter().step_by(2))
                    .take(n)
                    .copied()
                    .collect()
            }
        }
    }
}

/// T5's bucket for a key at `kp` seen from a query at `qp` (log-spaced beyond `buckets / 2`).
pub fn relative_bucket(spec: &RelativeSpec, qp: usize, kp: usize) -> usize {
    let rel = kp as i64 - qp as i64;
    let (mut buckets, mut ret) = (spec.buckets as i64, 0i64);
    let n = if spec.bidirectional {
        buckets /= 2;
        if rel > 0 {
            ret += buckets;
        }
        rel.abs()
    } else {
        (-rel).max(0)
    };
    let max_exact = buckets / 2;
    let v = if n < max_exact {
        n
    } else {
        // In f32 like the reference, then truncated.
        let l = ((n as f32 / max_exact as f32).ln()
            / (spec.max_distance as f32 / max_exact as f32).ln()
            * (buckets - max_exact) as f32) as i64;
        (max_exact + l).min(buckets - 1)
    };
    (ret + v) as usize
}

/// Which keys a query sees and what is added to its scores.
pub struct Mask<'a> {
    pub causal: bool,
    pub window: Option<usize>,
    pub bias: ScoreBias<'a>,
}

#[derive(Clone, Copy)]
pub enum ScoreBias<'a> {
    None,
    /// `slope[h] * (k_pos - q_pos)`.
    Alibi(&'a [f32]),
    /// `table[bucket(q_pos, k_pos) * H + h]`.
    Relative(&'a [f32], RelativeSpec),
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
    mask: &Mask,
    layer: Option<usize>,
) -> Vec<f32> {
    attend_many(a, &[(q, kv, q_pos)], mask, layer)
}

/// [`attend`] for several sequences at once: `parts[i] = (q (T_i, H, D), its cache, its
/// positions)`; returns the outputs one after another `(sum T_i, H * D)`. Every (sequence,
/// head, run of queries) is one parallel task, so many short sequences (a server's decode
/// step) fill the threads in one dispatch. Each query's arithmetic is that of `attend` on its
/// own sequence.
pub fn attend_many(
    a: &AttentionSpec,
    parts: &[(&[f32], &LayerKv, &[usize])],
    mask: &Mask,
    layer: Option<usize>,
) -> Vec<f32> {
    use ferrolm_kernels::numerics::{
        dot_batched, dot_single, pv_accumulate, pv_finish_batched, pv_finish_single, softmax_row,
    };
    use ferrolm_kernels::pool::{global, SharedOut};
    let (h, hkv, d) = (a.n_heads, a.n_kv_heads, a.head_dim);
    let stride = hkv * d;
    let n_rep = h / hkv;
    let (causal, window) = (mask.causal, mask.window);
    let visible =
        |qp: usize, kp: usize| (!causal || kp <= qp) && window.is_none_or(|w| qp.abs_diff(kp) < w);
    let scale = match a.scale_at {
        ScaleAt::Scores => a.scale,
        ScaleAt::Queries => 1.0,
    };
    // With a softcap or a bias the scale goes on the scores first; otherwise into the softmax
    // (llama.cpp's order).
    let pre_scaled = a.softcap.is_some() || !matches!(mask.bias, ScoreBias::None);
    let bias = |hh: usize, qp: usize, kp: usize| match mask.bias {
        ScoreBias::None => 0.0,
        ScoreBias::Alibi(slopes) => slopes[hh] * (kp as f32 - qp as f32),
        ScoreBias::Relative(table, spec) => table[relative_bucket(&spec, qp, kp) * h + hh],
    };
    let total: usize = parts.iter().map(|p| p.2.len()).sum();
    // Probabilities are traced for single-sequence calls only.
    let tracing = crate::trace::enabled() && parts.len() == 1;
    let (t0, s0) = (parts[0].2.len(), parts[0].1.len());
    let mut out = vec![0f32; total * h * d];
    let mut probs = if tracing {
        vec![0f32; h * t0 * s0]
    } else {
        Vec::new()
    };
    let (o_ptr, p_ptr) = (SharedOut::new(&mut out), SharedOut::new(&mut probs));
    // Tasks are (sequence, head, run of queries), so few heads still fill every thread.
    let mut tasks: Vec<(usize, usize, usize, usize, usize)> = Vec::new(); // (part, head, q0, q1, row0)
    let mut row0 = 0;
    for (pi, &(_, _, pos)) in parts.iter().enumerate() {
        let t = pos.len();
        let q_chunk = t
            .div_ceil((global().threads() * 4).div_ceil(h))
            .clamp(1, 64);
        for hh in 0..h {
            for q0 in (0..t).step_by(q_chunk) {
                tasks.push((pi, hh, q0, (q0 + q_chunk).min(t), row0));
            }
        }
        row0 += t;
    }
    global().run(tasks.len(), |task| {
        let (pi, hh, q0, q1, row0) = tasks[task];
        let (q, kv, q_pos) = parts[pi];
        let (t, s) = (q_pos.len(), kv.len());
        let (k, v, k_pos) = (&kv.k, &kv.v, &kv.pos);
        let batched = t >= 2;
        let lanes = if batched { 16 } else { 64 };
        let g = hh / n_rep;
        let mut row = vec![0f32; s];
        let mut acc = vec![0f32; lanes * d];
        for ti in q0..q1 {
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
                    if pre_scaled {
                        sc *= scale;
                        if let Some(cap) = a.softcap {
                            sc = (sc * (1.0 / cap)).tanh() * cap;
                        }
                        sc += bias(hh, qp, kp);
                    }
                    sc
                } else {
                    f32::NEG_INFINITY
                };
            }
            if c1 > c0 {
                softmax_row(&mut row[c0..c1], if pre_scaled { 1.0 } else { scale });
            }
            if tracing {
                // SAFETY: (head, query) rows of `probs` belong to one task each.
                unsafe { p_ptr.slice((hh * t + ti) * s, s) }.copy_from_slice(&row);
            }
            kv.precision.round_slice(&mut row[c0..c1]);
            acc.iter_mut().for_each(|x| *x = 0.0);
            pv_accumulate(&row[..c1], &v[g * d..], stride, d, lanes, &mut acc);
            // SAFETY: (row, head) output slices belong to one task each.
            let o = unsafe { o_ptr.slice(((row0 + ti) * h + hh) * d, d) };
            if batched {
                pv_finish_batched(&acc, d, o);
            } else {
                pv_finish_single(&acc, d, o);
            }
        }
    });
    if tracing {
        if let Ok(p) = Tensor::from_vec(probs, (h, t0, s0), &Device::Cpu) {
            crate::trace::trace("kq_soft_max", layer, &p);
        }
    }
    out
}

impl Attention {
    /// `s.n (T, C) -> s.h (T, C)`, reading and extending the layer's caches: the rows are the
    /// sequences of `ctx.segments` one after another, `kvs[i]` the cache of segment `i`. The
    /// projections run over all rows at once; attention runs per sequence.
    pub fn forward_rows(
        &self,
        t: usize,
        plan: &LayerPlan,
        ctx: &StepCtx,
        kvs: &mut [&mut LayerKv],
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
            ferrolm_kernels::pool::par_rows(k, hkv * d, |r0, run| {
                apply_rope(spec, &tables[r0 * dims..], run, hkv, d)
            });
        }
        trace_rows("Qcur", l, q, &[t, h, d]);
        trace_rows("Kcur", l, k, &[t, hkv, d]);
        trace_rows("Vcur", l, v, &[t, hkv, d]);
        let p = scope("attention");
        if a.scale_at == ScaleAt::Queries {
            q.iter_mut().for_each(|x| *x *= a.scale);
        }
        // Rounded to the cache precision as llama.cpp stores them.
        let precision = kvs
            .first()
            .map_or(crate::kv::KvPrecision::F32, |kv| kv.precision);
        precision.round_slice(q);
        precision.round_slice(k);
        precision.round_slice(v);
        let mask = Mask {
            causal: ctx.causal,
            window: plan.window,
            bias: match &plan.position {
                Position::Alibi(_) => ScoreBias::Alibi(ctx.alibi),
                Position::Relative(r) => ScoreBias::Relative(ctx.relative, *r),
                _ => ScoreBias::None,
            },
        };
        if kvs.len() != ctx.segments.len() {
            anyhow::bail!("{} caches for {} sequences", kvs.len(), ctx.segments.len());
        }
        let (qw, kw) = (h * d, hkv * d);
        for (kv, &(r0, n)) in kvs.iter_mut().zip(ctx.segments) {
            let pos = &ctx.pos[r0..r0 + n];
            kv.append(&k[r0 * kw..(r0 + n) * kw], &v[r0 * kw..(r0 + n) * kw], pos);
        }
        let parts: Vec<(&[f32], &LayerKv, &[usize])> = kvs
            .iter()
            .zip(ctx.segments)
            .map(|(kv, &(r0, n))| (&q[r0 * qw..(r0 + n) * qw], &**kv, &ctx.pos[r0..r0 + n]))
            .collect();
        let out = attend_many(a, &parts, &mask, l);
        for kv in kvs.iter_mut() {
            kv.trim();
        }
        drop(p);
        trace_rows("kqv_out", l, &out, &[t, h * d]);
        let c = self.o.out_dim();
        scope("matmul: attention output").run(|| self.o.forward_slice(&out, sized(&mut s.h, t * c)))
    }
}

impl Attention {
    /// Cross-attention: queries from `s.n (T, C)`, keys and values from the encoder (`kv`,
    /// filled once by [`Attention::cross_kv`]), nothing masked. Writes `s.h (T, C)`.
    pub fn forward_cross(
        &self,
        t: usize,
        ctx: &StepCtx,
        kv: &LayerKv,
        s: &mut Scratch,
    ) -> Result<()> {
        let a = &self.spec;
        let n = &s.n[..t * self.q.in_dim()];
        let q = sized(&mut s.q, t * a.n_heads * a.head_dim);
        scope("matmul: attention q, k, v").run(|| self.q.forward_slice(n, q))?;
        if a.scale_at == ScaleAt::Queries {
            q.iter_mut().for_each(|x| *x *= a.scale);
        }
        kv.precision.round_slice(q);
        let mask = Mask {
            causal: false,
            window: None,
            bias: ScoreBias::None,
        };
        let out = scope("attention").run(|| attend(a, q, kv, ctx.pos, &mask, None));
        let c = self.o.out_dim();
        scope("matmul: attention output").run(|| self.o.forward_slice(&out, sized(&mut s.h, t * c)))
    }

    /// The keys and values of encoder output `enc (S, C)` for this cross-attention layer.
    pub fn cross_kv(&self, enc: &[f32], precision: crate::kv::KvPrecision) -> Result<LayerKv> {
        let a = &self.spec;
        let rows = enc.len() / self.k.in_dim();
        let mut k = vec![0f32; rows * a.n_kv_heads * a.head_dim];
        let mut v = vec![0f32; rows * a.n_kv_heads * a.head_dim];
        self.k.forward_slice(enc, &mut k)?;
        self.v.forward_slice(enc, &mut v)?;
        precision.round_slice(&mut k);
        precision.round_slice(&mut v);
        Ok(LayerKv {
            k,
            v,
            pos: (0..rows).collect(),
            window: None,
            precision,
        })
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
