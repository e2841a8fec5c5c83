//! `ferrolm convert` and `--quantize`: a Hugging Face directory into GGUF.
//!
//! The model is built once from the directory through a [`Recorder`], which logs every weight
//! the builder asks for; exactly those are written, under the GGUF slot names
//! (`blk.{L}.attn_q.weight`, ...), matrices in the requested type. Two layouts:
//! - LLaMA-shaped families llama.cpp knows (`llama`, `mistral` without a sliding window):
//!   llama.cpp's metadata and its Q/K row order (RoPE on adjacent pairs), so llama.cpp loads
//!   the file too;
//! - every other family: `general.architecture` = the `model_type` and the `config.json` in
//!   `ferrolm.hf_config`, which ferrolm's GGUF loader maps through the family's `arch/` file.
//!
//! A `tokenizer.json` travels as `ferrolm.tokenizer_json`.

use anyhow::{bail, Context, Result};
use ferrolm_format::hf::HfDir;
use ferrolm_format::quant::{can_quantize, quantize};
use ferrolm_format::{GgmlType, GgufWriter, MetaValue};
use ferrolm_model::spec::{ModelConfig, Position, RopeLayout, RopeScaling};
use ferrolm_model::weights::{gguf_key_name, HfWeights, Recorder, Slot, Use, WeightSource};
use ferrolm_model::Model;
use std::path::Path;

/// The types `convert --type` and `--quantize` accept.
pub fn parse_type(name: &str) -> Result<GgmlType> {
    let ty = GgmlType::all()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .filter(|&t| can_quantize(t));
    ty.ok_or_else(|| {
        let names: Vec<&str> = GgmlType::all()
            .filter(|&t| can_quantize(t))
            .map(|t| t.name())
            .collect();
        anyhow::anyhow!(
            "cannot convert to '{name}'; types: {}",
            names.join(", ").to_lowercase()
        )
    })
}

/// Whether llama.cpp's `llama` architecture describes this config exactly.
fn llama_compatible(cfg: &ModelConfig) -> bool {
    let rope_ok = cfg.layers.iter().all(|l| match &l.position {
        Position::Rope(r) => {
            r.layout == RopeLayout::Half
                && r.dims == cfg.attn.head_dim
                && matches!(r.scaling, RopeScaling::None | RopeScaling::Linear { .. })
                && Position::Rope(r.clone()) == cfg.layers[0].position
        }
        _ => false,
    });
    matches!(cfg.arch.as_str(), "llama" | "mistral")
        && rope_ok
        && !cfg.attn.qk_norm
        // llama.cpp's `llama` graph has no sliding window.
        && cfg.layers.iter().all(|l| l.window.is_none())
}

