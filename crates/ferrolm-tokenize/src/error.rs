//! The one error type of this crate: each message says what is wrong and what to do.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TokenizeError {
    #[error(
        "unsupported tokenizer model '{0}' (tokenizer.ggml.model); supported: gpt2, llama, gemma"
    )]
    UnsupportedModel(String),

    #[error(
        "unknown pre-tokenizer profile '{name}' (tokenizer.ggml.pre); supported: {supported}; \
         ferrolm refuses rather than guess"
    )]
    UnknownPreTokenizer { name: String, supported: String },

    #[error("the model file has no vocabulary ('{0}' missing); ferrolm needs a GGUF that carries its tokenizer")]
    MissingMetadata(&'static str),

    #[error("vocabulary is invalid: {0}; re-export the GGUF or check the metadata reader")]
    InvalidVocab(String),

    #[error(
        "the vocabulary asks for a {which} token (tokenizer.ggml.add_{which}_token) but has no \
         {which} id; set tokenizer.ggml.{which}_token_id or encode with add_special=false"
    )]
    MissingSpecial { which: &'static str },

    #[error(
        "cannot encode {ch:?}: the vocabulary has no token, no byte token <0x{byte:02X}> and no \
         unknown token for it"
    )]
    Unencodable { ch: char, byte: u8 },

    #[error("byte-level BPE backend failed: {0}")]
    Backend(String),

    #[error(
        "cannot load Hugging Face tokenizer '{path}': {reason}; it must be a tokenizer.json \
         written by the tokenizers library (transformers' fast tokenizers)"
    )]
    HfLoad { path: String, reason: String },

    #[error("Hugging Face tokenizer failed: {0}")]
    HfBackend(String),

    #[error("{what} needs a Hugging Face tokenizer (tokenizer.json); this one comes from a GGUF vocabulary")]
    NotHf { what: &'static str },

    #[error("chat template does not compile: {0}")]
    TemplateCompile(String),

    #[error("chat template failed to render: {0}")]
    TemplateRender(String),
}
