//! Forward and backward of each transformer component, on flat row-major f32 buffers. Each
//! forward returns what its backward needs; each backward is checked against finite
//! differences in the tests below (and the whole network in `tests/gradcheck.rs`).
//!
//! Dimension legend: `T` rows (tokens), `C` width, `H`/`Hkv` heads, `D` head size.

use ferrolm_model::dense::{mm, View};
use ferrolm_model::layers::{erf, rope_head};
use ferrolm_model::spec::{Activation, NormKind, NormSpec, RopeSpec};

/// `y = norm(x) * w (+ b)` per row of `c`; returns `(y, 1/std per row)`.
pub fn norm_forward(
    spec: NormSpec,
    w: &[f32],
    b: Option<&[f32]>,
    x: &[f32],
    c: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0f32; x.len()];
    let mut rstd = Vec::with_capacity(x.len() / c);
    for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
        let mean = match spec.kind {
            NormKind::Rms => 0.0,
            NormKind::Layer => xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64,
        };
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let r = (1.0 / (var + spec.eps as f64).sqrt()) as f32;
        rstd.push(r);
        for j in 0..c {
            yr[j] = (xr[j] - mean as f32) * r * w[j] + b.map_or(0.0, |b| b[j]);
        }
    }
    (y, rstd)
}

/// `dx` of [`norm_forward`] (the scale and bias are frozen).
pub fn norm_backward(
    spec: NormSpec,
    w: &[f32],
    x: &[f32],
    rstd: &[f32],
    dy: &[f32],
    c: usize,
) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    for (i, ((xr, dyr), dxr)) in x
        .chunks_exact(c)
        .zip(dy.chunks_exact(c))
        .zip(dx.chunks_exact_mut(c))
        .enumerate()
    {
        let r = rstd[i] as f64;
        let mean = match spec.kind {
            NormKind::Rms => 0.0,
            NormKind::Layer => xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64,
        };
        let xh = |j: usize| (xr[j] as f64 - mean) * r;
        let g = |j: usize| dyr[j] as f64 * w[j] as f64;
        let mean_gx = (0..c).map(|j| g(j) * xh(j)).sum::<f64>() / c as f64;
        let mean_g = match spec.kind {
            NormKind::Rms => 0.0,
            NormKind::Layer => (0..c).map(g).sum::<f64>() / c as f64,
        };
        for j in 0..c {
            dxr[j] = (r * (g(j) - mean_g - xh(j) * mean_gx)) as f32;
        }
    }
    dx
}

/// The gradients of [`norm_forward`]'s scale (into `dw`) and bias (into `db`), accumulated.
pub fn norm_param_grads(
    spec: NormSpec,
    x: &[f32],
    rstd: &[f32],
    dy: &[f32],
    c: usize,
    dw: &mut [f32],
    mut db: Option<&mut [f32]>,
) {
    for (i, (xr, dyr)) in x.chunks_exact(c).zip(dy.chunks_exact(c)).enumerate() {
        let mean = match spec.kind {
            NormKind::Rms => 0.0,
            NormKind::Layer => (xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64) as f32,
        };
        for j in 0..c {
            dw[j] += dyr[j] * (xr[j] - mean) * rstd[i];
        }
        if let Some(db) = db.as_deref_mut() {
            db.iter_mut().zip(dyr).for_each(|(a, b)| *a += b);
        }
    }
}

/// The router logits' gradient of one token's routing (`ferrolm_model::layers::route`):
/// `dw[i]` is the loss's gradient wrt the weight of `chosen[i]`. The choice itself is
/// piecewise constant, so only the weights carry a gradient: through the renormalisation
/// (with `norm_topk`) and the softmax over all experts.
pub fn route_backward(
    probs: &[f32],
    chosen: &[(usize, f32)],
    norm_topk: bool,
    dw: &[f32],
) -> Vec<f32> {
    let mut dp = vec![0f32; probs.len()];
    if norm_topk {
        let s: f32 = chosen.iter().map(|&(j, _)| probs[j]).sum();
        let dot: f32 = chosen.iter().zip(dw).map(|(&(_, w), d)| w * d).sum();
        for (&(j, _), d) in chosen.iter().zip(dw) {
            dp[j] = (d - dot) / s;
        }
    } else {
        for (&(j, _), d) in chosen.iter().zip(dw) {
            dp[j] = *d;
        }
    }
    let dot: f32 = dp.iter().zip(probs).map(|(a, b)| a * b).sum();
    probs.iter().zip(&dp).map(|(p, d)| p * (d - dot)).collect()
}

