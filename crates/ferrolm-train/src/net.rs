//! Training's pass over a loaded model: the decoder's forward pass with every activation the
//! backward needs kept, and the backward pass into an adapter's gradients (the base read, never
//! changed: its projections run through `Linear::forward_slice` in their stored format, their
//! input gradients through `Linear::backward_input`) or, in full fine-tuning, into every
//! weight's gradient, handed to a [`WeightSink`] block by block.

pub use crate::adapter::{
    check_trainable, slot_name, Adapter, Grads, LoraConfig, Module, Prompt, SLOTS,
};
mod ffn;

use crate::ops::{self, AttnSaved, AttnShape};
use anyhow::Result;
use ferrolm_model::block::Block;
use ferrolm_model::layers::Norm;
use ferrolm_model::linear::Linear;
use ferrolm_model::spec::Position;
use ferrolm_model::weights::{Key, Slot};
use ferrolm_model::Model;
use ffn::FfnSaved;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A tensor of the model (full fine-tuning): its weight key, and whether it is the bias.
pub type TensorId = (Key, bool);
/// Gradients of whole tensors.
pub type TensorGrads = Vec<(TensorId, Vec<f32>)>;

/// Where full fine-tuning's weight gradients go, each as soon as it is complete in the backward
/// pass: LOMO updates the tensor there and then, AdamW keeps the gradient for its step.
pub trait WeightSink {
    /// The gradients of one block's tensors; the backward reads `b` no more, so it may change.
    fn block(&mut self, b: &mut Block, g: TensorGrads) -> Result<()>;
    /// Gradients of tensors outside the blocks (the head, the final norm).
    fn global(&mut self, m: &mut Model, g: TensorGrads) -> Result<()>;
    /// The token embedding's gradient at the rows `ids` (`g (ids, C)`).
    fn embedding_rows(&mut self, m: &mut Model, ids: &[u32], g: &[f32]) -> Result<()>;
}

/// What one adapted product keeps for its backward: the (dropped-out) input's projection
/// `t = x_d Aᵀ` and the dropout mask.
struct LinSaved {
    t: Vec<f32>,
    mask: Vec<f32>,
}

struct Ctx<'a> {
    ad: &'a Adapter,
    rng: Option<ChaCha8Rng>,
    /// Full fine-tuning: the weight gradients of the block being run backward.
    wg: Option<TensorGrads>,
}

