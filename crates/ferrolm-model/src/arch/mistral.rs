//! Mistral (HF `mistral`): LLaMA with a sliding window on every layer.

use super::{llama, HfConfig};
use crate::spec::ModelConfig;
use crate::weights::HfTable;
use anyhow::Result;

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let window = c.opt_usize(&["sliding_window"])?;
    Ok((llama::llama_like(c, window, |_| true)?, &llama::TABLE))
}
