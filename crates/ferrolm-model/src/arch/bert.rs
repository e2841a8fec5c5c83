//! BERT (HF `bert`, sentence-transformers encoders): a bidirectional encoder with learned
//! positions and token types, LayerNorm over the embeddings, post-LayerNorm blocks, GELU.
//! Base-model checkpoints (`embeddings.*`) and task checkpoints (`bert.embeddings.*`) both load.

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, Slot::*};
use anyhow::Result;

static TABLE: HfTable = HfTable::new(&[
    (TokenEmbd, "embeddings.word_embeddings"),
    (PosEmbd, "embeddings.position_embeddings"),
    (TypeEmbd, "embeddings.token_type_embeddings"),
    (EmbedNorm, "embeddings.LayerNorm"),
    (AttnQ, "encoder.layer.{L}.attention.self.query"),
    (AttnK, "encoder.layer.{L}.attention.self.key"),
    (AttnV, "encoder.layer.{L}.attention.self.value"),
    (AttnOut, "encoder.layer.{L}.attention.output.dense"),
    (AttnNorm, "encoder.layer.{L}.attention.output.LayerNorm"),
    (FfnUp, "encoder.layer.{L}.intermediate.dense"),
    (FfnDown, "encoder.layer.{L}.output.dense"),
    (FfnNorm, "encoder.layer.{L}.output.LayerNorm"),
]);

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    c.refuse("position_embedding_type", |x| {
        x.as_str() != Some("absolute")
    })?;
    let act = c.act(&["hidden_act"], "gelu")?;
    let f = c.usize(&["intermediate_size"])?;
    let mut cfg = c.base(NormKind::Layer, 1e-12, Ffn::Plain { act }, f, false)?;
    cfg.topology = Topology::Encoder;
    cfg.placement = NormPlacement::Post;
    cfg.final_norm = false;
    let token_types = c.opt_usize(&["type_vocab_size"])?.unwrap_or(2) > 0;
    cfg.embed = EmbedSpec {
        learned_pos: Some(0),
        token_types,
        norm: true,
    };
    Ok((cfg, &TABLE))
}
