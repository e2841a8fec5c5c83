//! The [`Tokenizer`] facade: one type over GGUF vocabularies (both families) and Hugging Face
//! `tokenizer.json` files.

use std::path::Path;

use crate::bpe::{self, BpeEncoder, Profile};
use crate::hf::{HfSpecial, HfTok};
use crate::special::{Fragment, SpecialMatcher};
use crate::spm;
use crate::vocab::{attr, Family, Vocab, VocabDefaults};
use crate::{TokenizeError, VocabSpec};

/// Text <-> ids. From a GGUF vocabulary it gives llama.cpp's results; from a `tokenizer.json`,
/// those of the Hugging Face `tokenizers` library (see `hf`). Every method works for both.
#[derive(Debug)]
pub struct Tokenizer {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Gguf(Box<GgufTok>),
    Hf(Box<HfTok>),
}

/// A GGUF vocabulary with its encoder.
#[derive(Debug)]
struct GgufTok {
    vocab: Vocab,
    specials: SpecialMatcher,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Spm,
    Bpe {
        encoder: Box<BpeEncoder>,
        clean_spaces: bool,
    },
}

impl Tokenizer {
    pub fn from_vocab(spec: VocabSpec) -> Result<Tokenizer, TokenizeError> {
        let family = Family::of_model(&spec.model)?;
        let (vocab, backend) = match family {
            Family::Spm => {
                let vocab = Vocab::new(&spec, family, VocabDefaults { add_bos: true })?;
                (vocab, Backend::Spm)
            }
            Family::Bpe => {
                let profile = Profile::lookup(spec.pre.as_deref())?;
                let vocab = Vocab::new(
                    &spec,
                    family,
                    VocabDefaults {
                        add_bos: profile.add_bos,
                    },
                )?;
                let merges = spec.merges.as_deref().ok_or_else(|| {
                    TokenizeError::InvalidVocab(
                        "a gpt2 vocabulary needs tokenizer.ggml.merges".into(),
                    )
                })?;
                let encoder = Box::new(BpeEncoder::new(&vocab, merges, profile)?);
                (
                    vocab,
                    Backend::Bpe {
                        encoder,
                        clean_spaces: profile.clean_spaces,
                    },
                )
            }
        };
        let specials = SpecialMatcher::new(&vocab);
        let kind = Kind::Gguf(Box::new(GgufTok {
            vocab,
            specials,
            backend,
        }));
        Ok(Tokenizer { kind })
    }

    /// A Hugging Face `tokenizer.json`; `special` names its BOS/EOS/PAD/UNK tokens and the ids
    /// that end a generation (usually [`HfSpecial::from_dir`] of the model directory). The
    /// file's `truncation` and `padding` sections are ignored (see
    /// [`Tokenizer::encode_truncated`]).
    pub fn from_hf_file(path: &Path, special: HfSpecial) -> Result<Tokenizer, TokenizeError> {
        let tok = HfTok::from_file(path, special)?;
        Ok(Tokenizer {
            kind: Kind::Hf(Box::new(tok)),
        })
    }

    /// A `tokenizer.json`'s text (as `ferrolm convert` carries it inside GGUF).
    pub fn from_hf_json(text: &str, special: HfSpecial) -> Result<Tokenizer, TokenizeError> {
        let tok = HfTok::from_json(text, special)?;
        Ok(Tokenizer {
            kind: Kind::Hf(Box::new(tok)),
        })
    }

    /// sentence-transformers' `do_lower_case`: a `Lowercase` normalizer runs before the
    /// tokenizer's own (unless it has one). Hugging Face tokenizers only.
    pub fn with_lowercase(mut self) -> Result<Tokenizer, TokenizeError> {
        match &mut self.kind {
            Kind::Hf(t) => t.lowercase_input()?,
            Kind::Gguf(_) => {
                return Err(TokenizeError::NotHf {
                    what: "do_lower_case",
                })
            }
        }
        Ok(self)
    }

