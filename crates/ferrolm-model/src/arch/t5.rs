//! T5 (HF `t5`): encoder-decoder with RMSNorm (`T5LayerNorm`), unscaled attention with a learned
//! relative-position bias (bidirectional buckets in the encoder, backward-only in the
//! decoder), ReLU (`relu`) or gated-GELU (`gated-gelu`, v1.1) feed-forward, and the decoder
//! output scaled by `C^-0.5` before a tied head.

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, Slot::*};
use anyhow::{bail, Result};

macro_rules! t5_table {
    ($up:expr) => {
        HfTable {
            encoder: &[
                (TokenEmbd, "shared|encoder.embed_tokens"),
                (OutputNorm, "encoder.final_layer_norm"),
                (AttnNorm, "encoder.block.{L}.layer.0.layer_norm"),
                (AttnQ, "encoder.block.{L}.layer.0.SelfAttention.q"),
                (AttnK, "encoder.block.{L}.layer.0.SelfAttention.k"),
                (AttnV, "encoder.block.{L}.layer.0.SelfAttention.v"),
                (AttnOut, "encoder.block.{L}.layer.0.SelfAttention.o"),
                (
                    RelBias,
                    "encoder.block.{L}.layer.0.SelfAttention.relative_attention_bias",
                ),
                (FfnNorm, "encoder.block.{L}.layer.1.layer_norm"),
                (FfnGate, "encoder.block.{L}.layer.1.DenseReluDense.wi_0"),
                (
                    FfnUp,
                    concat!("encoder.block.{L}.layer.1.DenseReluDense.", $up),
                ),
                (FfnDown, "encoder.block.{L}.layer.1.DenseReluDense.wo"),
            ],
            ..HfTable::new(&[
                (TokenEmbd, "shared|decoder.embed_tokens"),
                (OutputNorm, "decoder.final_layer_norm"),
                (Output, "lm_head"),
                (AttnNorm, "decoder.block.{L}.layer.0.layer_norm"),
                (AttnQ, "decoder.block.{L}.layer.0.SelfAttention.q"),
                (AttnK, "decoder.block.{L}.layer.0.SelfAttention.k"),
                (AttnV, "decoder.block.{L}.layer.0.SelfAttention.v"),
                (AttnOut, "decoder.block.{L}.layer.0.SelfAttention.o"),
                (
                    RelBias,
                    "decoder.block.{L}.layer.0.SelfAttention.relative_attention_bias",
                ),
                (CrossNorm, "decoder.block.{L}.layer.1.layer_norm"),
                (CrossQ, "decoder.block.{L}.layer.1.EncDecAttention.q"),
                (CrossK, "decoder.block.{L}.layer.1.EncDecAttention.k"),
                (CrossV, "decoder.block.{L}.layer.1.EncDecAttention.v"),
                (CrossOut, "decoder.block.{L}.layer.1.EncDecAttention.o"),
                (FfnNorm, "decoder.block.{L}.layer.2.layer_norm"),
                (FfnGate, "decoder.block.{L}.layer.2.DenseReluDense.wi_0"),
                (
                    FfnUp,
                    concat!("decoder.block.{L}.layer.2.DenseReluDense.", $up),
                ),
                (FfnDown, "decoder.block.{L}.layer.2.DenseReluDense.wo"),
            ])
        }
    };
}

static PLAIN: HfTable = t5_table!("wi");
static GATED: HfTable = t5_table!("wi_1");

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let (h, hkv, d) = c.heads()?;
    let hidden = c.hidden()?;
    let proj = c.str_or(&["feed_forward_proj"], "relu");
    let (gated, act_name) = match proj.strip_prefix("gated-") {
        Some(a) => (true, a),
        None => (false, proj),
    };
    let act = match act_name {
        "relu" => Activation::Relu,
        "gelu" | "gelu_new" => c.act(&["dense_act_fn"], if gated { "gelu_new" } else { "gelu" })?,
        other => bail!("config.json: feed_forward_proj '{other}' is not supported for t5 models (relu, gated-gelu)"),
    };
    let rel = |bidirectional| -> Result<Position> {
        Ok(Position::Relative(RelativeSpec {
            buckets: c
                .opt_usize(&["relative_attention_num_buckets"])?
                .unwrap_or(32),
            max_distance: c
                .opt_usize(&["relative_attention_max_distance"])?
                .unwrap_or(128),
            bidirectional,
        }))
    };
    let n_enc = c.n_layers()?;
    let n_dec = c.opt_usize(&["num_decoder_layers"])?.unwrap_or(n_enc);
    let tied = c.bool_or("tie_word_embeddings", true)?;
    let scale_out = c.bool_or("scale_decoder_outputs", tied)?;
    let mut attn = AttentionSpec::new(h, hkv, d);
    attn.scale = 1.0;
    Ok((
        ModelConfig {
            topology: Topology::EncoderDecoder,
            vocab_size: c.vocab()?,
            hidden,
            ffn_hidden: c.usize(&["d_ff"])?,
            attn,
            norm: NormSpec {
                kind: NormKind::Rms,
                eps: c.f32_or(&["layer_norm_epsilon"], 1e-6)?,
            },
            ffn: if gated {
                Ffn::Gated { act }
            } else {
                Ffn::Plain { act }
            },
            head_scale: scale_out.then(|| (hidden as f32).powf(-0.5)),
            tied_embeddings: tied,
            layers: vec![LayerPlan::new(None, rel(false)?); n_dec],
            encoder_layers: vec![LayerPlan::new(None, rel(true)?); n_enc],
            context_length: c.opt_usize(&["n_positions"])?.unwrap_or(512),
            ..Default::default()
        },
        if gated { &GATED } else { &PLAIN },
    ))
}
