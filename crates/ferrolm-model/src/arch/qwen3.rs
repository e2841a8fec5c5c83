//! Qwen3 (HF `qwen3`): LLaMA with RMSNorm over each head's queries and keys (QK-norm) and an
//! explicit head size.

use super::{llama, HfConfig};
use crate::spec::ModelConfig;
use crate::weights::HfTable;
use anyhow::Result;

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let window = if c.bool_or("use_sliding_window", false)? {
        c.opt_usize(&["sliding_window"])?
    } else {
        None
    };
    let from = c.opt_usize(&["max_window_layers"])?.unwrap_or(0);
    let mut cfg = llama::llama_like(c, window, |il| il >= from)?;
    cfg.attn.qk_norm = true;
    Ok((cfg, &llama::TABLE))
}
