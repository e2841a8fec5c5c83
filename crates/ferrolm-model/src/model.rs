//! A decoder stack: embeddings -> blocks -> final norm -> output head, built from a
//! `ModelConfig` and a weight source. Weights are immutable; the KV cache is passed in.

use crate::arch::config_from_gguf;
use crate::block::Block;
use crate::kv::LayerKv;
use crate::kv::{KvCache, KvPrecision};
use crate::layers::{
    rope_tables, sized, trace_rows, Attention, FeedForward, FfnLayer, Moe, Norm, Scratch, StepCtx,
};
use crate::linear::Linear;
use crate::profile::scope;
use crate::spec::*;
use crate::weights::{Embedding, GgufWeights, Key, Slot, WeightSource};
use anyhow::{bail, Result};
use candle_core::Tensor;
use ferrolm_format::GgufFile;
use std::sync::Arc;

pub struct Model {
    pub config: ModelConfig,
    /// The decoder (or, for an encoder-only model, the encoder).
    main: Stack,
    /// The encoder of an encoder-decoder model.
    encoder: Option<Stack>,
    /// The LM head (`None` for encoder-only models).
    head: Option<Box<dyn Linear>>,
    /// Added to every logit row (BART's `final_logits_bias`).
    logits_bias: Option<Vec<f32>>,
    /// The KV precision of `new_cache`: f16 for GGUF (llama.cpp's), f32 for HF (PyTorch's).
    pub kv_precision: KvPrecision,
}

/// What goes into the first block: token rows (scaled), learned positions, token types, a norm.
struct Embeddings {
    tok: Embedding,
    scale: Option<f32>,
    pos: Option<(Embedding, usize)>,
    types: Option<Embedding>,
    norm: Option<Norm>,
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
}

/// Embeddings, the blocks, and the final norm of one stack, with its attention biases.
struct Stack {
    embed: Embeddings,
    blocks: Vec<Block>,
    final_norm: Option<Norm>,
    causal: bool,
    alibi: Vec<f32>,
    relative: Vec<f32>,
    /// Multiplies the output (T5's tied-head scaling).
    out_scale: Option<f32>,
}

