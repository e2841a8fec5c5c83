//! Gemma 3 (text) GGUF: sandwich RMSNorms (the converter already folded `1 + w`), GeGLU with
//! tanh GELU, QK-norm, `sqrt(C)` embedding scale, and a 5-local : 1-global layer pattern where
//! local layers use a sliding window and their own RoPE base.

use super::GgufMeta;
use crate::spec::*;
use anyhow::Result;

/// Every `PATTERN`-th layer is global (llama.cpp's default for this architecture).
const PATTERN: usize = 6;
/// RoPE base of the sliding-window layers unless `gemma3.rope.freq_base_swa` says otherwise.
const LOCAL_THETA: f32 = 10_000.0;

pub fn config(m: &GgufMeta) -> Result<ModelConfig> {
    let (hidden, n_heads, n_kv_heads, head_dim) = m.heads()?;
    let n_layers = m.usize("block_count")?;
    let window = m.opt_usize("attention.sliding_window")?.filter(|&w| w > 0);
    let pattern = m
        .opt_usize("attention.sliding_window_pattern")?
        .unwrap_or(PATTERN);
    let rope = |theta, scaling| {
        Position::Rope(RopeSpec {
            theta,
            dims: head_dim,
            layout: RopeLayout::Half,
            scaling,
        })
    };
    let global_theta = m.opt_f32("rope.freq_base")?.unwrap_or(1_000_000.0);
    let global_scaling = match m.opt_f32("rope.scaling.factor")? {
        Some(f) if f != 1.0 => RopeScaling::Linear { factor: f },
        _ => RopeScaling::None,
    };
    let local_theta = m.opt_f32("rope.freq_base_swa")?.unwrap_or(LOCAL_THETA);
    let layers = (0..n_layers)
        .map(|il| {
            let local = window.is_some() && (pattern == 0 || il % pattern < pattern - 1);
            if local {
                LayerPlan::new(window, rope(local_theta, RopeScaling::None))
            } else {
                LayerPlan::new(None, rope(global_theta, global_scaling.clone()))
            }
        })
        .collect();
    // The 27B model scales by the model width per head; the others by the head size.
    let scale_dim = if n_layers == 62 {
        hidden / n_heads
    } else {
        head_dim
    };
    Ok(ModelConfig {
        arch: "gemma3".into(),
        topology: Topology::Decoder,
        vocab_size: m.vocab_size()?,
        hidden,
        ffn_hidden: m.usize("feed_forward_length")?,
        attn: AttentionSpec {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (scale_dim as f32).sqrt(),
            scale_at: ScaleAt::Queries,
            softcap: None,
            qk_norm: true,
        },
        norm: NormSpec {
            kind: NormKind::Rms,
            eps: m
                .opt_f32("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-6),
        },
        placement: NormPlacement::Sandwich,
        ffn: Ffn::Gated {
            act: Activation::GeluTanhF16,
        },
        embed_scale: Some((hidden as f32).sqrt()),
        final_softcap: m.opt_f32("final_logit_softcapping")?.filter(|&c| c > 0.0),
        tied_embeddings: !m.has_tensor("output.weight"),
        layers,
        context_length: m.usize("context_length")?,
        ..Default::default()
    })
}

// ---- Hugging Face `gemma3_text` ----

use super::{gemma2, HfConfig};
use crate::weights::HfTable;

pub fn hf(c: &HfConfig) -> Result<(ModelConfig, &'static HfTable)> {
    let (mut cfg, _) = super::gemma::hf(c)?;
    gemma2::sandwich(c, &mut cfg)?;
    cfg.attn.qk_norm = true;
    let n = cfg.n_layers();
    let pattern = c.opt_usize(&["sliding_window_pattern"])?.unwrap_or(PATTERN);
    let window = c.opt_usize(&["sliding_window"])?;
    let windows = c.windows(n, window, |il| (il + 1) % pattern != 0)?;
    let d = cfg.attn.head_dim;
    let global = c.rope(Some("full_attention"), 1_000_000.0, d, RopeLayout::Half)?;
    let mut local = c.rope(Some("sliding_attention"), LOCAL_THETA, d, RopeLayout::Half)?;
    if c.v
        .get("rope_parameters")
        .and_then(|p| p.get("sliding_attention"))
        .is_none()
    {
        local.theta = c.f32_or(&["rope_local_base_freq"], LOCAL_THETA)?;
        local.scaling = RopeScaling::None;
    }
    cfg.layers = windows
        .into_iter()
        .map(|w| {
            LayerPlan::new(
                w,
                Position::Rope(if w.is_some() {
                    local.clone()
                } else {
                    global.clone()
                }),
            )
        })
        .collect();
    Ok((cfg, &gemma2::TABLE))
}
