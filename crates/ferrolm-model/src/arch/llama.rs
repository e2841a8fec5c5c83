//! LLaMA-family GGUF (`general.architecture = llama`: LLaMA 1-3, Mistral, SmolLM, ...):
//! pre-RMSNorm, SwiGLU, GQA, RoPE with adjacent pairs (the GGUF converter permutes Q/K).

use super::GgufMeta;
use crate::spec::*;
use anyhow::Result;

pub fn config(m: &GgufMeta) -> Result<ModelConfig> {
    let (hidden, n_heads, n_kv_heads, head_dim) = m.heads()?;
    let rope = RopeSpec {
        theta: m.opt_f32("rope.freq_base")?.unwrap_or(10_000.0),
        dims: m.opt_usize("rope.dimension_count")?.unwrap_or(head_dim),
        layout: RopeLayout::Interleaved,
        scaling: match m.opt_f32("rope.scale_linear")? {
            Some(f) if f != 1.0 => RopeScaling::Linear { factor: f },
            _ => RopeScaling::None,
        },
    };
    let window = m.opt_usize("attention.sliding_window")?.filter(|&w| w > 0);
    let n_layers = m.usize("block_count")?;
    Ok(ModelConfig {
        arch: "llama".into(),
        topology: Topology::Decoder,
        vocab_size: m.vocab_size()?,
        hidden,
        ffn_hidden: m.usize("feed_forward_length")?,
        attn: AttentionSpec {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            scale_at: ScaleAt::Scores,
            softcap: None,
            qk_norm: false,
            bias: m.has_tensor("blk.0.attn_q.bias"),
        },
        norm: NormSpec {
            kind: NormKind::Rms,
            eps: m
                .opt_f32("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
        },
        placement: NormPlacement::Pre,
        ffn: Ffn::Gated {
            act: Activation::Silu,
        },
        embed_scale: None,
        final_softcap: None,
        tied_embeddings: !m.has_tensor("output.weight"),
        layers: vec![
            LayerPlan {
                window,
                position: Position::Rope(rope)
            };
            n_layers
        ],
        context_length: m.usize("context_length")?,
    })
}
