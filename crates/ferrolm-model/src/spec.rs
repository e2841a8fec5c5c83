//! Model specs: the enums and structs that describe a transformer, validated once at load.
//!
//! A family's `arch/` file maps its metadata onto these; the one block in `block.rs` reads them.
//! MHA, GQA and MQA are values of `n_kv_heads`; RoPE layouts and scalings are enum values.

use anyhow::{bail, Result};

/// How a model's layers are arranged (encoders and encoder-decoders arrive with the HF loader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    Decoder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    Rms,
    Layer,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormSpec {
    pub kind: NormKind,
    pub eps: f32,
}

/// Where the block's norms sit around each sub-layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// `x + f(norm(x))` (LLaMA).
    Pre,
    /// `x + post_norm(f(pre_norm(x)))` (Gemma 2/3).
    Sandwich,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
    /// The tanh GELU as llama.cpp's CPU backend computes it: looked up in a table indexed by
    /// the f16 input and holding f16 outputs (identity above 10, zero below -10). GGUF models
    /// use it so that results agree with llama.cpp.
    GeluTanhF16,
    Gelu,
    Relu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ffn {
    /// `down(act(up(x)))`.
    Plain { act: Activation },
    /// `down(act(gate(x)) * up(x))`: SwiGLU with Silu, GeGLU with Gelu*.
    Gated { act: Activation },
}

/// Which pairs of a head's dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF `llama` (its converter permutes Q/K), GPT-J.
    Interleaved,
    /// Halves `(i, i + d/2)`: GPT-NeoX, Gemma, HF LLaMA.
    Half,
}

/// Scaling of RoPE frequencies for contexts beyond training (more variants in the long-context work).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: positions divided by `factor`.
    Linear {
        factor: f32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f32,
    /// Rotated dimensions per head (`<= head_dim`; partial rotary when smaller).
    pub dims: usize,
    pub layout: RopeLayout,
    pub scaling: RopeScaling,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Position {
    /// No positional signal in the block (learned absolute positions live in the embedding).
    None,
    Rope(RopeSpec),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplier on `q . k` (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Where the multiplier is applied; it changes rounding, not the mathematics.
    pub scale_at: ScaleAt,
    /// `cap * tanh(scores / cap)` before the softmax (Gemma 2).
    pub softcap: Option<f32>,
    /// RMSNorm over each head's q and k before RoPE (Gemma 3, Qwen 3).
    pub qk_norm: bool,
    pub bias: bool,
}

/// Where the attention scale is applied. With f16 attention operands the two differ in
/// rounding (small scaled queries fall into f16's subnormal range), so each family uses its
/// reference implementation's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleAt {
    /// On the scores, inside the softmax (LLaMA and most families).
    Scores,
    /// On the queries before the product (Gemma's `query_pre_attn_scalar`).
    Queries,
}

/// What differs from one layer to the next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerPlan {
    /// Sliding window: a query at `p` sees keys at `p - window + 1 ..= p`. `None`: global.
    pub window: Option<usize>,
    pub position: Position,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: String,
    pub topology: Topology,
    pub vocab_size: usize,
    /// `C`.
    pub hidden: usize,
    pub ffn_hidden: usize,
    pub attn: AttentionSpec,
    pub norm: NormSpec,
    pub placement: NormPlacement,
    pub ffn: Ffn,
    /// Multiplies the token embeddings (Gemma: `sqrt(C)`).
    pub embed_scale: Option<f32>,
    /// `cap * tanh(logits / cap)` on the output logits.
    pub final_softcap: Option<f32>,
    pub tied_embeddings: bool,
    pub layers: Vec<LayerPlan>,
    /// Training context length.
    pub context_length: usize,
}

impl ModelConfig {
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Checked once at load, so the forward code can rely on these.
    pub fn validate(&self) -> Result<()> {
        let a = &self.attn;
        if a.n_heads == 0 || a.n_kv_heads == 0 || a.head_dim == 0 {
            bail!("model config: head counts and head size must be positive (heads {}, kv heads {}, head size {})", a.n_heads, a.n_kv_heads, a.head_dim);
        }
        if !a.n_heads.is_multiple_of(a.n_kv_heads) {
            bail!(
                "model config: {} attention heads are not a multiple of {} KV heads",
                a.n_heads,
                a.n_kv_heads
            );
        }
        if self.hidden == 0 || self.vocab_size == 0 || self.layers.is_empty() {
            bail!("model config: hidden size, vocabulary and layer count must be positive");
        }
        for (il, l) in self.layers.iter().enumerate() {
            if let Position::Rope(r) = l.position {
                if r.dims == 0 || r.dims > a.head_dim || r.dims % 2 != 0 {
                    bail!("model config: layer {il} rotates {} dims of a {}-dim head (must be even and <= head size)", r.dims, a.head_dim);
                }
            }
            if l.window == Some(0) {
                bail!("model config: layer {il} has a zero-size sliding window");
            }
        }
        Ok(())
    }
}
