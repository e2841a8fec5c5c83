//! Model specs: the enums and structs that describe a transformer, validated once at load.
//!
//! A family's `arch/` file maps its metadata onto these; the one block in `block.rs` reads them.
//! MHA, GQA and MQA are values of `n_kv_heads`; RoPE layouts and scalings are enum values.

use anyhow::{bail, Result};

/// How a model's layers are arranged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One causal stack with an LM head (GPT, LLaMA, ...).
    Decoder,
    /// One bidirectional stack; the output is its hidden states (BERT).
    Encoder,
    /// A bidirectional encoder run once and a causal decoder that cross-attends to it (T5, BART).
    EncoderDecoder,
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
    /// `norm(x + f(x))` (BERT, BART, OPT-350m).
    Post,
}

/// How the attention and feed-forward sub-layers combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    /// `x += attn(..); x += ffn(..)`.
    Sequential,
    /// `x += attn(norm1(x)) + ffn(norm2(x))` (GPT-J, GPT-NeoX, Falcon, Phi); with `shared_norm`
    /// one norm feeds both.
    Parallel { shared_norm: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
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
    /// A router picks `top_k` of `experts` gated feed-forwards per token (Mixtral; Switch at
    /// `top_k = 1`), weighted by the softmax of the router logits (renormalised over the chosen
    /// ones when `norm_topk`); `shared` adds an always-on expert scaled by `sigmoid(gate(x))`
    /// (Qwen2-MoE). Layers whose plan says `moe: false` use `Gated { act }`.
    Moe(MoeSpec),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeSpec {
    pub act: Activation,
    pub experts: usize,
    pub top_k: usize,
    pub norm_topk: bool,
    pub shared: bool,
}

/// Which pairs of a head's dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF `llama` (its converter permutes Q/K), GPT-J.
    Interleaved,
    /// Halves `(i, i + d/2)`: GPT-NeoX, Gemma, HF LLaMA.
    Half,
}

