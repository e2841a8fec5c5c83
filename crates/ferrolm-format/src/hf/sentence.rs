//! sentence-transformers models: which modules run after the transformer (`modules.json`), how
//! token states are pooled into one vector, whether it is normalised, and the input length.
//!
//! Semantics follow sentence-transformers' `Pooling` and `Normalize` modules
//! (`sentence_transformers/sentence_transformer/modules/pooling.py` in 6.x, `models/Pooling.py`
//! before), for one sequence whose tokens are all valid (no padding, no excluded prompt).

use std::path::{Component, Path};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use super::{quote, read_json};

/// How a sentence-transformers model turns its hidden states into one embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentenceConfig {
    pub pooling: Pooling,
    /// A `Normalize` module follows pooling: the embedding is L2-normalised.
    pub normalize: bool,
    /// `sentence_bert_config.json`'s `max_seq_length`: inputs are truncated to this many tokens
    /// (special tokens included). `None` when absent; sentence-transformers then takes
    /// `min(tokenizer model_max_length, config max_position_embeddings)`.
    pub max_seq_length: Option<usize>,
    /// `sentence_bert_config.json`'s `do_lower_case`: sentence-transformers adds a `Lowercase`
    /// normalizer to the tokenizer (unless it already has one).
    pub do_lower_case: bool,
    /// Whether the directory has a `modules.json` (otherwise the rules of
    /// [`SentenceConfig::read`] apply).
    pub has_modules_json: bool,
}

/// One pooling mode (`pooling_mode` or the legacy `pooling_mode_*` flags of the pooling
/// module's `config.json`). Over the token states `h[0..T]`:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// `sum(h) / T`.
    Mean,
    /// `h[0]` (the `[CLS]` token).
    Cls,
    /// Element-wise maximum over tokens.
    Max,
    /// `h[T-1]`.
    LastToken,
    /// `sum(h) / sqrt(T)`.
    MeanSqrtLen,
    /// `sum((t+1) h[t]) / sum(t+1)`: later tokens weigh more.
    WeightedMean,
}

/// The legacy flags in the order sentence-transformers concatenates them, with their mode names.
const LEGACY_FLAGS: [(&str, &str); 6] = [
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
];

impl Pooling {
    /// sentence-transformers' name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::LastToken => "lasttoken",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
            Pooling::WeightedMean => "weightedmean",
        }
    }

    fn from_name(name: &str) -> Option<Pooling> {
        [
            Pooling::Mean,
            Pooling::Cls,
            Pooling::Max,
            Pooling::LastToken,
            Pooling::MeanSqrtLen,
            Pooling::WeightedMean,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }

    /// Reads a pooling module's `config.json`: `pooling_mode` (a name or a list of names) if
    /// present, else the `pooling_mode_*` flags; no mode set means mean. Several modes at once
    /// (sentence-transformers concatenates them) are refused.
    pub fn from_config(v: &Value) -> Result<Pooling> {
        let modes: Vec<String> = match v.get("pooling_mode") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|m| {
                    m.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| anyhow!("'pooling_mode' lists a non-string"))
                })
                .collect::<Result<_>>()?,
            Some(Value::Null) | None => LEGACY_FLAGS
                .iter()
                .filter(|(key, _)| v.get(key).and_then(Value::as_bool) == Some(true))
                .map(|(_, mode)| mode.to_string())
                .collect(),
            Some(other) => bail!(
                "'pooling_mode' is {}, expected a name",
                quote(&other.to_string())
            ),
        };
        match modes.as_slice() {
            [] => Ok(Pooling::Mean),
            [one] => Pooling::from_name(one).ok_or_else(|| {
                anyhow!(
                    "unknown pooling mode '{}' (known: cls, max, mean, mean_sqrt_len_tokens, \
                     weightedmean, lasttoken)",
                    quote(one)
                )
            }),
            several => bail!(
                "pooling combines modes {}, which ferrolm does not support (one mode only)",
                quote(&several.join("+"))
            ),
        }
    }

    /// sentence-transformers' choice for a plain Hugging Face model: last-token pooling for a
    /// causal LM (`architectures[0]` ends in `ForCausalLM` and `is_causal` is not false),
    /// else mean.
    pub fn default_for(config: &Value) -> Pooling {
        let causal_arch = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .is_some_and(|a| a.ends_with("ForCausalLM"));
        let is_causal = config.get("is_causal").and_then(Value::as_bool) != Some(false);
        if causal_arch && is_causal {
            Pooling::LastToken
        } else {
            Pooling::Mean
        }
    }
}

