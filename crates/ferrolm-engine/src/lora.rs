//! LoRA adapters in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`, keys
//! `base_model.model.<module>.lora_A.weight` / `lora_B.weight`) applied to a loaded model:
//! each named projection is wrapped with its bypass (`ferrolm_model::lora`). Module paths are
//! the Hugging Face ones, mapped through the family's tensor table, so one adapter fits both
//! the safetensors model and its GGUF conversion (whose q/k rows llama.cpp permutes; the
//! adapter's `B` rows are permuted alike).

use anyhow::{bail, Context, Result};
use ferrolm_format::hf::HfDir;
use ferrolm_model::lora::{wrap, LoraPart};
use ferrolm_model::spec::{Position, RopeLayout};
use ferrolm_model::weights::Slot;
use ferrolm_model::Model;
use std::path::PathBuf;

/// `--lora DIR[:SCALE]`: an adapter directory and a multiplier on its own scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterArg {
    pub dir: PathBuf,
    pub scale: f32,
    /// `Some(k)`: the server's per-request adapter number `k` (applied only to the rows of
    /// requests that name it); `None`: applied to everything.
    pub route: Option<usize>,
}

impl std::str::FromStr for AdapterArg {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<AdapterArg> {
        // A trailing `:number` is the scale; anything else is part of the path.
        if let Some((dir, x)) = s.rsplit_once(':') {
            if let Ok(scale) = x.parse::<f32>() {
                if !scale.is_finite() {
                    bail!("--lora '{s}': the scale must be a finite number");
                }
                return Ok(AdapterArg {
                    dir: dir.into(),
                    scale,
                    route: None,
                });
            }
        }
        Ok(AdapterArg {
            dir: s.into(),
            scale: 1.0,
            route: None,
        })
    }
}

/// What applying an adapter did.
#[derive(Clone, Debug)]
pub struct Applied {
    pub layers: usize,
    pub rank: usize,
    pub scaling: f32,
}

/// Applies the PEFT LoRA adapter `arg` to `model`; `from_gguf` says the base came from a GGUF
/// file (for llama.cpp's q/k row order).
pub fn apply(model: &mut Model, from_gguf: bool, arg: &AdapterArg) -> Result<Applied> {
    let dir = HfDir::open_adapter(&arg.dir)?;
    let shown = arg.dir.display().to_string();
    let c = &dir.config;
    let peft_type = c["peft_type"].as_str().unwrap_or("LORA");
    if peft_type != "LORA" {
        bail!("adapter '{shown}' is a {peft_type} adapter; --lora loads LoRA adapters");
    }
    if c["use_dora"].as_bool() == Some(true) {
        bail!("adapter '{shown}' uses DoRA, which ferrolm does not apply yet; use a plain LoRA adapter");
    }
    if c["modules_to_save"]
        .as_array()
        .is_some_and(|m| !m.is_empty())
    {
        bail!("adapter '{shown}' also replaces whole modules (modules_to_save), which ferrolm does not load yet");
    }
    let alpha = c["lora_alpha"]
        .as_f64()
        .with_context(|| format!("'{shown}/adapter_config.json' has no numeric lora_alpha"))?
        as f32;
    let rslora = c["use_rslora"].as_bool() == Some(true);
    let alpha_pattern = c["alpha_pattern"].as_object();
    let arch = model.config.arch.clone();
    let table = ferrolm_model::arch::hf_table(&arch).with_context(|| {
        format!("LoRA adapters for '{arch}' models are not mapped yet (LLaMA, Mistral, Qwen 2/3, Gemma 1-3 are)")
    })?;
    // llama.cpp stores a llama model's q and k rows in adjacent-pair order.
    let permuted = from_gguf
        && arch == "llama"
        && model.config.layers.iter().any(
            |l| matches!(&l.position, Position::Rope(r) if r.layout == RopeLayout::Interleaved),
        );
    let (h, hkv) = (model.config.attn.n_heads, model.config.attn.n_kv_heads);
    let mut applied = Applied {
        layers: 0,
        rank: 0,
        scaling: 0.0,
    };
    for name in dir.tensor_names() {
        let Some(module) = name
            .strip_suffix(".lora_A.weight")
            .or_else(|| name.strip_suffix(".lora_A.default.weight"))
        else {
            if !name.contains(".lora_B.") {
                bail!("adapter '{shown}' holds '{name}', which is neither a lora_A nor a lora_B weight");
            }
            continue;
        };
        let b_name = name.replace(".lora_A.", ".lora_B.");
        let (a, b) = (dir.get(name)?, dir.get(&b_name)?);
        let path = module.strip_prefix("base_model.model.").unwrap_or(module);
        let key = ferrolm_model::arch::hf_module_key(table, path).with_context(|| {
            format!("adapter '{shown}' targets '{path}', which is not a projection of this {arch} model")
        })?;
        if a.shape.len() != 2 || b.shape.len() != 2 || a.shape[0] != b.shape[1] {
            bail!(
                "adapter '{shown}': {name} is {:?} and its lora_B {:?}; expected (r, in) and (out, r)",
                a.shape,
                b.shape
            );
        }
        let r = a.shape[0];
        let alpha = alpha_pattern
            .and_then(|p| {
                p.iter()
                    .find(|(k, _)| path.ends_with(k.as_str()))
                    .and_then(|(_, v)| v.as_f64())
            })
            .map_or(alpha, |x| x as f32);
        let scaling = if rslora {
            alpha / (r as f32).sqrt()
        } else {
            alpha / r as f32
        };
        let mut bv = b.to_f32();
        if permuted {
            match key.slot {
                Slot::AttnQ => bv = crate::convert::permute_rows(&bv, r, h, false),
                Slot::AttnK => bv = crate::convert::permute_rows(&bv, r, hkv, false),
                _ => {}
            }
        }
        let slot = model.linear_mut(key).with_context(|| {
            format!("adapter '{shown}' targets '{path}', which this model does not have")
        })?;
        wrap(
            slot,
            LoraPart {
                a: a.to_f32(),
                b: bv,
                r,
                scale: scaling * arg.scale,
                route: arg.route,
            },
        )
        .with_context(|| format!("adapter '{shown}', module '{path}'"))?;
        applied.layers += 1;
        applied.rank = applied.rank.max(r);
        applied.scaling = scaling;
    }
    if applied.layers == 0 {
        bail!("adapter '{shown}' has no lora_A/lora_B weights");
    }
    Ok(applied)
}

