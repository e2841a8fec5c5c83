//! Constrained decoding: a JSON schema, a regular expression or a Lark grammar becomes, at
//! every step, the set of tokens that keep the output valid; everything else gets `-inf`
//! before the sampler chain runs, so temperature, top-p and the rest still shape the choice
//! among the allowed tokens. Built on llguidance (an Earley parser over a lazily built lexer,
//! masks computed by walking a trie of the vocabulary's bytes).
//!
//! ```text
//! per model:    tokens as bytes (+ eos ids) -> Vocabulary        (the trie; built once, shared)
//! per request:  Grammar + &Vocabulary       -> Constraint        (compiles; errors are one line)
//! per token:    logits -> mask_logits -> SamplerChain::sample -> commit(token)
//!               (Constraint::sample does the three)            -> is_finished() ends the text
//! ```
//!
//! - [`VocabToken`]: what one token id stands for: bytes of text, or a named special token.
//!   Special tokens (`<|im_end|>`, `<s>`) never appear inside constrained text; an end of
//!   sequence id is allowed exactly when the grammar is complete.
//! - [`Grammar`]: the four kinds of constraint (OpenAI's `json_object` is "any JSON object").
//! - JSON is generated with bounded whitespace (a space, or a newline and up to 20 spaces or
//!   tabs, between two lexemes), as llama.cpp's schema grammars do, so a sampled run cannot
//!   spend its tokens on blank space; a schema's own `"x-guidance"` options take precedence.
//! - A finished constraint ([`Constraint::is_finished`]) allows only end of sequence: the
//!   caller stops there.
//!
//! ```
//! use ferrolm_constrain::{Constraint, Grammar, VocabToken, Vocabulary};
//! // A toy vocabulary: one token per digit, "-", and an end-of-sequence token.
//! let mut tokens: Vec<VocabToken> = (b'0'..=b'9').map(|b| VocabToken::Text(vec![b])).collect();
//! tokens.push(VocabToken::Text(b"-".to_vec()));
//! tokens.push(VocabToken::Special("</s>".into()));
//! let vocab = Vocabulary::new(tokens, &[11]).unwrap();
//! let mut c = Constraint::new(&vocab, &Grammar::Regex("[0-9]{2}-[0-9]".into())).unwrap();
//! for t in [1, 2, 10, 3] {
//!     assert!(c.mask().unwrap().is_allowed(t));
//!     c.commit(t).unwrap();
//! }
//! assert!(c.is_finished());
//! ```

mod check;

pub use check::check_json;

use std::fmt;
use std::sync::Arc;

use ferrolm_sample::{SamplerChain, TokenId};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

/// The allowed tokens of one step: a bitset over the vocabulary (`is_allowed(id)`,
/// `num_set()`, `to_list()`).
pub type TokenMask = SimpleVob;

/// Whitespace between JSON lexemes: one space, or a line break with an indent of at most 20.
const JSON_WHITESPACE: &str = r"(?: |\r?\n[ \t]{0,20})";

/// The longest error message kept (llguidance's can quote whole grammars).
const MAX_MESSAGE: usize = 400;

/// Why a constraint could not be built or followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstrainError {
    /// The schema, regex or grammar is invalid or uses what is not supported.
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    /// The vocabulary cannot be turned into a token trie.
    #[error("cannot prepare the vocabulary for constrained decoding: {0}")]
    Vocabulary(String),
    /// A token outside the mask was committed (the caller sampled without the mask).
    #[error("token {token} does not continue the {what}: {message}")]
    Rejected {
        token: TokenId,
        what: &'static str,
        message: String,
    },
    /// The parser failed mid-generation (e.g. it ran out of its step budget).
    #[error("constrained decoding failed: {0}")]
    Failed(String),
}

/// What one token id stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VocabToken {
    /// The bytes the token adds to the text (possibly part of a UTF-8 character). Empty
    /// bytes (unused ids) are never allowed.
    Text(Vec<u8>),
    /// A control token, by name (e.g. `<|im_end|>`): never part of constrained text; a Lark
    /// grammar can ask for it by name.
    Special(String),
}

/// A model's vocabulary prepared for constraints: llguidance's token trie and the parser
/// factory over it. Building it walks every token (tens of milliseconds at 49k tokens), so
/// build it once per model and share it.
pub struct Vocabulary {
    factory: ParserFactory,
    /// Ids in the trie (the vocabulary, plus a phantom end-of-sequence id when none was given).
    n_vocab: usize,
    eos: Vec<TokenId>,
}

