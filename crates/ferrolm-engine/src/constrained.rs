//! A model's vocabulary for constrained decoding ([`ferrolm_constrain`]): every id's bytes
//! from the tokenizer, control and end-of-generation tokens as named special tokens (never
//! part of constrained text), built once per loaded model and shared by every request.

use crate::load::LoadedModel;
use anyhow::{anyhow, Result};
use ferrolm_constrain::{Constraint, Grammar, VocabToken, Vocabulary};
use std::sync::{Arc, OnceLock};

/// The per-model cache: the vocabulary, or why it could not be built.
pub(crate) type VocabCache = OnceLock<Result<Arc<Vocabulary>, String>>;

impl LoadedModel {
    /// The vocabulary prepared for constraints: built on first use (tens of milliseconds for
    /// 49k tokens), then shared.
    pub fn constraint_vocab(&self) -> Result<Arc<Vocabulary>> {
        self.constraint_vocab
            .get_or_init(|| build(self).map(Arc::new).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    /// A fresh constraint for `grammar` over this model's vocabulary. A bad schema, regex
    /// or grammar is a one-line error naming what is wrong.
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint> {
        Ok(Constraint::new(&*self.constraint_vocab()?, grammar)?)
    }
}

fn build(lm: &LoadedModel) -> Result<Vocabulary> {
    let tok = lm.tokenizer.as_ref().ok_or_else(|| {
        anyhow!(
            "constrained decoding needs the model's tokenizer, and '{}' has none (no tokenizer.json)",
            lm.path.display()
        )
    })?;
    let n_tok = tok.vocab_size();
    // The output layer may be padded past the tokenizer's ids; those ids are never text.
    let n = n_tok.max(lm.model.config.vocab_size);
    let eog: Vec<u32> = lm
        .end_of_generation_ids()
        .into_iter()
        .filter(|&e| (e as usize) < n)
        .collect();
    let unk = tok.unk_id();
    let tokens = (0..n as u32)
        .map(|id| {
            if id as usize >= n_tok {
                VocabToken::Text(Vec::new())
            } else if tok.is_control(id) || eog.contains(&id) || unk == Some(id) {
                let name = tok
                    .id_to_token(id)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("<[{id}]>"));
                VocabToken::Special(name)
            } else {
                VocabToken::Text(tok.token_bytes(id, false))
            }
        })
        .collect();
    Ok(Vocabulary::new(tokens, &eog)?)
}
