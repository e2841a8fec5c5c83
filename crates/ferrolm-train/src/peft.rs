//! Saving an adapter as PEFT does (`adapter_config.json` + `adapter_model.safetensors` with
//! `base_model.model.<module>.lora_A.weight` / `lora_B.weight`), so
//! `peft.PeftModel.from_pretrained` loads it and `--lora` loads it back.

use crate::net::{slot_name, Adapter};
use anyhow::{Context, Result};
use ferrolm_engine::convert::permute_rows;
use ferrolm_model::spec::{Position, RopeLayout};
use ferrolm_model::weights::Slot;
use ferrolm_model::Model;
use std::path::Path;

/// Writes `ad` into `dir` in PEFT's format. `from_gguf`: the base came from a GGUF file (whose
/// llama q/k rows are permuted); `base` names the base model in the config.
pub fn save(ad: &Adapter, m: &Model, from_gguf: bool, base: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    if let Some(p) = &ad.prompt {
        return save_prompt(p, m, base, dir);
    }
    let arch = &m.config.arch;
    let table = ferrolm_model::arch::hf_table(arch)
        .with_context(|| format!("saving adapters for '{arch}' models is not mapped yet"))?;
    let permuted = from_gguf
        && arch == "llama"
        && m.config.layers.iter().any(
            |l| matches!(&l.position, Position::Rope(r) if r.layout == RopeLayout::Interleaved),
        );
    let (h, hkv) = (m.config.attn.n_heads, m.config.attn.n_kv_heads);
    let r = ad.cfg.r;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for md in &ad.mods {
        let pat = table
            .names
            .iter()
            .chain(table.also)
            .find(|(s, _)| *s == md.slot)
            .map(|(_, p)| *p)
            .with_context(|| format!("no Hugging Face name for {:?}", md.slot))?;
        let module = pat.replace("{L}", &md.layer.to_string());
        let b = match (permuted, md.slot) {
            (true, Slot::AttnQ) => permute_rows(&md.b, r, h, true),
            (true, Slot::AttnK) => permute_rows(&md.b, r, hkv, true),
            _ => md.b.clone(),
        };
        tensors.push((
            format!("base_model.model.{module}.lora_A.weight"),
            vec![r, md.d_in],
            bytes(&md.a),
        ));
        tensors.push((
            format!("base_model.model.{module}.lora_B.weight"),
            vec![md.d_out, r],
            bytes(&b),
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    let tmp = dir.join("adapter_model.safetensors.partial");
    safetensors::serialize_to_file(views, None, &tmp)?;
    std::fs::rename(&tmp, dir.join("adapter_model.safetensors"))?;
    let mut targets: Vec<&str> = ad.mods.iter().map(|m| slot_name(m.slot)).collect();
    targets.sort_unstable();
    targets.dedup();
    let cfg = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": r,
        "lora_alpha": ad.cfg.alpha,
        "lora_dropout": ad.cfg.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg)?,
    )?;
    Ok(())
}

/// Prompt tuning and P-tuning as PEFT saves them: the virtual tokens (for P-tuning, the
/// encoder's output) as `prompt_embeddings (N, C)`.
fn save_prompt(p: &crate::net::Prompt, m: &Model, base: &str, dir: &Path) -> Result<()> {
    let tokens = p.virtual_tokens();
    let bytes: Vec<u8> = tokens.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![p.n, p.c], &bytes)?;
    let tmp = dir.join("adapter_model.safetensors.partial");
    safetensors::serialize_to_file(vec![("prompt_embeddings".to_string(), view)], None, &tmp)?;
    std::fs::rename(&tmp, dir.join("adapter_model.safetensors"))?;
    let mut cfg = serde_json::json!({
        "peft_type": if p.mlp.is_empty() { "PROMPT_TUNING" } else { "P_TUNING" },
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "num_virtual_tokens": p.n,
        "token_dim": p.c,
        "num_transformer_submodules": 1,
        "num_attention_heads": m.config.attn.n_heads,
        "num_layers": m.blocks().len(),
        "inference_mode": true,
    });
    if p.mlp.is_empty() {
        cfg["prompt_tuning_init"] = "SAMPLE_VOCAB".into();
    } else {
        cfg["encoder_reparameterization_type"] = "MLP".into();
        cfg["encoder_hidden_size"] = p.hidden.into();
    }
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_inverse_undoes_the_converters_permutation() {
        // heads 2, d 4, cols 1: HF rows [0 1 2 3 | 4 5 6 7] -> llama.cpp [0 2 1 3 | 4 6 5 7].
        let hf = [0., 1., 2., 3., 4., 5., 6., 7.];
        let gguf = super::permute_rows(&hf, 1, 2, false);
        assert_eq!(gguf, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(super::permute_rows(&gguf, 1, 2, true), hf.to_vec());
    }
}
