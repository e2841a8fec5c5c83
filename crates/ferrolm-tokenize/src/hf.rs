//! Hugging Face `tokenizer.json` tokenizers, run by the `tokenizers` crate.
//!
//! The contract is the Python `tokenizers` library's (the Rust crate is its core): for the same
//! `tokenizer.json`, `encode(text, add_special)` gives `Tokenizer.encode(text,
//! add_special_tokens=add_special).ids` (post-processor templates such as BERT's
//! `[CLS] .. [SEP]` included) and `decode` gives `Tokenizer.decode(ids, skip_special_tokens)`.
//! One deliberate difference: the `truncation` and `padding` sections of `tokenizer.json` are
//! dropped, as `transformers`' fast tokenizers do unless asked;
//! [`crate::Tokenizer::encode_truncated`] truncates on request, the way `transformers` does
//! with `truncation=True, max_length=N`.
//!
//! The special ids the file does not carry (which token is BOS, EOS, PAD, UNK, and which ids
//! end a generation) come from [`HfSpecial`], read from the model directory's side files.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;
use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Sequence};
use tokenizers::utils::truncation::TruncationDirection;
use tokenizers::{ModelWrapper, PostProcessor};

use crate::bpe;
use crate::TokenizeError;

/// Special tokens of a Hugging Face tokenizer, from the files next to `tokenizer.json`.
/// Texts are looked up in the vocabulary; ids are taken as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HfSpecial {
    /// `bos_token` etc. of `special_tokens_map.json`, else of `tokenizer_config.json`.
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
    /// `bos_token_id` of `generation_config.json`, else of `config.json`.
    pub bos_id: Option<u32>,
    /// `eos_token_id` (one id or a list) of `generation_config.json`, else of `config.json`:
    /// the ids `transformers`' `generate` stops at.
    pub eos_ids: Vec<u32>,
    pub pad_id: Option<u32>,
}

impl HfSpecial {
    /// Reads `tokenizer_config.json`, `special_tokens_map.json`, `generation_config.json` and
    /// `config.json` in `dir`, leniently: a missing or unreadable file, or a field of an
    /// unexpected shape, is skipped.
    pub fn from_dir(dir: &Path) -> HfSpecial {
        let json = |name: &str| -> Value {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or(Value::Null)
        };
        let (tok_config, tok_map) = (
            json("tokenizer_config.json"),
            json("special_tokens_map.json"),
        );
        let (gen, config) = (json("generation_config.json"), json("config.json"));
        // transformers lets special_tokens_map.json override tokenizer_config.json.
        let text = |key: &str| token_text(&tok_map[key]).or_else(|| token_text(&tok_config[key]));
        let id = |key: &str| token_id(&gen[key]).or_else(|| token_id(&config[key]));
        let eos_ids = match token_ids(&gen["eos_token_id"]) {
            ids if !ids.is_empty() => ids,
            _ => token_ids(&config["eos_token_id"]),
        };
        HfSpecial {
            bos: text("bos_token"),
            eos: text("eos_token"),
            pad: text("pad_token"),
            unk: text("unk_token"),
            bos_id: id("bos_token_id"),
            eos_ids,
            pad_id: id("pad_token_id"),
        }
    }
}

/// The chat template of a Hugging Face model directory: `chat_template.jinja`, else
/// `tokenizer_config.json`'s `chat_template` (a string, or a list of `{name, template}` from
/// which `default` is taken, else the first).
pub fn hf_chat_template(dir: &Path) -> Option<String> {
    if let Ok(s) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(s);
    }
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let config: Value = serde_json::from_str(&text).ok()?;
    match &config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |name: &str| list.iter().find(|t| t["name"] == name);
            let t = named("default").or_else(|| list.first())?;
            t["template"].as_str().map(str::to_string)
        }
        _ => None,
    }
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|i| u32::try_from(i).ok())
}

fn token_ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Array(items) => items.iter().filter_map(token_id).collect(),
        one => token_id(one).into_iter().collect(),
    }
}

/// One per-token step of the decoder, for [`HfTok::piece`] (see there).
#[derive(Debug, Clone, PartialEq)]
enum PieceStep {
    /// GPT-2 byte alphabet -> bytes; a token with a character outside it stays as its UTF-8.
    ByteLevel,
    /// `<0xAB>` -> the byte 0xAB.
    ByteFallback,
    Replace {
        from: String,
        to: String,
    },
    /// WordPiece: a token starting with `prefix` loses it, any other gains a leading space.
    WordPiece {
        prefix: String,
    },
    /// BPE end-of-word suffix -> space.
    Suffix(String),
}

