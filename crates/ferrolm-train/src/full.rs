//! Full fine-tuning: every weight of the model trained in f32 (projections, norms, the token
//! embedding and the head; a tied head stays equal to the embedding). Two optimizers:
//!
//! - AdamW, the baseline: the whole gradient is accumulated over the step, then each tensor is
//!   updated with its two moments (weights + gradient + 2 moments: four copies of the model);
//! - LOMO (Lv et al., "Full Parameter Fine-tuning for Large Language Models with Limited
//!   Resources"): SGD fused into the backward pass. Each block's gradients are applied as soon
//!   as its backward is done and then dropped, so at most one block's gradient (plus the head's)
//!   is ever held.

use crate::data::Example;
use crate::net::{run_full, Adapter, TensorGrads, TensorId, WeightSink};
use crate::optim::{schedule, AdamHyper};
use crate::train::{eval_loss, Summary, TrainConfig};
use anyhow::{anyhow, bail, Result};
use ferrolm_model::block::Block;
use ferrolm_model::layers::{FfnLayer, Norm};
use ferrolm_model::weights::{Key, Slot};
use ferrolm_model::Model;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Optimizer {
    AdamW,
    Lomo,
}

impl std::str::FromStr for Optimizer {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adamw" => Ok(Optimizer::AdamW),
            "lomo" => Ok(Optimizer::Lomo),
            o => bail!("--optimizer '{o}': expected adamw or lomo"),
        }
    }
}

fn norm_part(n: &mut Norm, bias: bool) -> Option<&mut [f32]> {
    let (w, b) = n.params_mut();
    if bias {
        b
    } else {
        Some(w)
    }
}

const WIDEN: &str =
    "is not dense f32; full fine-tuning widens the model first (Model::widen_to_f32)";

/// The tensor `key` names (its bias with `bias`) in block `b`, mutable.
pub fn block_tensor_mut(b: &mut Block, key: Key, bias: bool) -> Result<&mut [f32]> {
    let slot = key.slot;
    let missing = || anyhow!("layer {} has no {key:?} tensor", b.index);
    let index = b.index;
    let norm = match slot {
        Slot::AttnNorm => Some(&mut b.attn_norm),
        Slot::AttnQNorm => b.attn.q_norm.as_mut(),
        Slot::AttnKNorm => b.attn.k_norm.as_mut(),
        Slot::PostAttnNorm => b.post_attn_norm.as_mut(),
        Slot::FfnNorm => b.ffn_norm.as_mut(),
        Slot::PostFfnNorm => b.post_ffn_norm.as_mut(),
        _ => None,
    };
    if let Some(n) = norm {
        return norm_part(n, bias).ok_or_else(missing);
    }
    let l = match (slot, &mut b.ffn) {
        (Slot::AttnQ, _) => &mut b.attn.q,
        (Slot::AttnK, _) => &mut b.attn.k,
        (Slot::AttnV, _) => &mut b.attn.v,
        (Slot::AttnOut, _) => &mut b.attn.o,
        (Slot::FfnGate, FfnLayer::Dense(f)) => f.gate.as_mut().ok_or_else(missing)?,
        (Slot::FfnUp, FfnLayer::Dense(f)) => &mut f.up,
        (Slot::FfnDown, FfnLayer::Dense(f)) => &mut f.down,
        (Slot::FfnRouter, FfnLayer::Moe(m)) => &mut m.router,
        (Slot::ExpGate | Slot::ExpUp | Slot::ExpDown, FfnLayer::Moe(m)) => {
            let f = key
                .expert
                .and_then(|e| m.experts.get_mut(e))
                .ok_or_else(missing)?;
            match slot {
                Slot::ExpGate => f.gate.as_mut().ok_or_else(missing)?,
                Slot::ExpUp => &mut f.up,
                _ => &mut f.down,
            }
        }
        (Slot::ShGate | Slot::ShUp | Slot::ShDown | Slot::ShExpGate, FfnLayer::Moe(m)) => {
            let (f, gate) = m.shared.as_mut().ok_or_else(missing)?;
            match slot {
                Slot::ShGate => f.gate.as_mut().ok_or_else(missing)?,
                Slot::ShUp => &mut f.up,
                Slot::ShDown => &mut f.down,
                _ => gate,
            }
        }
        _ => return Err(missing()),
    };
    let (w, bb) = l
        .params_mut()
        .ok_or_else(|| anyhow!("layer {index} {slot:?} {WIDEN}"))?;
    if bias {
        bb.ok_or_else(missing)
    } else {
        Ok(w)
    }
}

