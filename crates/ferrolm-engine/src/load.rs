//! Loading a model with everything around it: a GGUF file (header, model, the tokenizer built
//! from its vocabulary metadata, chat template) or a Hugging Face directory (`config.json`,
//! safetensors, `tokenizer.json`, `generation_config.json`, sentence-transformers modules).

use crate::catalog;
use anyhow::{Context, Result};
use ferrolm_format::hf::{GenerationConfig, HfDir, SentenceConfig};
use ferrolm_format::GgufFile;
use ferrolm_model::Model;
use ferrolm_tokenize::{hf_chat_template, vocab_spec, ChatTemplate, HfSpecial, Tokenizer};
use std::path::PathBuf;
use std::sync::Arc;

pub struct LoadedModel {
    pub name: String,
    pub path: PathBuf,
    /// The GGUF file, for GGUF models.
    pub file: Option<Arc<GgufFile>>,
    /// What a Hugging Face directory says beside the weights.
    pub hf: Option<HfInfo>,
    pub model: Model,
    /// `None` for a Hugging Face directory without `tokenizer.json` (token ids only).
    pub tokenizer: Option<Tokenizer>,
    /// The model's own template, or ChatML when it has none.
    pub template: ChatTemplate,
    pub template_is_builtin: bool,
    /// The vocabulary prepared for constrained decoding, built on first use
    /// ([`LoadedModel::constraint`]).
    pub(crate) constraint_vocab: crate::constrained::VocabCache,
}

/// The side files of a Hugging Face model directory.
pub struct HfInfo {
    pub config: serde_json::Value,
    pub generation: Option<GenerationConfig>,
    pub sentence: SentenceConfig,
}

impl LoadedModel {
    /// The tokenizer, or an error saying the model has none.
    pub fn tok(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "'{}' has no tokenizer.json, so it takes token ids only: pass --ids",
                self.path.display()
            )
        })
    }

    /// Token ids that end a generation: the tokenizer's, plus `generation_config.json`'s eos.
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        let mut ids = self
            .tokenizer
            .as_ref()
            .map(|t| t.end_of_generation_ids())
            .unwrap_or_default();
        if let Some(g) = self.hf.as_ref().and_then(|h| h.generation.as_ref()) {
            for &e in &g.eos_token_ids {
                if !ids.contains(&e) {
                    ids.push(e);
                }
            }
        }
        ids
    }

    /// Prompt ids for a conversation: the chat template with the assistant's turn opened,
    /// tokenized with special tokens parsed; BOS added unless the template wrote it.
    pub fn chat_prompt(&self, messages: &[ferrolm_tokenize::ChatMessage]) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true)?;
        self.encode_rendered(&text)
    }

    /// [`chat_prompt`](Self::chat_prompt) for messages in OpenAI's JSON shape (tool calls and
    /// tool results) with the `tools` the template describes to the model.
    pub fn chat_prompt_json(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
    ) -> Result<Vec<u32>> {
        let text = self.template.render_json(messages, tools, true)?;
        self.encode_rendered(&text)
    }

    /// Replaces the chat template (`--chat-template FILE`).
    pub fn set_chat_template(&mut self, source: &str) -> Result<()> {
        let (t, _) = template(Some(source.to_string()), self.tokenizer.as_ref())?;
        self.template = t;
        self.template_is_builtin = false;
        Ok(())
    }

    /// Tokenizes a rendered conversation: special tokens parsed, BOS added unless the
    /// template wrote it.
    fn encode_rendered(&self, text: &str) -> Result<Vec<u32>> {
        let tok = self.tok()?;
        let bos_text = tok.bos_id().and_then(|b| tok.id_to_token(b)).unwrap_or("");
        let add_bos = !(tok.add_bos() && !bos_text.is_empty() && text.starts_with(bos_text));
        Ok(tok.encode(text, add_bos, true)?)
    }

    /// How this model pools hidden states into one embedding, and whether it normalises:
    /// its sentence-transformers modules, else (like sentence-transformers) the last token for
    /// decoders and the mean otherwise, unnormalised.
    pub fn pooling(&self) -> (ferrolm_format::hf::Pooling, bool) {
        use ferrolm_format::hf::Pooling;
        match self.hf.as_ref().map(|h| h.sentence) {
            Some(s) => (s.pooling, s.normalize),
            None if self.model.topology() == ferrolm_model::spec::Topology::Decoder => {
                (Pooling::LastToken, false)
            }
            None => (Pooling::Mean, false),
        }
    }

    /// The last hidden states `(T, C)` of `ids` (the encoder's for encoder models), after
    /// checking them against the vocabulary and the context.
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let c = &self.model.config;
        if ids.is_empty() {
            anyhow::bail!("an input has no tokens");
        }
        if ids.len() > c.context_length {
            anyhow::bail!(
                "an input has {} tokens but the model takes at most {}",
                ids.len(),
                c.context_length
            );
        }
        let v = c.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= v) {
            anyhow::bail!("token id {bad} is outside the vocabulary (0..{v})");
        }
        match self.model.topology() {
            ferrolm_model::spec::Topology::Decoder => {
                let mut kv = self.model.new_cache(ids.len());
                Ok(self
                    .model
                    .forward_hidden(ids, &mut kv)?
                    .flatten_all()?
                    .to_vec1()?)
            }
            _ => self.model.encode(ids, None),
        }
    }

    /// The decoder's first token for encoder-decoder models (`decoder_start_token_id`).
    pub fn decoder_start(&self) -> Option<u32> {
        let hf = self.hf.as_ref()?;
        hf.generation
            .as_ref()
            .and_then(|g| g.decoder_start_token_id)
            .or_else(|| {
                hf.config
                    .get("decoder_start_token_id")
                    .and_then(|v| v.as_u64())
                    .map(|v| v as u32)
            })
    }
}

