//! Mixtral (HF `mixtral`): LLaMA whose feed-forward is a top-k mixture of SwiGLU experts
//! (renormalised over the chosen ones), with an optional sliding window.

use super::{llama, HfConfig};
use crate::spec::*;
use crate::weights::{HfTable, Slot::*};
use anyhow::Result;

static TABLE: HfTable = HfTable::new(&[
    (TokenEmbd, "model.embed_tokens"),
    (OutputNorm, "model.norm"),
    (Output, "lm_head"),
    (AttnNorm, "model.layers.{L}.input_layernorm"),
    (AttnQ, "model.layers.{L}.self_attn.q_proj"),
    (AttnK, "model.layers.{L}.self_attn.k_proj"),
    (AttnV, "model.layers.{L}.self_attn.v_proj"),
    (AttnOut, "model.layers.{L}.self_attn.o_proj"),
    (FfnNorm, "model.layers.{L}.post_attention_layernorm"),
    (FfnRouter, "model.layers.{L}.block_sparse_moe.gate|model.layers.{L}.mlp.gate"),
    (ExpGate, "model.layers.{L}.block_sparse_moe.experts.{E}.w1|model.layers.{L}.mlp.experts.{E}.gate_proj"),
    (ExpDown, "model.layers.{L}.block_sparse_moe.experts.{E}.w2|model.layers.{L}.mlp.experts.{E}.down_proj"),
    (ExpUp, "model.layers.{L}.block_sparse_moe.experts.{E}.w3|model.layers.{L}.mlp.experts.{E}.up_proj"),
]);

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
