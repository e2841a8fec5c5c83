//! Loading a model file with everything around it: the GGUF header, the model, the tokenizer
//! built from GGUF vocabulary metadata, and the chat template.

use crate::catalog;
use anyhow::{anyhow, Context, Result};
use ferrolm_format::{GgufFile, GgufHeader, MetaValue};
use ferrolm_model::Model;
use ferrolm_tokenize::{ChatTemplate, Tokenizer, VocabSpec};
use std::path::PathBuf;
use std::sync::Arc;

pub struct LoadedModel {
    pub name: String,
    pub path: PathBuf,
    pub file: Arc<GgufFile>,
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// The model's own template, or ChatML when it has none.
    pub template: ChatTemplate,
    pub template_is_builtin: bool,
}

fn strings(h: &GgufHeader, key: &str) -> Option<Vec<String>> {
    h.get(key)?.as_array().map(|a| {
        a.iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect()
    })
}

/// Reads the tokenizer fields of GGUF metadata into a `VocabSpec`.
pub fn vocab_spec(h: &GgufHeader) -> Result<VocabSpec> {
    let u32_of = |k: &str| h.get(k).and_then(MetaValue::as_u64).map(|x| x as u32);
    let bool_of = |k: &str| h.get(k).and_then(MetaValue::as_bool);
    let model = h
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("the model file has no tokenizer ('tokenizer.ggml.model' missing); ferrolm needs a GGUF with its vocabulary"))?
        .to_string();
    Ok(VocabSpec {
        model,
        pre: h
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        tokens: strings(h, "tokenizer.ggml.tokens")
            .ok_or_else(|| anyhow!("the model file has no 'tokenizer.ggml.tokens' list"))?,
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

/// Opens a model by path or catalog name.
pub fn load(model: &str, quiet: bool) -> Result<LoadedModel> {
    let path = catalog::resolve(model, quiet)?;
    let file = Arc::new(GgufFile::open(&path)?);
    // The architecture is checked first: an unknown one is the clearest thing to report.
    ferrolm_model::config_from_gguf(&file.header)?;
    let tokenizer = Tokenizer::from_vocab(vocab_spec(&file.header)?)?;
    let model_obj =
        Model::from_gguf(file.clone()).with_context(|| format!("loading {}", path.display()))?;
    let tok_text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or("")
            .to_string()
    };
    let (bos, eos) = (tok_text(tokenizer.bos_id()), tok_text(tokenizer.eos_id()));
    let (src, builtin) = match file
        .header
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
    {
        Some(s) => (s.to_string(), false),
        None => (ferrolm_tokenize::fallback_chatml().to_string(), true),
    };
    let template = ChatTemplate::new(&src, &bos, &eos)?;
    let name = catalog::CATALOG
        .iter()
        .find(|e| e.name == model)
        .map(|e| e.name.to_string())
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default()
        });
    Ok(LoadedModel {
        name,
        path,
        file,
        model: model_obj,
        tokenizer,
        template,
        template_is_builtin: builtin,
    })
}
