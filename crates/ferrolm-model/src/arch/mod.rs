//! Architecture families as data: each file maps its metadata onto a [`ModelConfig`] and
//! contains no forward code. This module holds the registry and the metadata reader they share.

mod bart;
mod bert;
mod bloom;
mod falcon;
mod gemma;
mod gemma2;
mod gemma3;
mod gpt2;
mod gpt_bigcode;
mod gpt_neox;
mod gptj;
mod llama;
mod mistral;
mod mixtral;
mod mpt;
mod opt;
mod phi;
mod qwen2;
mod qwen2_moe;
mod qwen3;
mod t5;

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
    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.value(key).and_then(|v| v.as_str())
    }

    /// RoPE scaling from `{arch}.rope.scaling.*` (llama.cpp's keys: type none|linear|yarn,
    /// factor, original_context_length, yarn_beta_fast/slow), else `rope.scale_linear`.
    pub fn rope_scaling(&self) -> Result<RopeScaling> {
        let factor = self.opt_f32("rope.scaling.factor")?;
        let orig = self
            .opt_usize("rope.scaling.original_context_length")?
            .or(self.opt_usize("context_length")?)
            .unwrap_or(0);
        Ok(match (self.opt_str("rope.scaling.type"), factor) {
            (Some("linear"), Some(f)) if f != 1.0 => RopeScaling::Linear { factor: f },
            (Some("yarn"), Some(f)) if f != 1.0 => RopeScaling::Yarn {
                factor: f,
                orig,
                beta_fast: self.opt_f32("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                beta_slow: self.opt_f32("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                attn_factor: self.opt_f32("rope.scaling.attn_factor")?,
                mscale: 0.0,
                mscale_all_dim: 0.0,
                truncate: true,
            },
            (None | Some("none" | "linear" | "yarn"), _) => {
                match self.opt_f32("rope.scale_linear")? {
                    Some(f) if f != 1.0 => RopeScaling::Linear { factor: f },
                    _ => RopeScaling::None,
                }
            }
            (Some(other), _) => bail!("GGUF rope scaling type '{other}' is not supported (ferrolm reads none, linear, yarn; others by flag: --rope-scaling)"),
        })
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

// ---------------------------------------------------------------------------------------------
// Hugging Face `config.json`

use crate::spec::*;
use crate::weights::HfTable;
use anyhow::bail;
use serde_json::Value;

/// One family that ferrolm builds from a Hugging Face directory, by `model_type`.
pub struct HfArch {
    pub model_type: &'static str,
    pub config: fn(&HfConfig) -> Result<(ModelConfig, &'static HfTable)>,
}

/// Every Hugging Face family ferrolm runs.
pub const HF_ARCHES: &[HfArch] = &[
    HfArch {
        model_type: "llama",
        config: llama::hf,
    },
    HfArch {
        model_type: "mistral",
        config: mistral::hf,
    },
    HfArch {
        model_type: "qwen2",
        config: qwen2::hf,
    },
    HfArch {
        model_type: "qwen3",
        config: qwen3::hf,
    },
    HfArch {
        model_type: "gemma",
        config: gemma::hf,
    },
    HfArch {
        model_type: "gemma2",
        config: gemma2::hf,
    },
    HfArch {
        model_type: "gemma3_text",
        config: gemma3::hf,
    },
    HfArch {
        model_type: "gpt2",
        config: gpt2::hf,
    },
    HfArch {
        model_type: "gpt_bigcode",
        config: gpt_bigcode::hf,
    },
    HfArch {
        model_type: "opt",
        config: opt::hf,
    },
    HfArch {
        model_type: "gpt_neox",
        config: gpt_neox::hf,
    },
    HfArch {
        model_type: "gptj",
        config: gptj::hf,
    },
    HfArch {
        model_type: "falcon",
        config: falcon::hf,
    },
    HfArch {
        model_type: "bloom",
        config: bloom::hf,
    },
    HfArch {
        model_type: "mpt",
        config: mpt::hf,
    },
    HfArch {
        model_type: "phi",
        config: phi::hf,
    },
    HfArch {
        model_type: "mixtral",
        config: mixtral::hf,
    },
    HfArch {
        model_type: "qwen2_moe",
        config: qwen2_moe::hf,
    },
    HfArch {
        model_type: "bert",
        config: bert::hf,
    },
    HfArch {
        model_type: "t5",
        config: t5::hf,
    },
    HfArch {
        model_type: "bart",
        config: bart::hf,
    },
];

pub fn supported_hf_types() -> Vec<&'static str> {
    HF_ARCHES.iter().map(|a| a.model_type).collect()
}

/// Maps `config.json` to a validated config and the family's tensor table.
pub fn config_from_hf(v: &Value) -> Result<(ModelConfig, &'static HfTable)> {
    let mt = v
        .get("model_type")
        .and_then(|m| m.as_str())
        .ok_or_else(|| anyhow!("config.json has no 'model_type' string; is this a Hugging Face transformers model directory?"))?;
    // Gemma 3's text-only checkpoints say `gemma3_text`; a multimodal `gemma3` config nests it.
    let (mt, v) = match (mt, v.get("text_config")) {
        ("gemma3", Some(t)) => ("gemma3_text", t),
        _ => (mt, v),
    };
    let entry = HF_ARCHES
        .iter()
        .find(|a| a.model_type == mt)
        .ok_or_else(|| {
            anyhow!(
                "unknown model_type '{mt}' in config.json; ferrolm runs: {}",
                supported_hf_types().join(", ")
            )
        })?;
    let c = HfConfig {
        v,
        model_type: mt.to_string(),
    };
    let (mut cfg, table) = (entry.config)(&c)?;
    if cfg.arch.is_empty() {
        cfg.arch = mt.to_string();
    }
    cfg.validate()?;
    Ok((cfg, table))
}

/// Reads `config.json` values under any of their historical spellings, with errors that name
/// the key.
pub struct HfConfig<'a> {
    pub v: &'a Value,
    pub model_type: String,
}

impl HfConfig<'_> {
    fn raw<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &Value)> {
        keys.iter().find_map(|k| match self.v.get(*k) {
            Some(Value::Null) | None => None,
            Some(x) => Some((*k, x)),
        })
    }
    pub fn opt_usize(&self, keys: &[&str]) -> Result<Option<usize>> {
        // No size in a real model comes near 2^31; larger values are corrupt configs.
        const LIMIT: u64 = 1 << 31;
        match self.raw(keys) {
            None => Ok(None),
            Some((k, x)) => match x.as_u64() {
                Some(n) if n < LIMIT => Ok(Some(n as usize)),
                Some(n) => bail!("config.json: '{k}' = {n} is implausibly large"),
                None => bail!("config.json: '{k}' should be a non-negative integer, found {x}"),
            },
        }
    }
    pub fn usize(&self, keys: &[&str]) -> Result<usize> {
        self.opt_usize(keys)?.ok_or_else(|| {
            anyhow!(
                "config.json has no '{}', which a {} model needs",
                keys[0],
                self.model_type
            )
        })
    }
    pub fn opt_f32(&self, keys: &[&str]) -> Result<Option<f32>> {
        match self.raw(keys) {
            None => Ok(None),
            Some((k, x)) => x
                .as_f64()
                .map(|n| Some(n as f32))
                .ok_or_else(|| anyhow!("config.json: '{k}' should be a number, found {x}")),
        }
    }
    pub fn f32_or(&self, keys: &[&str], default: f32) -> Result<f32> {
        Ok(self.opt_f32(keys)?.unwrap_or(default))
    }
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.raw(&[key]) {
            None => Ok(default),
            Some((k, x)) => x
                .as_bool()
                .ok_or_else(|| anyhow!("config.json: '{k}' should be true or false, found {x}")),
        }
    }
    pub fn str_or<'s>(&'s self, keys: &[&str], default: &'s str) -> &'s str {
        self.raw(keys)
            .and_then(|(_, x)| x.as_str())
            .unwrap_or(default)
    }
    /// Refuses an option ferrolm does not implement, naming it.
    pub fn refuse(&self, key: &str, bad: impl Fn(&Value) -> bool) -> Result<()> {
        if let Some((k, x)) = self.raw(&[key]) {
            if bad(x) {
                bail!(
                    "config.json: {k} = {x} is not supported for {} models",
                    self.model_type
                );
            }
        }
        Ok(())
    }

    pub fn vocab(&self) -> Result<usize> {
        self.usize(&["vocab_size", "n_vocab", "padded_vocab_size"])
    }
    pub fn hidden(&self) -> Result<usize> {
        self.usize(&["hidden_size", "n_embd", "d_model", "n_embed"])
    }
    pub fn n_layers(&self) -> Result<usize> {
        let n = self.usize(&["num_hidden_layers", "n_layer", "num_layers", "n_layers"])?;
        if n == 0 || n > 4096 {
            bail!("config.json: {n} layers (expected 1 to 4096)");
        }
        Ok(n)
    }
    /// `(H, Hkv, D)`; `Hkv` defaults to `H`, `D` to `C / H` (checked to divide).
    pub fn heads(&self) -> Result<(usize, usize, usize)> {
        let c = self.hidden()?;
        let h = self.usize(&["num_attention_heads", "n_head", "num_heads", "n_heads"])?;
        let hkv = self
            .opt_usize(&["num_key_value_heads", "num_kv_heads"])?
            .unwrap_or(h);
        let d = match self.opt_usize(&["head_dim", "d_kv"])? {
            Some(d) => d,
            None => {
                if h == 0 || c % h != 0 {
                    bail!("config.json: hidden size {c} is not divisible by {h} attention heads");
                }
                c / h
            }
        };
        Ok((h, hkv, d))
    }
    /// What every family reads the same way: vocabulary, width, heads, layer count (positions
    /// `None` until the family sets them), context, the norm's epsilon under its usual keys,
    /// and the tied head (`tie_word_embeddings`, default `tied`).
    pub fn base(
        &self,
        kind: NormKind,
        eps: f32,
        ffn: Ffn,
        ffn_hidden: usize,
        tied: bool,
    ) -> Result<ModelConfig> {
        let (h, hkv, d) = self.heads()?;
        let eps_keys = ["rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"];
        Ok(ModelConfig {
            vocab_size: self.vocab()?,
            hidden: self.hidden()?,
            ffn_hidden,
            attn: AttentionSpec::new(h, hkv, d),
            norm: NormSpec {
                kind,
                eps: self.f32_or(&eps_keys, eps)?,
            },
            ffn,
            tied_embeddings: self.bool_or("tie_word_embeddings", tied)?,
            layers: vec![LayerPlan::new(None, Position::None); self.n_layers()?],
            context_length: self.context()?,
            ..Default::default()
        })
    }

    /// The rotated fraction of each head: `rope_parameters.partial_rotary_factor` or a key.
    pub fn partial_rotary(&self, keys: &[&str], default: f32) -> Result<f32> {
        if let Some(x) = self
            .v
            .get("rope_parameters")
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(|x| x.as_f64())
        {
            return Ok(x as f32);
        }
        self.f32_or(keys, default)
    }
    pub fn context(&self) -> Result<usize> {
        Ok(self
            .opt_usize(&[
                "max_position_embeddings",
                "n_positions",
                "max_seq_len",
                "n_ctx",
            ])?
            .unwrap_or(2048))
    }
    /// `hidden_act` (or the family's key) as an activation.
    pub fn act(&self, keys: &[&str], default: &str) -> Result<Activation> {
        let name = self.str_or(keys, default);
        Ok(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => bail!(
                "config.json: activation '{other}' ({}) is not supported; ferrolm knows silu, gelu, gelu_new, gelu_pytorch_tanh, relu",
                keys[0]
            ),
        })
    }

    /// The RoPE parameters: `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`
    /// (older; `type` or `rope_type`), optionally nested by layer type (`full_attention`, ...).
    pub fn rope(
        &self,
        layer_type: Option<&str>,
        theta_default: f32,
        dims: usize,
        layout: RopeLayout,
    ) -> Result<RopeSpec> {
        let params = self.v.get("rope_parameters").filter(|p| p.is_object());
        let params = match (params, layer_type) {
            (Some(p), Some(lt)) if p.get(lt).is_some() => p.get(lt),
            (p, _) => p,
        };
        let scaling = params.or_else(|| self.v.get("rope_scaling").filter(|p| p.is_object()));
        let theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(|x| x.as_f64())
            .map(|x| x as f32)
            .or(self.opt_f32(&["rope_theta", "rotary_emb_base", "rope_base"])?)
            .unwrap_or(theta_default);
        let orig_default = self.context()?;
        let scaling = match scaling {
            None => RopeScaling::None,
            Some(s) => rope_scaling(s, orig_default)?,
        };
        Ok(RopeSpec {
            theta,
            dims,
            layout,
            scaling,
        })
    }

    /// Per-layer sliding windows: from `layer_types` when present, else `sliding(il)` decides.
    pub fn windows(
        &self,
        n: usize,
        window: Option<usize>,
        sliding: impl Fn(usize) -> bool,
    ) -> Result<Vec<Option<usize>>> {
        if let Some(Value::Array(types)) = self.v.get("layer_types") {
            if types.len() != n {
                bail!(
                    "config.json: 'layer_types' lists {} layers but the model has {n}",
                    types.len()
                );
            }
            return types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(window),
                    Some("full_attention") => Ok(None),
                    _ => bail!("config.json: unsupported layer type {t} in 'layer_types'"),
                })
                .collect();
        }
        Ok((0..n)
            .map(|il| if sliding(il) { window } else { None })
            .collect())
    }
}

