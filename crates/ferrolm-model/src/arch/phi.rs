//! Phi-1/1.5/2 (HF `phi`): partial half-split RoPE, one LayerNorm feeding attention and MLP in
//! parallel, biased projections and LM head.

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, Slot::*};
use anyhow::Result;

static TABLE: HfTable = HfTable::new(&[
    (TokenEmbd, "model.embed_tokens"),
    (OutputNorm, "model.final_layernorm"),
    (Output, "lm_head"),
    (AttnNorm, "model.layers.{L}.input_layernorm"),
    (AttnQ, "model.layers.{L}.self_attn.q_proj"),
    (AttnK, "model.layers.{L}.self_attn.k_proj"),
    (AttnV, "model.layers.{L}.self_attn.v_proj"),
    (AttnOut, "model.layers.{L}.self_attn.dense"),
    (FfnUp, "model.layers.{L}.mlp.fc1"),
    (FfnDown, "model.layers.{L}.mlp.fc2"),
]);

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    c.refuse("qk_layernorm", |x| x.as_bool() == Some(true))?;
    let act = c.act(&["hidden_act"], "gelu_new")?;
    let f = c.usize(&["intermediate_size"])?;
    let mut cfg = c.base(NormKind::Layer, 1e-5, Ffn::Plain { act }, f, false)?;
    let pct = c.partial_rotary(&["partial_rotary_factor"], 0.5)?;
    let dims = (cfg.attn.head_dim as f32 * pct) as usize;
    cfg.set_position(Position::Rope(c.rope(
        None,
        10_000.0,
        dims,
        RopeLayout::Half,
    )?));
    cfg.residual = Residual::Parallel { shared_norm: true };
    Ok((cfg, &TABLE))
}
