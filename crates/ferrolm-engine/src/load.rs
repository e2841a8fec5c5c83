//! Loading a model file with everything around it: the GGUF header, the model, the tokenizer
//! built from GGUF vocabulary metadata, and the chat template.

use crate::catalog;
use anyhow::{Context, Result};
use ferrolm_format::GgufFile;
use ferrolm_model::Model;
use ferrolm_tokenize::{vocab_spec, ChatTemplate, Tokenizer};
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

/// Opens the GGUF file behind a path or catalog name, refusing what is not one.
pub fn open_gguf(model: &str, quiet: bool) -> Result<(PathBuf, GgufFile)> {
    let path = catalog::resolve(model, quiet)?;
    if path.is_dir() {
        anyhow::bail!(
            "'{}' is a directory (a Hugging Face model: config.json + safetensors); this command runs GGUF files only, pass a .gguf file",
            path.display()
        );
    }
    let file = GgufFile::open(&path)?;
    Ok((path, file))
}

/// Opens a model by path or catalog name.
pub fn load(model: &str, quiet: bool) -> Result<LoadedModel> {
    let (path, file) = open_gguf(model, quiet)?;
    let file = Arc::new(file);
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
