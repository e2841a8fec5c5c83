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
    let (h, hkv, d) = c.heads()?;
    let hidden = c.hidden()?;
    let dims = c.opt_usize(&["rotary_dim"])?.unwrap_or(d);
    let rope = c.rope(None, 10_000.0, dims, RopeLayout::Interleaved)?;
    Ok((
        ModelConfig {
            vocab_size: c.vocab()?,
            hidden,
            ffn_hidden: c.opt_usize(&["n_inner"])?.unwrap_or(4 * hidden),
            attn: AttentionSpec::new(h, hkv, d),
            norm: NormSpec {
                kind: NormKind::Layer,
                eps: c.f32_or(&["layer_norm_epsilon"], 1e-5)?,
            },
            residual: Residual::Parallel { shared_norm: true },
            ffn: Ffn::Plain {
                act: c.act(&["activation_function"], "gelu_new")?,
            },
            tied_embeddings: c.bool_or("tie_word_embeddings", false)?,
            layers: vec![LayerPlan::new(None, Position::Rope(rope)); c.n_layers()?],
            context_length: c.context()?,
            ..Default::default()
        },
        &TABLE,
    ))
}
