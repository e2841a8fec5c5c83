//! Architecture families as data: each file maps its metadata onto a [`ModelConfig`] and
//! contains no forward code. This module holds the registry and the metadata reader they share.

mod gemma3;
mod llama;

use crate::spec::ModelConfig;
use anyhow::{anyhow, Result};
use ferrolm_format::{GgufHeader, MetaValue};

/// One family that ferrolm can build from GGUF metadata.
pub struct GgufArch {
    pub name: &'static str,
    pub config: fn(&GgufMeta) -> Result<ModelConfig>,
}

/// Every GGUF architecture ferrolm runs.
pub const GGUF_ARCHES: &[GgufArch] = &[
    GgufArch {
        name: "llama",
        config: llama::config,
    },
    GgufArch {
        name: "gemma3",
        config: gemma3::config,
    },
];

pub fn supported_gguf_arches() -> Vec<&'static str> {
    GGUF_ARCHES.iter().map(|a| a.name).collect()
}

/// Maps GGUF metadata to a validated config, refusing unknown architectures by name.
pub fn config_from_gguf(header: &GgufHeader) -> Result<ModelConfig> {
    let arch = header
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("GGUF metadata has no 'general.architecture' string; the file was not written by a GGUF converter ferrolm knows"))?;
    let entry = GGUF_ARCHES.iter().find(|a| a.name == arch).ok_or_else(|| {
        anyhow!(
            "unknown architecture '{arch}' (general.architecture); ferrolm runs GGUF models of: {}",
            supported_gguf_arches().join(", ")
        )
    })?;
    let meta = GgufMeta {
        header,
        arch: arch.to_string(),
    };
    let cfg = (entry.config)(&meta)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Reads `{arch}.key` values with errors that name the missing key.
pub struct GgufMeta<'a> {
    pub header: &'a GgufHeader,
    pub arch: String,
}

impl GgufMeta<'_> {
    fn value(&self, key: &str) -> Option<&MetaValue> {
        self.header.get(&format!("{}.{key}", self.arch))
    }
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| anyhow!("GGUF metadata key '{}.{key}' is missing; the file is incomplete for architecture '{}'", self.arch, self.arch))
    }
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                anyhow!(
                    "GGUF metadata key '{}.{key}' should be an unsigned integer, found {}",
                    self.arch,
                    v.type_name()
                )
            }),
        }
    }
    pub fn f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?
            .ok_or_else(|| anyhow!("GGUF metadata key '{}.{key}' is missing", self.arch))
    }
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
                anyhow!(
                    "GGUF metadata key '{}.{key}' should be a number, found {}",
                    self.arch,
                    v.type_name()
                )
            }),
        }
    }
    /// Vocabulary size: the metadata key if present, else the token list's length.
    pub fn vocab_size(&self) -> Result<usize> {
        if let Some(n) = self.opt_usize("vocab_size")? {
            return Ok(n);
        }
        self.header
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
            .ok_or_else(|| {
                anyhow!(
                    "GGUF file has neither '{}.vocab_size' nor 'tokenizer.ggml.tokens'",
                    self.arch
                )
            })
    }
    /// `(C, H, Hkv, D)`: width, query heads, KV heads (default `H`), head size (default `C / H`).
    pub fn heads(&self) -> Result<(usize, usize, usize, usize)> {
        let hidden = self.usize("embedding_length")?;
        let n_heads = self.usize("attention.head_count")?;
        let n_kv_heads = self
            .opt_usize("attention.head_count_kv")?
            .unwrap_or(n_heads);
        let head_dim = self
            .opt_usize("attention.key_length")?
            .unwrap_or(hidden / n_heads.max(1));
        Ok((hidden, n_heads, n_kv_heads, head_dim))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.header.tensor(name).is_some()
    }
}