/// The head's weight and, for a tied head, the embedding: the copies one tensor has.
fn head_copies(m: &mut Model, tied: bool) -> Result<Vec<&mut [f32]>> {
    let mut out = Vec::new();
    let (head, emb) = m.head_and_embedding_mut();
    let head = head.ok_or_else(|| anyhow!("the model has no LM head"))?;
    let (w, _) = head
        .params_mut()
        .ok_or_else(|| anyhow!("the head {WIDEN}"))?;
    out.push(w);
    if tied {
        out.push(emb.dense_mut()?);
    }
    Ok(out)
}

/// A tensor outside the blocks (final norm, head, embedding), mutable copies of it.
fn global_copies(m: &mut Model, id: TensorId, tied: bool) -> Result<Vec<&mut [f32]>> {
    match id.0.slot {
        Slot::OutputNorm => {
            let n = m
                .final_norm_mut()
                .ok_or_else(|| anyhow!("the model has no final norm"))?;
            Ok(norm_part(n, id.1).into_iter().collect())
        }
        Slot::Output | Slot::TokenEmbd if tied => head_copies(m, true),
        Slot::Output => head_copies(m, false),
        Slot::TokenEmbd => Ok(vec![m.token_embedding_mut().dense_mut()?]),
        s => bail!("no global tensor {s:?}"),
    }
}

/// Every copy of tensor `id` in `m`, mutable: one, or two for a tied head and embedding.
pub fn tensor_mut(m: &mut Model, id: TensorId) -> Result<Vec<&mut [f32]>> {
    let tied = m.config.tied_embeddings;
    match id.0.layer {
        Some(l) => {
            let b = m
                .blocks_mut()
                .get_mut(l)
                .ok_or_else(|| anyhow!("no layer {l}"))?;
            Ok(vec![block_tensor_mut(b, id.0, id.1)?])
        }
        None => global_copies(m, id, tied),
    }
}

/// SGD: `w -= lr · g`.
fn sgd(w: &mut [f32], g: &[f32], lr: f32) {
    w.iter_mut().zip(g).for_each(|(w, g)| *w -= lr * g);
}

/// LOMO's sink: each gradient applied by SGD the moment it arrives, then dropped.
pub struct Lomo {
    pub lr: f32,
    pub tied: bool,
    /// The largest gradient held at once, in floats (for the memory report).
    pub peak_grad: usize,
}

impl Lomo {
    fn seen(&mut self, g: &TensorGrads) {
        self.peak_grad = self.peak_grad.max(g.iter().map(|(_, v)| v.len()).sum());
    }
}

impl WeightSink for Lomo {
    fn block(&mut self, b: &mut Block, g: TensorGrads) -> Result<()> {
        self.seen(&g);
        for ((k, bias), gv) in &g {
            sgd(block_tensor_mut(b, *k, *bias)?, gv, self.lr);
        }
        Ok(())
    }
    fn global(&mut self, m: &mut Model, g: TensorGrads) -> Result<()> {
        self.seen(&g);
        for (id, gv) in &g {
            for w in global_copies(m, *id, self.tied)? {
                sgd(w, gv, self.lr);
            }
        }
        Ok(())
    }
    fn embedding_rows(&mut self, m: &mut Model, ids: &[u32], g: &[f32]) -> Result<()> {
        let c = g.len() / ids.len().max(1);
        for w in global_copies(m, (Key::global(Slot::TokenEmbd), false), self.tied)? {
            for (&id, gr) in ids.iter().zip(g.chunks_exact(c)) {
                let id = id as usize;
                sgd(&mut w[id * c..(id + 1) * c], gr, self.lr);
            }
        }
        Ok(())
    }
}