    /// Whether this tokenizer comes from a `tokenizer.json`.
    pub fn is_hf(&self) -> bool {
        matches!(self.kind, Kind::Hf(_))
    }

    /// Text to ids. GGUF: llama.cpp's `llama_tokenize(text, add_special, parse_special)`:
    /// `add_special` adds BOS and EOS as the metadata asks; `parse_special` lets control-token
    /// strings in the text become their ids (user-defined tokens are matched either way, as in
    /// llama.cpp). Hugging Face: `Tokenizer.encode(text, add_special_tokens = add_special)`,
    /// the post-processor's template included; `parse_special = false` treats special-token
    /// strings as text (`encode_special_tokens`).
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        match &self.kind {
            Kind::Gguf(t) => t.encode(text, add_special, parse_special),
            Kind::Hf(t) => t.encode(text, add_special, parse_special),
        }
    }

    /// `encode(text, add_special = true, parse_special = true)` cut to at most `max_len` ids,
    /// keeping the added special tokens, as `transformers` does with `truncation=True,
    /// max_length=max_len` (what sentence-transformers does with `max_seq_length`): the text's
    /// tokens are cut from the right and BOS/EOS or the post-processor's tokens (BERT's
    /// `[CLS] .. [SEP]`) are kept.
    pub fn encode_truncated(&self, text: &str, max_len: usize) -> Result<Vec<u32>, TokenizeError> {
        match &self.kind {
            Kind::Gguf(t) => t.encode_truncated(text, max_len),
            Kind::Hf(t) => t.encode_truncated(text, max_len),
        }
    }

    /// Ids to text. GGUF: llama.cpp's `llama_detokenize(remove_special = false,
    /// unparse_special = render_special)`: control tokens render as nothing unless
    /// `render_special`; byte tokens are joined before the UTF-8 check, so only a sequence
    /// that is still incomplete at the very end is replaced (U+FFFD). Hugging Face:
    /// `Tokenizer.decode(ids, skip_special_tokens = !render_special)`. Ids out of range are
    /// skipped.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        match &self.kind {
            Kind::Gguf(t) => t.decode(ids, render_special),
            Kind::Hf(t) => t.decode(ids, render_special),
        }
    }

    /// Raw bytes of one token, for streaming: the caller accumulates bytes until they form
    /// valid UTF-8. Control (special) tokens give nothing unless `render_special`. For a
    /// Hugging Face tokenizer the whole-text steps of its decoder are left out (see `hf`).
    pub fn token_bytes(&self, id: u32, render_special: bool) -> Vec<u8> {
        match &self.kind {
            Kind::Gguf(t) => {
                let mut out = Vec::new();
                t.piece(id, render_special, &mut out);
                out
            }
            Kind::Hf(t) => t.piece(id, render_special),
        }
    }

    /// The number of ids (GGUF: tokens; Hugging Face: largest id + 1, added tokens included).
    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.len(),
            Kind::Hf(t) => t.vocab_size(),
        }
    }
    pub fn bos_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.bos,
            Kind::Hf(t) => t.bos,
        }
    }
    pub fn eos_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.eos,
            Kind::Hf(t) => t.eos,
        }
    }
    /// End-of-turn id: `tokenizer.ggml.eot_token_id`, else the first of llama.cpp's
    /// end-of-turn texts present (`<|eot_id|>`, `<|im_end|>`, `<|end|>`, `<end_of_turn>`, ...).
    /// Always `None` for a Hugging Face tokenizer, whose stop ids are all in
    /// [`Tokenizer::end_of_generation_ids`].
    pub fn eot_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.eot,
            Kind::Hf(_) => None,
        }
    }
    pub fn unk_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.unk,
            Kind::Hf(t) => t.unk,
        }
    }
    pub fn pad_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.pad,
            Kind::Hf(t) => t.pad,
        }
    }
    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.add_bos,
            Kind::Hf(t) => t.add_bos,
        }
    }
    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.add_eos,
            Kind::Hf(t) => t.add_eos,
        }
    }
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.get(s),
            Kind::Hf(t) => t.token_to_id(s),
        }
    }
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.tokens.get(id as usize).map(String::as_str),
            Kind::Hf(t) => t.id_to_token(id),
        }
    }
    /// All ids that end a generation, sorted. GGUF: llama.cpp's EOG set (EOS, EOT, and tokens
    /// named like `<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, `<|endoftext|>`, `</s>`, ...).
    /// Hugging Face: EOS and the `eos_token_id`s of [`HfSpecial`], as `transformers` stops.
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.eog.clone(),
            Kind::Hf(t) => t.eog.clone(),
        }
    }
    /// Whether `id` is a control token: GGUF after llama.cpp's promotions of EOG/FIM-looking
    /// tokens; Hugging Face an added token marked `special`.
    pub fn is_control(&self, id: u32) -> bool {
        match &self.kind {
            Kind::Gguf(t) => t.vocab.attr(id) & attr::CONTROL != 0,
            Kind::Hf(t) => t.is_special(id),
        }
    }
}