impl SentenceConfig {
    /// Reads the sentence-transformers files of model directory `dir` (`config` is its
    /// `config.json`).
    ///
    /// With `modules.json`: its modules must be one `Transformer`, one `Pooling` (whose
    /// `config.json` lies in the module's `path`) and optionally `Normalize`; any other module
    /// (`Dense`, `LayerNorm`, ...) is refused, since skipping it would give wrong embeddings.
    /// `sentence_bert_config.json` is read from the Transformer module's path.
    ///
    /// Without `modules.json` (a directory copied without it), ferrolm still honours the module
    /// directories: pooling comes from `<n>_Pooling/config.json` if such a directory exists
    /// (sentence-transformers itself would ignore it), else [`Pooling::default_for`] the
    /// config, as sentence-transformers does for a plain model; `normalize` is true only if a
    /// `<n>_Normalize` directory exists; `sentence_bert_config.json` is read from `dir`.
    pub fn read(dir: &Path, config: &Value) -> Result<SentenceConfig> {
        let modules_path = dir.join("modules.json");
        if !modules_path.is_file() {
            let pooling = match module_dir(dir, "Pooling") {
                Some(p) if p.join("config.json").is_file() => pooling_config(&p)?,
                _ => Pooling::default_for(config),
            };
            let (max_seq_length, do_lower_case) = bert_config(dir)?;
            return Ok(SentenceConfig {
                pooling,
                normalize: module_dir(dir, "Normalize").is_some(),
                max_seq_length,
                do_lower_case,
                has_modules_json: false,
            });
        }
        let shown = modules_path.display();
        let modules = read_json(&modules_path)?;
        let modules = modules
            .as_array()
            .ok_or_else(|| anyhow!("'{shown}' is not a JSON list of modules; fix the file"))?;
        let (mut transformer, mut pooling, mut normalize) = (None, None, false);
        for m in modules {
            let ty = m.get("type").and_then(Value::as_str).ok_or_else(|| {
                anyhow!("'{shown}' has a module without a \"type\"; fix the file")
            })?;
            let path = m.get("path").and_then(Value::as_str).unwrap_or("");
            if !Path::new(path)
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            {
                bail!(
                    "'{shown}' names module path '{}', which is not inside the directory",
                    quote(path)
                );
            }
            match ty.rsplit('.').next().unwrap_or(ty) {
                "Transformer" => transformer = Some(dir.join(path)),
                "Pooling" => pooling = Some(pooling_config(&dir.join(path))?),
                "Normalize" => normalize = true,
                _ => bail!(
                    "'{shown}' lists module {} ('{}'), which ferrolm does not apply (it runs \
                     Transformer, Pooling and Normalize only)",
                    quote(ty),
                    quote(path)
                ),
            }
        }
        let transformer = transformer.ok_or_else(|| {
            anyhow!("'{shown}' has no Transformer module; ferrolm runs transformer models only")
        })?;
        let pooling = pooling.ok_or_else(|| {
            anyhow!(
                "'{shown}' has no Pooling module (the model outputs token embeddings); ferrolm \
                 embeds whole texts only"
            )
        })?;
        let bert_dir = if transformer.join("sentence_bert_config.json").is_file() {
            transformer
        } else {
            dir.to_path_buf()
        };
        let (max_seq_length, do_lower_case) = bert_config(&bert_dir)?;
        Ok(SentenceConfig {
            pooling,
            normalize,
            max_seq_length,
            do_lower_case,
            has_modules_json: true,
        })
    }
}

