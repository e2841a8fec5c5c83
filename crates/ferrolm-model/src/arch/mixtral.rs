//! Mixtral (HF `mixtral`): LLaMA whose feed-forward is a top-k mixture of SwiGLU experts
//! (renormalised over the chosen ones), with an optional sliding window.

use super::{llama, HfConfig};
use crate::spec::*;
use crate::weights::{HfTable, Slot::*};
use anyhow::Result;

static TABLE: HfTable = HfTable {
    also: llama::NAMES,
    ..HfTable::new(&[
        (FfnRouter, "model.layers.{L}.block_sparse_moe.gate|model.layers.{L}.mlp.gate"),
        (ExpGate, "model.layers.{L}.block_sparse_moe.experts.{E}.w1|model.layers.{L}.mlp.experts.{E}.gate_proj"),
        (ExpDown, "model.layers.{L}.block_sparse_moe.experts.{E}.w2|model.layers.{L}.mlp.experts.{E}.down_proj"),
        (ExpUp, "model.layers.{L}.block_sparse_moe.experts.{E}.w3|model.layers.{L}.mlp.experts.{E}.up_proj"),
    ])
};

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let window = c.opt_usize(&["sliding_window"])?;
    let mut cfg = llama::llama_like(c, window, |_| true)?;
    cfg.ffn = Ffn::Moe(MoeSpec {
        act: c.act(&["hidden_act"], "silu")?,
        experts: c.usize(&["num_local_experts"])?,
        top_k: c.usize(&["num_experts_per_tok"])?,
        norm_topk: true,
        shared: false,
    });
    Ok((cfg, &TABLE))
}