/// The model's chat template (ChatML when it has none, `true` then) with its BOS/EOS texts.
fn template(src: Option<String>, tok: Option<&Tokenizer>) -> Result<(ChatTemplate, bool)> {
    let text = |id: Option<u32>| {
        id.and_then(|i| tok.and_then(|t| t.id_to_token(i)))
            .unwrap_or("")
            .to_string()
    };
    let (bos, eos) = (
        text(tok.and_then(|t| t.bos_id())),
        text(tok.and_then(|t| t.eos_id())),
    );
    let builtin = src.is_none();
    let src = src.unwrap_or_else(|| ferrolm_tokenize::fallback_chatml().to_string());
    Ok((ChatTemplate::new(&src, &bos, &eos)?, builtin))
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

/// A Hugging Face model directory; with `quantize`, its matrices are converted in memory to
/// that GGUF type and run on the quantized kernels.
fn load_hf(path: PathBuf, quantize: Option<ferrolm_format::GgmlType>) -> Result<LoadedModel> {
    let dir = HfDir::open(&path)?;
    let generation = dir.generation_config()?;
    let sentence = dir.sentence_config()?;
    let tok_path = dir.tokenizer_path();
    let config = dir.config.clone();
    let model = match quantize {
        None => Model::from_hf(dir),
        Some(ty) => {
            drop(dir);
            let bytes = crate::convert::convert(&path, ty)?.to_bytes()?;
            let mut m = Model::from_gguf(Arc::new(GgufFile::from_bytes(&bytes)?))?;
            m.kv_precision = ferrolm_model::KvPrecision::F32;
            Ok(m)
        }
    }
    .with_context(|| format!("loading {}", path.display()))?;
    let tokenizer = match tok_path {
        Some(p) => {
            let t = Tokenizer::from_hf_file(&p, HfSpecial::from_dir(&path))?;
            Some(if sentence.do_lower_case {
                t.with_lowercase()?
            } else {
                t
            })
        }
        None => None,
    };
    let (template, builtin) = template(hf_chat_template(&path), tokenizer.as_ref())?;
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    Ok(LoadedModel {
        name,
        path,
        file: None,
        hf: Some(HfInfo {
            config,
            generation,
            sentence,
        }),
        model,
        tokenizer,
        template,
        template_is_builtin: builtin,
        constraint_vocab: Default::default(),
    })
}

/// Opens a model by path (a .gguf file or a Hugging Face directory) or catalog name.
pub fn load(model: &str, quiet: bool) -> Result<LoadedModel> {
    load_with(model, quiet, None)
}

/// [`load`], quantizing a Hugging Face model's matrices to `quantize` at load.
pub fn load_with(model: &str, quiet: bool, quantize: Option<&str>) -> Result<LoadedModel> {
    let path = catalog::resolve(model, quiet)?;
    let quantize = quantize.map(crate::convert::parse_type).transpose()?;
    if path.is_dir() {
        if !HfDir::is_hf_dir(&path) {
            anyhow::bail!(
                "'{}' is a directory without config.json; pass a .gguf file or a Hugging Face model directory",
                path.display()
            );
        }
        return load_hf(path, quantize);
    }
    if quantize.is_some() {
        anyhow::bail!("--quantize applies to Hugging Face directories; '{}' is a GGUF file (its types are fixed; convert the original model instead)", path.display());
    }
    let (path, file) = open_gguf(model, quiet)?;
    let file = Arc::new(file);
    // The architecture is checked first: an unknown one is the clearest thing to report.
    if file.header.get("ferrolm.hf_config").is_none() {
        ferrolm_model::config_from_gguf(&file.header)?;
    }
    let h = &file.header;
    let tokenizer = match (
        h.get_str("ferrolm.tokenizer_json"),
        h.get_str("tokenizer.ggml.model"),
    ) {
        (Some(json), _) => {
            let special = HfSpecial {
                bos_id: h.get_u64("tokenizer.ggml.bos_token_id").map(|x| x as u32),
                eos_ids: h
                    .get_u64("tokenizer.ggml.eos_token_id")
                    .map(|x| vec![x as u32])
                    .unwrap_or_default(),
                ..Default::default()
            };
            Some(Tokenizer::from_hf_json(json, special)?)
        }
        (None, Some("no_vocab" | "none")) => None,
        _ => Some(Tokenizer::from_vocab(vocab_spec(h)?)?),
    };
    let model_obj =
        Model::from_gguf(file.clone()).with_context(|| format!("loading {}", path.display()))?;
    let src = file
        .header
        .get_str("tokenizer.chat_template")
        .map(str::to_string);
    let (template, builtin) = template(src, tokenizer.as_ref())?;
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
        file: Some(file),
        hf: None,
        model: model_obj,
        tokenizer,
        template,
        template_is_builtin: builtin,
        constraint_vocab: Default::default(),
    })
}
