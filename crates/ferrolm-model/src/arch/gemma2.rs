//! Gemma 2 (HF `gemma2`): Gemma with sandwich norms, attention and final logit softcaps,
//! `query_pre_attn_scalar`, and sliding-window layers alternating with global ones.

use super::{gemma, llama, HfConfig};
use crate::spec::*;
use crate::weights::{HfTable, Slot::*};
use anyhow::Result;

/// Gemma 2/3 name their norms differently from LLaMA; the rest is LLaMA's.
pub const NAMES: &[(crate::weights::Slot, &str)] = &[
    (PostAttnNorm, "model.layers.{L}.post_attention_layernorm"),
    (FfnNorm, "model.layers.{L}.pre_feedforward_layernorm"),
    (PostFfnNorm, "model.layers.{L}.post_feedforward_layernorm"),
];

pub static TABLE: HfTable = HfTable {
    norm_plus_one: true,
    also: llama::NAMES,
    ..HfTable::new(NAMES)
};

/// Gemma 2 and 3 share this: sandwich norms, softcaps, the query scalar.
pub fn sandwich(c: &HfConfig, cfg: &mut ModelConfig) -> Result<()> {
    cfg.placement = NormPlacement::Sandwich;
    let qpas = c.f32_or(&["query_pre_attn_scalar"], cfg.attn.head_dim as f32)?;
    cfg.attn.scale = 1.0 / qpas.sqrt();
    cfg.attn.softcap = c.opt_f32(&["attn_logit_softcapping"])?;
    cfg.final_softcap = c.opt_f32(&["final_logit_softcapping"])?;
    Ok(())
}

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let (mut cfg, _) = gemma::hf(c)?;
    sandwich(c, &mut cfg)?;
    let window = c.opt_usize(&["sliding_window"])?;
    let windows = c.windows(cfg.n_layers(), window, |il| il % 2 == 0)?;
    for (l, w) in cfg.layers.iter_mut().zip(windows) {
        l.window = w;
    }
    Ok((cfg, &TABLE))
}