/// The GGUF file `lm` came from, with every adapted projection replaced by its merged weight
/// `W + scale B A` (re-encoded in the tensor's own type; other tensors and the metadata copied
/// as they are): `ferrolm export --merge`.
pub fn merge_gguf(lm: &crate::LoadedModel) -> Result<ferrolm_format::GgufWriter> {
    use ferrolm_format::{quant, GgmlType, GgufWriter};
    use ferrolm_model::weights::{gguf_key_name, Key};
    let Some(file) = &lm.file else {
        bail!("export --merge writes GGUF from a GGUF base; convert the Hugging Face model first (`ferrolm convert`)");
    };
    let h = &file.header;
    let mut w = GgufWriter::new();
    w.set_version(h.version);
    for (k, v) in &h.metadata {
        w.add_meta(k.clone(), v.clone());
    }
    let slots = [
        Slot::AttnQ,
        Slot::AttnK,
        Slot::AttnV,
        Slot::AttnOut,
        Slot::FfnGate,
        Slot::FfnUp,
        Slot::FfnDown,
    ];
    let n_layers = lm.model.blocks().len();
    let key_of = |name: &str| -> Option<Key> {
        (0..n_layers)
            .flat_map(|l| slots.iter().map(move |&s| Key::layer(s, l)))
            .find(|&k| gguf_key_name(k, "weight") == name)
    };
    let mut merged = 0;
    for t in &h.tensors {
        let adapted = key_of(&t.name)
            .and_then(|k| lm.model.blocks().get(k.layer?).map(|b| (k, b)))
            .and_then(|(k, b)| {
                let l: &dyn ferrolm_model::linear::Linear = match k.slot {
                    Slot::AttnQ => b.attn.q.as_ref(),
                    Slot::AttnK => b.attn.k.as_ref(),
                    Slot::AttnV => b.attn.v.as_ref(),
                    Slot::AttnOut => b.attn.o.as_ref(),
                    _ => match &b.ffn {
                        ferrolm_model::layers::FfnLayer::Dense(f) => match k.slot {
                            Slot::FfnGate => f.gate.as_deref()?,
                            Slot::FfnUp => f.up.as_ref(),
                            _ => f.down.as_ref(),
                        },
                        _ => return None,
                    },
                };
                l.kind().contains("+LoRA").then_some(l)
            });
        let data = match adapted {
            None => file.tensor_bytes(t).to_vec(),
            Some(l) => {
                let (i, o) = (l.in_dim(), l.out_dim());
                let mut rows = vec![0f32; i * o];
                l.weight_rows(0, o, &mut rows)?;
                merged += 1;
                match t.ty {
                    GgmlType::F32 => rows.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ty if quant::can_quantize(ty) => quant::quantize(ty, &rows)?,
                    ty => bail!("export --merge cannot re-encode '{}' ({ty}); pick a base in a quantizable type", t.name),
                }
            }
        };
        w.add_tensor(t.name.clone(), &t.dims, t.ty, data)?;
    }
    if merged == 0 {
        bail!("no adapted matrix to merge: give --lora DIR");
    }
    Ok(w)
}

/// The virtual tokens `(N, C)` of a PEFT prompt-tuning or P-tuning adapter
/// (`prompt_embeddings`), checked against the model's width: `--prompt-adapter DIR`.
pub fn load_prompt(model: &Model, dir: &std::path::Path) -> Result<Vec<f32>> {
    let d = HfDir::open_adapter(dir)?;
    let shown = dir.display();
    let kind = d.config["peft_type"].as_str().unwrap_or("");
    if !matches!(kind, "PROMPT_TUNING" | "P_TUNING") {
        bail!("'{shown}' is a {kind} adapter; --prompt-adapter takes prompt tuning or P-tuning adapters (LoRA goes to --lora)");
    }
    let t = d.get("prompt_embeddings")?;
    let c = model.config.hidden;
    if t.shape.len() != 2 || t.shape[1] != c {
        bail!("'{shown}': prompt_embeddings is {:?}, but this model's width is {c}; the adapter was made for another model", t.shape);
    }
    Ok(t.to_f32())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_arg_takes_a_trailing_scale() {
        let a: AdapterArg = "out/adapter:0.5".parse().unwrap();
        assert_eq!((a.dir, a.scale), ("out/adapter".into(), 0.5));
        let a: AdapterArg = "out/adapter".parse().unwrap();
        assert_eq!((a.dir, a.scale), ("out/adapter".into(), 1.0));
        let a: AdapterArg = "c:/x:y".parse().unwrap();
        assert_eq!(a.dir, PathBuf::from("c:/x:y"));
    }
}