impl Ctx<'_> {
    /// The adapter's LoRA module on the projection `key` names (none on experts).
    fn module(&self, key: Key) -> Option<usize> {
        match (key.layer, key.expert) {
            (Some(l), None) => self.ad.module(l, key.slot),
            _ => None,
        }
    }

    /// Adds `g` into the gradient of tensor `id` (full fine-tuning).
    fn add_grad(&mut self, id: TensorId, g: &[f32]) {
        let Some(wg) = &mut self.wg else { return };
        match wg.iter_mut().find(|(k, _)| *k == id) {
            Some((_, acc)) => acc.iter_mut().zip(g).for_each(|(a, b)| *a += b),
            None => wg.push((id, g.to_vec())),
        }
    }

    /// `dx` of a norm; in full fine-tuning, also its scale's and bias's gradients (under `key`).
    fn norm_bwd(&mut self, n: &Norm, key: Key, x: &[f32], rstd: &[f32], dy: &[f32]) -> Vec<f32> {
        if self.wg.is_some() {
            let c = n.weight().len();
            let mut dw = vec![0f32; c];
            let mut db = n.bias().map(|_| vec![0f32; c]);
            ops::norm_param_grads(n.spec, x, rstd, dy, c, &mut dw, db.as_deref_mut());
            self.add_grad((key, false), &dw);
            if let Some(db) = db {
                self.add_grad((key, true), &db);
            }
        }
        norm_b(n, x, rstd, dy)
    }

    /// In full fine-tuning, the gradients of `lin`'s weight (`dyᵀ x`) and bias (under `key`).
    fn lin_param_grads(&mut self, lin: &dyn Linear, key: Key, x: &[f32], dy: &[f32]) -> Result<()> {
        use ferrolm_model::dense::{mm, View};
        if self.wg.is_none() {
            return Ok(());
        }
        let (i, o) = (lin.in_dim(), lin.out_dim());
        let rows = x.len() / i;
        let mut dw = vec![0f32; o * i];
        mm(
            o,
            rows,
            i,
            View::t(dy, o),
            View::rows(x, i),
            &mut dw,
            i,
            false,
        );
        self.add_grad((key, false), &dw);
        if lin.bias_values()?.is_some() {
            let mut db = vec![0f32; o];
            for r in dy.chunks_exact(o) {
                db.iter_mut().zip(r).for_each(|(a, b)| *a += b);
            }
            self.add_grad((key, true), &db);
        }
        Ok(())
    }

    /// `y = x Wᵀ (+ b) + scale · (drop(x) Aᵀ) Bᵀ`.
    fn lin_fwd(
        &mut self,
        lin: &dyn Linear,
        key: Key,
        x: &[f32],
    ) -> Result<(Vec<f32>, Option<LinSaved>)> {
        use ferrolm_model::dense::{mm, View};
        let (i, o) = (lin.in_dim(), lin.out_dim());
        let rows = x.len() / i;
        let mut y = vec![0f32; rows * o];
        lin.forward_slice(x, &mut y)?;
        let Some(mi) = self.module(key) else {
            return Ok((y, None));
        };
        let m = &self.ad.mods[mi];
        let r = self.ad.cfg.r;
        let p = self.ad.cfg.dropout;
        let mut mask = Vec::new();
        let xd: std::borrow::Cow<[f32]> = match (&mut self.rng, p > 0.0) {
            (Some(rng), true) => {
                mask = (0..x.len())
                    .map(|_| {
                        if rng.gen::<f32>() < p {
                            0.0
                        } else {
                            1.0 / (1.0 - p)
                        }
                    })
                    .collect();
                x.iter()
                    .zip(&mask)
                    .map(|(a, b)| a * b)
                    .collect::<Vec<_>>()
                    .into()
            }
            _ => x.into(),
        };
        let mut t = vec![0f32; rows * r];
        mm(
            rows,
            i,
            r,
            View::rows(&xd, i),
            View::t(&m.a, i),
            &mut t,
            r,
            false,
        );
        let sc = self.ad.cfg.scaling();
        let ts: Vec<f32> = t.iter().map(|v| v * sc).collect();
        mm(
            rows,
            r,
            o,
            View::rows(&ts, r),
            View::t(&m.b, r),
            &mut y,
            o,
            true,
        );
        Ok((y, Some(LinSaved { t, mask })))
    }

    /// `dx` of `lin_fwd`, adding the adapter's gradients into `g`.
    #[allow(clippy::too_many_arguments)]
    fn lin_bwd(
        &mut self,
        lin: &dyn Linear,
        key: Key,
        x: &[f32],
        saved: &Option<LinSaved>,
        dy: &[f32],
        g: Option<&mut Grads>,
    ) -> Result<Vec<f32>> {
        use ferrolm_model::dense::{mm, View};
        let (i, o) = (lin.in_dim(), lin.out_dim());
        let rows = x.len() / i;
        let mut dx = vec![0f32; rows * i];
        lin.backward_input(dy, &mut dx)?;
        self.lin_param_grads(lin, key, x, dy)?;
        let (Some(mi), Some(sv), Some(g)) = (self.module(key), saved, g) else {
            return Ok(dx);
        };
        let m = &self.ad.mods[mi];
        let r = self.ad.cfg.r;
        let sc = self.ad.cfg.scaling();
        // dB += scale dyᵀ t
        let ts: Vec<f32> = sv.t.iter().map(|v| v * sc).collect();
        mm(
            o,
            rows,
            r,
            View::t(dy, o),
            View::rows(&ts, r),
            &mut g[2 * mi + 1],
            r,
            true,
        );
        // dt = scale dy B ; dA += dtᵀ x_d ; dx += (dt A) ⊙ mask
        let mut dt = vec![0f32; rows * r];
        mm(
            rows,
            o,
            r,
            View::rows(dy, o),
            View::rows(&m.b, r),
            &mut dt,
            r,
            false,
        );
        dt.iter_mut().for_each(|v| *v *= sc);
        let xd: std::borrow::Cow<[f32]> = if sv.mask.is_empty() {
            x.into()
        } else {
            x.iter()
                .zip(&sv.mask)
                .map(|(a, b)| a * b)
                .collect::<Vec<_>>()
                .into()
        };
        mm(
            r,
            rows,
            i,
            View::t(&dt, r),
            View::rows(&xd, i),
            &mut g[2 * mi],
            i,
            true,
        );
        let mut dxl = vec![0f32; rows * i];
        mm(
            rows,
            r,
            i,
            View::rows(&dt, r),
            View::rows(&m.a, i),
            &mut dxl,
            i,
            false,
        );
        if !sv.mask.is_empty() {
            dxl.iter_mut().zip(&sv.mask).for_each(|(a, b)| *a *= b);
        }
        dx.iter_mut().zip(&dxl).for_each(|(a, b)| *a += b);
        Ok(dx)
    }
}

