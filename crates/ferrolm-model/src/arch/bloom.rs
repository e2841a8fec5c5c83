//! BLOOM (HF `bloom`): ALiBi, a LayerNorm over the embeddings, per-head fused q/k/v, tanh GELU.

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, QkvLayout, Slot::*};
use anyhow::Result;

static TABLE: HfTable = HfTable {
    qkv: QkvLayout::PerHead,
    ..HfTable::new(&[
        (TokenEmbd, "transformer.word_embeddings"),
        (EmbedNorm, "transformer.word_embeddings_layernorm"),
        (OutputNorm, "transformer.ln_f"),
        (Output, "lm_head"),
        (AttnNorm, "transformer.h.{L}.input_layernorm"),
        (AttnQkv, "transformer.h.{L}.self_attention.query_key_value"),
        (AttnOut, "transformer.h.{L}.self_attention.dense"),
        (FfnNorm, "transformer.h.{L}.post_attention_layernorm"),
        (FfnUp, "transformer.h.{L}.mlp.dense_h_to_4h"),
        (FfnDown, "transformer.h.{L}.mlp.dense_4h_to_h"),
    ])
};

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    c.refuse("apply_residual_connection_post_layernorm", |x| {
        x.as_bool() == Some(true)
    })?;
    let act = Activation::GeluTanh;
    let mut cfg = c.base(
        NormKind::Layer,
        1e-5,
        Ffn::Plain { act },
        4 * c.hidden()?,
        true,
    )?;
    cfg.set_position(Position::Alibi(AlibiSlopes::Bloom));
    cfg.embed.norm = true;
    Ok((cfg, &TABLE))
}
