//! Byte-level BPE (`tokenizer.ggml.model = gpt2`) on the `tokenizers` crate.
//!
//! Pipeline per plain-text fragment, as llama.cpp's `llm_tokenizer_bpe`: the profile's regexes
//! split the text one after another (each match and each gap becomes its own piece), every
//! piece is mapped to the GPT-2 byte alphabet, and the merges are applied by rank. The
//! `tokenizers` object holds no added tokens, so it never recognises special tokens itself.
//!
//! A profile is a row of [`PROFILES`]: the `tokenizer.ggml.pre` names that select it, its regex
//! list (copied from llama.cpp's table, which follows each model's `tokenizer.json`) and the
//! flags llama.cpp attaches to it.

use std::collections::HashMap;
use std::sync::OnceLock;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::vocab::Vocab;
use crate::TokenizeError;

/// GPT-2's word regex.
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's word regex (llama.cpp's case-folding-free spelling of the contractions).
const LLAMA3_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's word regex: as Llama 3 but single digits.
const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One pre-tokenizer profile.
pub(crate) struct Profile {
    /// `tokenizer.ggml.pre` values that select this profile.
    pub names: &'static [&'static str],
    /// Applied in order; every match and every gap between matches becomes a piece.
    pub regexes: &'static [&'static str],
    /// Take a whole piece as one token when it is in the vocabulary, before any merge.
    pub ignore_merges: bool,
    /// Default of `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// Detokenizer removes spaces before punctuation and contractions.
    pub clean_spaces: bool,
}

/// The profiles ferrolm supports, from llama.cpp's `llm_tokenizer_bpe` and `llama_vocab::load`.
pub(crate) const PROFILES: &[Profile] = &[
    Profile {
        names: &["default"],
        regexes: &[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_RE,
            r"\p{N}+",
            "[0-9][0-9][0-9]",
        ],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
    },
    Profile {
        names: &["gpt-2", "gpt2", "phi-2", "mpt", "olmo"],
        regexes: &[GPT2_RE],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
    },
    Profile {
        names: &["smollm", "command-r"],
        regexes: &[r"\p{N}", GPT2_RE],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: false,
    },
    Profile {
        names: &["starcoder", "refact", "codeshell"],
        regexes: &[r"\p{N}", GPT2_RE],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
    },
    Profile {
        names: &["llama3", "llama-v3", "llama-bpe", "falcon3"],
        regexes: &[LLAMA3_RE],
        ignore_merges: true,
        add_bos: true,
        clean_spaces: true,
    },
    Profile {
        names: &["qwen2", "deepseek-r1-qwen"],
        regexes: &[QWEN2_RE],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: false,
    },
];

/// Comma-separated `tokenizer.ggml.pre` values ferrolm accepts for gpt2 vocabularies.
pub const SUPPORTED_PRE: &str =
    "default, gpt-2, gpt2, phi-2, mpt, olmo, smollm, command-r, starcoder, refact, codeshell, \
     llama3, llama-v3, llama-bpe, falcon3, qwen2, deepseek-r1-qwen";

impl Profile {
    /// The profile for `tokenizer.ggml.pre`; a missing value means "default", as in llama.cpp.
    pub(crate) fn lookup(pre: Option<&str>) -> Result<&'static Profile, TokenizeError> {
        let name = pre.unwrap_or("default");
        PROFILES
            .iter()
            .find(|p| p.names.contains(&name))
            .ok_or_else(|| TokenizeError::UnknownPreTokenizer {
                name: name.to_string(),
                supported: SUPPORTED_PRE.to_string(),
            })
    }
}

pub(crate) struct BpeEncoder {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for BpeEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BpeEncoder")
    }
}

fn backend(e: impl std::fmt::Display) -> TokenizeError {
    TokenizeError::Backend(e.to_string())
}

