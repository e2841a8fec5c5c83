//! Token sampling: a chain of small stateful logits processors ending in a terminal picker.
//!
//! ```text
//! logits row -> Candidates -> LogitBias -> Penalties -> TopK -> TailFree -> Typical
//!            -> TopP -> MinP -> Temperature -> Dist (or: -> Greedy) -> token -> accept()
//! ```
//!
//! - [`Candidates`]: ids, logits and probabilities that processors sort and truncate.
//! - [`LogitsProcessor`] / [`TokenPicker`]: the two stage traits (`apply/accept/reset`
//!   and `pick/reset`), as in llama.cpp's sampler API.
//! - [`SamplerChain`]: runs the stages and feeds each sampled token back to them.
//! - [`SamplingParams`]: user-facing knobs, validation and the standard chain builder.
//! - [`StopMatcher`]: stop-string detection over streamed text.
//! - [`beam_search`]: Hugging Face's beam search over a caller-owned [`BeamModel`].
//!
//! Sampling is deterministic: the same seed and the same sequence of logits rows give the
//! same tokens. NaN logits count as `-inf`; no input makes a stage panic except an empty
//! logits row.
//!
//! ```
//! use ferrolm_sample::SamplingParams;
//! let params = SamplingParams { seed: 1, ..SamplingParams::default() };
//! params.validate().unwrap();
//! let mut chain = params.build_chain();
//! for &prompt_token in &[1, 2, 3] {
//!     chain.accept(prompt_token); // penalties see the prompt
//! }
//! let token = chain.sample(&[0.1, 2.0, -1.0, 0.5]);
//! assert!(token < 4);
//! ```

pub mod beam;
mod candidates;
mod chain;
mod params;
mod pickers;
mod processors;
mod stop;

pub use beam::{beam_search, BeamHyp, BeamModel, BeamParams, EarlyStopping};
pub use candidates::Candidates;
pub use chain::{LogitsProcessor, SamplerChain, TokenPicker};
pub use params::{SampleError, SamplingParams, DEFAULT_SEED};
pub use pickers::{argmax, Dist, Greedy, Mirostat2};
pub use processors::{
    LogitBias, MinP, Penalties, PenaltyConfig, TailFree, Temperature, TopK, TopP, Typical,
};
pub use stop::{StopMatcher, StopState};

/// Index of a token in the vocabulary.
pub type TokenId = u32;