impl GgufTok {
    fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let v = &self.vocab;
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && v.add_bos {
            out.push(
                v.bos
                    .ok_or(TokenizeError::MissingSpecial { which: "bos" })?,
            );
        }
        // SentencePiece: a fragment at the start or after a special token gets the prefix space.
        let mut prev_special = true;
        for fragment in self.specials.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(s) => {
                    match &self.backend {
                        Backend::Spm => {
                            let escaped = spm::escape(s, v.add_space_prefix && prev_special);
                            spm::tokenize(v, &escaped, &mut out)?;
                        }
                        Backend::Bpe { encoder, .. } => encoder.encode(s, &mut out)?,
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && v.add_eos {
            out.push(
                v.eos
                    .ok_or(TokenizeError::MissingSpecial { which: "eos" })?,
            );
        }
        Ok(out)
    }

    fn encode_truncated(&self, text: &str, max_len: usize) -> Result<Vec<u32>, TokenizeError> {
        let mut ids = self.encode(text, true, true)?;
        if ids.len() <= max_len {
            return Ok(ids);
        }
        let v = &self.vocab;
        let eos = if v.add_eos { ids.pop() } else { None };
        let first = usize::from(v.add_bos);
        let room = max_len.saturating_sub(first + usize::from(eos.is_some()));
        ids.truncate(first + room);
        ids.extend(eos);
        Ok(ids)
    }

    fn decode(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        // The first token loses one leading space when the encoder adds a prefix space.
        let mut strip_space = self.vocab.add_space_prefix;
        for &id in ids {
            let start = bytes.len();
            self.piece(id, render_special, &mut bytes);
            if strip_space && bytes.get(start) == Some(&b' ') {
                bytes.remove(start);
            }
            strip_space = false;
        }
        if let Backend::Bpe {
            clean_spaces: true, ..
        } = self.backend
        {
            bpe::clean_spaces(&mut bytes);
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// llama.cpp's `token_to_piece`.
    fn piece(&self, id: u32, render_special: bool, out: &mut Vec<u8>) {
        let Some(text) = self.vocab.tokens.get(id as usize) else {
            return;
        };
        let a = self.vocab.attr(id);
        let special = attr::UNKNOWN | attr::CONTROL;
        if a & special != 0 && !render_special {
            return;
        }
        if a & (special | attr::USER_DEFINED) != 0 {
            out.extend_from_slice(text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match self.backend {
                Backend::Spm => out.extend_from_slice(text.replace('▁', " ").as_bytes()),
                Backend::Bpe { .. } => bpe::decode_byte_level(text, out),
            }
        } else if a & attr::BYTE != 0 {
            if let Some(b) = parse_byte_token(text) {
                out.push(b);
            }
        }
    }
}

/// `<0xAB>` -> 0xAB.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}
