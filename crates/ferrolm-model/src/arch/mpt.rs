//! MPT (HF `mpt`): ALiBi with MPT's slope order, fused q/k/v, LayerNorms without bias, exact
//! GELU, tied head.

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, QkvLayout, Slot::*};
use anyhow::{bail, Result};

static TABLE: HfTable = HfTable {
    qkv: QkvLayout::Concat,
    ..HfTable::new(&[
        (TokenEmbd, "transformer.wte"),
        (OutputNorm, "transformer.norm_f"),
        (Output, "lm_head"),
        (AttnNorm, "transformer.blocks.{L}.norm_1"),
        (AttnQkv, "transformer.blocks.{L}.attn.Wqkv"),
        (AttnOut, "transformer.blocks.{L}.attn.out_proj"),
        (FfnNorm, "transformer.blocks.{L}.norm_2"),
        (FfnUp, "transformer.blocks.{L}.ffn.up_proj"),
        (FfnDown, "transformer.blocks.{L}.ffn.down_proj"),
    ])
};

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let ac = c.v.get("attn_config").cloned().unwrap_or_default();
    let get = |k: &str| ac.get(k).filter(|x| !x.is_null());
    if get("alibi").and_then(|x| x.as_bool()) == Some(false) {
        bail!("config.json: attn_config.alibi = false (learned positions) is not supported for mpt models");
    }
    for k in ["clip_qkv", "qk_ln"] {
        if let Some(x) = get(k) {
            if x.as_bool() != Some(false) {
                bail!("config.json: attn_config.{k} = {x} is not supported for mpt models");
            }
        }
    }
    // transformers' MPT ignores `expansion_ratio` and always uses 4; so do we.
    let act = Activation::Gelu;
    let mut cfg = c.base(
        NormKind::Layer,
        1e-5,
        Ffn::Plain { act },
        4 * c.hidden()?,
        true,
    )?;
    cfg.tied_embeddings = true;
    cfg.attn.n_kv_heads = cfg.attn.n_heads;
    if let Some(s) = get("softmax_scale").and_then(|x| x.as_f64()) {
        cfg.attn.scale = s as f32;
    }
    let max_bias = get("alibi_bias_max")
        .and_then(|x| x.as_f64())
        .unwrap_or(8.0) as f32;
    cfg.set_position(Position::Alibi(AlibiSlopes::Mpt { max_bias }));
    Ok((cfg, &TABLE))
}
