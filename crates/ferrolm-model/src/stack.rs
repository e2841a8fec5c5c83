//! One stack of the transformer: embeddings -> blocks -> final norm, with its attention biases,
//! built from a `ModelConfig` and a weight source; and the `Probe` a forward pass may carry.

use crate::block::Block;
use crate::kv::LayerKv;
use crate::layers::{
    rope_tables, sized, trace_rows, Attention, FeedForward, FfnLayer, Moe, Norm, Scratch, StepCtx,
};
use crate::linear::Linear;
use crate::profile::scope;
use crate::spec::*;
use crate::weights::{Embedding, Key, Slot, WeightSource};
use anyhow::{bail, Result};

pub(crate) struct Embeddings {
    pub(crate) tok: Embedding,
    pub(crate) scale: Option<f32>,
    pub(crate) pos: Option<(Embedding, usize)>,
    pub(crate) types: Option<Embedding>,
    pub(crate) norm: Option<Norm>,
}

impl Embeddings {
    fn rows_into(
        &self,
        ids: &[u32],
        types: Option<&[u32]>,
        pos: &[usize],
        x: &mut [f32],
    ) -> Result<()> {
        self.tok.rows_into(ids, x)?;
        if let Some(s) = self.scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        if let Some((table, offset)) = &self.pos {
            let ids: Vec<u32> = pos.iter().map(|&p| (p + offset) as u32).collect();
            if let Some(&last) = ids.last() {
                if last as usize >= table.n_rows() {
                    bail!(
                        "position {} is beyond the {} positions this model learned; use a shorter input",
                        last as usize - offset,
                        table.n_rows() - offset
                    );
                }
            }
            table.add_rows(&ids, x)?;
        }
        if let Some(table) = &self.types {
            let zeros = vec![0u32; ids.len()];
            let t = types.unwrap_or(&zeros);
            if t.len() != ids.len() {
                bail!("{} token types for {} tokens", t.len(), ids.len());
            }
            table.add_rows(t, x)?;
        }
        if let Some(n) = &self.norm {
            n.rows_in_place(x);
        }
        Ok(())
    }
}

/// What a forward pass may do besides the full stack: stop after the first `exit` blocks
/// (self-speculative drafting; the final norm still applies), and keep the residual stream's
/// last row as it enters each block in `taps` (Hugging Face's `hidden_states[i]`: `0` is the
/// embedding output, `i` the output of block `i - 1`), for DoLa's early-layer logits.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub exit: Option<usize>,
    pub taps: Vec<usize>,
    /// Compute every row with the one-token (decode) arithmetic: a multi-token call then
    /// gives each row the bits token-by-token decoding gives it (with row-invariant products:
    /// the float and 32-block formats), so verifying a speculative draft in one pass never
    /// changes the output.
    pub as_decode: bool,
    /// After the pass: `tapped[j]` is the last row of `hidden_states[taps[j]]` (`C` values).
    pub tapped: Vec<Vec<f32>>,
    /// Input rows `(T, C)` used instead of the tokens' embedding rows (a soft prompt's
    /// virtual tokens); the stack's embedding scale still applies.
    pub soft: Option<Vec<f32>>,
}

/// Embeddings, the blocks, and the final norm of one stack, with its attention biases.
pub(crate) struct Stack {
    pub(crate) embed: Embeddings,
    pub(crate) blocks: Vec<Block>,
    pub(crate) final_norm: Option<Norm>,
    pub(crate) causal: bool,
    pub(crate) alibi: Vec<f32>,
    pub(crate) relative: Vec<f32>,
    /// Multiplies the output (T5's tied-head scaling).
    pub(crate) out_scale: Option<f32>,
}