impl PieceStep {
    /// The steps of a serialized decoder; steps that act on the joined text only (Fuse,
    /// Strip, cleanup) or that ferrolm cannot apply per token (regex Replace, CTC) are left out.
    fn parse(decoder: &Value, out: &mut Vec<PieceStep>) {
        let s = |key: &str| decoder[key].as_str().map(str::to_string);
        match decoder["type"].as_str() {
            Some("Sequence") => {
                for d in decoder["decoders"].as_array().into_iter().flatten() {
                    PieceStep::parse(d, out);
                }
            }
            Some("ByteLevel") => out.push(PieceStep::ByteLevel),
            Some("ByteFallback") => out.push(PieceStep::ByteFallback),
            Some("Replace") => {
                if let (Some(from), Some(to)) =
                    (decoder["pattern"]["String"].as_str(), s("content"))
                {
                    out.push(PieceStep::Replace {
                        from: from.to_string(),
                        to,
                    });
                }
            }
            Some("Metaspace") => out.push(PieceStep::Replace {
                from: s("replacement").unwrap_or_else(|| "▁".into()),
                to: " ".into(),
            }),
            Some("WordPiece") => out.push(PieceStep::WordPiece {
                prefix: s("prefix").unwrap_or_else(|| "##".into()),
            }),
            Some("BPEDecoder") => out.push(PieceStep::Suffix(
                s("suffix").unwrap_or_else(|| "</w>".into()),
            )),
            _ => {}
        }
    }

    fn apply(&self, piece: Vec<u8>) -> Vec<u8> {
        // Steps work on text; bytes that are not UTF-8 (from a byte step) pass unchanged.
        let text = match String::from_utf8(piece) {
            Ok(text) => text,
            Err(e) => return e.into_bytes(),
        };
        match self {
            PieceStep::ByteLevel => {
                let map = bpe::char_to_byte();
                let bytes: Option<Vec<u8>> = text.chars().map(|c| map.get(&c).copied()).collect();
                bytes.unwrap_or_else(|| text.into_bytes())
            }
            PieceStep::ByteFallback => match parse_byte_token(&text) {
                Some(b) => vec![b],
                None => text.into_bytes(),
            },
            PieceStep::Replace { from, to } => text.replace(from.as_str(), to).into_bytes(),
            PieceStep::WordPiece { prefix } => match text.strip_prefix(prefix.as_str()) {
                Some(rest) => rest.as_bytes().to_vec(),
                None => format!(" {text}").into_bytes(),
            },
            PieceStep::Suffix(suffix) => text.replace(suffix.as_str(), " ").into_bytes(),
        }
    }
}

/// `<0xAB>` -> 0xAB.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A `tokenizer.json` tokenizer with its special ids (the HF half of [`crate::Tokenizer`]).
pub(crate) struct HfTok {
    /// No truncation, no padding.
    inner: tokenizers::Tokenizer,
    /// `inner` with `encode_special_tokens`, so special-token strings are plain text; built on
    /// first use by `encode(.., parse_special = false)`.
    literal: OnceLock<tokenizers::Tokenizer>,
    /// id -> token text (model vocabulary and added tokens).
    tokens: Vec<Option<String>>,
    /// Sorted ids of added tokens marked `special`.
    special: Vec<u32>,
    steps: Vec<PieceStep>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    /// Sorted: EOS and `eos_ids`.
    pub eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
}

impl std::fmt::Debug for HfTok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTok")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().replace(['\n', '\r'], " ")
}

impl HfTok {
    pub(crate) fn from_file(path: &Path, special: HfSpecial) -> Result<HfTok, TokenizeError> {
        let load_error = |reason: String| TokenizeError::HfLoad {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| load_error(one_line(e)))?;
        HfTok::from_json(&text, special).map_err(|e| match e {
            TokenizeError::HfLoad { reason, .. } => load_error(reason),
            e => e,
        })
    }

    /// The text of a `tokenizer.json` (e.g. carried inside a converted GGUF).
    pub(crate) fn from_json(text: &str, special: HfSpecial) -> Result<HfTok, TokenizeError> {
        let load_error = |reason: String| TokenizeError::HfLoad {
            path: "<embedded tokenizer.json>".into(),
            reason,
        };
        let mut inner: tokenizers::Tokenizer =
            serde_json::from_str(text).map_err(|e| load_error(one_line(e)))?;
        inner
            .with_truncation(None)
            .map_err(|e| load_error(one_line(e)))?;
        inner.with_padding(None);
        HfTok::new(inner, special)
    }