/// RoPE in place on `x (T, heads, D)` with `tables (T, dims)` (cos, sin pairs); `inverse`
/// applies the transpose (the backward: sines negated).
pub fn rope(spec: &RopeSpec, tables: &[f32], x: &mut [f32], heads: usize, d: usize, inverse: bool) {
    let dims = spec.dims;
    let mut row = vec![0f32; dims];
    for (t, xr) in x.chunks_exact_mut(heads * d).enumerate() {
        row.copy_from_slice(&tables[t * dims..(t + 1) * dims]);
        if inverse {
            row.iter_mut().skip(1).step_by(2).for_each(|s| *s = -*s);
        }
        for head in xr.chunks_exact_mut(d) {
            rope_head(spec, &row, head);
        }
    }
}

/// The attention shape and mask of one sequence.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub t: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Sliding window (a query at `i` sees `i - window + 1 ..= i`).
    pub window: Option<usize>,
}

/// What [`attn_forward`] keeps: probabilities `(H, T, T)` and, under a softcap, the capped
/// scores' `tanh` values.
pub struct AttnSaved {
    pub p: Vec<f32>,
    pub tanh: Vec<f32>,
}

/// Causal attention of `q (T, H, D)` over `k, v (T, Hkv, D)`; returns `(out (T, H, D), saved)`.
pub fn attn_forward(s: AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, AttnSaved) {
    let AttnShape { t, h, hkv, d, .. } = s;
    let (qs, ks) = (h * d, hkv * d);
    let n_rep = h / hkv;
    let mut p = vec![0f32; h * t * t];
    let mut tanh = if s.softcap.is_some() {
        vec![0f32; h * t * t]
    } else {
        Vec::new()
    };
    let mut out = vec![0f32; t * h * d];
    for hh in 0..h {
        let g = hh / n_rep;
        let ph = &mut p[hh * t * t..(hh + 1) * t * t];
        mm(
            t,
            d,
            t,
            View {
                data: &q[hh * d..],
                rs: qs,
                cs: 1,
            },
            View {
                data: &k[g * d..],
                rs: 1,
                cs: ks,
            },
            ph,
            t,
            false,
        );
        for i in 0..t {
            let row = &mut ph[i * t..(i + 1) * t];
            for (j, x) in row.iter_mut().enumerate() {
                let visible = j <= i && s.window.is_none_or(|w| i - j < w);
                *x = if !visible {
                    f32::NEG_INFINITY
                } else {
                    let z = *x * s.scale;
                    match s.softcap {
                        Some(cap) => {
                            let th = (z / cap).tanh();
                            tanh[hh * t * t + i * t + j] = th;
                            cap * th
                        }
                        None => z,
                    }
                };
            }
            let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut sum = 0f64;
            for x in row.iter_mut() {
                *x = (*x - mx).exp();
                sum += *x as f64;
            }
            let inv = (1.0 / sum) as f32;
            row.iter_mut().for_each(|x| *x *= inv);
        }
        mm(
            t,
            t,
            d,
            View::rows(ph, t),
            View {
                data: &v[g * d..],
                rs: ks,
                cs: 1,
            },
            &mut out[hh * d..],
            qs,
            false,
        );
    }
    (out, AttnSaved { p, tanh })
}

/// `(dq, dk, dv)` of [`attn_forward`] given `dout (T, H, D)`.
pub fn attn_backward(
    s: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    saved: &AttnSaved,
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let AttnShape { t, h, hkv, d, .. } = s;
    let (qs, ks) = (h * d, hkv * d);
    let n_rep = h / hkv;
    let (mut dq, mut dk, mut dv) = (vec![0f32; t * qs], vec![0f32; t * ks], vec![0f32; t * ks]);
    let mut ds = vec![0f32; t * t];
    for hh in 0..h {
        let g = hh / n_rep;
        let ph = &saved.p[hh * t * t..(hh + 1) * t * t];
        let doh = View {
            data: &dout[hh * d..],
            rs: qs,
            cs: 1,
        };
        // dv_g += Pᵀ dO_h
        mm(t, t, d, View::t(ph, t), doh, &mut dv[g * d..], ks, true);
        // dP = dO_h V_gᵀ
        mm(
            t,
            d,
            t,
            doh,
            View {
                data: &v[g * d..],
                rs: 1,
                cs: ks,
            },
            &mut ds,
            t,
            false,
        );
        for i in 0..t {
            let (pr, dr) = (&ph[i * t..(i + 1) * t], &mut ds[i * t..(i + 1) * t]);
            let dot: f64 = pr
                .iter()
                .zip(dr.iter())
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            for j in 0..t {
                let mut x = pr[j] * (dr[j] - dot as f32);
                if s.softcap.is_some() {
                    let th = saved.tanh[hh * t * t + i * t + j];
                    x *= 1.0 - th * th;
                }
                dr[j] = x * s.scale;
            }
        }
        // dq_h = dS K_g ; dk_g += dSᵀ Q_h
        mm(
            t,
            t,
            d,
            View::rows(&ds, t),
            View {
                data: &k[g * d..],
                rs: ks,
                cs: 1,
            },
            &mut dq[hh * d..],
            qs,
            false,
        );
        mm(
            t,
            t,
            d,
            View::t(&ds, t),
            View {
                data: &q[hh * d..],
                rs: qs,
                cs: 1,
            },
            &mut dk[g * d..],
            ks,
            true,
        );
    }
    (dq, dk, dv)
}