impl Stack {
    /// Runs `ids` at positions `pos` through the stack into `out (T, C)`.
    #[allow(clippy::too_many_arguments)]
    /// The rows of several sequences run together: `segments[i]` = (first row, rows) of
    /// sequence `i`, `kv[i]` its per-layer caches. Row-wise work and the products run over all
    /// rows at once; attention per sequence.
    pub(crate) fn run(
        &self,
        ids: &[u32],
        types: Option<&[u32]>,
        pos: &[usize],
        segments: &[(usize, usize)],
        kv: &mut [&mut [LayerKv]],
        cross: &[LayerKv],
        scratch: &mut Scratch,
        out: &mut [f32],
        mut probe: Option<&mut Probe>,
    ) -> Result<()> {
        let c = self.embed.tok.dim();
        let t = ids.len();
        let mut x = std::mem::take(&mut scratch.x);
        let res = (|| {
            let x = sized(&mut x, t * c);
            match probe.as_ref().and_then(|p| p.soft.as_deref()) {
                Some(rows) if rows.len() == x.len() => {
                    x.copy_from_slice(rows);
                    if let Some(s) = self.embed.scale {
                        x.iter_mut().for_each(|v| *v *= s);
                    }
                }
                Some(rows) => bail!(
                    "soft prompt rows hold {} values, the call needs {}",
                    rows.len(),
                    x.len()
                ),
                None => scope("embedding").run(|| self.embed.rows_into(ids, types, pos, x))?,
            }
            let mut rope = Vec::new();
            for b in &self.blocks {
                if let Position::Rope(spec) = &b.plan.position {
                    if !rope.iter().any(|(s, _)| s == spec) {
                        // Per sequence: a dynamic scaling depends on each one's length.
                        let t: Vec<f32> = segments
                            .iter()
                            .flat_map(|&(r0, n)| rope_tables(spec, &pos[r0..r0 + n]))
                            .collect();
                        rope.push((spec.clone(), t));
                    }
                }
            }
            trace_rows("inp_scaled", None, x, &[t, c]);
            let ctx = StepCtx {
                pos,
                segments,
                rope,
                causal: self.causal,
                alibi: &self.alibi,
                relative: &self.relative,
                as_decode: probe.as_ref().is_some_and(|p| p.as_decode),
            };
            let n_blocks = probe
                .as_ref()
                .and_then(|p| p.exit)
                .map_or(self.blocks.len(), |e| e.min(self.blocks.len()));
            if let Some(p) = probe.as_deref_mut() {
                p.tapped = vec![Vec::new(); p.taps.len()];
            }
            for (i, block) in self.blocks.iter().enumerate().take(n_blocks) {
                if let Some(p) = probe.as_deref_mut() {
                    p.tap(i, &x[(t - 1) * c..t * c]);
                }
                let mut layer: Vec<&mut LayerKv> = kv.iter_mut().map(|s| &mut s[i]).collect();
                block.forward_rows(x, &ctx, &mut layer, cross.get(i), scratch)?;
            }
            if let Some(p) = probe {
                p.tap(n_blocks, &x[(t - 1) * c..t * c]);
            }
            match &self.final_norm {
                Some(n) => scope("norms").run(|| n.rows(x, out)),
                None => out.copy_from_slice(x),
            }
            if let Some(s) = self.out_scale {
                out.iter_mut().for_each(|v| *v *= s);
            }
            trace_rows("result_norm", None, out, &[t, c]);
            Ok(())
        })();
        scratch.x = x;
        res
    }
}

impl Probe {
    fn tap(&mut self, layer: usize, row: &[f32]) {
        for (j, &l) in self.taps.iter().enumerate() {
            if l == layer {
                self.tapped[j] = row.to_vec();
            }
        }
    }
}

pub(crate) fn norm(w: &dyn WeightSource, k: Key, spec: NormSpec) -> Result<Norm> {
    let n = Norm::from_vecs(spec, w.vector(k)?, w.bias(k)?);
    Ok(n)
}

/// A linear layer whose shape `(out, in)` must be `want` (`None`: either side unchecked).
pub(crate) fn linear(
    w: &dyn WeightSource,
    k: Key,
    want: (Option<usize>, Option<usize>),
) -> Result<Box<dyn Linear>> {
    let l = w.linear(k)?;
    let (o, i) = (l.out_dim(), l.in_dim());
    if want.0.is_some_and(|x| x != o) || want.1.is_some_and(|x| x != i) {
        let show = |x: Option<usize>| x.map_or("any".to_string(), |x| x.to_string());
        bail!(
            "tensor '{}' has shape ({o}, {i}) as (out, in), but the config needs ({}, {}); the config and the weights disagree",
            w.describe(k),
            show(want.0),
            show(want.1)
        );
    }
    Ok(l)
}

