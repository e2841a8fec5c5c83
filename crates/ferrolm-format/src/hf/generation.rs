//! `generation_config.json`: the defaults `transformers`' `generate` takes for a model.

use anyhow::{bail, Result};
use serde_json::Value;

use super::quote;

/// The fields of `generation_config.json` ferrolm uses. Absent and `null` fields are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// `eos_token_id`, which may be one id or a list.
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub decoder_start_token_id: Option<u32>,
    pub forced_eos_token_id: Option<u32>,
    pub forced_bos_token_id: Option<u32>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f32>,
    /// `true`, `false` or `"never"`, as `transformers` takes it.
    pub early_stopping: Option<Value>,
    pub max_new_tokens: Option<usize>,
    pub max_length: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub no_repeat_ngram_size: Option<usize>,
}

impl GenerationConfig {
    /// Reads the fields from a parsed `generation_config.json` (older models keep the same keys
    /// in `config.json`, which this reads as well). Token ids below zero (some configs write
    /// `-1` for "none") count as absent; any other value of the wrong type is an error naming
    /// the field.
    pub fn from_json(v: &Value) -> Result<GenerationConfig> {
        if !v.is_object() {
            bail!("expected a JSON object");
        }
        let eos_token_ids = match v.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut ids = Vec::with_capacity(items.len());
                for item in items {
                    ids.extend(token_id("eos_token_id", item)?);
                }
                ids
            }
            Some(one) => token_id("eos_token_id", one)?.into_iter().collect(),
        };
        let id = |key: &str| match v.get(key) {
            None => Ok(None),
            Some(x) => token_id(key, x),
        };
        let early_stopping = match v.get("early_stopping") {
            None | Some(Value::Null) => None,
            Some(x @ Value::Bool(_)) => Some(x.clone()),
            Some(x @ Value::String(s)) if s == "never" => Some(x.clone()),
            Some(x) => bail!(
                "'early_stopping' is {}, expected true, false or \"never\"",
                shown(x)
            ),
        };
        Ok(GenerationConfig {
            eos_token_ids,
            bos_token_id: id("bos_token_id")?,
            pad_token_id: id("pad_token_id")?,
            decoder_start_token_id: id("decoder_start_token_id")?,
            forced_eos_token_id: id("forced_eos_token_id")?,
            forced_bos_token_id: id("forced_bos_token_id")?,
            do_sample: field(v, "do_sample", "true or false", Value::as_bool)?,
            temperature: float(v, "temperature")?,
            top_k: count(v, "top_k")?,
            top_p: float(v, "top_p")?,
            num_beams: count(v, "num_beams")?,
            length_penalty: float(v, "length_penalty")?,
            early_stopping,
            max_new_tokens: count(v, "max_new_tokens")?,
            max_length: count(v, "max_length")?,
            repetition_penalty: float(v, "repetition_penalty")?,
            no_repeat_ngram_size: count(v, "no_repeat_ngram_size")?,
        })
    }
}

/// A token id: a non-negative integer that fits u32; negative or null means absent.
fn token_id(key: &str, x: &Value) -> Result<Option<u32>> {
    if x.is_null() || x.as_i64().is_some_and(|i| i < 0) {
        return Ok(None);
    }
    match x.as_u64().and_then(|i| u32::try_from(i).ok()) {
        Some(i) => Ok(Some(i)),
        None => bail!("'{key}' is {}, expected a token id", shown(x)),
    }
}

fn field<T>(
    v: &Value,
    key: &str,
    expected: &str,
    get: fn(&Value) -> Option<T>,
) -> Result<Option<T>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => match get(x) {
            Some(t) => Ok(Some(t)),
            None => bail!("'{key}' is {}, expected {expected}", shown(x)),
        },
    }
}

fn float(v: &Value, key: &str) -> Result<Option<f32>> {
    field(v, key, "a number", |x| x.as_f64().map(|f| f as f32))
}

fn count(v: &Value, key: &str) -> Result<Option<usize>> {
    field(v, key, "a non-negative integer", |x| {
        x.as_u64().and_then(|i| usize::try_from(i).ok())
    })
}

fn shown(x: &Value) -> String {
    quote(&x.to_string())
}