impl Stack {
    /// Runs `ids` at positions `pos` through the stack into `out (T, C)`.
    #[allow(clippy::too_many_arguments)]
    /// The rows of several sequences run together: `segments[i]` = (first row, rows) of
    /// sequence `i`, `kv[i]` its per-layer caches. Row-wise work and the products run over all
    /// rows at once; attention per sequence.
    fn run(
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
            scope("embedding").run(|| self.embed.rows_into(ids, types, pos, x))?;
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

/// `log softmax(row)[at]`, accumulated in f64.
pub fn log_softmax_at(row: &[f32], at: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[at] as f64 - max - sum.ln()
}

/// Largest number of tokens run through the blocks at once (llama.cpp's default `n_ubatch`).
pub const UBATCH: usize = 512;

/// Which positions' logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

fn norm(w: &dyn WeightSource, k: Key, spec: NormSpec) -> Result<Norm> {
    let n = Norm::from_vecs(spec, w.vector(k)?, w.bias(k)?);
    Ok(n)
}

/// A linear layer whose shape `(out, in)` must be `want` (`None`: either side unchecked).
fn linear(
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

fn opt_norm(w: &dyn WeightSource, k: Key, spec: NormSpec) -> Result<Option<Norm>> {
    if w.has(k) {
        Ok(Some(norm(w, k, spec)?))
    } else {
        Ok(None)
    }
}

/// A dense feed-forward from `(gate, up, down)` slots: width `c`, inner width `f` (`None`:
/// whatever the up projection has).
fn dense_ffn(
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

fn attention(
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

fn stack(
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

impl Model {
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Model> {
        // A file converted by `ferrolm convert` from a family llama.cpp lacks carries its
        // `config.json`; its tensors use the GGUF slot names.
        let config = match file.header.get_str("ferrolm.hf_config") {
            Some(json) => {
                let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
                    anyhow::anyhow!("GGUF key ferrolm.hf_config is not valid JSON: {e}")
                })?;
                crate::arch::config_from_hf(&v)?.0
            }
            None => config_from_gguf(&file.header)?,
        };
        let mut m = Model::build(config, &GgufWeights::new(file))?;
        m.kv_precision = KvPrecision::F16;
        Ok(m)
    }

    /// A Hugging Face directory (`config.json` + safetensors), by its `model_type`.
    pub fn from_hf(dir: ferrolm_format::hf::HfDir) -> Result<Model> {
        let (config, table) = crate::arch::config_from_hf(&dir.config)?;
        let a = &config.attn;
        let heads = (a.n_heads, a.n_kv_heads, a.head_dim);
        Model::build(config, &crate::weights::HfWeights::new(dir, table, heads))
    }

    /// The one builder: a validated config and a weight source.
    pub fn build(config: ModelConfig, w: &dyn WeightSource) -> Result<Model> {
        let (main, encoder) = match config.topology {
            Topology::Decoder => (stack(&config, w, false, true, false)?, None),
            Topology::Encoder => (stack(&config, w, false, false, false)?, None),
            Topology::EncoderDecoder => (
                stack(&config, w, false, true, true)?,
                Some(stack(&config, w, true, false, false)?),
            ),
        };
        let head = match config.topology {
            Topology::Encoder => None,
            _ => Some(w.linear(Key::global(if config.tied_embeddings {
                Slot::TokenEmbd
            } else {
                Slot::Output
            }))?),
        };
        let lb = Key::global(Slot::LogitsBias);
        let logits_bias = if w.has(lb) { Some(w.raw(lb)?) } else { None };
        if let Some(h) = &head {
            if h.out_dim() != config.vocab_size {
                bail!(
                    "the output head has {} rows but the vocabulary has {} tokens",
                    h.out_dim(),
                    config.vocab_size
                );
            }
        }
        Ok(Model {
            config,
            main,
            encoder,
            head,
            logits_bias,
            kv_precision: KvPrecision::F32,
        })
    }

    /// Final hidden states `(T, C)` of the encoder (encoder-only and encoder-decoder models),
    /// over all of `ids` at positions `0..T`, with optional token types.
    pub fn encode(&self, ids: &[u32], types: Option<&[u32]>) -> Result<Vec<f32>> {
        let st = self.encoder.as_ref().unwrap_or(&self.main);
        if st.causal {
            bail!(
                "this model ({}) has no encoder; use logits or generate",
                self.config.arch
            );
        }
        if ids.is_empty() {
            bail!("encode called with no tokens");
        }
        let n = st.blocks.len();
        let mut kv = KvCache::new(vec![None; n], ids.len(), KvPrecision::F32);
        let pos = kv.reserve(ids.len())?;
        let mut out = vec![0f32; ids.len() * self.config.hidden];
        let segs = [(0, ids.len())];
        let KvCache {
            layers, scratch, ..
        } = &mut kv;
        let mut layers = [layers.as_mut_slice()];
        st.run(
            ids,
            types,
            &pos,
            &segs,
            &mut layers,
            &[],
            scratch,
            &mut out,
            None,
        )?;
        Ok(out)
    }

    /// Prepares `kv` for decoding against encoder output `enc (S, C)`: every decoder layer's
    /// cross-attention keys and values, computed once.
    pub fn start_decoder(&self, enc: &[f32], kv: &mut KvCache) -> Result<()> {
        kv.clear();
        kv.cross = self
            .main
            .blocks
            .iter()
            .filter_map(|b| b.cross.as_ref())
            .map(|(_, a)| {
                a.cross_kv(
                    enc,
                    kv.layers.first().map_or(KvPrecision::F32, |l| l.precision),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(())
    }

    pub fn topology(&self) -> Topology {
        self.config.topology
    }

    /// A fresh KV cache for one sequence of up to `n_ctx` positions, in the model's default
    /// precision (f16 for GGUF, as llama.cpp; f32 for HF, as PyTorch).
    pub fn new_cache(&self, n_ctx: usize) -> KvCache {
        self.new_cache_with(n_ctx, self.kv_precision)
    }

    pub fn new_cache_with(&self, n_ctx: usize, precision: KvPrecision) -> KvCache {
        KvCache::new(
            self.config.layers.iter().map(|l| l.window),
            n_ctx,
            precision,
        )
    }

    /// Runs `tokens` at the cache's next positions; returns the final-normed hidden states `(T, C)`.
    pub fn forward_hidden(&self, tokens: &[u32], kv: &mut KvCache) -> Result<Tensor> {
        let c = self.config.hidden;
        let mut out = vec![0f32; tokens.len() * c];
        self.hidden_into(tokens, kv, &mut out)?;
        Ok(Tensor::from_vec(
            out,
            (tokens.len(), c),
            &candle_core::Device::Cpu,
        )?)
    }

    /// `forward_hidden` into `out (T, C)`, on the cache's reusable buffers.
    fn hidden_into(&self, tokens: &[u32], kv: &mut KvCache, out: &mut [f32]) -> Result<()> {
        self.hidden_probed(tokens, kv, out, None)
    }

    /// `forward_hidden` with a [`Probe`]: final-normed hidden rows `(T, C)` after all blocks or
    /// after `probe.exit` of them, and the tapped rows in `probe.tapped`.
    pub fn forward_probe(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        probe: &mut Probe,
    ) -> Result<Vec<f32>> {
        let mut out = vec![0f32; tokens.len() * self.config.hidden];
        self.hidden_probed(tokens, kv, &mut out, Some(probe))?;
        Ok(out)
    }

    fn hidden_probed(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        out: &mut [f32],
        probe: Option<&mut Probe>,
    ) -> Result<()> {
        if tokens.is_empty() {
            bail!("forward called with no tokens");
        }
        if self.config.topology == Topology::EncoderDecoder && kv.cross.is_empty() {
            bail!("an encoder-decoder model decodes after `start_decoder` with the encoder output");
        }
        let pos = kv.reserve(tokens.len())?;
        let KvCache {
            layers,
            cross,
            scratch,
            ..
        } = kv;
        let segs = [(0, tokens.len())];
        let mut layers = [layers.as_mut_slice()];
        self.main.run(
            tokens,
            None,
            &pos,
            &segs,
            &mut layers,
            cross,
            scratch,
            out,
            probe,
        )
    }

    /// One step for several sequences at once (a server's batch): `seqs[i].0` are the next
    /// tokens of the sequence whose cache is `seqs[i].1` (a prompt chunk, or one decode token).
    /// All rows share the products; attention reads each sequence's own cache. Returns the
    /// logits of each sequence's last token. With the 32-block formats every row gets the bits
    /// it would get alone (`ferrolm-kernels/tests/batch_invariance.rs`).
    pub fn forward_batch(
        &self,
        seqs: &mut [(&[u32], &mut KvCache)],
        scratch: &mut Scratch,
    ) -> Result<Vec<Vec<f32>>> {
        let last = self.forward_batch_hidden(seqs, scratch)?;
        let y = self.logits_rows(&last)?;
        let v = y.len() / seqs.len();
        Ok(y.chunks(v).map(|r| r.to_vec()).collect())
    }

    /// [`forward_batch`](Self::forward_batch) up to the final norm: each sequence's last
    /// hidden row, concatenated (`seqs.len() x C`).
    pub fn forward_batch_hidden(
        &self,
        seqs: &mut [(&[u32], &mut KvCache)],
        scratch: &mut Scratch,
    ) -> Result<Vec<f32>> {
        if self.config.topology != Topology::Decoder {
            bail!("batched steps are for decoder-only models");
        }
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut segs = Vec::with_capacity(seqs.len());
        for (toks, kv) in seqs.iter_mut() {
            if toks.is_empty() {
                bail!("a sequence in the batch has no tokens");
            }
            if kv.next_pos + toks.len() > kv.n_ctx {
                bail!("a sequence would pass its context of {} tokens", kv.n_ctx);
            }
        }
        for (toks, kv) in seqs.iter_mut() {
            segs.push((ids.len(), toks.len()));
            ids.extend_from_slice(toks);
            pos.extend(kv.reserve(toks.len())?);
        }
        let c = self.config.hidden;
        let mut hidden = vec![0f32; ids.len() * c];
        let mut layers: Vec<&mut [LayerKv]> = seqs
            .iter_mut()
            .map(|(_, kv)| kv.layers.as_mut_slice())
            .collect();
        self.main.run(
            &ids,
            None,
            &pos,
            &segs,
            &mut layers,
            &[],
            scratch,
            &mut hidden,
            None,
        )?;
        let mut last = Vec::with_capacity(segs.len() * c);
        for &(r0, n) in &segs {
            last.extend_from_slice(&hidden[(r0 + n - 1) * c..(r0 + n) * c]);
        }
        Ok(last)
    }

    /// The output head alone on hidden rows `(T, C)`: no bias, no softcap (DoLa's early-exit
    /// logits, as Hugging Face's `lm_head(hidden_states[i])`).
    pub fn head_rows(&self, h: &[f32]) -> Result<Vec<f32>> {
        let head = self
            .head
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this model ({}) has no LM head", self.config.arch))?;
        let t = h.len() / self.config.hidden;
        let mut y = vec![0f32; t * head.out_dim()];
        head.forward_slice(h, &mut y)?;
        Ok(y)
    }

    /// Number of blocks in the decoder (or the encoder of an encoder-only model).
    pub fn n_blocks(&self) -> usize {
        self.main.blocks.len()
    }

    /// Logits `(T, V)` for hidden states `(T, C)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let t = hidden.dim(0)?;
        let h: Vec<f32> = hidden.flatten_all()?.to_vec1()?;
        let y = self.logits_rows(&h)?;
        let v = y.len() / t.max(1);
        Ok(Tensor::from_vec(y, (t, v), &candle_core::Device::Cpu)?)
    }

    /// Logits rows `(T, V)` for hidden rows `(T, C)`: head, `final_logits_bias`, softcap.
    pub fn logits_rows(&self, h: &[f32]) -> Result<Vec<f32>> {
        let t = h.len() / self.config.hidden;
        let head = self.head.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "this model ({}) is an encoder and has no LM head; use embed",
                self.config.arch
            )
        })?;
        let v = head.out_dim();
        let mut y = vec![0f32; t * v];
        scope("matmul: output head").run(|| head.forward_slice(h, &mut y))?;
        if let Some(b) = &self.logits_bias {
            for row in y.chunks_exact_mut(v) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        trace_rows("result_output", None, &y, &[t, v]);
        if let Some(cap) = self.config.final_softcap {
            let inv = (1.0 / cap as f64) as f32;
            y.iter_mut().for_each(|x| *x = (*x * inv).tanh() * cap);
        }
        Ok(y)
    }

    /// Final hidden states `(T, C)` for `tokens`, run in micro-batches of at most `UBATCH`
    /// tokens (bounded memory, and the batch shapes llama.cpp uses, so its arithmetic and
    /// ours stay the same on long prompts).
    pub fn forward_hidden_chunked(&self, tokens: &[u32], kv: &mut KvCache) -> Result<Tensor> {
        if tokens.len() <= UBATCH {
            return self.forward_hidden(tokens, kv);
        }
        // Check the whole input against the context before running any of it.
        if kv.next_pos + tokens.len() > kv.n_ctx {
            kv.reserve(tokens.len())?;
        }
        let parts = tokens
            .chunks(UBATCH)
            .map(|c| self.forward_hidden(c, kv))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Runs `tokens` and returns logits `(1, V)` for the last one or `(T, V)` for all.
    pub fn forward(&self, tokens: &[u32], kv: &mut KvCache, which: Logits) -> Result<Tensor> {
        let h = self.forward_hidden_chunked(tokens, kv)?;
        let h = match which {
            Logits::Last => h.narrow(0, h.dim(0)? - 1, 1)?,
            Logits::All => h,
        };
        self.logits(&h)
    }

    /// `log p(token | prefix)` (in f64) for every token after the first, from all-position logits,
    /// computed in row chunks so a large vocabulary never needs `T x V` floats at once.
    pub fn score(&self, tokens: &[u32], kv: &mut KvCache) -> Result<Vec<f64>> {
        let h = self.forward_hidden_chunked(tokens, kv)?;
        let t = tokens.len();
        let mut out = Vec::with_capacity(t.saturating_sub(1));
        let chunk = 64;
        let mut start = 0;
        while start + 1 < t {
            let n = chunk.min(t - 1 - start);
            let logits = self.logits(&h.narrow(0, start, n)?)?;
            let rows: Vec<Vec<f32>> = logits.to_vec2()?;
            for (i, row) in rows.iter().enumerate() {
                out.push(log_softmax_at(row, tokens[start + i + 1] as usize));
            }
            start += n;
        }
        Ok(out)
    }
}
