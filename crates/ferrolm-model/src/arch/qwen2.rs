//! Qwen2 (HF `qwen2`): LLaMA with q/k/v biases (found by the loader beside the weights) and an
//! optional sliding window on layers from `max_window_layers` on.

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
    Ok((
        llama::llama_like(c, window, |il| il >= from)?,
        &llama::TABLE,
    ))
}
