//! The token table and what llama.cpp derives from it: per-token attributes, special ids and the
//! end-of-generation set.
//!
//! llama.cpp does not take `tokenizer.ggml.token_type` at face value: it promotes tokens whose
//! text looks like an end-of-turn or fill-in-the-middle marker to CONTROL, marks control tokens
//! named `unused` as UNUSED, and builds the end-of-generation (EOG) set from token texts. Those
//! rules change how text is split around special tokens and how ids decode, so they are
//! reproduced here as tables (`llama_vocab::impl::load` in llama-vocab.cpp).

use std::collections::HashMap;

use crate::TokenizeError;

/// Everything the tokenizer needs, as read from GGUF metadata by the caller (this crate does not
/// parse GGUF). Field names follow the `tokenizer.ggml.*` keys.
#[derive(Debug, Clone, Default)]
pub struct VocabSpec {
    /// `tokenizer.ggml.model`: "gpt2" | "llama" | "gemma".
    pub model: String,
    /// `tokenizer.ggml.pre`: pre-tokenizer profile of a gpt2 vocabulary ("smollm", "default", ...).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`, see [`TokenType`].
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: "left right" pairs, highest priority first.
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
}

/// Values of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// Token attribute bits (llama.cpp's `llama_token_attr`); a token may carry several.
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
}

fn attr_of_type(t: i32) -> u16 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

/// Token texts llama.cpp takes as the end-of-turn token when `tokenizer.ggml.eot_token_id` is
/// absent. llama.cpp picks whichever it meets first in hash order; we pick by this order.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Fill-in-the-middle markers: llama.cpp forces them to CONTROL; the pad, repo and separator
/// markers also end generation.
const FIM_PRE: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP: &[&str] = &["<|file_sep|>"];

/// Token texts that end generation (and are forced to CONTROL).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// gpt-oss markers llama.cpp always renders (forced to USER_DEFINED).
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Which algorithm turns plain text into ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// SentencePiece: `tokenizer.ggml.model` = "llama" | "gemma".
    Spm,
    /// Byte-level BPE: `tokenizer.ggml.model` = "gpt2".
    Bpe,
}

impl Family {
    pub(crate) fn of_model(model: &str) -> Result<Family, TokenizeError> {
        match model {
            "llama" | "gemma" => Ok(Family::Spm),
            "gpt2" => Ok(Family::Bpe),
            other => Err(TokenizeError::UnsupportedModel(other.to_string())),
        }
    }
}

/// Defaults that depend on the family and pre-tokenizer profile, overridden by metadata.
pub(crate) struct VocabDefaults {
    pub add_bos: bool,
}

#[derive(Debug)]
pub(crate) struct Vocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u16>,
    /// Text -> id; for duplicate texts the last id wins, as in llama.cpp.
    pub token_to_id: HashMap<String, u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Sorted end-of-generation ids.
    pub eog: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
}

impl Vocab {
    pub(crate) fn new(
        spec: &VocabSpec,
        family: Family,
        defaults: VocabDefaults,
    ) -> Result<Vocab, TokenizeError> {
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizeError::InvalidVocab(
                "tokenizer.ggml.tokens is empty".into(),
            ));
        }
        let tokens: Vec<String> = spec
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect();
        let scores = match &spec.scores {
            Some(s) if s.len() < n => {
                return Err(TokenizeError::InvalidVocab(format!(
                    "{} scores for {n} tokens (tokenizer.ggml.scores)",
                    s.len()
                )))
            }
            Some(s) => s[..n].to_vec(),
            None => vec![0.0; n],
        };
        let mut attrs = match &spec.token_types {
            Some(t) if t.len() < n => {
                return Err(TokenizeError::InvalidVocab(format!(
                    "{} token types for {n} tokens (tokenizer.ggml.token_type)",
                    t.len()
                )))
            }
            Some(t) => t[..n].iter().map(|&t| attr_of_type(t)).collect(),
            None => vec![attr::NORMAL; n],
        };
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32);
        }

        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let spm_default = |id: u32| (family == Family::Spm).then_some(id);
        let bos = in_range(spec.bos_id).or(in_range(spm_default(1)));
        let eos = in_range(spec.eos_id).or(in_range(spm_default(2)));
        let unk = in_range(spec.unk_id).or(in_range(spm_default(0)));
        let pad = in_range(spec.pad_id);

        let find = |texts: &[&str]| texts.iter().find_map(|t| token_to_id.get(*t).copied());
        let mut force_control = |id: u32| attrs[id as usize] |= attr::CONTROL;

        let eot = match in_range(spec.eot_id) {
            Some(id) => Some(id),
            None => find(EOT_TEXTS).inspect(|&id| force_control(id)),
        };
        let eom = find(&["<|eom_id|>"]).inspect(|&id| force_control(id));
        let mut eog: Vec<u32> = Vec::new();
        for (texts, ends_generation) in [
            (FIM_PRE, false),
            (FIM_SUF, false),
            (FIM_MID, false),
            (FIM_PAD, true),
            (FIM_REP, true),
            (FIM_SEP, true),
        ] {
            if let Some(id) = find(texts) {
                force_control(id);
                if ends_generation {
                    eog.push(id);
                }
            }
        }
        for (text, &id) in &token_to_id {
            if attrs[id as usize] & attr::CONTROL != 0 && text.contains("unused") {
                attrs[id as usize] |= attr::UNUSED;
            }
        }
        for text in EOG_TEXTS {
            if let Some(&id) = token_to_id.get(*text) {
                eog.push(id);
                attrs[id as usize] |= attr::CONTROL;
            }
        }
        for text in ALWAYS_RENDERED {
            if let Some(&id) = token_to_id.get(*text) {
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();

        let has = |eog: &[u32], t: &str| eog.iter().any(|&id| tokens[id as usize] == t);
        // gpt-oss / solar-open: "<|end|>" ends a message, not the generation.
        if (has(&eog, "<|return|>") && has(&eog, "<|call|>")
            || has(&eog, "<|calls|>") && has(&eog, "<|flush|>"))
            && has(&eog, "<|end|>")
        {
            let end = token_to_id["<|end|>"];
            eog.retain(|&id| id != end);
            attrs[end as usize] = attr::USER_DEFINED;
        }
        // gemma4 and plamo2 use "</s>" as a normal token.
        if (has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>")) && has(&eog, "</s>") {
            let s = token_to_id["</s>"];
            eog.retain(|&id| id != s);
            attrs[s as usize] = attr::NORMAL;
        }

        Ok(Vocab {
            tokens,
            scores,
            attrs,
            token_to_id,
            bos,
            eos,
            eot,
            unk,
            pad,
            eog,
            add_bos: spec.add_bos.unwrap_or(defaults.add_bos),
            add_eos: spec.add_eos.unwrap_or(false),
            add_space_prefix: spec.add_space_prefix.unwrap_or(family == Family::Spm),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn attr(&self, id: u32) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    pub(crate) fn get(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// SentencePiece byte-fallback token for one byte: `<0xXX>`, else the byte as a one-char
    /// token (llama.cpp's `byte_to_token`).
    pub(crate) fn spm_byte_token(&self, byte: u8) -> Option<u32> {
        self.get(&format!("<0x{byte:02X}>")).or_else(|| {
            let s = [byte];
            std::str::from_utf8(&s).ok().and_then(|s| self.get(s))
        })
    }
}
