//! The [`Tokenizer`] facade: one type over both vocabulary families.

use crate::bpe::{self, BpeEncoder, Profile};
use crate::special::{Fragment, SpecialMatcher};
use crate::spm;
use crate::vocab::{attr, Family, Vocab, VocabDefaults};
use crate::{TokenizeError, VocabSpec};

/// Text <-> ids for one GGUF vocabulary, with llama.cpp's results.
#[derive(Debug)]
pub struct Tokenizer {
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
        Ok(Tokenizer {
            vocab,
            specials,
            backend,
        })
    }

    /// llama.cpp's `llama_tokenize(text, add_special, parse_special)`: `add_special` adds BOS
    /// and EOS as the metadata asks; `parse_special` lets control-token strings in the text
    /// become their ids (user-defined tokens are matched either way, as in llama.cpp).
    pub fn encode(
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

    /// Ids to text, as llama.cpp's `llama_detokenize(remove_special = false,
    /// unparse_special = render_special)`: control tokens render as nothing unless
    /// `render_special`; byte tokens are joined before the UTF-8 check, so only a sequence
    /// that is still incomplete at the very end is replaced (U+FFFD). Ids out of range are
    /// skipped.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
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

    /// Raw bytes of one token, for streaming: the caller accumulates bytes until they form
    /// valid UTF-8. Control tokens give nothing unless `render_special`.
    pub fn token_bytes(&self, id: u32, render_special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.piece(id, render_special, &mut out);
        out
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

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.vocab.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.vocab.eos
    }
    /// End-of-turn id: `tokenizer.ggml.eot_token_id`, else the first of llama.cpp's
    /// end-of-turn texts present (`<|eot_id|>`, `<|im_end|>`, `<|end|>`, `<end_of_turn>`, ...).
    pub fn eot_id(&self) -> Option<u32> {
        self.vocab.eot
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.vocab.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.vocab.pad
    }
    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }
    pub fn add_eos(&self) -> bool {
        self.vocab.add_eos
    }
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.vocab.get(s)
    }
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(String::as_str)
    }
    /// All ids that end a generation turn (llama.cpp's EOG set): EOS, EOT, and tokens named
    /// like `<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, `<|endoftext|>`, `</s>`, ... Sorted.
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        self.vocab.eog.clone()
    }
    /// Whether `id` is a control token (after llama.cpp's promotions of EOG/FIM-looking tokens).
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.attr(id) & attr::CONTROL != 0
    }
}

/// `<0xAB>` -> 0xAB.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}
