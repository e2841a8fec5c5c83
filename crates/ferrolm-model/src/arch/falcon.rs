//! Falcon (HF `falcon`): three layouts in one family.
//! - new decoder (40B/180B): GQA with q/k/v grouped per KV head, `ln_attn` and `ln_mlp` in parallel;
//! - 7B: multi-query (q, then one k, one v), one norm feeding attention and MLP in parallel;
//! - RW (`parallel_attn = false`): sequential with a second norm, often ALiBi instead of RoPE.

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, QkvLayout, Slot::*};
use anyhow::Result;

const COMMON: [(crate::weights::Slot, &str); 6] = [
    (TokenEmbd, "transformer.word_embeddings"),
    (OutputNorm, "transformer.ln_f"),
    (Output, "lm_head"),
    (AttnQkv, "transformer.h.{L}.self_attention.query_key_value"),
    (AttnOut, "transformer.h.{L}.self_attention.dense"),
    (FfnUp, "transformer.h.{L}.mlp.dense_h_to_4h"),
];

macro_rules! table {
    ($qkv:expr, $($extra:expr),*) => {
        HfTable {
            qkv: $qkv,
            ..HfTable::new(&[
                COMMON[0], COMMON[1], COMMON[2], COMMON[3], COMMON[4], COMMON[5],
                (FfnDown, "transformer.h.{L}.mlp.dense_4h_to_h"),
                $($extra),*
            ])
        }
    };
}

static NEW: HfTable = table!(
    QkvLayout::Grouped,
    (
        AttnNorm,
        "transformer.h.{L}.ln_attn|transformer.h.{L}.input_layernorm"
    ),
    (FfnNorm, "transformer.h.{L}.ln_mlp")
);
static MQ: HfTable = table!(
    QkvLayout::Concat,
    (AttnNorm, "transformer.h.{L}.input_layernorm"),
    (FfnNorm, "transformer.h.{L}.post_attention_layernorm")
);
static PER_HEAD: HfTable = table!(
    QkvLayout::PerHead,
    (AttnNorm, "transformer.h.{L}.input_layernorm"),
    (FfnNorm, "transformer.h.{L}.post_attention_layernorm")
);

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let act = c.act(&["activation"], "gelu")?;
    let f = c
        .opt_usize(&["ffn_hidden_size"])?
        .unwrap_or(4 * c.hidden()?);
    let mut cfg = c.base(NormKind::Layer, 1e-5, Ffn::Plain { act }, f, true)?;
    let h = cfg.attn.n_heads;
    let new = c.bool_or("new_decoder_architecture", false)?;
    let mq = c.bool_or("multi_query", true)?;
    let (table, hkv): (&'static HfTable, usize) = if new {
        (&NEW, c.opt_usize(&["num_kv_heads"])?.unwrap_or(h))
    } else if mq {
        (&MQ, 1)
    } else {
        (&PER_HEAD, h)
    };
    cfg.attn.n_kv_heads = hkv;
    cfg.set_position(if c.bool_or("alibi", false)? {
        Position::Alibi(AlibiSlopes::BloomScaled)
    } else {
        Position::Rope(c.rope(None, 10_000.0, cfg.attn.head_dim, RopeLayout::Half)?)
    });
    let two_norms = new && c.opt_usize(&["num_ln_in_parallel_attn"])?.unwrap_or(2) == 2;
    if new || c.bool_or("parallel_attn", true)? {
        cfg.residual = Residual::Parallel {
            shared_norm: !two_norms,
        };
    }
    Ok((cfg, table))
}
