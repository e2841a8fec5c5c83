//! The feed-forward sub-layer's forward and backward passes in training: dense (gated or
//! plain), and mixtures of experts (top-k routing with the model's own `route`, an optional
//! shared expert behind a sigmoid gate).

use super::{Ctx, LinSaved};
use crate::adapter::Grads;
use crate::ops;
use anyhow::{bail, Result};
use ferrolm_model::layers::{route, FeedForward, FfnLayer, Moe};
use ferrolm_model::spec::{Activation, Ffn};
use ferrolm_model::weights::{Key, Slot};

/// A dense feed-forward's activation, and whether it is gated.
fn ffn_kind(spec: Ffn) -> Result<(Activation, bool)> {
    match spec {
        Ffn::Gated { act } => Ok((act, true)),
        Ffn::Plain { act } => Ok((act, false)),
        _ => bail!("a mixture's expert must be a dense feed-forward"),
    }
}

/// What a dense feed-forward keeps from its forward pass.
pub(super) struct DenseSaved {
    g: Vec<f32>,
    /// `act(g)` (gated feed-forwards).
    ag: Vec<f32>,
    lg: Option<LinSaved>,
    u: Vec<f32>,
    lu: Option<LinSaved>,
    a: Vec<f32>,
    ld: Option<LinSaved>,
}

/// One expert's share of a mixture's forward pass.
pub(super) struct ExpertSaved {
    /// `(token, index of this expert in the token's choice)` for each row it ran.
    rows: Vec<(usize, usize)>,
    x: Vec<f32>,
    saved: DenseSaved,
    h: Vec<f32>,
}

pub(super) struct MoeSaved {
    /// Per token: the softmax over the experts and the chosen `(expert, weight)`.
    probs: Vec<Vec<f32>>,
    chosen: Vec<Vec<(usize, f32)>>,
    experts: Vec<Option<ExpertSaved>>,
    /// The shared expert: its gate's logits, its pass and output.
    shared: Option<(Vec<f32>, DenseSaved, Vec<f32>)>,
}

pub(super) enum FfnSaved {
    Dense(DenseSaved),
    Moe(MoeSaved),
}

/// The weight keys of a dense feed-forward's gate, up and down projections.
type Keys = [Key; 3];