fn rope_scaling(s: &Value, orig_default: usize) -> Result<RopeScaling> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(|x| x.as_str())
        .unwrap_or("default");
    let f = |k: &str| s.get(k).and_then(|x| x.as_f64()).map(|x| x as f32);
    let need =
        |k: &str| f(k).ok_or_else(|| anyhow!("config.json: rope scaling '{kind}' needs '{k}'"));
    let orig = s
        .get("original_max_position_embeddings")
        .and_then(|x| x.as_u64())
        .map_or(orig_default, |x| x as usize);
    let list = |k: &str| -> Result<std::sync::Arc<[f32]>> {
        s.get(k)
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| x as f32)
                    .collect()
            })
            .ok_or_else(|| anyhow!("config.json: rope scaling '{kind}' needs the list '{k}'"))
    };
    Ok(match kind {
        "default" | "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "dynamic" => RopeScaling::Dynamic { factor: need("factor")?, orig: orig_default },
        "yarn" => RopeScaling::Yarn {
            factor: match f("factor") {
                Some(x) => x,
                None => orig_default as f32 / orig as f32,
            },
            orig,
            beta_fast: f("beta_fast").unwrap_or(32.0),
            beta_slow: f("beta_slow").unwrap_or(1.0),
            attn_factor: f("attention_factor"),
            mscale: f("mscale").unwrap_or(0.0),
            mscale_all_dim: f("mscale_all_dim").unwrap_or(0.0),
            truncate: s.get("truncate").and_then(|x| x.as_bool()).unwrap_or(true),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            orig,
        },
        "longrope" | "su" => {
            let factor = f("factor").unwrap_or(orig_default as f32 / orig as f32);
            let attn_factor = f("attention_factor").unwrap_or(if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / (orig as f32).ln()).sqrt()
            });
            RopeScaling::LongRope { short: list("short_factor")?, long: list("long_factor")?, orig, attn_factor }
        }
        other => bail!("config.json: rope scaling type '{other}' is not supported; ferrolm knows linear, dynamic, yarn, llama3, longrope"),
    })
}

