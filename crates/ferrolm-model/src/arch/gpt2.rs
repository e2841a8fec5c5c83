//! GPT-2 (HF `gpt2`): learned absolute positions, pre-LayerNorm, GELU MLP, fused q/k/v, all
//! matrices stored `(in, out)` (Conv1D) and transposed at load.

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, QkvLayout, Slot::*};
use anyhow::Result;

pub const NAMES: &[(crate::weights::Slot, &str)] = &[
    (TokenEmbd, "transformer.wte"),
    (PosEmbd, "transformer.wpe"),
    (OutputNorm, "transformer.ln_f"),
    (Output, "lm_head"),
    (AttnNorm, "transformer.h.{L}.ln_1"),
    (AttnQkv, "transformer.h.{L}.attn.c_attn"),
    (AttnOut, "transformer.h.{L}.attn.c_proj"),
    (FfnNorm, "transformer.h.{L}.ln_2"),
    (FfnUp, "transformer.h.{L}.mlp.c_fc"),
    (FfnDown, "transformer.h.{L}.mlp.c_proj"),
];

static TABLE: HfTable = HfTable {
    qkv: QkvLayout::Concat,
    transposed: true,
    ..HfTable::new(NAMES)
};

/// The GPT-2 shape, shared with GPT-BigCode.
pub fn gpt2_like(c: &HfConfig, n_kv_heads: Option<usize>) -> Result<ModelConfig> {
    c.refuse("scale_attn_by_inverse_layer_idx", |x| {
        x.as_bool() == Some(true)
    })?;
    let act = c.act(&["activation_function"], "gelu_new")?;
    let f = c.opt_usize(&["n_inner"])?.unwrap_or(4 * c.hidden()?);
    let mut cfg = c.base(NormKind::Layer, 1e-5, Ffn::Plain { act }, f, true)?;
    if let Some(k) = n_kv_heads {
        cfg.attn.n_kv_heads = k;
    }
    cfg.embed.learned_pos = Some(0);
    Ok(cfg)
}

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    Ok((gpt2_like(c, None)?, &TABLE))
}
