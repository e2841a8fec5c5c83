//! A decoder stack: embeddings -> blocks -> final norm -> output head, built from a
//! `ModelConfig` and a weight source. Weights are immutable; the KV cache is passed in.

use crate::arch::config_from_gguf;
use crate::block::Block;
use crate::kv::{KvCache, KvPrecision};
use crate::layers::{rope_tables, sized, trace_rows, Attention, FeedForward, Norm, StepCtx};
use crate::linear::Linear;
use crate::profile::scope;
use crate::spec::*;
use crate::weights::{Embedding, GgufWeights, Slot};
use anyhow::{bail, Result};
use candle_core::Tensor;
use ferrolm_format::GgufFile;
use std::sync::Arc;

pub struct Model {
    pub config: ModelConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    final_norm: Norm,
    head: Box<dyn Linear>,
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

impl Model {
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Model> {
        let config = config_from_gguf(&file.header)?;
        let w = GgufWeights::new(file);
        let norm = |slot: Slot, il: Option<usize>| -> Result<Norm> {
            Norm::new(config.norm, &w.vector(slot, il)?, None)
        };
        let opt_norm = |slot: Slot, il: usize| -> Result<Option<Norm>> {
            if w.has(slot, Some(il)) {
                Ok(Some(norm(slot, Some(il))?))
            } else {
                Ok(None)
            }
        };
        let mut blocks = Vec::with_capacity(config.n_layers());
        for (il, plan) in config.layers.iter().enumerate() {
            let l = Some(il);
            let sandwich = config.placement == NormPlacement::Sandwich;
            let gated = matches!(config.ffn, Ffn::Gated { .. });
            blocks.push(Block {
                index: il,
                plan: *plan,
                attn_norm: norm(Slot::AttnNorm, l)?,
                attn: Attention {
                    spec: config.attn,
                    q: w.linear(Slot::AttnQ, l)?,
                    k: w.linear(Slot::AttnK, l)?,
                    v: w.linear(Slot::AttnV, l)?,
                    o: w.linear(Slot::AttnOut, l)?,
                    q_norm: if config.attn.qk_norm {
                        Some(norm(Slot::AttnQNorm, l)?)
                    } else {
                        None
                    },
                    k_norm: if config.attn.qk_norm {
                        Some(norm(Slot::AttnKNorm, l)?)
                    } else {
                        None
                    },
                },
                post_attn_norm: if sandwich {
                    opt_norm(Slot::PostAttnNorm, il)?
                } else {
                    None
                },
                ffn_norm: norm(Slot::FfnNorm, l)?,
                ffn: FeedForward {
                    spec: config.ffn,
                    gate: if gated {
                        Some(w.linear(Slot::FfnGate, l)?)
                    } else {
                        None
                    },
                    up: w.linear(Slot::FfnUp, l)?,
                    down: w.linear(Slot::FfnDown, l)?,
                },
                post_ffn_norm: if sandwich {
                    opt_norm(Slot::PostFfnNorm, il)?
                } else {
                    None
                },
            });
        }
        let embed = w.embedding()?;
        if embed.dim() != config.hidden {
            bail!(
                "token embedding width {} does not match the model width {}",
                embed.dim(),
                config.hidden
            );
        }
        let final_norm = norm(Slot::OutputNorm, None)?;
        let head = w.output(config.tied_embeddings)?;
        Ok(Model {
            config,
            embed,
            blocks,
            final_norm,
            head,
        })
    }

    /// A fresh KV cache (f16, as llama.cpp's default) for one sequence of up to `n_ctx` positions.
    pub fn new_cache(&self, n_ctx: usize) -> KvCache {
        self.new_cache_with(n_ctx, KvPrecision::F16)
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
        if tokens.is_empty() {
            bail!("forward called with no tokens");
        }
        let pos = kv.reserve(tokens.len())?;
        let (t, c) = (tokens.len(), self.config.hidden);
        let mut x = std::mem::take(&mut kv.scratch.x);
        let res = (|| {
            let x = sized(&mut x, t * c);
            scope("embedding").run(|| self.embed.rows_into(tokens, x))?;
            if let Some(s) = self.config.embed_scale {
                x.iter_mut().for_each(|v| *v *= s);
            }
            let mut rope = Vec::new();
            for plan in &self.config.layers {
                if let Position::Rope(spec) = plan.position {
                    if !rope.iter().any(|(s, _)| *s == spec) {
                        rope.push((spec, rope_tables(&spec, &pos)));
                    }
                }
            }
            trace_rows("inp_scaled", None, x, &[t, c]);
            let ctx = StepCtx { pos: &pos, rope };
            for (block, layer_kv) in self.blocks.iter().zip(kv.layers.iter_mut()) {
                block.forward_rows(x, &ctx, layer_kv, &mut kv.scratch)?;
            }
            scope("norms").run(|| self.final_norm.rows(x, out));
            trace_rows("result_norm", None, out, &[t, c]);
            Ok(())
        })();
        kv.scratch.x = x;
        res
    }

    /// Logits `(T, V)` for hidden states `(T, C)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let t = hidden.dim(0)?;
        let h: Vec<f32> = hidden.flatten_all()?.to_vec1()?;
        let v = self.head.out_dim();
        let mut y = vec![0f32; t * v];
        scope("matmul: output head").run(|| self.head.forward_slice(&h, &mut y))?;
        trace_rows("result_output", None, &y, &[t, v]);
        if let Some(cap) = self.config.final_softcap {
            let inv = (1.0 / cap as f64) as f32;
            y.iter_mut().for_each(|x| *x = (*x * inv).tanh() * cap);
        }
        Ok(Tensor::from_vec(y, (t, v), &candle_core::Device::Cpu)?)
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