/// `act(x)` elementwise.
pub fn act_forward(act: Activation, x: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    ferrolm_model::layers::activate_slice(
        match act {
            // Training uses the exact tanh GELU (the f16 table is llama.cpp's inference rounding).
            Activation::GeluTanhF16 => Activation::GeluTanh,
            a => a,
        },
        &mut y,
    );
    y
}

/// `d act(x) / dx`.
pub fn act_grad(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 + x * (1.0 - s))
        }
        Activation::GeluTanh | Activation::GeluTanhF16 => {
            const K: f32 = 0.797_884_6;
            let u = K * (x + 0.044_715 * x * x * x);
            let th = u.tanh();
            0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * K * (1.0 + 3.0 * 0.044_715 * x * x)
        }
        Activation::Gelu => {
            let cdf = 0.5 * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2) as f32);
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt();
            cdf + x * pdf
        }
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// Mean cross-entropy of `logits (N, V)` against `targets`; returns `(loss, dlogits)` with
/// `dlogits` already divided by `denom` (the tokens the loss averages over).
pub fn cross_entropy(logits: &[f32], v: usize, targets: &[u32], denom: f32) -> (f64, Vec<f32>) {
    let mut d = vec![0f32; logits.len()];
    let mut loss = 0f64;
    for (i, (row, dr)) in logits
        .chunks_exact(v)
        .zip(d.chunks_exact_mut(v))
        .enumerate()
    {
        let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let z: f64 = row.iter().map(|&x| ((x - mx) as f64).exp()).sum();
        let lz = z.ln() + mx as f64;
        let tgt = targets[i] as usize;
        loss += lz - row[tgt] as f64;
        for (j, (x, g)) in row.iter().zip(dr.iter_mut()).enumerate() {
            let p = ((*x as f64) - lz).exp();
            *g = ((p - f64::from(u8::from(j == tgt))) / denom as f64) as f32;
        }
    }
    (loss, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolm_model::spec::{RopeLayout, RopeScaling};

    pub(crate) fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Checks `grad` (the analytic gradient of `f` at `x`) against central differences on
    /// every coordinate; returns the largest relative error.
    fn check(x: &[f32], grad: &[f32], f: impl Fn(&[f32]) -> f64, eps: f32) -> f64 {
        let mut worst = 0f64;
        let scale = grad.iter().map(|g| g.abs() as f64).fold(1e-3, f64::max);
        for i in 0..x.len() {
            let mut xp = x.to_vec();
            xp[i] += eps;
            let mut xm = x.to_vec();
            xm[i] -= eps;
            let num = (f(&xp) - f(&xm)) / (2.0 * eps as f64);
            worst = worst.max((num - grad[i] as f64).abs() / scale);
        }
        worst
    }

    /// `L = Σ y · r` for a fixed random `r`: its gradient wrt `y` is `r`.
    fn dot(y: &[f32], r: &[f32]) -> f64 {
        y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    #[test]
    fn norms_backward_match_finite_differences() {
        let c = 8;
        for kind in [NormKind::Rms, NormKind::Layer] {
            let spec = NormSpec { kind, eps: 1e-5 };
            let (x, w, b, r) = (rand(3 * c, 1), rand(c, 2), rand(c, 3), rand(3 * c, 4));
            let (_, rstd) = norm_forward(spec, &w, Some(&b), &x, c);
            let dx = norm_backward(spec, &w, &x, &rstd, &r, c);
            let e = check(
                &x,
                &dx,
                |x| dot(&norm_forward(spec, &w, Some(&b), x, c).0, &r),
                1e-3,
            );
            println!("{kind:?} norm: max relative error {e:.1e}");
            assert!(e < 2e-3, "{kind:?}: {e}");
            // The scale's and bias's gradients (full fine-tuning).
            let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
            norm_param_grads(spec, &x, &rstd, &r, c, &mut dw, Some(&mut db));
            let ew = check(
                &w,
                &dw,
                |w| dot(&norm_forward(spec, w, Some(&b), &x, c).0, &r),
                1e-3,
            );
            let eb = check(
                &b,
                &db,
                |b| dot(&norm_forward(spec, &w, Some(b), &x, c).0, &r),
                1e-3,
            );
            println!("{kind:?} norm scale / bias: {ew:.1e} / {eb:.1e}");
            assert!(ew < 2e-3 && eb < 2e-3, "{kind:?}: {ew} {eb}");
        }
    }

    #[test]
    fn moe_routing_backward_matches_finite_differences() {
        use ferrolm_model::layers::route;
        for (e, k, norm) in [(8, 2, true), (8, 2, false), (4, 1, false), (6, 3, true)] {
            let (x, r) = (rand(e, 11 + e as u64), rand(k, 12));
            let (probs, chosen) = route(&x, k, norm);
            let dx = route_backward(&probs, &chosen, norm, &r);
            // The loss Σ r_i w_i with the choice held at x's (small steps do not change it).
            let f = |x: &[f32]| {
                let (p, _) = route(x, e, false);
                let s: f32 = if norm {
                    chosen.iter().map(|&(j, _)| p[j]).sum()
                } else {
                    1.0
                };
                chosen
                    .iter()
                    .zip(&r)
                    .map(|(&(j, _), &ri)| (ri * p[j] / s) as f64)
                    .sum()
            };
            let err = check(&x, &dx, f, 1e-3);
            println!("routing {e} experts top-{k} (renormalised: {norm}): {err:.1e}");
            assert!(err < 2e-3, "{e} {k} {norm}: {err}");
            // And the choice: the k largest probabilities.
            let mut sorted = probs.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            assert!(chosen.iter().all(|&(j, _)| probs[j] >= sorted[k - 1]));
        }
    }

    #[test]
    fn rope_backward_is_its_transpose() {
        for layout in [RopeLayout::Half, RopeLayout::Interleaved] {
            let spec = RopeSpec {
                theta: 10_000.0,
                dims: 6,
                layout,
                scaling: RopeScaling::None,
            };
            let (t, heads, d) = (4, 2, 8);
            let tables = ferrolm_model::layers::rope_tables(&spec, &[0, 1, 5, 9]);
            let (x, r) = (rand(t * heads * d, 5), rand(t * heads * d, 6));
            let mut dx = r.clone();
            rope(&spec, &tables, &mut dx, heads, d, true);
            let e = check(
                &x,
                &dx,
                |x| {
                    let mut y = x.to_vec();
                    rope(&spec, &tables, &mut y, heads, d, false);
                    dot(&y, &r)
                },
                1e-2,
            );
            assert!(e < 1e-3, "{layout:?}: {e}");
        }
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        for (softcap, window) in [(None, None), (Some(5.0), None), (None, Some(3))] {
            let s = AttnShape {
                t: 6,
                h: 4,
                hkv: 2,
                d: 8,
                scale: 0.35,
                softcap,
                window,
            };
            let q = rand(s.t * s.h * s.d, 7);
            let k = rand(s.t * s.hkv * s.d, 8);
            let v = rand(s.t * s.hkv * s.d, 9);
            let r = rand(s.t * s.h * s.d, 10);
            let (_, saved) = attn_forward(s, &q, &k, &v);
            let (dq, dk, dv) = attn_backward(s, &q, &k, &v, &saved, &r);
            let eq = check(&q, &dq, |q| dot(&attn_forward(s, q, &k, &v).0, &r), 1e-2);
            let ek = check(&k, &dk, |k| dot(&attn_forward(s, &q, k, &v).0, &r), 1e-2);
            let ev = check(&v, &dv, |v| dot(&attn_forward(s, &q, &k, v).0, &r), 1e-2);
            println!(
                "attention softcap {softcap:?} window {window:?}: q {eq:.1e} k {ek:.1e} v {ev:.1e}"
            );
            assert!(
                eq.max(ek).max(ev) < 3e-3,
                "{softcap:?} {window:?}: {eq} {ek} {ev}"
            );
        }
    }

    #[test]
    fn activation_gradients_match_finite_differences() {
        for act in [
            Activation::Silu,
            Activation::GeluTanh,
            Activation::Gelu,
            Activation::Relu,
        ] {
            for x in [-3.0f32, -0.7, -0.1, 0.2, 1.3, 4.0] {
                let eps = 1e-3;
                let f = |x: f32| act_forward(act, &[x])[0] as f64;
                let num = (f(x + eps) - f(x - eps)) / (2.0 * eps as f64);
                let g = act_grad(act, x) as f64;
                assert!((num - g).abs() < 2e-3, "{act:?} at {x}: {g} vs {num}");
            }
        }
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let v = 7;
        let logits = rand(3 * v, 11).iter().map(|x| x * 3.0).collect::<Vec<_>>();
        let targets = [2u32, 6, 0];
        let (_, d) = cross_entropy(&logits, v, &targets, 3.0);
        let e = check(
            &logits,
            &d,
            |l| cross_entropy(l, v, &targets, 3.0).0 / 3.0,
            1e-2,
        );
        assert!(e < 1e-3, "{e}");
    }
}