impl fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vocabulary")
            .field("n_vocab", &self.n_vocab)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Vocabulary {
    /// The trie over `tokens` (indexed by id). `eos`: the ids that end a generation; they
    /// are allowed exactly when the grammar is complete. When `eos` is empty, a phantom id
    /// past the vocabulary plays its part (a grammar can still finish by itself).
    pub fn new(tokens: Vec<VocabToken>, eos: &[TokenId]) -> Result<Vocabulary, ConstrainError> {
        let mut words: Vec<Vec<u8>> = tokens
            .into_iter()
            .map(|t| match t {
                // 0xFF never occurs in UTF-8 text, and in the trie it marks special tokens.
                VocabToken::Text(b) if b.first() == Some(&TokTrie::SPECIAL_TOKEN_MARKER) => {
                    Vec::new()
                }
                VocabToken::Text(b) => b,
                VocabToken::Special(name) => special_bytes(&name),
            })
            .collect();
        let mut eos = eos.to_vec();
        eos.sort_unstable();
        eos.dedup();
        if eos.is_empty() {
            eos.push(words.len() as TokenId);
            words.push(special_bytes("<|ferrolm_eos|>"));
        }
        // The trie packs ids into 24 bits.
        if words.len() >= 1 << 24 {
            return Err(ConstrainError::Vocabulary(format!(
                "{} tokens is more than the 16777215 the trie holds",
                words.len()
            )));
        }
        if let Some(&bad) = eos.iter().find(|&&e| e as usize >= words.len()) {
            return Err(ConstrainError::Vocabulary(format!(
                "end-of-sequence id {bad} is outside the vocabulary of {} tokens",
                words.len()
            )));
        }
        for &e in &eos {
            // An end of sequence is never text, whatever its bytes.
            let w = &mut words[e as usize];
            if w.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
                *w = special_bytes(&format!("<[{e}]>"));
            }
        }
        let n_vocab = words.len();
        let built = llguidance::panic_utils::catch_unwind(|| {
            let info = TokRxInfo::new(n_vocab as u32, eos[0]);
            let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
            let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
            let mut factory = ParserFactory::new_simple(&env)?;
            factory.quiet();
            factory.limits_mut().verbose_errors = false;
            Ok(factory)
        });
        let factory = built.map_err(|e| ConstrainError::Vocabulary(one_line(&e.to_string())))?;
        Ok(Vocabulary {
            factory,
            n_vocab,
            eos,
        })
    }

    /// Ids in the trie.
    pub fn len(&self) -> usize {
        self.n_vocab
    }

    /// True for an empty vocabulary (never: there is always an end-of-sequence id).
    pub fn is_empty(&self) -> bool {
        self.n_vocab == 0
    }

    /// The end-of-sequence ids, sorted.
    pub fn eos(&self) -> &[TokenId] {
        &self.eos
    }
}

/// A special token's bytes in llguidance's trie: a 0xFF marker, then the name.
fn special_bytes(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(name.len() + 1);
    b.push(TokTrie::SPECIAL_TOKEN_MARKER);
    b.extend_from_slice(name.as_bytes());
    b
}

/// An error message on one line, cut to a readable length: source echoes (`1 | start: ..`)
/// and caret lines are left out, the other lines joined.
fn one_line(s: &str) -> String {
    let echo = |l: &str| {
        let digits = l.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && l[digits..].starts_with(" |")
    };
    let mut out = String::new();
    for l in s.lines().map(str::trim) {
        if l.starts_with("<backtrace>") {
            break;
        }
        if l.is_empty() || l.bytes().all(|b| b == b'^' || b == b' ') || echo(l) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(l);
    }
    if out.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// What the output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// A JSON value valid under this JSON schema (llguidance's subset: types, properties,
    /// required, additionalProperties, items, prefixItems, min/maxItems, enum, const,
    /// anyOf/oneOf/allOf, $ref/$defs, numeric bounds, string lengths, patterns, formats).
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// The whole output matches this regular expression (Rust `regex` syntax).
    Regex(String),
    /// A Lark grammar (llguidance's dialect; `start` is the top rule).
    Lark(String),
}

impl Grammar {
    /// What the grammar is, for messages: "JSON schema", "regex", "Lark grammar".
    pub fn what(&self) -> &'static str {
        match self {
            Grammar::JsonSchema(_) | Grammar::JsonObject => "JSON schema",
            Grammar::Regex(_) => "regex",
            Grammar::Lark(_) => "Lark grammar",
        }
    }

    /// llguidance's form, with bounded whitespace for JSON.
    fn to_llguidance(&self) -> Result<TopLevelGrammar, ConstrainError> {
        let json = |mut schema: Value| {
            if let Some(obj) = schema.as_object_mut() {
                obj.entry("x-guidance").or_insert_with(
                    || serde_json::json!({ "whitespace_pattern": JSON_WHITESPACE }),
                );
            }
            TopLevelGrammar::from_json_schema(schema)
        };
        Ok(match self {
            Grammar::JsonSchema(schema) => {
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(ConstrainError::Invalid {
                        what: self.what(),
                        message: format!(
                            "a schema is a JSON object (or true/false), got {}",
                            kind_of(schema)
                        ),
                    });
                }
                json(schema.clone())
            }
            Grammar::JsonObject => json(serde_json::json!({ "type": "object" })),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        })
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One generation's constraint: the parser state, the mask of the current step (computed
/// once per state), and a scratch logits row. One pointer wide: constraints travel in jobs.
#[derive(Clone)]
pub struct Constraint {
    s: Box<State>,
}