pub(crate) fn opt_norm(w: &dyn WeightSource, k: Key, spec: NormSpec) -> Result<Option<Norm>> {
    if w.has(k) {
        Ok(Some(norm(w, k, spec)?))
    } else {
        Ok(None)
    }
}

/// A dense feed-forward from `(gate, up, down)` slots: width `c`, inner width `f` (`None`:
/// whatever the up projection has).
pub(crate) fn dense_ffn(
    w: &dyn WeightSource,
    spec: Ffn,
    keys: [Key; 3],
    c: usize,
    f: Option<usize>,
) -> Result<FeedForward> {
    let up = linear(w, keys[1], (f, Some(c)))?;
    let f = up.out_dim();
    Ok(FeedForward {
        spec,
        gate: match spec {
            Ffn::Gated { .. } => Some(linear(w, keys[0], (Some(f), Some(c)))?),
            _ => None,
        },
        up,
        down: linear(w, keys[2], (Some(c), Some(f)))?,
    })
}

pub(crate) fn attention(
    w: &dyn WeightSource,
    spec: AttentionSpec,
    k: [Key; 4],
    norms: Option<[Key; 2]>,
    ns: NormSpec,
) -> Result<Attention> {
    let (h, hkv, d) = (spec.n_heads, spec.n_kv_heads, spec.head_dim);
    let [q, kk, v, o] = [
        w.linear(k[0])?,
        w.linear(k[1])?,
        w.linear(k[2])?,
        w.linear(k[3])?,
    ];
    for (name, l, want) in [("q", &q, h * d), ("k", &kk, hkv * d), ("v", &v, hkv * d)] {
        if l.out_dim() != want {
            bail!("the attention {name} projection of layer {:?} has {} outputs; {} heads of {d} need {want}", k[0].layer.unwrap_or(0), l.out_dim(), if name == "q" { h } else { hkv });
        }
    }
    Ok(Attention {
        spec,
        q,
        k: kk,
        v,
        o,
        q_norm: norms.map(|n| norm(w, n[0], ns)).transpose()?,
        k_norm: norms.map(|n| norm(w, n[1], ns)).transpose()?,
    })
}