/// Scaling of RoPE frequencies for contexts beyond training. `orig` is the training context.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Dynamic NTK: when a call reaches past `orig` positions, the base grows with its length.
    Dynamic {
        factor: f32,
        orig: usize,
    },
    /// YaRN: per-frequency blend of interpolation and extrapolation, plus an attention factor.
    Yarn {
        factor: f32,
        orig: usize,
        beta_fast: f32,
        beta_slow: f32,
        /// Multiplies cos/sin (`None`: from `factor`, `mscale`, `mscale_all_dim`).
        attn_factor: Option<f32>,
        mscale: f32,
        mscale_all_dim: f32,
        truncate: bool,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high kept, a smooth ramp between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        orig: usize,
    },
    /// LongRoPE (Phi-3): per-dimension divisors, `short` within `orig` positions, `long` beyond.
    LongRope {
        short: std::sync::Arc<[f32]>,
        long: std::sync::Arc<[f32]>,
        orig: usize,
        attn_factor: f32,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f32,
    /// Rotated dimensions per head (`<= head_dim`; partial rotary when smaller).
    pub dims: usize,
    pub layout: RopeLayout,
    pub scaling: RopeScaling,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Position {
    /// No positional signal in the block (learned absolute positions live in the embedding).
    None,
    Rope(RopeSpec),
    /// Linear biases `slope_h * (k_pos - q_pos)` on the scores (BLOOM, MPT, Falcon-RW).
    Alibi(AlibiSlopes),
    /// T5's learned per-head bias over log-spaced relative-distance buckets; the table belongs
    /// to the stack (the first layer's weight, shared by all).
    Relative(RelativeSpec),
}

/// How ALiBi slopes are laid out for a head count that is not a power of two.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AlibiSlopes {
    /// BLOOM's: the closest power of two, then every other slope of the doubled count.
    Bloom,
    /// BLOOM's slopes with the bias added before the `1/sqrt(D)` scale (Falcon-RW).
    BloomScaled,
    /// MPT's: `2^-(max_bias * i / n')` over the next power of two `n'`, odd ones first.
    Mpt { max_bias: f32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelativeSpec {
    pub buckets: usize,
    pub max_distance: usize,
    /// Encoders look both ways (half the buckets each); decoders only back.
    pub bidirectional: bool,
}

/// What is added to the token embeddings before the first block.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct EmbedSpec {
    /// Learned absolute positions, looked up at `position + offset` (OPT and BART: 2).
    pub learned_pos: Option<usize>,
    /// Token-type (segment) embeddings (BERT).
    pub token_types: bool,
    /// A norm over the summed embeddings (BERT, BLOOM, BART).
    pub norm: bool,
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
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    /// Sliding window: a query at `p` sees keys at `p - window + 1 ..= p`. `None`: global.
    pub window: Option<usize>,
    pub position: Position,
    /// A mixture-of-experts feed-forward here (when `Ffn::Moe`); dense otherwise.
    pub moe: bool,
}

impl LayerPlan {
    pub fn new(window: Option<usize>, position: Position) -> Self {
        Self {
            window,
            position,
            moe: true,
        }
    }
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
    pub residual: Residual,
    pub ffn: Ffn,
    pub embed: EmbedSpec,
    /// A norm after the last block (absent in post-norm stacks such as BERT and BART).
    pub final_norm: bool,
    /// Multiplies the decoder output before a tied head (T5: `C^-0.5`).
    pub head_scale: Option<f32>,
    /// Multiplies the token embeddings (Gemma: `sqrt(C)`).
    pub embed_scale: Option<f32>,
    /// `cap * tanh(logits / cap)` on the output logits.
    pub final_softcap: Option<f32>,
    pub tied_embeddings: bool,
    /// The decoder's (or, for `Encoder`, the encoder's) layers.
    pub layers: Vec<LayerPlan>,
    /// The encoder's layers of an encoder-decoder model.
    pub encoder_layers: Vec<LayerPlan>,
    /// Training context length.
    pub context_length: usize,
}

impl Default for ModelConfig {
    /// A pre-norm RMSNorm SwiGLU decoder without positions; arch files override what differs.
    fn default() -> Self {
        ModelConfig {
            arch: String::new(),
            topology: Topology::Decoder,
            vocab_size: 0,
            hidden: 0,
            ffn_hidden: 0,
            attn: AttentionSpec {
                n_heads: 0,
                n_kv_heads: 0,
                head_dim: 0,
                scale: 1.0,
                scale_at: ScaleAt::Scores,
                softcap: None,
                qk_norm: false,
            },
            norm: NormSpec {
                kind: NormKind::Rms,
                eps: 1e-5,
            },
            placement: NormPlacement::Pre,
            residual: Residual::Sequential,
            ffn: Ffn::Gated {
                act: Activation::Silu,
            },
            embed: EmbedSpec::default(),
            final_norm: true,
            head_scale: None,
            embed_scale: None,
            final_softcap: None,
            tied_embeddings: false,
            layers: Vec::new(),
            encoder_layers: Vec::new(),
            context_length: 0,
        }
    }
}

impl AttentionSpec {
    /// `H` heads of `D` dims over `Hkv` KV heads, scaled by `1/sqrt(D)` on the scores.
    pub fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        AttentionSpec {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            scale_at: ScaleAt::Scores,
            softcap: None,
            qk_norm: false,
        }
    }
}

impl ModelConfig {
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Gives every (decoder) layer the same positional scheme.
    pub fn set_position(&mut self, p: Position) {
        self.layers.iter_mut().for_each(|l| l.position = p.clone());
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
        if (self.topology == Topology::EncoderDecoder) == self.encoder_layers.is_empty() {
            bail!("model config: an encoder-decoder needs encoder layers, other topologies none");
        }
        if let Ffn::Moe(m) = self.ffn {
            if m.top_k == 0 || m.top_k > m.experts {
                bail!(
                    "model config: {} experts per token out of {} (must be 1..=experts)",
                    m.top_k,
                    m.experts
                );
            }
        }
        for (il, l) in self.layers.iter().chain(&self.encoder_layers).enumerate() {
            if let Position::Rope(r) = &l.position {
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