fn norm_f(n: &Norm, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    ops::norm_forward(n.spec, n.weight(), n.bias(), x, n.weight().len())
}

fn norm_b(n: &Norm, x: &[f32], rstd: &[f32], dy: &[f32]) -> Vec<f32> {
    ops::norm_backward(n.spec, n.weight(), x, rstd, dy, n.weight().len())
}

/// Everything one block keeps from the forward pass.
struct BlockSaved {
    x: Vec<f32>,
    n1: (Vec<f32>, Vec<f32>),
    lq: Option<LinSaved>,
    lk: Option<LinSaved>,
    lv: Option<LinSaved>,
    q_pre: Vec<f32>,
    k_pre: Vec<f32>,
    rq: Vec<f32>,
    rk: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// The RoPE tables of the call (the backward rotates by their transpose).
    tables: Vec<f32>,
    att: AttnSaved,
    o_in: Vec<f32>,
    lo: Option<LinSaved>,
    o: Vec<f32>,
    ro: Vec<f32>,
    x_mid: Vec<f32>,
    n2: (Vec<f32>, Vec<f32>),
    ffn: FfnSaved,
    f: Vec<f32>,
    rf: Vec<f32>,
}

fn shape(b: &Block, t: usize) -> AttnShape {
    let a = &b.attn.spec;
    AttnShape {
        t,
        h: a.n_heads,
        hkv: a.n_kv_heads,
        d: a.head_dim,
        scale: a.scale,
        softcap: a.softcap,
        window: b.plan.window,
    }
}

/// The model a pass runs on: read-only (adapters), or mutable (full fine-tuning, whose weight
/// sink updates each block once its backward is done).
enum MRef<'a> {
    Shared(&'a Model),
    Mut(&'a mut Model),
}

impl MRef<'_> {
    fn get(&self) -> &Model {
        match self {
            MRef::Shared(m) => m,
            MRef::Mut(m) => m,
        }
    }
}

/// The loss of one sequence: `targets[i]` is the token position `i` should predict (or none).
/// Returns `(sum of token losses, tokens)`; with `grads`, also backpropagates
/// `loss_sum / denom` into them. `seed` drives dropout (`None`: no dropout, as at evaluation).
pub fn run(
    m: &Model,
    ad: &Adapter,
    ids: &[u32],
    targets: &[Option<u32>],
    denom: f32,
    grads: Option<&mut Grads>,
    seed: Option<u64>,
) -> Result<(f64, usize)> {
    pass(MRef::Shared(m), ad, ids, targets, denom, grads, None, seed)
}

