//! LoRA at inference: a low-rank bypass beside a frozen linear layer,
//! `y = x Wᵀ (+ b) + Σ scale · (x Aᵀ) Bᵀ`, through the `Linear` extension point (the base layer,
//! quantized or not, is untouched and shared).
//!
//! A bypass may be routed (`LoraPart::route`): it then applies only to the rows of the
//! sequences a batched step assigns to its adapter ([`with_sequence_adapters`]; the rows of
//! each sequence come from `Model::forward_batch`, `linear::with_sequence_rows`), so requests
//! with different adapters share one batch (the server's per-request adapters).
//!
//! Dimension legend: `rows` input rows, `in`/`out` the base layer's sizes, `r` the rank.

use crate::linear::Linear;
use anyhow::{bail, Result};
use candle_core::Tensor;
use std::cell::RefCell;

/// Which rows routed bypasses apply to, on this thread.
#[derive(Clone)]
enum Routing {
    /// A batched step: each sequence's adapter, in the batch's order.
    PerSequence(Vec<Option<usize>>),
    /// One sequence's work: every row, one adapter.
    All(usize),
}

thread_local! {
    static ROUTING: RefCell<Option<Routing>> = const { RefCell::new(None) };
}

fn with_routing<T>(r: Routing, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ROUTING.with(|r| *r.borrow_mut() = None);
        }
    }
    ROUTING.with(|x| *x.borrow_mut() = Some(r));
    let _reset = Reset;
    f()
}

/// Runs `f` (a `Model::forward_batch` on this thread) with sequence `i` of the batch on routed
/// adapter `adapters[i]` (`None`: the base alone). Outside such a call a routed bypass applies
/// to no row.
pub fn with_sequence_adapters<T>(adapters: Vec<Option<usize>>, f: impl FnOnce() -> T) -> T {
    with_routing(Routing::PerSequence(adapters), f)
}

/// Runs `f` (one sequence's work on this thread) with routed adapter `adapter` on every row.
pub fn with_adapter<T>(adapter: Option<usize>, f: impl FnOnce() -> T) -> T {
    match adapter {
        Some(k) => with_routing(Routing::All(k), f),
        None => f(),
    }
}

/// One adapter's bypass on one layer: `A (r, in)`, `B (out, r)`, both row-major f32.
#[derive(Clone, Debug)]
pub struct LoraPart {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub r: usize,
    pub scale: f32,
    /// `Some(k)`: applies only to the rows of sequences on adapter `k` ([`with_sequence_adapters`]); `None`:
    /// to every row.
    pub route: Option<usize>,
}

/// A base layer plus the bypasses of every adapter applied to it.
pub struct LoraLinear {
    base: Box<dyn Linear>,
    parts: Vec<LoraPart>,
}

impl LoraLinear {
    /// Wraps `base` with one bypass; checks the shapes against it.
    pub fn new(base: Box<dyn Linear>, part: LoraPart) -> Result<LoraLinear> {
        let (i, o, r) = (base.in_dim(), base.out_dim(), part.r);
        if r == 0 || part.a.len() != r * i || part.b.len() != o * r {
            bail!(
                "LoRA shapes do not fit the layer ({o} x {i}): A has {} values and B {} for rank {r}; the adapter was made for another model",
                part.a.len(),
                part.b.len()
            );
        }
        Ok(LoraLinear {
            base,
            parts: vec![part],
        })
    }

    /// `y += scale (x Aᵀ) Bᵀ` for each part: the slow, obvious product (rank is small).
    /// `y += scale (x Aᵀ) Bᵀ` of part `p` on all of `x`'s rows.
    fn bypass(&self, p: &LoraPart, x: &[f32], y: &mut [f32]) {
        let (i, o) = (self.base.in_dim(), self.base.out_dim());
        let rows = x.len() / i;
        let mut t = vec![0f32; rows * p.r];
        for (row, tr) in t.chunks_exact_mut(p.r).enumerate() {
            let xr = &x[row * i..(row + 1) * i];
            for (j, tj) in tr.iter_mut().enumerate() {
                *tj =
                    ferrolm_kernels::numerics::dot_batched(xr, &p.a[j * i..(j + 1) * i]) * p.scale;
            }
        }
        ferrolm_kernels::pool::par_rows(y, o, |r0, run| {
            for (k, yr) in run.chunks_exact_mut(o).enumerate() {
                let tr = &t[(r0 + k) * p.r..(r0 + k + 1) * p.r];
                for (out, yv) in yr.iter_mut().enumerate() {
                    let br = &p.b[out * p.r..(out + 1) * p.r];
                    *yv += br.iter().zip(tr).map(|(b, t)| b * t).sum::<f32>();
                }
            }
        });
    }