#[derive(Clone)]
struct State {
    matcher: Matcher,
    what: &'static str,
    eos: Vec<TokenId>,
    /// The mask of the current state, once computed.
    mask: Option<TokenMask>,
    /// Masked copy of the logits handed to the sampler chain.
    row: Vec<f32>,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint")
            .field("what", &self.s.what)
            .field("finished", &self.is_finished())
            .field("error", &self.s.matcher.get_error())
            .finish()
    }
}

impl Constraint {
    /// Compiles `grammar` over `vocab`. A bad schema, regex or grammar is an
    /// [`ConstrainError::Invalid`] naming what is wrong; nothing panics.
    pub fn new(vocab: &Vocabulary, grammar: &Grammar) -> Result<Constraint, ConstrainError> {
        let what = grammar.what();
        let invalid = |e: &dyn fmt::Display| ConstrainError::Invalid {
            what,
            message: one_line(&e.to_string()),
        };
        let top = grammar.to_llguidance()?;
        let parser = llguidance::panic_utils::catch_unwind(std::panic::AssertUnwindSafe(|| {
            vocab.factory.create_parser(top)
        }))
        .map_err(|e| invalid(&e))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(&e));
        }
        Ok(Constraint {
            s: Box::new(State {
                matcher,
                what,
                eos: vocab.eos.clone(),
                mask: None,
                row: Vec::new(),
            }),
        })
    }

    /// What the constraint is, for messages: "JSON schema", "regex", "Lark grammar".
    pub fn what(&self) -> &'static str {
        self.s.what
    }

    /// The tokens allowed next. Once the grammar is complete: only end of sequence.
    pub fn mask(&mut self) -> Result<&TokenMask, ConstrainError> {
        if self.s.mask.is_none() {
            let m = self
                .s
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| ConstrainError::Failed(one_line(&e.to_string())))?;
            self.s.mask = Some(m);
        }
        Ok(self.s.mask.as_ref().expect("just computed"))
    }

    /// Sets every disallowed logit to `-inf` (ids past the vocabulary included).
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), ConstrainError> {
        let mask = self.mask()?;
        apply_mask(mask, logits);
        Ok(())
    }

    /// Advances the parser by a sampled token. End of sequence after a complete grammar is
    /// accepted (and ends it); any other token outside the mask is an error.
    pub fn commit(&mut self, token: TokenId) -> Result<(), ConstrainError> {
        if self.s.matcher.is_stopped() && self.s.eos.contains(&token) && !self.s.matcher.is_error()
        {
            self.s.mask = None;
            return Ok(());
        }
        self.s.mask = None;
        self.s
            .matcher
            .consume_token(token)
            .map_err(|e| ConstrainError::Rejected {
                token,
                what: self.s.what,
                message: one_line(&e.to_string()),
            })
    }

    /// True once the grammar is complete and nothing may follow (or an end of sequence was
    /// committed): the generation ends here.
    pub fn is_finished(&self) -> bool {
        self.s.matcher.is_stopped() && !self.s.matcher.is_error()
    }

    /// Masks `logits`, samples with `chain`, and commits the token. Should every allowed
    /// token have a `-inf` logit (so the chain could land anywhere), the allowed token with
    /// the highest logit is taken instead (the chain's penalties have then seen its own draw).
    pub fn sample(
        &mut self,
        chain: &mut SamplerChain,
        logits: &[f32],
    ) -> Result<TokenId, ConstrainError> {
        let mut row = std::mem::take(&mut self.s.row);
        row.clear();
        row.extend_from_slice(logits);
        let masked = self.mask_logits(&mut row);
        self.s.row = row;
        masked?;
        let mut tok = chain.sample(&self.s.row);
        let mask = self.mask()?;
        if !allows(mask, tok) {
            let mut best: Option<(usize, f32)> = None;
            mask.iter_set_entries(|i| {
                let l = logits.get(i).copied().unwrap_or(f32::NAN);
                if i < logits.len() && best.is_none_or(|(_, b)| l > b || b.is_nan()) {
                    best = Some((i, l));
                }
            });
            let Some((i, _)) = best else {
                return Err(ConstrainError::Failed(format!(
                    "no allowed token is in the model's vocabulary of {} logits",
                    logits.len()
                )));
            };
            tok = i as TokenId;
        }
        self.commit(tok)?;
        Ok(tok)
    }
}

/// Whether `mask` holds `tok` (ids past its end are not allowed).
fn allows(mask: &TokenMask, tok: TokenId) -> bool {
    (tok as usize) < mask.len() && mask.is_allowed(tok)
}

/// `logits[i] = -inf` for every `i` not in `mask`.
fn apply_mask(mask: &TokenMask, logits: &mut [f32]) {
    let words = mask.as_slice();
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = words.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        if bits == 0 {
            chunk.fill(f32::NEG_INFINITY);
            continue;
        }
        for (j, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << j) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests;