/// Full fine-tuning's pass: like [`run`] with no adapter, every weight's gradient handed to
/// `sink` as soon as it is complete (block by block, from the last).
pub fn run_full(
    m: &mut Model,
    ids: &[u32],
    targets: &[Option<u32>],
    denom: f32,
    sink: &mut dyn WeightSink,
) -> Result<(f64, usize)> {
    let none = Adapter::none(m)?;
    pass(
        MRef::Mut(m),
        &none,
        ids,
        targets,
        denom,
        None,
        Some(sink),
        None,
    )
}

#[allow(clippy::too_many_arguments)]
fn pass(
    mut mr: MRef,
    ad: &Adapter,
    ids: &[u32],
    targets: &[Option<u32>],
    denom: f32,
    grads: Option<&mut Grads>,
    mut sink: Option<&mut dyn WeightSink>,
    seed: Option<u64>,
) -> Result<(f64, usize)> {
    let m = mr.get();
    let (emb, scale) = m.token_embedding();
    let c = emb.dim();
    // Virtual tokens first (prompt tuning, P-tuning); they predict nothing.
    let (virt, psaved) = match &ad.prompt {
        Some(p) => {
            let (v, s) = p.tokens();
            (v, s)
        }
        None => (Vec::new(), None),
    };
    let nv = virt.len() / c;
    let t = nv + ids.len();
    let mut x = virt;
    x.resize(t * c, 0.0);
    emb.rows_into(ids, &mut x[nv * c..])?;
    if let Some(s) = scale {
        x.iter_mut().for_each(|v| *v *= s);
    }
    let shifted: Vec<Option<u32>>;
    let targets = if nv > 0 {
        shifted = std::iter::repeat_n(None, nv)
            .chain(targets.iter().copied())
            .collect();
        &shifted[..]
    } else {
        targets
    };
    let pos: Vec<usize> = (0..t).collect();
    let mut cx = Ctx {
        ad,
        rng: seed.map(ChaCha8Rng::seed_from_u64),
        wg: None,
    };
    let backward = grads.is_some() || sink.is_some();
    let mut saved: Vec<BlockSaved> = Vec::new();
    for b in m.blocks() {
        let l = b.index;
        let key = |s: Slot| Key::layer(s, l);
        let a = &b.attn;
        let sh = shape(b, t);
        let n1 = norm_f(&b.attn_norm, &x);
        let (q_pre, lq) = cx.lin_fwd(a.q.as_ref(), key(Slot::AttnQ), &n1.0)?;
        let (k_pre, lk) = cx.lin_fwd(a.k.as_ref(), key(Slot::AttnK), &n1.0)?;
        let (v, lv) = cx.lin_fwd(a.v.as_ref(), key(Slot::AttnV), &n1.0)?;
        let (mut q, rq) = match &a.q_norm {
            Some(n) => norm_f(n, &q_pre),
            None => (q_pre.clone(), Vec::new()),
        };
        let (mut k, rk) = match &a.k_norm {
            Some(n) => norm_f(n, &k_pre),
            None => (k_pre.clone(), Vec::new()),
        };
        let tables = match &b.plan.position {
            Position::Rope(spec) => ferrolm_model::layers::rope_tables(spec, &pos),
            _ => Vec::new(),
        };
        if let Position::Rope(spec) = &b.plan.position {
            ops::rope(spec, &tables, &mut q, sh.h, sh.d, false);
            ops::rope(spec, &tables, &mut k, sh.hkv, sh.d, false);
        }
        let (o_in, att) = ops::attn_forward(sh, &q, &k, &v);
        let (o, lo) = cx.lin_fwd(a.o.as_ref(), key(Slot::AttnOut), &o_in)?;
        let (o2, ro) = match &b.post_attn_norm {
            Some(n) => norm_f(n, &o),
            None => (o.clone(), Vec::new()),
        };
        let x_mid: Vec<f32> = x.iter().zip(&o2).map(|(a, b)| a + b).collect();
        let ffn_norm = b.ffn_norm.as_ref().unwrap_or(&b.attn_norm);
        let n2 = norm_f(ffn_norm, &x_mid);
        let (f, ffn) = cx.ffn_fwd(&b.ffn, l, &n2.0)?;
        let (f2, rf) = match &b.post_ffn_norm {
            Some(n) => norm_f(n, &f),
            None => (f.clone(), Vec::new()),
        };
        let x_out: Vec<f32> = x_mid.iter().zip(&f2).map(|(a, b)| a + b).collect();
        if backward {
            saved.push(BlockSaved {
                x,
                n1,
                lq,
                lk,
                lv,
                q_pre,
                k_pre,
                rq,
                rk,
                q,
                k,
                v,
                tables,
                att,
                o_in,
                lo,
                o,
                ro,
                x_mid,
                n2,
                ffn,
                f,
                rf,
            });
        }
        x = x_out;
    }
    // The head on the rows that predict something.
    let rows: Vec<usize> = (0..t)
        .filter(|&i| targets.get(i).copied().flatten().is_some())
        .collect();
    let tg: Vec<u32> = rows.iter().map(|&i| targets[i].unwrap()).collect();
    let (xf, rf) = match m.final_norm() {
        Some(n) => norm_f(n, &x),
        None => (x.clone(), Vec::new()),
    };
    let head = m
        .head()
        .ok_or_else(|| anyhow::anyhow!("the model has no LM head"))?;
    let xs: Vec<f32> = rows
        .iter()
        .flat_map(|&i| xf[i * c..(i + 1) * c].iter().copied())
        .collect();
    let vsz = head.out_dim();
    let mut logits = vec![0f32; rows.len() * vsz];
    head.forward_slice(&xs, &mut logits)?;
    let cap = m.config.final_softcap;
    let capped: Vec<f32> = match cap {
        Some(cp) => logits.iter().map(|&z| cp * (z / cp).tanh()).collect(),
        None => Vec::new(),
    };
    let (loss, mut dl) = ops::cross_entropy(
        if cap.is_some() { &capped } else { &logits },
        vsz,
        &tg,
        denom,
    );
    drop(logits);
    if !backward {
        return Ok((loss, rows.len()));
    }
    let mut grads = grads;
    if let Some(cp) = cap {
        for (d, &cz) in dl.iter_mut().zip(&capped) {
            let th = cz / cp;
            *d *= 1.0 - th * th;
        }
    }
    drop(capped);
    let mut dxs = vec![0f32; rows.len() * c];
    head.backward_input(&dl, &mut dxs)?;
    let final_norm = m.final_norm();
    let n_blocks = m.blocks().len();
    // Full fine-tuning: the head's and the final norm's gradients, complete here.
    if sink.is_some() {
        cx.wg = Some(Vec::new());
        cx.lin_param_grads(head, Key::global(Slot::Output), &xs, &dl)?;
    }
    drop(dl);
    let mut dxf = vec![0f32; t * c];
    for (k, &i) in rows.iter().enumerate() {
        dxf[i * c..(i + 1) * c].copy_from_slice(&dxs[k * c..(k + 1) * c]);
    }
    let mut dx = match final_norm {
        Some(n) => cx.norm_bwd(n, Key::global(Slot::OutputNorm), &x, &rf, &dxf),
        None => dxf,
    };
    if let (Some(sk), MRef::Mut(mm)) = (sink.as_deref_mut(), &mut mr) {
        sk.global(mm, cx.wg.replace(Vec::new()).unwrap_or_default())?;
    }
    for (l, s) in (0..n_blocks).zip(saved).rev() {
        let b = &mr.get().blocks()[l];
        let a = &b.attn;
        let sh = shape(b, t);
        let key = |s: Slot| Key::layer(s, l);
        // Feed-forward branch.
        let df = match &b.post_ffn_norm {
            Some(n) => cx.norm_bwd(n, key(Slot::PostFfnNorm), &s.f, &s.rf, &dx),
            None => dx.clone(),
        };
        let mut gs = grads.as_deref_mut();
        let mut dn2 = cx.ffn_bwd(&b.ffn, l, &s.n2.0, &s.ffn, &df, gs.as_deref_mut())?;
        // A block without its own feed-forward norm shares the attention norm's.
        let (ffn_norm, fkey) = match &b.ffn_norm {
            Some(n) => (n, key(Slot::FfnNorm)),
            None => (&b.attn_norm, key(Slot::AttnNorm)),
        };
        let dmid = cx.norm_bwd(ffn_norm, fkey, &s.x_mid, &s.n2.1, &dn2);
        dn2.clear();
        dx.iter_mut().zip(&dmid).for_each(|(a, b)| *a += b);
        // Attention branch.
        let do_ = match &b.post_attn_norm {
            Some(n) => cx.norm_bwd(n, key(Slot::PostAttnNorm), &s.o, &s.ro, &dx),
            None => dx.clone(),
        };
        let do_in = cx.lin_bwd(
            a.o.as_ref(),
            key(Slot::AttnOut),
            &s.o_in,
            &s.lo,
            &do_,
            gs.as_deref_mut(),
        )?;
        let (mut dq, mut dk, dv) = ops::attn_backward(sh, &s.q, &s.k, &s.v, &s.att, &do_in);
        if let Position::Rope(spec) = &b.plan.position {
            ops::rope(spec, &s.tables, &mut dq, sh.h, sh.d, true);
            ops::rope(spec, &s.tables, &mut dk, sh.hkv, sh.d, true);
        }
        if let Some(n) = &a.q_norm {
            dq = cx.norm_bwd(n, key(Slot::AttnQNorm), &s.q_pre, &s.rq, &dq);
        }
        if let Some(n) = &a.k_norm {
            dk = cx.norm_bwd(n, key(Slot::AttnKNorm), &s.k_pre, &s.rk, &dk);
        }
        let mut dn1 = cx.lin_bwd(
            a.q.as_ref(),
            key(Slot::AttnQ),
            &s.n1.0,
            &s.lq,
            &dq,
            gs.as_deref_mut(),
        )?;
        let d2 = cx.lin_bwd(
            a.k.as_ref(),
            key(Slot::AttnK),
            &s.n1.0,
            &s.lk,
            &dk,
            gs.as_deref_mut(),
        )?;
        let d3 = cx.lin_bwd(a.v.as_ref(), key(Slot::AttnV), &s.n1.0, &s.lv, &dv, gs)?;
        dn1.iter_mut()
            .zip(d2.iter().zip(&d3))
            .for_each(|(a, (b, c))| *a += b + c);
        let din = cx.norm_bwd(&b.attn_norm, key(Slot::AttnNorm), &s.x, &s.n1.1, &dn1);
        dx.iter_mut().zip(&din).for_each(|(a, b)| *a += b);
        // This block's weight gradients are complete, and the backward reads it no more.
        if let (Some(sk), MRef::Mut(mm)) = (sink.as_deref_mut(), &mut mr) {
            sk.block(
                &mut mm.blocks_mut()[l],
                cx.wg.replace(Vec::new()).unwrap_or_default(),
            )?;
        }
    }
    // The embedding's rows (through its scale).
    if let Some(sc) = scale {
        dx.iter_mut().for_each(|v| *v *= sc);
    }
    if let (Some(sk), MRef::Mut(mm)) = (sink, &mut mr) {
        sk.embedding_rows(mm, ids, &dx[nv * c..])?;
    }
    if let (Some(p), Some(grads)) = (&ad.prompt, grads) {
        // The input's gradient at the virtual positions.
        let dv = &dx[..nv * c];
        let base = 2 * ad.mods.len();
        for (k, gk) in p.backward(&psaved, dv).into_iter().enumerate() {
            grads[base + k]
                .iter_mut()
                .zip(&gk)
                .for_each(|(a, b)| *a += b);
        }
    }
    Ok((loss, rows.len()))
}
