//! AdamW with linear warmup and cosine decay, and gradient clipping by global norm.

use crate::net::Grads;

/// `lr` at `step` of `total`: linear warmup over `warmup` steps, then cosine decay to zero.
pub fn schedule(lr: f32, step: usize, total: usize, warmup: usize) -> f32 {
    if step < warmup {
        return lr * (step + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1);
    let p = ((step - warmup) as f32 / span as f32).min(1.0);
    lr * 0.5 * (1.0 + (std::f32::consts::PI * p).cos())
}

/// Scales `g` so its global L2 norm is at most `max`; returns the norm before clipping.
pub fn clip(g: &mut Grads, max: f32) -> f32 {
    let n = g
        .iter()
        .flat_map(|v| v.iter())
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt() as f32;
    if n > max && n > 0.0 {
        let s = max / n;
        g.iter_mut()
            .flat_map(|v| v.iter_mut())
            .for_each(|x| *x *= s);
    }
    n
}

/// AdamW's hyper-parameters (PyTorch's defaults but the decay).
#[derive(Clone, Copy, Debug)]
pub struct AdamHyper {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamHyper {
    pub fn new(weight_decay: f32) -> AdamHyper {
        AdamHyper {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// The update of one tensor `p` at step `t` (from 1), with its moments `m`, `v`.
    pub fn update(&self, t: u64, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], lr: f32) {
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = 1.0 - b2.powi(t as i32);
        for (k, w) in p.iter_mut().enumerate() {
            let gk = g[k];
            m[k] = b1 * m[k] + (1.0 - b1) * gk;
            v[k] = b2 * v[k] + (1.0 - b2) * gk * gk;
            let upd = (m[k] / c1) / ((v[k] / c2).sqrt() + self.eps);
            *w -= lr * (upd + self.weight_decay * *w);
        }
    }
}

/// AdamW (decoupled weight decay) over a list of tensors.
pub struct AdamW {
    pub h: AdamHyper,
    pub m: Grads,
    pub v: Grads,
    pub t: u64,
}

impl AdamW {
    pub fn new(shape: &Grads, weight_decay: f32) -> AdamW {
        let zeros = || shape.iter().map(|p| vec![0.0; p.len()]).collect();
        AdamW {
            h: AdamHyper::new(weight_decay),
            m: zeros(),
            v: zeros(),
            t: 0,
        }
    }

    /// One update of `params[i]` (the same shapes as the gradients) at rate `lr`.
    pub fn step(&mut self, params: &mut [&mut [f32]], g: &Grads, lr: f32) {
        self.t += 1;
        for (i, p) in params.iter_mut().enumerate() {
            self.h
                .update(self.t, p, &g[i], &mut self.m[i], &mut self.v[i], lr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((schedule(1.0, 0, 100, 10) - 0.1).abs() < 1e-6);
        assert!((schedule(1.0, 9, 100, 10) - 1.0).abs() < 1e-6);
        assert!((schedule(1.0, 10, 100, 10) - 1.0).abs() < 1e-6);
        assert!(schedule(1.0, 55, 100, 10) < 0.51 && schedule(1.0, 55, 100, 10) > 0.49);
        assert!(schedule(1.0, 100, 100, 10) < 1e-6);
    }

    #[test]
    fn adamw_minimises_a_quadratic() {
        // f(w) = Σ (w - 3)²
        let mut w = vec![vec![0f32; 4], vec![0f32; 2]];
        let shape: Grads = vec![vec![0.0; 4], vec![0.0; 2]];
        let mut opt = AdamW::new(&shape, 0.0);
        for _ in 0..2000 {
            let g: Grads = w
                .iter()
                .map(|p| p.iter().map(|x| 2.0 * (x - 3.0)).collect())
                .collect();
            let mut params: Vec<&mut [f32]> = w.iter_mut().map(|p| &mut p[..]).collect();
            opt.step(&mut params, &g, 0.05);
        }
        assert!(w.iter().flatten().all(|x| (x - 3.0).abs() < 1e-2), "{w:?}");
    }
}
