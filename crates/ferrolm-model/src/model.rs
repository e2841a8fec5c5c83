//! The model: its stacks (`stack.rs`: embeddings -> blocks -> final norm) and the output head,
//! built from a `ModelConfig` and a weight source. Weights are immutable; the KV cache is
//! passed in.

use crate::arch::config_from_gguf;
use crate::kv::LayerKv;
use crate::kv::{KvCache, KvPrecision};
use crate::layers::{trace_rows, Scratch};
use crate::linear::Linear;
use crate::profile::scope;
use crate::spec::*;
pub use crate::stack::Probe;
use crate::stack::{stack, Stack};
use crate::weights::{GgufWeights, Key, Slot, WeightSource};
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

    /// Widens every projection and the head to dense f32 (`F32Linear`); returns how many.
    /// A quantized base then trains (and runs) at full precision from its stored values.
    pub fn widen_to_f32(&mut self) -> Result<usize> {
        use crate::layers::FfnLayer;
        use crate::linear::F32Linear;
        let mut n = 0;
        let mut widen = |l: &mut Box<dyn Linear>| -> Result<()> {
            *l = Box::new(F32Linear::widen(l.as_ref())?);
            n += 1;
            Ok(())
        };
        for stack in std::iter::once(&mut self.main).chain(self.encoder.as_mut()) {
            for b in &mut stack.blocks {
                for l in [&mut b.attn.q, &mut b.attn.k, &mut b.attn.v, &mut b.attn.o] {
                    widen(l)?;
                }
                if let Some((_, c)) = &mut b.cross {
                    for l in [&mut c.q, &mut c.k, &mut c.v, &mut c.o] {
                        widen(l)?;
                    }
                }
                let ffns: Vec<&mut crate::layers::FeedForward> = match &mut b.ffn {
                    FfnLayer::Dense(f) => vec![f],
                    FfnLayer::Moe(m) => {
                        widen(&mut m.router)?;
                        let mut v: Vec<_> = m.experts.iter_mut().collect();
                        if let Some((f, gate)) = &mut m.shared {
                            widen(gate)?;
                            v.push(f);
                        }
                        v
                    }
                };
                for f in ffns {
                    if let Some(g) = &mut f.gate {
                        widen(g)?;
                    }
                    widen(&mut f.up)?;
                    widen(&mut f.down)?;
                }
            }
        }
        if let Some(h) = &mut self.head {
            widen(h)?;
        }
        Ok(n)
    }

    /// The decoder's blocks (read access, for training).
    pub fn blocks(&self) -> &[crate::block::Block] {
        &self.main.blocks
    }
    /// The decoder's blocks, mutable (full fine-tuning updates their weights in place).
    pub fn blocks_mut(&mut self) -> &mut [crate::block::Block] {
        &mut self.main.blocks
    }
    pub fn token_embedding_mut(&mut self) -> &mut crate::weights::Embedding {
        &mut self.main.embed.tok
    }
    pub fn final_norm_mut(&mut self) -> Option<&mut crate::layers::Norm> {
        self.main.final_norm.as_mut()
    }
    pub fn head_mut(&mut self) -> Option<&mut Box<dyn Linear>> {
        self.head.as_mut()
    }
    /// The head and the token embedding together (one tensor's two copies when tied).
    pub fn head_and_embedding_mut(
        &mut self,
    ) -> (Option<&mut Box<dyn Linear>>, &mut crate::weights::Embedding) {
        (self.head.as_mut(), &mut self.main.embed.tok)
    }
    /// The decoder's token embedding table and its scale.
    pub fn token_embedding(&self) -> (&crate::weights::Embedding, Option<f32>) {
        (&self.main.embed.tok, self.main.embed.scale)
    }
    /// Whether the decoder's input has more than scaled token rows (learned positions, token
    /// types, an embedding norm).
    pub fn has_extra_embeddings(&self) -> bool {
        let e = &self.main.embed;
        e.pos.is_some() || e.types.is_some() || e.norm.is_some()
    }
    pub fn final_norm(&self) -> Option<&crate::layers::Norm> {
        self.main.final_norm.as_ref()
    }
    pub fn head(&self) -> Option<&dyn Linear> {
        self.head.as_deref()
    }
    /// Whether the decoder stack is causal with no ALiBi or relative bias (what training covers).
    pub fn plain_causal(&self) -> bool {
        self.main.causal && self.main.alibi.is_empty() && self.main.relative.is_empty()
    }

    /// The projection a weight key names (attention, cross-attention, feed-forward and expert
    /// matrices), to wrap with an adapter; `None` for other keys or absent layers.
    pub fn linear_mut(&mut self, k: Key) -> Option<&mut Box<dyn Linear>> {
        use crate::layers::FfnLayer;
        let stack = if k.encoder {
            self.encoder.as_mut()?
        } else {
            &mut self.main
        };
        let b = stack.blocks.get_mut(k.layer?)?;
        let ffn = match (&mut b.ffn, k.expert) {
            (FfnLayer::Dense(f), None) => Some(f),
            (FfnLayer::Moe(m), Some(e)) => m.experts.get_mut(e),
            _ => None,
        };
        match k.slot {
            Slot::AttnQ => Some(&mut b.attn.q),
            Slot::AttnK => Some(&mut b.attn.k),
            Slot::AttnV => Some(&mut b.attn.v),
            Slot::AttnOut => Some(&mut b.attn.o),
            Slot::CrossQ => b.cross.as_mut().map(|c| &mut c.1.q),
            Slot::CrossK => b.cross.as_mut().map(|c| &mut c.1.k),
            Slot::CrossV => b.cross.as_mut().map(|c| &mut c.1.v),
            Slot::CrossOut => b.cross.as_mut().map(|c| &mut c.1.o),
            Slot::FfnGate | Slot::ExpGate => ffn?.gate.as_mut(),
            Slot::FfnUp | Slot::ExpUp => Some(&mut ffn?.up),
            Slot::FfnDown | Slot::ExpDown => Some(&mut ffn?.down),
            _ => None,
        }
    }

    /// Applies `f` to the RoPE spec of every layer (decoder and encoder): a scaling chosen at
    /// run time. Returns how many layers use RoPE.
    pub fn map_rope(&mut self, mut f: impl FnMut(&mut crate::spec::RopeSpec)) -> usize {
        let mut n = 0;
        let mut each = |p: &mut Position| {
            if let Position::Rope(r) = p {
                f(r);
                n += 1;
            }
        };
        for l in self
            .config
            .layers
            .iter_mut()
            .chain(&mut self.config.encoder_layers)
        {
            each(&mut l.position);
        }
        for s in std::iter::once(&mut self.main).chain(self.encoder.as_mut()) {
            for b in &mut s.blocks {
                each(&mut b.plan.position);
            }
        }
        n / 2
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

    /// Runs `rows (N, C)` as the next `N` inputs in place of token embeddings (a soft prompt's
    /// virtual tokens, as PEFT's prompt tuning puts them before the input), filling the cache.
    pub fn prefill_soft(&self, rows: &[f32], kv: &mut KvCache) -> Result<()> {
        let c = self.config.hidden;
        if rows.is_empty() || !rows.len().is_multiple_of(c) {
            bail!(
                "a soft prompt must hold whole rows of {c} values; it has {}",
                rows.len()
            );
        }
        if self.config.topology != Topology::Decoder || self.main.embed.pos.is_some() {
            bail!("soft prompts are for decoder-only models without learned positions");
        }
        let n = rows.len() / c;
        let mut probe = Probe {
            soft: Some(rows.to_vec()),
            ..Default::default()
        };
        let mut out = vec![0f32; n * c];
        self.hidden_probed(&vec![0; n], kv, &mut out, Some(&mut probe))
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
    /// logits of each sequence's last token, one row of the vocabulary's size per sequence, in
    /// order. With the 32-block formats every row gets the bits it would get alone
    /// (`ferrolm-kernels/tests/batch_invariance.rs`).
    pub fn forward_batch(
        &self,
        seqs: &mut [(&[u32], &mut KvCache)],
        scratch: &mut Scratch,
    ) -> Result<Vec<f32>> {
        use crate::linear::with_sequence_rows;
        let lens: Vec<usize> = seqs.iter().map(|s| s.0.len()).collect();
        let last = with_sequence_rows(lens, || self.forward_batch_hidden(seqs, scratch))?;
        // One row per sequence (its last).
        with_sequence_rows(vec![1; seqs.len()], || self.logits_rows(&last))
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
