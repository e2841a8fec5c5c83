//! GPT-J (HF `gptj`): RoPE on the first `rotary_dim` dims in adjacent pairs, one LayerNorm
//! feeding attention and MLP in parallel, a biased LM head.

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, Slot::*};
use anyhow::Result;

static TABLE: HfTable = HfTable::new(&[
    (TokenEmbd, "transformer.wte"),
    (OutputNorm, "transformer.ln_f"),
    (Output, "lm_head"),
    (AttnNorm, "transformer.h.{L}.ln_1"),
    (AttnQ, "transformer.h.{L}.attn.q_proj"),
    (AttnK, "transformer.h.{L}.attn.k_proj"),
    (AttnV, "transformer.h.{L}.attn.v_proj"),
    (AttnOut, "transformer.h.{L}.attn.out_proj"),
    (FfnUp, "transformer.h.{L}.mlp.fc_in"),
    (FfnDown, "transformer.h.{L}.mlp.fc_out"),
]);

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let act = c.act(&["activation_function"], "gelu_new")?;
    let f = c.opt_usize(&["n_inner"])?.unwrap_or(4 * c.hidden()?);
    let mut cfg = c.base(NormKind::Layer, 1e-5, Ffn::Plain { act }, f, false)?;
    let dims = c.opt_usize(&["rotary_dim"])?.unwrap_or(cfg.attn.head_dim);
    cfg.set_position(Position::Rope(c.rope(
        None,
        10_000.0,
        dims,
        RopeLayout::Interleaved,
    )?));
    cfg.residual = Residual::Parallel { shared_norm: true };
    Ok((cfg, &TABLE))
}