/// Rows of a q or k projection reordered from half-split RoPE pairs to adjacent pairs
/// (llama.cpp's layout for `llama`), per head of `d` rows; `inverse` reorders back.
pub fn permute_rows(w: &[f32], cols: usize, heads: usize, inverse: bool) -> Vec<f32> {
    let rows = w.len() / cols;
    let d = rows / heads;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (mut dst, mut src) = (h * d + 2 * i + j, h * d + j * (d / 2) + i);
                if inverse {
                    std::mem::swap(&mut dst, &mut src);
                }
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// A matrix in `ty` when its rows split into whole blocks, else f16 (as llama.cpp falls back).
fn matrix_tensor(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    w: &[f32],
) -> Result<(GgmlType, Vec<u8>, [usize; 2])> {
    let ty = if cols.is_multiple_of(ty.block_size()) {
        ty
    } else {
        GgmlType::F16
    };
    Ok((ty, quantize(ty, w)?, [cols, rows]))
}

/// The GGUF being written; a tensor asked for twice (a tied head is also the embedding) is
/// written once.
struct Out {
    w: GgufWriter,
    written: std::collections::HashSet<String>,
}

impl Out {
    fn put(&mut self, name: String, dims: &[usize], ty: GgmlType, data: Vec<u8>) -> Result<()> {
        if self.written.insert(name.clone()) {
            self.w.add_tensor(name, dims, ty, data)?;
        }
        Ok(())
    }
    /// An f32 tensor: 1-D unless `dims` (ggml order) says otherwise.
    fn f32(&mut self, name: String, dims: Option<[usize; 2]>, v: &[f32]) -> Result<()> {
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        match dims {
            Some(d) => self.put(name, &d, GgmlType::F32, data),
            None => self.put(name, &[v.len()], GgmlType::F32, data),
        }
    }
}

/// Converts a Hugging Face directory into a GGUF image with matrices in `ty`.
pub fn convert(dir_path: &Path, ty: GgmlType) -> Result<GgufWriter> {
    let dir = HfDir::open(dir_path)?;
    let config_json = dir.config.clone();
    let tokenizer = dir.tokenizer_path();
    let (cfg, table) = ferrolm_model::arch::config_from_hf(&config_json)?;
    let heads = (cfg.attn.n_heads, cfg.attn.n_kv_heads, cfg.attn.head_dim);
    let hf = HfWeights::new(dir, table, heads);
    let rec = Recorder::new(&hf);
    Model::build(cfg.clone(), &rec).with_context(|| format!("reading {}", dir_path.display()))?;
    let llama = llama_compatible(&cfg);
    let mut w = GgufWriter::new();
    let s = |x: &str| MetaValue::String(x.to_string());
    let u = |x: usize| MetaValue::U32(x as u32);
    let name = dir_path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    w.add_meta("general.name", s(&name));
    if llama {
        let a = &cfg.attn;
        w.add_meta("general.architecture", s("llama"));
        w.add_meta("llama.context_length", u(cfg.context_length));
        w.add_meta("llama.embedding_length", u(cfg.hidden));
        w.add_meta("llama.block_count", u(cfg.n_layers()));
        w.add_meta("llama.feed_forward_length", u(cfg.ffn_hidden));
        w.add_meta("llama.attention.head_count", u(a.n_heads));
        w.add_meta("llama.attention.head_count_kv", u(a.n_kv_heads));
        w.add_meta("llama.attention.key_length", u(a.head_dim));
        w.add_meta("llama.attention.value_length", u(a.head_dim));
        w.add_meta("llama.rope.dimension_count", u(a.head_dim));
        w.add_meta(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(cfg.norm.eps),
        );
        w.add_meta("llama.vocab_size", u(cfg.vocab_size));
        if let Position::Rope(r) = &cfg.layers[0].position {
            w.add_meta("llama.rope.freq_base", MetaValue::F32(r.theta));
            if let RopeScaling::Linear { factor } = r.scaling {
                w.add_meta("llama.rope.scale_linear", MetaValue::F32(factor));
            }
        }
    } else {
        w.add_meta("general.architecture", s(&cfg.arch));
        w.add_meta("ferrolm.hf_config", s(&config_json.to_string()));
    }
    if let Some(p) = tokenizer {
        {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            w.add_meta("ferrolm.tokenizer_json", s(&text));
            let sp = ferrolm_tokenize::HfSpecial::from_dir(dir_path);
            if let Some(b) = sp.bos_id {
                w.add_meta("tokenizer.ggml.bos_token_id", u(b as usize));
            }
            if let Some(&e) = sp.eos_ids.first() {
                w.add_meta("tokenizer.ggml.eos_token_id", u(e as usize));
            }
        }
    }
    // llama.cpp loads a model without a vocabulary when told so.
    w.add_meta("tokenizer.ggml.model", s("no_vocab"));
    let log = rec.log.borrow().clone();
    let mut out = Out {
        w,
        written: Default::default(),
    };
    for (k, usage) in log {
        match usage {
            Use::Vector => out.f32(gguf_key_name(k, "weight"), None, &hf.vector(k)?)?,
            Use::Raw => out.f32(gguf_key_name(k, "weight"), None, &hf.raw(k)?)?,
            Use::Bias => {
                if let Some(b) = hf.bias(k)? {
                    out.f32(gguf_key_name(k, "bias"), None, &b)?;
                }
            }
            Use::Linear | Use::Embedding => {
                let (rows, cols, mut m, mut bias) = hf.dense_parts(k)?;
                // Routers and the shared-expert gate stay f32 (as llama.cpp keeps them): a small
                // error there flips which experts run. Position and type tables stay f32 too.
                let router = matches!(k.slot, Slot::FfnRouter | Slot::ShExpGate);
                let matrix = matches!(usage, Use::Linear) || k.slot == Slot::TokenEmbd;
                if llama && matches!(k.slot, Slot::AttnQ | Slot::AttnK) {
                    let heads = if k.slot == Slot::AttnQ {
                        cfg.attn.n_heads
                    } else {
                        cfg.attn.n_kv_heads
                    };
                    m = permute_rows(&m, cols, heads, false);
                    bias = bias.map(|b| permute_rows(&b, 1, heads, false));
                }
                let name = gguf_key_name(k, "weight");
                if matrix && !router {
                    let (t, data, dims) = matrix_tensor(ty, rows, cols, &m)?;
                    out.put(name, &dims, t, data)?;
                } else {
                    out.f32(name, Some([cols, rows]), &m)?;
                }
                if let Some(b) = bias {
                    out.f32(gguf_key_name(k, "bias"), None, &b)?;
                }
            }
        }
    }
    let Out { w, written } = out;
    if written.is_empty() {
        bail!("nothing to convert in {}", dir_path.display());
    }
    Ok(w)
}
