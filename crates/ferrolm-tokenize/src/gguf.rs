//! GGUF vocabulary metadata (`tokenizer.ggml.*`) read into a [`VocabSpec`].

use crate::{TokenizeError, VocabSpec};
use ferrolm_format::{GgufHeader, MetaValue};

fn strings(h: &GgufHeader, key: &str) -> Option<Vec<String>> {
    h.get(key)?.as_array().map(|a| {
        a.iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect()
    })
}

/// Reads the tokenizer fields of GGUF metadata into a `VocabSpec`.
pub fn vocab_spec(h: &GgufHeader) -> Result<VocabSpec, TokenizeError> {
    let u32_of = |k: &str| h.get(k).and_then(MetaValue::as_u64).map(|x| x as u32);
    let bool_of = |k: &str| h.get(k).and_then(MetaValue::as_bool);
    let model = h
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .ok_or(TokenizeError::MissingMetadata("tokenizer.ggml.model"))?
        .to_string();
    Ok(VocabSpec {
        model,
        pre: h
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        tokens: strings(h, "tokenizer.ggml.tokens")
            .ok_or(TokenizeError::MissingMetadata("tokenizer.ggml.tokens"))?,
        scores: h
            .get("tokenizer.ggml.scores")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect()),
        token_types: h
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|x| x.as_i64().unwrap_or(1) as i32).collect()),
        merges: strings(h, "tokenizer.ggml.merges"),
        bos_id: u32_of("tokenizer.ggml.bos_token_id"),
        eos_id: u32_of("tokenizer.ggml.eos_token_id"),
        eot_id: u32_of("tokenizer.ggml.eot_token_id"),
        unk_id: u32_of("tokenizer.ggml.unknown_token_id"),
        pad_id: u32_of("tokenizer.ggml.padding_token_id"),
        add_bos: bool_of("tokenizer.ggml.add_bos_token"),
        add_eos: bool_of("tokenizer.ggml.add_eos_token"),
        add_space_prefix: bool_of("tokenizer.ggml.add_space_prefix"),
    })
}
