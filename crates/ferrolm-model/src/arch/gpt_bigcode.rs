//! GPT-BigCode / StarCoder (HF `gpt_bigcode`): GPT-2 with plain `(out, in)` matrices and
//! multi-query attention (one KV head) when `multi_query`.

use super::{gpt2, HfConfig};
use crate::spec::ModelConfig;
use crate::weights::{HfTable, QkvLayout};
use anyhow::Result;

static TABLE: HfTable = HfTable {
    qkv: QkvLayout::Concat,
    ..HfTable::new(gpt2::NAMES)
};

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let mq = c.bool_or("multi_query", true)?;
    let mut cfg = gpt2::gpt2_like(c, mq.then_some(1))?;
    cfg.ffn = crate::spec::Ffn::Plain {
        act: c.act(&["activation_function"], "gelu_pytorch_tanh")?,
    };
    Ok((cfg, &TABLE))
}
