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
    let act = c.act(&["hidden_act"], "gelu")?;
    let f = c.usize(&["intermediate_size"])?;
    let mut cfg = c.base(NormKind::Layer, 1e-5, Ffn::Plain { act }, f, false)?;
    let pct = c.partial_rotary(&["rotary_pct", "partial_rotary_factor"], 1.0)?;
    let dims = (cfg.attn.head_dim as f32 * pct) as usize;
    cfg.set_position(Position::Rope(c.rope(
        None,
        10_000.0,
        dims,
        RopeLayout::Half,
    )?));
    if c.bool_or("use_parallel_residual", true)? {
        cfg.residual = Residual::Parallel { shared_norm: false };
    }
    Ok((cfg, &TABLE))
}