/// The Hugging Face tensor table of a family, by its architecture name (GGUF's
/// `general.architecture` or the `model_type`), for adapters that name modules by their
/// Hugging Face paths. `None`: adapters for that family are not mapped yet.
pub fn hf_table(arch: &str) -> Option<&'static HfTable> {
    Some(match arch {
        "llama" | "mistral" | "qwen2" | "qwen3" => &llama::TABLE,
        "gemma" => &gemma::TABLE,
        "gemma2" | "gemma3" | "gemma3_text" => &gemma2::TABLE,
        _ => return None,
    })
}

/// The weight key a Hugging Face module path names in `table` (`model.layers.3.self_attn.q_proj`
/// -> `AttnQ` of layer 3).
pub fn hf_module_key(table: &HfTable, module: &str) -> Option<crate::weights::Key> {
    use crate::weights::Key;
    table
        .names
        .iter()
        .chain(table.also)
        .find_map(|&(slot, pat)| match pat.split_once("{L}") {
            Some((pre, post)) => {
                let l = module.strip_prefix(pre)?.strip_suffix(post)?.parse().ok()?;
                Some(Key::layer(slot, l))
            }
            None => (module == pat).then(|| Key::global(slot)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rope_of(v: Value) -> RopeSpec {
        let (cfg, _) = config_from_hf(&v).unwrap();
        match &cfg.layers[0].position {
            Position::Rope(r) => r.clone(),
            p => panic!("{p:?}"),
        }
    }

    fn llama(extra: Value) -> Value {
        let mut v = json!({"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 64});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn rope_scaling_is_read_in_every_spelling() {
        // transformers 5 (`rope_parameters`), 4.x (`rope_theta` + `rope_scaling` with
        // `rope_type` or the older `type`) give the same spec.
        let v5 = rope_of(llama(
            json!({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}}),
        ));
        let v4 = rope_of(llama(
            json!({"rope_theta": 5e5, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
        ));
        let v3 = rope_of(llama(
            json!({"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}),
        ));
        assert_eq!(v5, v4);
        assert_eq!(v4, v3);
        assert_eq!(v5.scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(v5.theta, 5e5);
        let y = rope_of(llama(
            json!({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}}),
        ));
        assert!(matches!(y.scaling, RopeScaling::Yarn { factor, orig: 16, .. } if factor == 4.0));
        let d = rope_of(llama(
            json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}}),
        ));
        assert_eq!(
            d.scaling,
            RopeScaling::Dynamic {
                factor: 2.0,
                orig: 64
            }
        );
        let l3 = rope_of(llama(
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
        ));
        assert!(matches!(l3.scaling, RopeScaling::Llama3 { orig: 32, .. }));
        let n = rope_of(llama(json!({"rope_scaling": null})));
        assert_eq!(n.scaling, RopeScaling::None);
    }

    #[test]
    fn bad_rope_scaling_is_named() {
        let e = config_from_hf(&llama(
            json!({"rope_scaling": {"type": "wavy", "factor": 2.0}}),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("'wavy'"), "{e}");
        let e = config_from_hf(&llama(json!({"rope_scaling": {"type": "linear"}}))).unwrap_err();
        assert!(e.to_string().contains("needs 'factor'"), "{e}");
    }

    #[test]
    fn every_family_is_registered_once() {
        let mut names = supported_hf_types();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len());
        assert_eq!(n, 21);
    }
}