/// The AdamW baseline's sink: every gradient accumulated (the whole gradient held) until
/// [`FullAdam::step`].
pub struct FullAdam {
    pub h: AdamHyper,
    pub tied: bool,
    grads: HashMap<TensorId, Vec<f32>>,
    moments: HashMap<TensorId, (Vec<f32>, Vec<f32>)>,
    t: u64,
}

impl FullAdam {
    pub fn new(weight_decay: f32, tied: bool) -> FullAdam {
        FullAdam {
            h: AdamHyper::new(weight_decay),
            tied,
            grads: HashMap::new(),
            moments: HashMap::new(),
            t: 0,
        }
    }

    /// The gradient accumulated since the last step.
    pub fn grads(&self) -> &HashMap<TensorId, Vec<f32>> {
        &self.grads
    }

    fn add(&mut self, id: TensorId, g: &[f32]) {
        let acc = self.grads.entry(id).or_insert_with(|| vec![0.0; g.len()]);
        acc.iter_mut().zip(g).for_each(|(a, b)| *a += b);
    }

    /// Clips the accumulated gradient to global norm `clip`, updates every tensor, and zeroes
    /// the gradient (kept allocated, as PyTorch's `zero_grad(set_to_none=False)`).
    pub fn step(&mut self, m: &mut Model, lr: f32, clip: f32) -> Result<()> {
        self.t += 1;
        let norm = self
            .grads
            .values()
            .flat_map(|v| v.iter())
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt() as f32;
        let s = if norm > clip && norm > 0.0 {
            clip / norm
        } else {
            1.0
        };
        let mut ids: Vec<TensorId> = self.grads.keys().copied().collect();
        ids.sort_by_key(|(k, b)| (k.layer, k.slot as usize, k.expert, *b));
        for id in ids {
            let g = self.grads.get_mut(&id).unwrap();
            if s != 1.0 {
                g.iter_mut().for_each(|x| *x *= s);
            }
            let (mo, ve) = self
                .moments
                .entry(id)
                .or_insert_with(|| (vec![0.0; g.len()], vec![0.0; g.len()]));
            let mut copies = tensor_mut(m, id)?;
            let (first, rest) = copies.split_first_mut().unwrap();
            self.h.update(self.t, first, g, mo, ve, lr);
            for c in rest {
                c.copy_from_slice(first);
            }
            g.iter_mut().for_each(|x| *x = 0.0);
        }
        Ok(())
    }
}

impl WeightSink for FullAdam {
    fn block(&mut self, _: &mut Block, g: TensorGrads) -> Result<()> {
        for (id, gv) in &g {
            self.add(*id, gv);
        }
        Ok(())
    }
    fn global(&mut self, _: &mut Model, g: TensorGrads) -> Result<()> {
        for ((k, bias), gv) in &g {
            // A tied head's gradient is the embedding's.
            let k = if self.tied && k.slot == Slot::Output {
                Key::global(Slot::TokenEmbd)
            } else {
                *k
            };
            self.add((k, *bias), gv);
        }
        Ok(())
    }
    fn embedding_rows(&mut self, m: &mut Model, ids: &[u32], g: &[f32]) -> Result<()> {
        let (emb, _) = m.token_embedding();
        let (rows, c) = (emb.n_rows(), emb.dim());
        let acc = self
            .grads
            .entry((Key::global(Slot::TokenEmbd), false))
            .or_insert_with(|| vec![0.0; rows * c]);
        for (&id, gr) in ids.iter().zip(g.chunks_exact(c)) {
            let id = id as usize;
            acc[id * c..(id + 1) * c]
                .iter_mut()
                .zip(gr)
                .for_each(|(a, b)| *a += b);
        }
        Ok(())
    }
}

