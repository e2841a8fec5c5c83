//! Text <-> token ids for GGUF vocabularies and Hugging Face `tokenizer.json` files, and chat
//! templates.
//!
//! The contract is llama.cpp's: for the same vocabulary, [`Tokenizer::encode`] returns the ids
//! `llama_tokenize` returns, and [`Tokenizer::decode`] the text `llama_detokenize` returns.
//! The caller reads the GGUF metadata and fills a [`VocabSpec`]; this crate never parses GGUF.
//! A `tokenizer.json` ([`Tokenizer::from_hf_file`]) follows the Python `tokenizers` library
//! instead: same ids, same decoded text.
//!
//! Code map:
//! - `vocab`: token table, per-token attributes, special ids and the end-of-generation set,
//!   derived from a [`VocabSpec`] the way llama.cpp's `llama_vocab::load` derives them.
//! - `special`: splits text around special-token strings (llama.cpp's `tokenizer_st_partition`).
//! - `spm`: SentencePiece (`tokenizer.ggml.model = llama | gemma`): score-ordered merges,
//!   byte fallback.
//! - `bpe`: byte-level BPE (`tokenizer.ggml.model = gpt2`) on the `tokenizers` crate, with the
//!   pre-tokenizer regex list of each `tokenizer.ggml.pre` profile.
//! - `hf`: `tokenizer.json` through the `tokenizers` crate, with the special ids of the model
//!   directory's side files ([`HfSpecial`]) and per-token bytes for streaming.
//! - `tokenizer`: the [`Tokenizer`] facade (encode, decode, streaming bytes) over both kinds.
//! - `chat`: [`ChatTemplate`], HF-style Jinja chat templates on minijinja.
//!
//! Invariant: for a GGUF vocabulary every plain-text fragment goes through exactly one of
//! `spm`/`bpe`; special-token strings are recognised only by `special`, never by the backends.
//! A `tokenizer.json` goes whole through `tokenizers`, which matches its own added tokens.

mod bpe;
mod chat;
mod error;
mod gguf;
mod hf;
mod special;
mod spm;
mod tokenizer;
mod vocab;

pub use bpe::SUPPORTED_PRE;
pub use chat::{fallback_chatml, ChatMessage, ChatTemplate};
pub use error::TokenizeError;
pub use gguf::vocab_spec;
pub use hf::{hf_chat_template, HfSpecial};
pub use tokenizer::Tokenizer;
pub use vocab::{TokenType, VocabSpec};