fn dense_keys(l: usize) -> Keys {
    [Slot::FfnGate, Slot::FfnUp, Slot::FfnDown].map(|s| Key::layer(s, l))
}
fn expert_keys(l: usize, e: usize) -> Keys {
    [Slot::ExpGate, Slot::ExpUp, Slot::ExpDown].map(|s| Key::layer(s, l).expert(e))
}
fn shared_keys(l: usize) -> Keys {
    [Slot::ShGate, Slot::ShUp, Slot::ShDown].map(|s| Key::layer(s, l))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Ctx<'_> {
    fn dense_fwd(
        &mut self,
        ff: &FeedForward,
        k: Keys,
        x: &[f32],
    ) -> Result<(Vec<f32>, DenseSaved)> {
        let (act, gated) = ffn_kind(ff.spec)?;
        let (g, lg) = match (&ff.gate, gated) {
            (Some(gl), true) => self.lin_fwd(gl.as_ref(), k[0], x)?,
            _ => (Vec::new(), None),
        };
        let (u, lu) = self.lin_fwd(ff.up.as_ref(), k[1], x)?;
        // Gated: act(gate) (kept for the backward) times up; plain: act(up).
        let (a, ag): (Vec<f32>, Vec<f32>) = if gated {
            let ag = ops::act_forward(act, &g);
            (ag.iter().zip(&u).map(|(a, b)| a * b).collect(), ag)
        } else {
            (ops::act_forward(act, &u), Vec::new())
        };
        let (f, ld) = self.lin_fwd(ff.down.as_ref(), k[2], &a)?;
        Ok((
            f,
            DenseSaved {
                g,
                ag,
                lg,
                u,
                lu,
                a,
                ld,
            },
        ))
    }

    fn dense_bwd(
        &mut self,
        ff: &FeedForward,
        k: Keys,
        x: &[f32],
        s: &DenseSaved,
        df: &[f32],
        mut grads: Option<&mut Grads>,
    ) -> Result<Vec<f32>> {
        let (act, gated) = ffn_kind(ff.spec)?;
        let da = self.lin_bwd(
            ff.down.as_ref(),
            k[2],
            &s.a,
            &s.ld,
            df,
            grads.as_deref_mut(),
        )?;
        if gated {
            let dg: Vec<f32> = (0..da.len())
                .map(|j| da[j] * s.u[j] * ops::act_grad(act, s.g[j]))
                .collect();
            let du: Vec<f32> = (0..da.len()).map(|j| da[j] * s.ag[j]).collect();
            let gl = ff.gate.as_deref().expect("gated");
            let mut d1 = self.lin_bwd(gl, k[0], x, &s.lg, &dg, grads.as_deref_mut())?;
            let d2 = self.lin_bwd(ff.up.as_ref(), k[1], x, &s.lu, &du, grads)?;
            d1.iter_mut().zip(&d2).for_each(|(a, b)| *a += b);
            Ok(d1)
        } else {
            let du: Vec<f32> = (0..da.len())
                .map(|j| da[j] * ops::act_grad(act, s.u[j]))
                .collect();
            self.lin_bwd(ff.up.as_ref(), k[1], x, &s.lu, &du, grads)
        }
    }

    fn moe_fwd(&mut self, m: &Moe, l: usize, x: &[f32]) -> Result<(Vec<f32>, MoeSaved)> {
        let c = m.router.in_dim();
        let t = x.len() / c;
        let (logits, _) = self.lin_fwd(m.router.as_ref(), Key::layer(Slot::FfnRouter, l), x)?;
        let (mut probs, mut chosen) = (Vec::with_capacity(t), Vec::with_capacity(t));
        let mut rows: Vec<Vec<(usize, usize)>> = vec![Vec::new(); m.experts.len()];
        for (ti, row) in logits.chunks_exact(m.experts.len()).enumerate() {
            let (p, ch) = route(row, m.spec.top_k, m.spec.norm_topk);
            for (i, &(e, _)) in ch.iter().enumerate() {
                rows[e].push((ti, i));
            }
            probs.push(p);
            chosen.push(ch);
        }
        let mut y = vec![0f32; t * c];
        let mut experts = Vec::with_capacity(m.experts.len());
        for (e, (ff, rows)) in m.experts.iter().zip(rows).enumerate() {
            if rows.is_empty() {
                experts.push(None);
                continue;
            }
            let xe: Vec<f32> = rows
                .iter()
                .flat_map(|&(ti, _)| x[ti * c..(ti + 1) * c].iter().copied())
                .collect();
            let (h, saved) = self.dense_fwd(ff, expert_keys(l, e), &xe)?;
            for (r, &(ti, i)) in rows.iter().enumerate() {
                let w = chosen[ti][i].1;
                for (o, hv) in y[ti * c..(ti + 1) * c]
                    .iter_mut()
                    .zip(&h[r * c..(r + 1) * c])
                {
                    *o += w * hv;
                }
            }
            experts.push(Some(ExpertSaved {
                rows,
                x: xe,
                saved,
                h,
            }));
        }
        let shared = match &m.shared {
            Some((ff, gate)) => {
                let (g, _) = self.lin_fwd(gate.as_ref(), Key::layer(Slot::ShExpGate, l), x)?;
                let (h, saved) = self.dense_fwd(ff, shared_keys(l), x)?;
                for ti in 0..t {
                    let w = sigmoid(g[ti]);
                    for (o, hv) in y[ti * c..(ti + 1) * c].iter_mut().zip(&h[ti * c..]) {
                        *o += w * hv;
                    }
                }
                Some((g, saved, h))
            }
            None => None,
        };
        Ok((
            y,
            MoeSaved {
                probs,
                chosen,
                experts,
                shared,
            },
        ))
    }

    fn moe_bwd(
        &mut self,
        m: &Moe,
        l: usize,
        x: &[f32],
        s: &MoeSaved,
        dy: &[f32],
        mut grads: Option<&mut Grads>,
    ) -> Result<Vec<f32>> {
        let c = m.router.in_dim();
        let t = x.len() / c;
        let mut dx = vec![0f32; t * c];
        // The loss's gradient wrt each chosen weight: dy · (that expert's output).
        let mut dw: Vec<Vec<f32>> = s.chosen.iter().map(|ch| vec![0f32; ch.len()]).collect();
        for (e, es) in s.experts.iter().enumerate() {
            let Some(es) = es else { continue };
            let mut dh = vec![0f32; es.rows.len() * c];
            for (r, &(ti, i)) in es.rows.iter().enumerate() {
                let (dyr, hr) = (&dy[ti * c..(ti + 1) * c], &es.h[r * c..(r + 1) * c]);
                dw[ti][i] = dyr.iter().zip(hr).map(|(a, b)| a * b).sum();
                let w = s.chosen[ti][i].1;
                dh[r * c..(r + 1) * c]
                    .iter_mut()
                    .zip(dyr)
                    .for_each(|(d, g)| *d = w * g);
            }
            let dxe = self.dense_bwd(
                &m.experts[e],
                expert_keys(l, e),
                &es.x,
                &es.saved,
                &dh,
                grads.as_deref_mut(),
            )?;
            for (r, &(ti, _)) in es.rows.iter().enumerate() {
                dx[ti * c..(ti + 1) * c]
                    .iter_mut()
                    .zip(&dxe[r * c..(r + 1) * c])
                    .for_each(|(a, b)| *a += b);
            }
        }
        // Through the routing weights into the router.
        let dlogits: Vec<f32> = (0..t)
            .flat_map(|ti| {
                ops::route_backward(&s.probs[ti], &s.chosen[ti], m.spec.norm_topk, &dw[ti])
            })
            .collect();
        let key = Key::layer(Slot::FfnRouter, l);
        let dr = self.lin_bwd(
            m.router.as_ref(),
            key,
            x,
            &None,
            &dlogits,
            grads.as_deref_mut(),
        )?;
        dx.iter_mut().zip(&dr).for_each(|(a, b)| *a += b);
        if let (Some((ff, gate)), Some((g, saved, h))) = (&m.shared, &s.shared) {
            let mut dh = vec![0f32; t * c];
            let mut dg = vec![0f32; t];
            for ti in 0..t {
                let w = sigmoid(g[ti]);
                let (dyr, hr) = (&dy[ti * c..(ti + 1) * c], &h[ti * c..(ti + 1) * c]);
                let dwt: f32 = dyr.iter().zip(hr).map(|(a, b)| a * b).sum();
                dg[ti] = dwt * w * (1.0 - w);
                dh[ti * c..(ti + 1) * c]
                    .iter_mut()
                    .zip(dyr)
                    .for_each(|(d, gv)| *d = w * gv);
            }
            let key = Key::layer(Slot::ShExpGate, l);
            let dgx = self.lin_bwd(gate.as_ref(), key, x, &None, &dg, grads.as_deref_mut())?;
            let dsx = self.dense_bwd(ff, shared_keys(l), x, saved, &dh, grads)?;
            for ((a, b), c2) in dx.iter_mut().zip(&dgx).zip(&dsx) {
                *a += b + c2;
            }
        }
        Ok(dx)
    }

    /// The feed-forward of layer `l` on `x` (its normed input).
    pub(super) fn ffn_fwd(
        &mut self,
        f: &FfnLayer,
        l: usize,
        x: &[f32],
    ) -> Result<(Vec<f32>, FfnSaved)> {
        Ok(match f {
            FfnLayer::Dense(ff) => {
                let (y, s) = self.dense_fwd(ff, dense_keys(l), x)?;
                (y, FfnSaved::Dense(s))
            }
            FfnLayer::Moe(m) => {
                let (y, s) = self.moe_fwd(m, l, x)?;
                (y, FfnSaved::Moe(s))
            }
        })
    }

    /// `dx` of [`Ctx::ffn_fwd`], adding the adapter's (or, in full fine-tuning, the weights')
    /// gradients.
    pub(super) fn ffn_bwd(
        &mut self,
        f: &FfnLayer,
        l: usize,
        x: &[f32],
        s: &FfnSaved,
        dy: &[f32],
        grads: Option<&mut Grads>,
    ) -> Result<Vec<f32>> {
        match (f, s) {
            (FfnLayer::Dense(ff), FfnSaved::Dense(s)) => {
                self.dense_bwd(ff, dense_keys(l), x, s, dy, grads)
            }
            (FfnLayer::Moe(m), FfnSaved::Moe(s)) => self.moe_bwd(m, l, x, s, dy, grads),
            _ => unreachable!("saved by the same layer"),
        }
    }
}
