//! Prompt tuning and P-tuning: learned virtual tokens put before every input, directly or
//! through PEFT's MLP prompt encoder, with the encoder's backward pass.

/// Learned virtual tokens: `emb (N, C)` directly (prompt tuning), or through PEFT's MLP prompt
/// encoder (P-tuning): `relu(relu(emb W1ᵀ + b1) W2ᵀ + b2) W3ᵀ + b3`.
pub struct Prompt {
    pub n: usize,
    pub c: usize,
    pub emb: Vec<f32>,
    /// `[W1 (Hd, C), b1, W2 (Hd, Hd), b2, W3 (C, Hd), b3]` for P-tuning; empty otherwise.
    pub mlp: Vec<Vec<f32>>,
    pub hidden: usize,
}

/// What the prompt encoder keeps for its backward.
pub(crate) struct PromptSaved {
    h1: Vec<f32>,
    h2: Vec<f32>,
}

impl Prompt {
    /// The virtual tokens `(N, C)` (the encoder's output for P-tuning).
    pub fn virtual_tokens(&self) -> Vec<f32> {
        self.tokens().0
    }

    /// The virtual tokens `(N, C)`.
    pub(crate) fn tokens(&self) -> (Vec<f32>, Option<PromptSaved>) {
        use ferrolm_model::dense::{mm, View};
        if self.mlp.is_empty() {
            return (self.emb.clone(), None);
        }
        let (n, c, hd) = (self.n, self.c, self.hidden);
        let lin = |x: &[f32], w: &[f32], b: &[f32], i: usize, o: usize, relu: bool| {
            let mut y: Vec<f32> = (0..n).flat_map(|_| b.iter().copied()).collect();
            mm(n, i, o, View::rows(x, i), View::t(w, i), &mut y, o, true);
            if relu {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            y
        };
        let h1 = lin(&self.emb, &self.mlp[0], &self.mlp[1], c, hd, true);
        let h2 = lin(&h1, &self.mlp[2], &self.mlp[3], hd, hd, true);
        let out = lin(&h2, &self.mlp[4], &self.mlp[5], hd, c, false);
        (out, Some(PromptSaved { h1, h2 }))
    }

    /// Gradients of the prompt's tensors (in `params` order) from `dout (N, C)`.
    pub(crate) fn backward(&self, saved: &Option<PromptSaved>, dout: &[f32]) -> Vec<Vec<f32>> {
        use ferrolm_model::dense::{mm, View};
        let Some(sv) = saved else {
            return vec![dout.to_vec()];
        };
        let (n, c, hd) = (self.n, self.c, self.hidden);
        // One linear layer back: (dW, db, dx) from dy, its input x and weight w (o, i).
        let back = |dy: &[f32], x: &[f32], w: &[f32], i: usize, o: usize| {
            let mut dw = vec![0f32; o * i];
            mm(o, n, i, View::t(dy, o), View::rows(x, i), &mut dw, i, false);
            let db: Vec<f32> = (0..o)
                .map(|j| (0..n).map(|r| dy[r * o + j]).sum())
                .collect();
            let mut dx = vec![0f32; n * i];
            mm(
                n,
                o,
                i,
                View::rows(dy, o),
                View::rows(w, i),
                &mut dx,
                i,
                false,
            );
            (dw, db, dx)
        };
        let (dw3, db3, mut dh2) = back(dout, &sv.h2, &self.mlp[4], hd, c);
        dh2.iter_mut().zip(&sv.h2).for_each(|(d, h)| {
            if *h <= 0.0 {
                *d = 0.0
            }
        });
        let (dw2, db2, mut dh1) = back(&dh2, &sv.h1, &self.mlp[2], hd, hd);
        dh1.iter_mut().zip(&sv.h1).for_each(|(d, h)| {
            if *h <= 0.0 {
                *d = 0.0
            }
        });
        let (dw1, db1, demb) = back(&dh1, &self.emb, &self.mlp[0], c, hd);
        vec![demb, dw1, db1, dw2, db2, dw3, db3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn prompt_encoder_backward_matches_finite_differences() {
        let (n, c, hd) = (3, 8, 5);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut r =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect() };
        let mut p = Prompt {
            n,
            c,
            emb: r(n * c),
            mlp: vec![r(hd * c), r(hd), r(hd * hd), r(hd), r(c * hd), r(c)],
            hidden: hd,
        };
        let w = r(n * c);
        let f = |p: &Prompt| -> f64 {
            p.tokens()
                .0
                .iter()
                .zip(&w)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let (_, saved) = p.tokens();
        let g = p.backward(&saved, &w);
        for ti in 0..7 {
            for j in 0..g[ti].len() {
                let get = |p: &mut Prompt| -> *mut f32 {
                    if ti == 0 {
                        &mut p.emb[j]
                    } else {
                        &mut p.mlp[ti - 1][j]
                    }
                };
                let eps = 1e-3;
                // SAFETY: a pointer into `p`, used while nothing else borrows it.
                unsafe {
                    let x = get(&mut p);
                    let x0 = *x;
                    *x = x0 + eps;
                    let lp = f(&p);
                    *get(&mut p) = x0 - eps;
                    let lm = f(&p);
                    *get(&mut p) = x0;
                    let num = (lp - lm) / (2.0 * eps as f64);
                    assert!(
                        (num - g[ti][j] as f64).abs() < 1e-2,
                        "tensor {ti}[{j}]: {} vs {num}",
                        g[ti][j]
                    );
                }
            }
        }
    }
}