    fn new(inner: tokenizers::Tokenizer, special: HfSpecial) -> Result<HfTok, TokenizeError> {
        let vocab = inner.get_vocab(true);
        let n = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let mut tokens = vec![None; n];
        for (text, id) in vocab {
            tokens[id as usize] = Some(text);
        }
        let added = inner.get_added_tokens_decoder();
        let mut special_ids: Vec<u32> = added
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        special_ids.sort_unstable();
        let mut steps = Vec::new();
        if let Some(decoder) = inner.get_decoder() {
            if let Ok(v) = serde_json::to_value(decoder) {
                PieceStep::parse(&v, &mut steps);
            }
        }

        let id_of = |t: &Option<String>| t.as_deref().and_then(|t| inner.token_to_id(t));
        let bos = id_of(&special.bos).or(special.bos_id);
        let eos = id_of(&special.eos).or(special.eos_ids.first().copied());
        let pad = id_of(&special.pad).or(special.pad_id);
        let model_unk = match inner.get_model() {
            ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
            ModelWrapper::BPE(m) => m.unk_token.clone(),
            ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
            _ => None,
        };
        let unk = id_of(&special.unk).or_else(|| id_of(&model_unk));
        let eog: BTreeSet<u32> = eos
            .into_iter()
            .chain(special.eos_ids.iter().copied())
            .collect();

        let empty = inner
            .encode("", true)
            .map_err(|e| TokenizeError::HfBackend(one_line(e)))?;
        let ids = empty.get_ids();
        let add_bos = bos.is_some() && ids.first().copied() == bos;
        let add_eos = eos.is_some() && ids.last().copied() == eos;
        Ok(HfTok {
            inner,
            literal: OnceLock::new(),
            tokens,
            special: special_ids,
            steps,
            bos,
            eos,
            pad,
            unk,
            eog: eog.into_iter().collect(),
            add_bos,
            add_eos,
        })
    }

    /// sentence-transformers' `do_lower_case`: a `Lowercase` normalizer goes first unless the
    /// normalizer is, or is a sequence holding, one.
    pub(crate) fn lowercase_input(&mut self) -> Result<(), TokenizeError> {
        let has = |n: &NormalizerWrapper| matches!(n, NormalizerWrapper::Lowercase(_));
        let current = self.inner.get_normalizer().cloned();
        let already = match &current {
            Some(NormalizerWrapper::Sequence(s)) => s.as_ref().iter().any(has),
            Some(n) => has(n),
            None => false,
        };
        if already {
            return Ok(());
        }
        let mut list = vec![NormalizerWrapper::Lowercase(Lowercase)];
        match current {
            Some(NormalizerWrapper::Sequence(s)) => list.extend(s),
            Some(n) => list.push(n),
            None => {}
        }
        self.inner
            .with_normalizer(Some(Sequence::new(list)))
            .map_err(|e| TokenizeError::HfBackend(one_line(e)))?;
        self.literal = OnceLock::new();
        Ok(())
    }

    /// `parse_special = false` treats special-token strings in `text` as plain text (the
    /// `encode_special_tokens` option); non-special added tokens are matched either way.
    pub(crate) fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let tok = if parse_special {
            &self.inner
        } else {
            self.literal.get_or_init(|| {
                let mut t = self.inner.clone();
                t.set_encode_special_tokens(true);
                t
            })
        };
        let enc = tok
            .encode(text, add_special)
            .map_err(|e| TokenizeError::HfBackend(one_line(e)))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `encode(text, add_special = true)` cut to at most `max_len` ids as `transformers` does
    /// with `truncation=True, max_length=max_len`: the text's tokens are cut from the right to
    /// leave room for the post-processor's special tokens, which are then added (so BERT keeps
    /// `[CLS] .. [SEP]`).
    pub(crate) fn encode_truncated(
        &self,
        text: &str,
        max_len: usize,
    ) -> Result<Vec<u32>, TokenizeError> {
        let backend = |e: tokenizers::Error| TokenizeError::HfBackend(one_line(e));
        let mut enc = self.inner.encode(text, false).map_err(backend)?;
        let Some(processor) = self.inner.get_post_processor() else {
            let mut ids = enc.get_ids().to_vec();
            ids.truncate(max_len);
            return Ok(ids);
        };
        let room = max_len.saturating_sub(processor.added_tokens(false));
        if enc.len() > room {
            enc.truncate(room, 0, TruncationDirection::Right);
        }
        let enc = processor.process(enc, None, true).map_err(backend)?;
        Ok(enc.get_ids().to_vec())
    }

    /// `Tokenizer.decode(ids, skip_special_tokens = !render_special)`; ids out of range are
    /// skipped.
    pub(crate) fn decode(&self, ids: &[u32], render_special: bool) -> String {
        self.inner.decode(ids, !render_special).unwrap_or_default()
    }

    /// The bytes one token adds to a stream: the decoder's per-token steps (byte-level or
    /// `<0xAB>` bytes, `▁` -> space, WordPiece `##` joins) without the whole-text ones, so a
    /// first token keeps the leading space `decode` would strip, and WordPiece's cleanup of
    /// spaces before punctuation is not applied. Special tokens give nothing unless
    /// `render_special`.
    pub(crate) fn piece(&self, id: u32, render_special: bool) -> Vec<u8> {
        let Some(Some(text)) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if !render_special && self.is_special(id) {
            return Vec::new();
        }
        self.steps
            .iter()
            .fold(text.clone().into_bytes(), |piece, step| step.apply(piece))
    }

    pub(crate) fn is_special(&self, id: u32) -> bool {
        self.special.binary_search(&id).is_ok()
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    pub(crate) fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)?.as_deref()
    }
}