pub(crate) fn stack(
    cfg: &ModelConfig,
    w: &dyn WeightSource,
    encoder: bool,
    causal: bool,
    cross: bool,
) -> Result<Stack> {
    let plans = if encoder && cfg.topology == Topology::EncoderDecoder {
        &cfg.encoder_layers
    } else {
        &cfg.layers
    };
    let g = |slot| Key::global(slot).enc(encoder);
    let ns = cfg.norm;
    let c = cfg.hidden;
    let mut blocks = Vec::with_capacity(plans.len());
    for (il, plan) in plans.iter().enumerate() {
        let l = |slot| Key::layer(slot, il).enc(encoder);
        let sandwich = cfg.placement == NormPlacement::Sandwich;
        let gated = |act| Ffn::Gated { act };
        let dense_keys = [l(Slot::FfnGate), l(Slot::FfnUp), l(Slot::FfnDown)];
        let ffn = match (cfg.ffn, plan.moe) {
            (Ffn::Moe(m), true) => {
                let experts = (0..m.experts)
                    .map(|e| {
                        let k = [Slot::ExpGate, Slot::ExpUp, Slot::ExpDown].map(|s| l(s).expert(e));
                        dense_ffn(w, gated(m.act), k, c, None)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let shared = if m.shared {
                    let k = [l(Slot::ShGate), l(Slot::ShUp), l(Slot::ShDown)];
                    let gate = linear(w, l(Slot::ShExpGate), (Some(1), Some(c)))?;
                    Some((dense_ffn(w, gated(m.act), k, c, None)?, gate))
                } else {
                    None
                };
                let router = linear(w, l(Slot::FfnRouter), (Some(m.experts), Some(c)))?;
                FfnLayer::Moe(Moe {
                    spec: m,
                    router,
                    experts,
                    shared,
                })
            }
            (Ffn::Moe(m), false) => FfnLayer::Dense(dense_ffn(
                w,
                gated(m.act),
                dense_keys,
                c,
                Some(cfg.ffn_hidden),
            )?),
            (spec, _) => FfnLayer::Dense(dense_ffn(w, spec, dense_keys, c, Some(cfg.ffn_hidden))?),
        };
        let qk = cfg
            .attn
            .qk_norm
            .then(|| [l(Slot::AttnQNorm), l(Slot::AttnKNorm)]);
        blocks.push(Block {
            index: il,
            plan: plan.clone(),
            placement: cfg.placement,
            residual: cfg.residual,
            attn_norm: norm(w, l(Slot::AttnNorm), ns)?,
            attn: attention(
                w,
                cfg.attn,
                [
                    l(Slot::AttnQ),
                    l(Slot::AttnK),
                    l(Slot::AttnV),
                    l(Slot::AttnOut),
                ],
                qk,
                ns,
            )?,
            post_attn_norm: if sandwich {
                opt_norm(w, l(Slot::PostAttnNorm), ns)?
            } else {
                None
            },
            cross: if cross {
                Some((
                    norm(w, l(Slot::CrossNorm), ns)?,
                    attention(
                        w,
                        cfg.attn,
                        [
                            l(Slot::CrossQ),
                            l(Slot::CrossK),
                            l(Slot::CrossV),
                            l(Slot::CrossOut),
                        ],
                        None,
                        ns,
                    )?,
                ))
            } else {
                None
            },
            ffn_norm: match cfg.residual {
                Residual::Parallel { shared_norm: true } => None,
                _ => Some(norm(w, l(Slot::FfnNorm), ns)?),
            },
            ffn,
            post_ffn_norm: if sandwich {
                opt_norm(w, l(Slot::PostFfnNorm), ns)?
            } else {
                None
            },
        });
    }
    let tok = w.embedding(g(Slot::TokenEmbd))?;
    if tok.dim() != cfg.hidden {
        bail!(
            "token embedding width {} does not match the model width {}",
            tok.dim(),
            cfg.hidden
        );
    }
    let embed = Embeddings {
        tok,
        scale: cfg.embed_scale,
        pos: match cfg.embed.learned_pos {
            Some(off) => Some((w.embedding(g(Slot::PosEmbd))?, off)),
            None => None,
        },
        types: if cfg.embed.token_types {
            Some(w.embedding(g(Slot::TypeEmbd))?)
        } else {
            None
        },
        norm: if cfg.embed.norm {
            Some(norm(w, g(Slot::EmbedNorm), ns)?)
        } else {
            None
        },
    };
    let alibi = match plans.iter().find_map(|p| match p.position {
        Position::Alibi(k) => Some(k),
        _ => None,
    }) {
        Some(kind) => {
            let s = crate::layers::alibi_slopes(kind, cfg.attn.n_heads);
            match kind {
                AlibiSlopes::BloomScaled => s.iter().map(|x| x * cfg.attn.scale).collect(),
                _ => s,
            }
        }
        None => Vec::new(),
    };
    let relative = match plans.iter().find_map(|p| match p.position {
        Position::Relative(r) => Some(r),
        _ => None,
    }) {
        Some(r) => {
            let data = w.raw(Key::layer(Slot::RelBias, 0).enc(encoder))?;
            if data.len() != r.buckets * cfg.attn.n_heads {
                bail!(
                    "relative position bias has {} values; {} buckets x {} heads expected",
                    data.len(),
                    r.buckets,
                    cfg.attn.n_heads
                );
            }
            data
        }
        None => Vec::new(),
    };
    let is_output_stack = !encoder || cfg.topology == Topology::Encoder;
    Ok(Stack {
        embed,
        blocks,
        final_norm: if cfg.final_norm {
            Some(norm(w, g(Slot::OutputNorm), ns)?)
        } else {
            None
        },
        causal,
        alibi,
        relative,
        out_scale: if is_output_stack {
            cfg.head_scale
        } else {
            None
        },
    })
}