/// The first (by name) subdirectory of `dir` named `<digits>_<kind>`, e.g. `1_Pooling`.
fn module_dir(dir: &Path, kind: &str) -> Option<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.split_once('_').is_some_and(|(n, k)| {
                k == kind && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found.into_iter().next()
}

fn pooling_config(module: &Path) -> Result<Pooling> {
    let p = module.join("config.json");
    if !p.is_file() {
        bail!(
            "pooling module '{}' has no config.json; re-download the model",
            module.display()
        );
    }
    Pooling::from_config(&read_json(&p)?).map_err(|e| anyhow!("'{}': {e}", p.display()))
}

/// `(max_seq_length, do_lower_case)` from `dir/sentence_bert_config.json`, if present.
fn bert_config(dir: &Path) -> Result<(Option<usize>, bool)> {
    let p = dir.join("sentence_bert_config.json");
    if !p.is_file() {
        return Ok((None, false));
    }
    let v = read_json(&p)?;
    let bad = |key: &str, x: &Value| {
        anyhow!(
            "'{}': '{key}' is {}; fix the file",
            p.display(),
            quote(&x.to_string())
        )
    };
    let max_seq_length = match v.get("max_seq_length") {
        None | Some(Value::Null) => None,
        Some(x) => Some(
            x.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad("max_seq_length", x))?,
        ),
    };
    let do_lower_case = match v.get("do_lower_case") {
        None | Some(Value::Null) => false,
        Some(x) => x.as_bool().ok_or_else(|| bad("do_lower_case", x))?,
    };
    Ok((max_seq_length, do_lower_case))
}

/// Pools hidden states `hidden` (T, C), all tokens valid, into one vector (C) as
/// sentence-transformers' `Pooling` does, then with `normalize` L2-normalises it as
/// `torch.nn.functional.normalize` (`x / max(|x|, 1e-12)`). Sums accumulate in f64.
/// T = 0 gives zeros. Panics if `hidden.len()` is not a multiple of `c`.
pub fn pool(hidden: &[f32], c: usize, pooling: Pooling, normalize: bool) -> Vec<f32> {
    if c == 0 {
        return Vec::new();
    }
    assert!(
        hidden.len().is_multiple_of(c),
        "pool: {} values are not rows of {c}",
        hidden.len()
    );
    let t = hidden.len() / c;
    let mut out = if t == 0 {
        vec![0.0; c]
    } else {
        match pooling {
            Pooling::Cls => hidden[..c].to_vec(),
            Pooling::LastToken => hidden[(t - 1) * c..].to_vec(),
            Pooling::Max => {
                let mut m = hidden[..c].to_vec();
                for row in hidden.chunks_exact(c).skip(1) {
                    for (m, &x) in m.iter_mut().zip(row) {
                        // torch's max propagates NaN.
                        if x > *m || x.is_nan() {
                            *m = x;
                        }
                    }
                }
                m
            }
            Pooling::Mean | Pooling::MeanSqrtLen | Pooling::WeightedMean => {
                let weight = |i: usize| match pooling {
                    Pooling::WeightedMean => (i + 1) as f64,
                    _ => 1.0,
                };
                let mut sum = vec![0f64; c];
                for (i, row) in hidden.chunks_exact(c).enumerate() {
                    let w = weight(i);
                    for (s, &x) in sum.iter_mut().zip(row) {
                        *s += w * x as f64;
                    }
                }
                let n = t as f64;
                let denom = match pooling {
                    Pooling::Mean => n,
                    Pooling::MeanSqrtLen => n.sqrt(),
                    _ => n * (n + 1.0) / 2.0,
                }
                .max(1e-9);
                sum.iter().map(|&s| (s / denom) as f32).collect()
            }
        }
    };
    if normalize {
        let norm = out.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        let denom = norm.max(1e-12);
        for x in &mut out {
            *x = (*x as f64 / denom) as f32;
        }
    }
    out
}