impl BpeEncoder {
    pub(crate) fn new(
        vocab: &Vocab,
        merges: &[String],
        profile: &Profile,
    ) -> Result<BpeEncoder, TokenizeError> {
        // A merge "a b" splits at the first space after the first byte (llama.cpp); the
        // first occurrence of a pair keeps its rank.
        let mut seen = std::collections::HashSet::new();
        let mut pairs = Vec::with_capacity(merges.len());
        for m in merges {
            let Some(pos) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                return Err(TokenizeError::InvalidVocab(format!(
                    "merge {m:?} has no space separating its two halves (tokenizer.ggml.merges)"
                )));
            };
            let pair = (m[..pos].to_string(), m[pos + 1..].to_string());
            for half in [&pair.0, &pair.1] {
                if vocab.get(half).is_none() {
                    return Err(TokenizeError::InvalidVocab(format!(
                        "merge {m:?} names {half:?}, which is not a token"
                    )));
                }
            }
            if vocab.get(&format!("{}{}", pair.0, pair.1)).is_none() {
                return Err(TokenizeError::InvalidVocab(format!(
                    "merge {m:?} makes a string that is not a token"
                )));
            }
            if seen.insert(pair.clone()) {
                pairs.push(pair);
            }
        }
        let token_to_id: tokenizers::models::bpe::Vocab = vocab
            .token_to_id
            .iter()
            .map(|(t, &id)| (t.clone(), id))
            .collect();
        let model = BPE::builder()
            .vocab_and_merges(token_to_id, pairs)
            .ignore_merges(profile.ignore_merges)
            .build()
            .map_err(backend)?;

        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for re in profile.regexes {
            let split = Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(backend)?;
            steps.push(split.into());
        }
        steps.push(ByteLevel::new(false, false, false).into());

        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(Sequence::new(steps)));
        Ok(BpeEncoder { inner })
    }

    /// Encode one plain-text fragment, appending ids to `out`.
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizeError> {
        let enc = self.inner.encode_fast(text, false).map_err(backend)?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }
}

/// GPT-2's byte alphabet: printable bytes stand for themselves, the others are shifted to
/// U+0100 and up so every byte is a visible character.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("valid code point")
        };
    }
    table
}

/// Inverse of the byte alphabet: character -> byte.
pub(crate) fn char_to_byte() -> &'static HashMap<char, u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| {
        byte_alphabet()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    })
}

/// The bytes a byte-level token stands for. A character outside the alphabet (not produced by
/// GPT-2 conversion) is kept as its own UTF-8; llama.cpp writes an `[UNK_BYTE_0x..]` marker.
pub(crate) fn decode_byte_level(token: &str, out: &mut Vec<u8>) {
    let map = char_to_byte();
    for c in token.chars() {
        match map.get(&c) {
            Some(&b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

/// llama.cpp's `clean_spaces` detokenizer pass: drop the space before `? ! . ,`, collapse
/// `" ' "` to `'`, and drop the space before `'s 'm 're 've`.
pub(crate) fn clean_spaces(text: &mut Vec<u8>) {
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }
    let mut t = std::mem::take(&mut out);
    let mut i = 0;
    while i < t.len() {
        let x = t[i];
        if i > 0 && x == b'\'' && i + 1 < t.len() && t[i - 1] == b' ' && t[i + 1] == b' ' {
            out.pop();
            out.push(x);
            // The space after the apostrophe goes too; llama.cpp overwrites it with NUL,
            // so it no longer counts as a space for the next position.
            t[i + 1] = 0;
            i += 2;
            continue;
        }
        out.push(x);
        i += 1;
    }
    let t = std::mem::take(&mut out);
    for (i, &x) in t.iter().enumerate() {
        if i > 0 && t[i - 1] == b' ' && x == b'\'' && i + 1 < t.len() {
            let x1 = t[i + 1];
            let x2 = t.get(i + 2).copied();
            let drop = matches!(x1, b's' | b'm')
                || (i + 2 < t.len() && matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e'))));
            if drop {
                out.pop();
            }
        }
        out.push(x);
    }
    *text = out;
}
