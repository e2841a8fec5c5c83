//! OPT (HF `opt`): learned positions offset by 2, ReLU MLP, LayerNorm before (most sizes) or
//! after (350m: `do_layer_norm_before = false`, and then no final norm) each sub-layer.

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, Slot::*};
use anyhow::Result;

static TABLE: HfTable = HfTable::new(&[
    (TokenEmbd, "model.decoder.embed_tokens"),
    (PosEmbd, "model.decoder.embed_positions"),
    (OutputNorm, "model.decoder.final_layer_norm"),
    (Output, "lm_head"),
    (AttnNorm, "model.decoder.layers.{L}.self_attn_layer_norm"),
    (AttnQ, "model.decoder.layers.{L}.self_attn.q_proj"),
    (AttnK, "model.decoder.layers.{L}.self_attn.k_proj"),
    (AttnV, "model.decoder.layers.{L}.self_attn.v_proj"),
    (AttnOut, "model.decoder.layers.{L}.self_attn.out_proj"),
    (FfnNorm, "model.decoder.layers.{L}.final_layer_norm"),
    (FfnUp, "model.decoder.layers.{L}.fc1"),
    (FfnDown, "model.decoder.layers.{L}.fc2"),
]);

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let hidden = c.hidden()?;
    if let Some(p) = c.opt_usize(&["word_embed_proj_dim"])? {
        if p != hidden {
            anyhow::bail!("config.json: word_embed_proj_dim = {p} (projected embeddings) is not supported for opt models");
        }
    }
    c.refuse("layer_norm_elementwise_affine", |x| {
        x.as_bool() == Some(false)
    })?;
    let act = c.act(&["activation_function"], "relu")?;
    let mut cfg = c.base(
        NormKind::Layer,
        1e-5,
        Ffn::Plain { act },
        c.usize(&["ffn_dim"])?,
        true,
    )?;
    let before = c.bool_or("do_layer_norm_before", true)?;
    if !before {
        cfg.placement = NormPlacement::Post;
    }
    cfg.final_norm = before && !c.bool_or("_remove_final_layer_norm", false)?;
    cfg.embed.learned_pos = Some(2);
    Ok((cfg, &TABLE))
}