    fn add_bypass(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        let (i, o) = (self.base.in_dim(), self.base.out_dim());
        let rows = x.len() / i;
        for p in &self.parts {
            let Some(k) = p.route else {
                self.bypass(p, x, y);
                continue;
            };
            let adapters = match ROUTING.with(|r| r.borrow().clone()) {
                None => continue,
                Some(Routing::All(a)) => {
                    if a == k {
                        self.bypass(p, x, y);
                    }
                    continue;
                }
                Some(Routing::PerSequence(a)) => a,
            };
            let lens = crate::linear::sequence_rows().unwrap_or_default();
            if lens.len() != adapters.len() || lens.iter().sum::<usize>() != rows {
                bail!("internal: a step's sequences do not cover the {rows} rows of a routed LoRA layer");
            }
            let mut r0 = 0;
            for (n, a) in lens.into_iter().zip(adapters) {
                if a == Some(k) {
                    self.bypass(p, &x[r0 * i..(r0 + n) * i], &mut y[r0 * o..(r0 + n) * o]);
                }
                r0 += n;
            }
        }
        Ok(())
    }
}

impl Linear for LoraLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let flat: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let rows = flat.len() / self.in_dim();
        let mut y = vec![0f32; rows * self.out_dim()];
        self.forward_slice(&flat, &mut y)?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_dim();
        }
        Ok(Tensor::from_vec(y, out_dims, x.device())?)
    }
    fn forward_slice(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.base.forward_slice(x, y)?;
        self.add_bypass(x, y)
    }
    fn bias_values(&self) -> Result<Option<Vec<f32>>> {
        self.base.bias_values()
    }
    /// The merged weight `W + Σ scale B Aᵀ`'s rows (what `export --merge` writes).
    fn weight_rows(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        use crate::dense::{mm, View};
        self.base.weight_rows(r0, r1, out)?;
        let i = self.in_dim();
        for p in self.parts.iter().filter(|p| p.route.is_none()) {
            let b: Vec<f32> = p.b[r0 * p.r..r1 * p.r]
                .iter()
                .map(|x| x * p.scale)
                .collect();
            mm(
                r1 - r0,
                p.r,
                i,
                View::rows(&b, p.r),
                View::rows(&p.a, i),
                out,
                i,
                true,
            );
        }
        Ok(())
    }
    fn backward_input(&self, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        use crate::dense::{mm, View};
        self.base.backward_input(dy, dx)?;
        let (i, o) = (self.in_dim(), self.out_dim());
        let rows = dy.len() / o;
        for p in self.parts.iter().filter(|p| p.route.is_none()) {
            // dx += scale (dy B) A
            let mut t = vec![0f32; rows * p.r];
            mm(
                rows,
                o,
                p.r,
                View::rows(dy, o),
                View::rows(&p.b, p.r),
                &mut t,
                p.r,
                false,
            );
            t.iter_mut().for_each(|x| *x *= p.scale);
            mm(
                rows,
                p.r,
                i,
                View::rows(&t, p.r),
                View::rows(&p.a, i),
                dx,
                i,
                true,
            );
        }
        Ok(())
    }
    fn in_dim(&self) -> usize {
        self.base.in_dim()
    }
    fn out_dim(&self) -> usize {
        self.base.out_dim()
    }
    fn kind(&self) -> String {
        let ranks: Vec<String> = self.parts.iter().map(|p| p.r.to_string()).collect();
        format!("{}+LoRA(r={})", self.base.kind(), ranks.join(","))
    }
}

/// Placeholder while a layer is being wrapped (never called).
struct Taken;
impl Linear for Taken {
    fn forward(&self, _: &Tensor) -> Result<Tensor> {
        bail!("internal: a layer was used while being wrapped")
    }
    fn in_dim(&self) -> usize {
        0
    }
    fn out_dim(&self) -> usize {
        0
    }
    fn kind(&self) -> String {
        "taken".into()
    }
}

/// Replaces `slot`'s layer by the same layer with the bypass added (on a shape mismatch the
/// layer is left as it was).
pub fn wrap(slot: &mut Box<dyn Linear>, part: LoraPart) -> Result<()> {
    let (i, o, r) = (slot.in_dim(), slot.out_dim(), part.r);
    if r == 0 || part.a.len() != r * i || part.b.len() != o * r {
        bail!(
            "LoRA shapes do not fit the layer ({o} x {i}): A has {} values and B {} for rank {r}; the adapter was made for another model",
            part.a.len(),
            part.b.len()
        );
    }
    let base = std::mem::replace(slot, Box::new(Taken));
    *slot = Box::new(LoraLinear::new(base, part)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::DenseLinear;

    #[test]
    fn bypass_adds_scaled_low_rank_product() {
        // W = I (2x2), A = [[1, 2]], B = [[1], [-1]], scale 0.5: y = x + 0.5 (x·[1,2]) [1, -1].
        let w =
            Tensor::from_vec(vec![1f32, 0., 0., 1.], (2, 2), &candle_core::Device::Cpu).unwrap();
        let base: Box<dyn Linear> = Box::new(DenseLinear::new(w, None));
        let l = LoraLinear::new(
            base,
            LoraPart {
                a: vec![1., 2.],
                b: vec![1., -1.],
                r: 1,
                route: None,
                scale: 0.5,
            },
        )
        .unwrap();
        let mut y = vec![0f32; 4];
        l.forward_slice(&[1., 1., 2., 0.], &mut y).unwrap();
        assert_eq!(y, vec![2.5, -0.5, 3.0, -1.0]);
    }
}
