//! ferrolm-engine: loading a model with its tokenizer and template, the model catalog, and
//! generation sessions with stop conditions and streaming.

pub mod catalog;
mod constrained;
pub mod convert;
pub mod decode;
pub mod generate;
pub mod load;
pub mod longctx;
pub mod lora;
pub mod search;
pub mod serve;

pub use decode::{Decoding, DolaLayers, Draft, SpecStats, Speculative};
pub use ferrolm_constrain as constrain;
pub use ferrolm_tokenize::vocab_spec;
pub use generate::{
    generate, generate_tokens, FinishReason, GenerateOutput, GenerateRequest, Utf8Stream,
};
pub use load::{load, load_with, open_gguf, LoadedModel};
