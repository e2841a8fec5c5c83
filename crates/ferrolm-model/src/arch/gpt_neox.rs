//! GPT-NeoX / Pythia (HF `gpt_neox`): partial half-split RoPE (`rotary_pct`), per-head fused
//! q/k/v, and a parallel residual with two norms (or sequential when
//! `use_parallel_residual = false`).

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, QkvLayout, Slot::*};
use anyhow::Result;

static TABLE: HfTable = HfTable {
    qkv: QkvLayout::PerHead,
    ..HfTable::new(&[
        (TokenEmbd, "gpt_neox.embed_in"),
        (OutputNorm, "gpt_neox.final_layer_norm"),
        (Output, "embed_out"),
        (AttnNorm, "gpt_neox.layers.{L}.input_layernorm"),
        (AttnQkv, "gpt_neox.layers.{L}.attention.query_key_value"),
        (AttnOut, "gpt_neox.layers.{L}.attention.dense"),
        (FfnNorm, "gpt_neox.layers.{L}.post_attention_layernorm"),
        (FfnUp, "gpt_neox.layers.{L}.mlp.dense_h_to_4h"),
        (FfnDown, "gpt_neox.layers.{L}.mlp.dense_4h_to_h"),
    ])
};

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let (h, hkv, d) = c.heads()?;
    let pct = c.partial_rotary(&["rotary_pct", "partial_rotary_factor"], 1.0)?;
    let rope = c.rope(None, 10_000.0, (d as f32 * pct) as usize, RopeLayout::Half)?;
    Ok((
        ModelConfig {
            vocab_size: c.vocab()?,
            hidden: c.hidden()?,
            ffn_hidden: c.usize(&["intermediate_size"])?,
            attn: AttentionSpec::new(h, hkv, d),
            norm: NormSpec {
                kind: NormKind::Layer,
                eps: c.f32_or(&["layer_norm_eps"], 1e-5)?,
            },
            residual: if c.bool_or("use_parallel_residual", true)? {
                Residual::Parallel { shared_norm: false }
            } else {
                Residual::Sequential
            },
            ffn: Ffn::Plain {
                act: c.act(&["hidden_act"], "gelu")?,
            },
            tied_embeddings: c.bool_or("tie_word_embeddings", false)?,
            layers: vec![LayerPlan::new(None, Position::Rope(rope)); c.n_layers()?],
            context_length: c.context()?,
            ..Default::default()
        },
        &TABLE,
    ))
}
