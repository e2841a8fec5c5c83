//! Qwen3 (HF `qwen3`): Qwen2 with RMSNorm over each head's queries and keys (QK-norm) and an
//! explicit head size.

use super::{qwen2, HfConfig};
use crate::spec::ModelConfig;
use crate::weights::HfTable;
use anyhow::Result;

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let (mut cfg, table) = qwen2::hf(c)?;
    cfg.attn.qk_norm = true;
    Ok((cfg, table))
}