/// The model's trainable parameters (a tied head counted once).
pub fn n_params(m: &Model) -> usize {
    let blocks: usize = m
        .blocks()
        .iter()
        .map(|b| {
            let lin = |l: &dyn ferrolm_model::linear::Linear| l.in_dim() * l.out_dim();
            let norm = |n: &Norm| n.weight().len() + n.bias().map_or(0, |b| b.len());
            let a = &b.attn;
            let mut n =
                lin(a.q.as_ref()) + lin(a.k.as_ref()) + lin(a.v.as_ref()) + lin(a.o.as_ref());
            n += norm(&b.attn_norm);
            for x in [
                &a.q_norm,
                &a.k_norm,
                &b.post_attn_norm,
                &b.ffn_norm,
                &b.post_ffn_norm,
            ]
            .into_iter()
            .flatten()
            {
                n += norm(x);
            }
            let dense = |f: &ferrolm_model::layers::FeedForward| {
                f.gate.as_deref().map_or(0, lin) + lin(f.up.as_ref()) + lin(f.down.as_ref())
            };
            n += match &b.ffn {
                FfnLayer::Dense(f) => dense(f),
                FfnLayer::Moe(m) => {
                    lin(m.router.as_ref())
                        + m.experts.iter().map(dense).sum::<usize>()
                        + m.shared
                            .as_ref()
                            .map_or(0, |(f, g)| dense(f) + lin(g.as_ref()))
                }
            };
            n
        })
        .sum();
    let (emb, _) = m.token_embedding();
    let head = match (m.config.tied_embeddings, m.head()) {
        (false, Some(h)) => h.in_dim() * h.out_dim(),
        _ => 0,
    };
    blocks + emb.n_rows() * emb.dim() + head + m.final_norm().map_or(0, |n| n.weight().len())
}

/// Full fine-tuning of `m` (widened to f32 by the caller) on `train`. LOMO runs one sequence
/// per update (its gradient is applied inside the backward pass); AdamW accumulates
/// `batch x grad_accum` sequences per step and clips their gradient's global norm.
pub fn train_full(
    m: &mut Model,
    train: &[Example],
    eval: &[Example],
    cfg: &TrainConfig,
    opt: Optimizer,
    mut on_step: impl FnMut(usize, usize, f64, f32, f64),
) -> Result<Summary> {
    let (per_step, total, warmup) = crate::train::plan(cfg, train.len())?;
    if opt == Optimizer::Lomo && cfg.batch * cfg.grad_accum != 1 {
        bail!("LOMO updates each weight inside the backward pass of one sequence, so it takes --batch 1 --grad-accum 1 (a step is one sequence)");
    }
    if opt == Optimizer::Lomo && cfg.weight_decay != 0.0 {
        bail!("LOMO is plain SGD: --weight-decay is not applied; leave it at 0");
    }
    if cfg.resume.is_some() {
        bail!("--resume covers adapters; full fine-tuning has no checkpoints yet");
    }
    let none = Adapter::none(m)?;
    let tied = m.config.tied_embeddings;
    let mut s = Summary {
        train_examples: train.len(),
        eval_examples: eval.len(),
        params: n_params(m),
        eval_before: eval_loss(m, &none, eval)?,
        ..Default::default()
    };
    let mut adam = FullAdam::new(cfg.weight_decay, tied);
    let mut lomo = Lomo {
        lr: 0.0,
        tied,
        peak_grad: 0,
    };
    let mut batches = crate::train::Batches::new(cfg.seed, train.len());
    let start = Instant::now();
    for step in 0..total {
        let batch = batches.next(per_step);
        let denom: usize = batch.iter().map(|&i| train[i].n_targets()).sum();
        let lr = schedule(cfg.lr, step, total, warmup);
        lomo.lr = lr;
        let mut loss = 0f64;
        for &i in &batch {
            let e = &train[i];
            let sink: &mut dyn WeightSink = match opt {
                Optimizer::AdamW => &mut adam,
                Optimizer::Lomo => &mut lomo,
            };
            let (l, _) = run_full(m, &e.ids, &e.targets, denom.max(1) as f32, sink)?;
            loss += l;
            s.tokens += e.ids.len();
        }
        if opt == Optimizer::AdamW {
            adam.step(m, lr, cfg.clip)?;
        }
        s.record((step, total), (loss, denom), lr, start, &mut on_step);
    }
    s.seconds = start.elapsed().as_secs_f64();
    s.eval_after = eval_loss(m, &none, eval)?;
    Ok(s)
}

