//! BART (HF `bart`): encoder-decoder with learned positions offset by 2, a LayerNorm over the
//! embeddings, post-LayerNorm blocks, GELU, a tied head plus `final_logits_bias`.

use super::HfConfig;
use crate::spec::*;
use crate::weights::{HfTable, Slot::*};
use anyhow::{bail, Result};

static TABLE: HfTable = HfTable {
    encoder: &[
        (TokenEmbd, "model.shared|model.encoder.embed_tokens"),
        (PosEmbd, "model.encoder.embed_positions"),
        (EmbedNorm, "model.encoder.layernorm_embedding"),
        (AttnQ, "model.encoder.layers.{L}.self_attn.q_proj"),
        (AttnK, "model.encoder.layers.{L}.self_attn.k_proj"),
        (AttnV, "model.encoder.layers.{L}.self_attn.v_proj"),
        (AttnOut, "model.encoder.layers.{L}.self_attn.out_proj"),
        (AttnNorm, "model.encoder.layers.{L}.self_attn_layer_norm"),
        (FfnUp, "model.encoder.layers.{L}.fc1"),
        (FfnDown, "model.encoder.layers.{L}.fc2"),
        (FfnNorm, "model.encoder.layers.{L}.final_layer_norm"),
    ],
    ..HfTable::new(&[
        (TokenEmbd, "model.shared|model.decoder.embed_tokens"),
        (PosEmbd, "model.decoder.embed_positions"),
        (EmbedNorm, "model.decoder.layernorm_embedding"),
        (Output, "lm_head"),
        (LogitsBias, "final_logits_bias"),
        (AttnQ, "model.decoder.layers.{L}.self_attn.q_proj"),
        (AttnK, "model.decoder.layers.{L}.self_attn.k_proj"),
        (AttnV, "model.decoder.layers.{L}.self_attn.v_proj"),
        (AttnOut, "model.decoder.layers.{L}.self_attn.out_proj"),
        (AttnNorm, "model.decoder.layers.{L}.self_attn_layer_norm"),
        (CrossQ, "model.decoder.layers.{L}.encoder_attn.q_proj"),
        (CrossK, "model.decoder.layers.{L}.encoder_attn.k_proj"),
        (CrossV, "model.decoder.layers.{L}.encoder_attn.v_proj"),
        (CrossOut, "model.decoder.layers.{L}.encoder_attn.out_proj"),
        (
            CrossNorm,
            "model.decoder.layers.{L}.encoder_attn_layer_norm",
        ),
        (FfnUp, "model.decoder.layers.{L}.fc1"),
        (FfnDown, "model.decoder.layers.{L}.fc2"),
        (FfnNorm, "model.decoder.layers.{L}.final_layer_norm"),
    ])
};

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let hidden = c.hidden()?;
    let h = c.usize(&["decoder_attention_heads"])?;
    let (he, fe, fd) = (
        c.usize(&["encoder_attention_heads"])?,
        c.usize(&["encoder_ffn_dim"])?,
        c.usize(&["decoder_ffn_dim"])?,
    );
    if he != h || fe != fd {
        bail!("config.json: encoder and decoder of different widths (heads {he}/{h}, ffn {fe}/{fd}) are not supported for bart models");
    }
    if hidden % h != 0 {
        bail!("config.json: d_model {hidden} is not divisible by {h} attention heads");
    }
    c.refuse("normalize_before", |x| x.as_bool() == Some(true))?;
    let pos = LayerPlan::new(None, Position::None);
    Ok((
        ModelConfig {
            topology: Topology::EncoderDecoder,
            vocab_size: c.vocab()?,
            hidden,
            ffn_hidden: fd,
            attn: AttentionSpec::new(h, h, hidden / h),
            norm: NormSpec {
                kind: NormKind::Layer,
                eps: 1e-5,
            },
            placement: NormPlacement::Post,
            final_norm: false,
            ffn: Ffn::Plain {
                act: c.act(&["activation_function"], "gelu")?,
            },
            embed: EmbedSpec {
                learned_pos: Some(2),
                token_types: false,
                norm: true,
            },
            embed_scale: c
                .bool_or("scale_embedding", false)?
                .then(|| (hidden as f32).sqrt()),
            tied_embeddings: c.bool_or("tie_word_embeddings", true)?,
            layers: vec![pos.clone(); c.usize(&["decoder_layers"])?],
            encoder_layers: vec![pos; c.usize(&["encoder_layers"])?],
            context_length: c.context()?,
            ..Default::default()
        },
        &TABLE,
    ))
}
