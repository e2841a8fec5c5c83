//! Qwen2-MoE (HF `qwen2_moe`): Qwen2 whose feed-forward is a top-k mixture plus a shared expert
//! scaled by `sigmoid(shared_expert_gate(x))`; `decoder_sparse_step` and `mlp_only_layers` pick
//! the layers that keep a dense SwiGLU.

use super::{llama, HfConfig};
use crate::spec::*;
use crate::weights::{HfTable, Slot::*};
use anyhow::Result;

static TABLE: HfTable = HfTable {
    also: llama::NAMES,
    ..HfTable::new(&[
        (FfnRouter, "model.layers.{L}.mlp.gate"),
        (ExpGate, "model.layers.{L}.mlp.experts.{E}.gate_proj"),
        (ExpUp, "model.layers.{L}.mlp.experts.{E}.up_proj"),
        (ExpDown, "model.layers.{L}.mlp.experts.{E}.down_proj"),
        (ShGate, "model.layers.{L}.mlp.shared_expert.gate_proj"),
        (ShUp, "model.layers.{L}.mlp.shared_expert.up_proj"),
        (ShDown, "model.layers.{L}.mlp.shared_expert.down_proj"),
        (ShExpGate, "model.layers.{L}.mlp.shared_expert_gate"),
    ])
};

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let window = if c.bool_or("use_sliding_window", false)? {
        c.opt_usize(&["sliding_window"])?
    } else {
        None
    };
    let mut cfg = llama::llama_like(c, window, |_| true)?;
    let experts = c.opt_usize(&["num_experts"])?.unwrap_or(0);
    let step = c.opt_usize(&["decoder_sparse_step"])?.unwrap_or(1).max(1);
    let dense: Vec<usize> =
        c.v.get("mlp_only_layers")
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default();
    for (il, l) in cfg.layers.iter_mut().enumerate() {
        l.moe = experts > 0 && !dense.contains(&il) && (il + 1) % step == 0;
    }
    cfg.ffn = Ffn::Moe(MoeSpec {
        act: c.act(&["hidden_act"], "silu")?,
        experts: experts.max(1),
        top_k: c.usize(&["num_experts_per_tok"])?,
        norm_topk: c.bool_or("norm_topk_prob", false)?,
        shared: c
            .opt_usize(&["shared_expert_intermediate_size"])?
            .unwrap_or(0)
            > 0,
    });
    Ok((cfg, &TABLE))
}