/// The tensors full fine-tuning trains, as GGUF names them: `name -> (key, bias)`.
fn gguf_names(n_layers: usize) -> HashMap<String, TensorId> {
    use ferrolm_model::weights::gguf_key_name;
    const LAYER: [Slot; 13] = [
        Slot::AttnNorm,
        Slot::AttnQ,
        Slot::AttnK,
        Slot::AttnV,
        Slot::AttnOut,
        Slot::AttnQNorm,
        Slot::AttnKNorm,
        Slot::PostAttnNorm,
        Slot::FfnNorm,
        Slot::FfnGate,
        Slot::FfnUp,
        Slot::FfnDown,
        Slot::PostFfnNorm,
    ];
    let keys = (0..n_layers)
        .flat_map(|l| LAYER.iter().map(move |&s| Key::layer(s, l)))
        .chain([Slot::TokenEmbd, Slot::OutputNorm, Slot::Output].map(Key::global));
    keys.flat_map(|k| {
        [
            (gguf_key_name(k, "weight"), (k, false)),
            (gguf_key_name(k, "bias"), (k, true)),
        ]
    })
    .collect()
}

/// The fine-tuned model as GGUF: `base`'s metadata and tensors, every trained tensor replaced
/// by its f32 values (nothing lost to re-quantizing).
pub fn to_gguf(
    m: &mut Model,
    base: &ferrolm_format::GgufFile,
) -> Result<ferrolm_format::GgufWriter> {
    use ferrolm_format::{GgmlType, GgufWriter};
    if m.blocks().iter().any(|b| matches!(b.ffn, FfnLayer::Moe(_))) {
        bail!("writing a fine-tuned mixture of experts as GGUF (its stacked expert tensors) is not built yet");
    }
    let h = &base.header;
    let names = gguf_names(m.blocks().len());
    let mut w = GgufWriter::new();
    w.set_version(h.version);
    for (k, v) in &h.metadata {
        w.add_meta(k.clone(), v.clone());
    }
    let mut written = 0;
    for t in &h.tensors {
        match names.get(&t.name) {
            Some(&id) => {
                let copies = tensor_mut(m, id)?;
                let v: &[f32] = copies[0];
                if v.len() != t.dims.iter().product::<usize>() {
                    bail!(
                        "tensor '{}' has {} values in the model, {:?} in the file",
                        t.name,
                        v.len(),
                        t.dims
                    );
                }
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.add_tensor(t.name.clone(), &t.dims, GgmlType::F32, bytes)?;
                written += 1;
            }
            None if t.name.contains("attn_qkv") => bail!(
                "'{}' is a fused q/k/v matrix; writing fine-tuned fused matrices is not built yet",
                t.name
            ),
            None => {
                w.add_tensor(t.name.clone(), &t.dims, t.ty, base.tensor_bytes(t).to_vec())?;
            }
        }
    }
    if written == 0 {
        bail!("no tensor of the base file matched a trained tensor");
    }
    Ok(w)
}
