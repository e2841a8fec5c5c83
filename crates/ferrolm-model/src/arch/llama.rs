//! LLaMA-family GGUF (`general.architecture = llama`: LLaMA 1-3, Mistral, SmolLM, ...):
//! pre-RMSNorm, SwiGLU, GQA, RoPE with adjacent pairs (the GGUF converter permutes Q/K).

use super::GgufMeta;
use crate::spec::*;
use anyhow::Result;

pub fn config(m: &GgufMeta) -> Result<ModelConfig> {
    let (hidden, n_heads, n_kv_heads, head_dim) = m.heads()?;
    let rope = RopeSpec {
        theta: m.opt_f32("rope.freq_base")?.unwrap_or(10_000.0),
        dims: m.opt_usize("rope.dimension_count")?.unwrap_or(head_dim),
        layout: RopeLayout::Interleaved,
        scaling: m.rope_scaling()?,
    };
    let window = m.opt_usize("attention.sliding_window")?.filter(|&w| w > 0);
    let n_layers = m.usize("block_count")?;
    Ok(ModelConfig {
        arch: "llama".into(),
        topology: Topology::Decoder,
        vocab_size: m.vocab_size()?,
        hidden,
        ffn_hidden: m.usize("feed_forward_length")?,
        attn: AttentionSpec::new(n_heads, n_kv_heads, head_dim),
        norm: NormSpec {
            kind: NormKind::Rms,
            eps: m
                .opt_f32("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
        },
        placement: NormPlacement::Pre,
        ffn: Ffn::Gated {
            act: Activation::Silu,
        },
        embed_scale: None,
        final_softcap: None,
        tied_embeddings: !m.has_tensor("output.weight"),
        layers: vec![LayerPlan::new(window, Position::Rope(rope)); n_layers],
        context_length: m.usize("context_length")?,
        ..Default::default()
    })
}

// ---- Hugging Face `llama` (and the base of the LLaMA-shaped families) ----

use super::HfConfig;
use crate::weights::{HfTable, Slot::*};

/// LLaMA-shaped names, shared by Mistral, Qwen 2/3, Mixtral and Qwen2-MoE (which add theirs).
pub const NAMES: &[(crate::weights::Slot, &str)] = &[
    (TokenEmbd, "model.embed_tokens"),
    (OutputNorm, "model.norm"),
    (Output, "lm_head"),
    (AttnNorm, "model.layers.{L}.input_layernorm"),
    (AttnQ, "model.layers.{L}.self_attn.q_proj"),
    (AttnK, "model.layers.{L}.self_attn.k_proj"),
    (AttnV, "model.layers.{L}.self_attn.v_proj"),
    (AttnOut, "model.layers.{L}.self_attn.o_proj"),
    (AttnQNorm, "model.layers.{L}.self_attn.q_norm"),
    (AttnKNorm, "model.layers.{L}.self_attn.k_norm"),
    (FfnNorm, "model.layers.{L}.post_attention_layernorm"),
    (FfnGate, "model.layers.{L}.mlp.gate_proj"),
    (FfnUp, "model.layers.{L}.mlp.up_proj"),
    (FfnDown, "model.layers.{L}.mlp.down_proj"),
];

pub static TABLE: HfTable = HfTable::new(NAMES);

/// A pre-RMSNorm SwiGLU decoder with half-split RoPE, windows from `window` and
/// `sliding(layer)` (or `layer_types`).
pub fn llama_like(
    c: &HfConfig,
    window: Option<usize>,
    sliding: impl Fn(usize) -> bool,
) -> Result<ModelConfig> {
    let act = c.act(&["hidden_act", "hidden_activation"], "silu")?;
    let f = c.usize(&["intermediate_size"])?;
    let mut cfg = c.base(NormKind::Rms, 1e-6, Ffn::Gated { act }, f, false)?;
    let rope = c.rope(None, 10_000.0, cfg.attn.head_dim, RopeLayout::Half)?;
    cfg.set_position(Position::Rope(rope));
    for (l, w) in cfg
        .layers
        .iter_mut()
        .zip(c.windows(c.n_layers()?, window, sliding)?)
    {
        l.window = w;
    }
    Ok(cfg)
}

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    Ok((llama_like(c, None, |_| false)?, &TABLE))
}
