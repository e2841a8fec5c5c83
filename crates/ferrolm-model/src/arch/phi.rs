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
    let (h, hkv, d) = c.heads()?;
    let pct = c.partial_rotary(&["partial_rotary_factor"], 0.5)?;
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
            residual: Residual::Parallel { shared_norm: true },
            ffn: Ffn::Plain {
                act: c.act(&["hidden_act"], "gelu_new")?,
            },
            tied_embeddings: c.bool_or("tie_word_embeddings", false)?,
            layers: vec![LayerPlan::new(None, Position::Rope(rope)); c.n_layers()?],
            context_length: c.context()?,
            ..Default::default()
        },
        &TABLE,
    ))
}
