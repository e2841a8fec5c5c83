//! Gemma (HF `gemma`): LLaMA-shaped with GeGLU (tanh GELU), RMSNorm scales stored as `w - 1`,
//! embeddings scaled by `sqrt(C)`, tied head.

use super::{llama, HfConfig};
use crate::spec::*;
use crate::weights::HfTable;
use anyhow::Result;

pub static TABLE: HfTable = HfTable {
    norm_plus_one: true,
    ..HfTable::new(llama::NAMES)
};

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let mut cfg = llama::llama_like(c, None, |_| false)?;
    cfg.ffn = Ffn::Gated {
        act: c.act(&["hidden_activation", "hidden_act"], "gelu_pytorch_tanh")?,
    };
    cfg.embed_scale = Some((cfg.hidden as f32).sqrt());
    cfg.tied_embeddings = c.bool_or("tie_word_embeddings", true)?;
    Ok((cfg, &TABLE))
}
