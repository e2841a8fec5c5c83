//! LoRA adapters made by PEFT (`scripts/gen_golden_lora.py`, under `fixtures/lora/`) applied
//! with `--lora`'s loader: logits equal PEFT's (<= 2e-3) on the tiny llama fixture, from its
//! safetensors and from its GGUF conversion (llama.cpp's permuted q/k rows); bad adapters are
//! refused with a message that names them, and leave the model as it was.

use ferrolm_engine::convert::{convert, parse_type};
use ferrolm_engine::lora::{apply, AdapterArg};
use ferrolm_format::hf::HfDir;
use ferrolm_format::GgufFile;
use ferrolm_model::{KvPrecision, Logits, Model};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const TOL: f32 = 2e-3;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn base_hf() -> Model {
    Model::from_hf(HfDir::open(&root().join("fixtures/hf/llama")).unwrap()).unwrap()
}

fn base_gguf() -> Model {
    let bytes = convert(
        &root().join("fixtures/hf/llama"),
        parse_type("f32").unwrap(),
    )
    .unwrap()
    .to_bytes()
    .unwrap();
    Model::from_gguf(Arc::new(GgufFile::from_bytes(&bytes).unwrap())).unwrap()
}

fn logits(m: &Model, ids: &[u32]) -> Vec<f32> {
    let mut kv = m.new_cache_with(ids.len(), KvPrecision::F32);
    m.forward(ids, &mut kv, Logits::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn golden(case: &str) -> (Vec<u32>, Vec<f32>) {
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/lora").join(case).join("golden.json"))
            .unwrap(),
    )
    .unwrap();
    let ids = g["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let logits = g["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    (ids, logits)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn arg(case: &str) -> AdapterArg {
    AdapterArg {
        dir: root().join("fixtures/lora").join(case),
        scale: 1.0,
        route: None,
    }
}

#[test]
fn peft_adapters_give_pefts_logits() {
    for case in ["llama-all", "llama-qv-rslora"] {
        let (ids, want) = golden(case);
        for (from_gguf, mut m) in [(false, base_hf()), (true, base_gguf())] {
            let before = max_diff(&logits(&m, &ids), &want);
            let applied = apply(&mut m, from_gguf, &arg(case)).unwrap();
            let d = max_diff(&logits(&m, &ids), &want);
            println!(
                "{case:<16} {} {} layers: max |logit - PEFT| {d:.1e} (base alone {before:.2})",
                if from_gguf { "gguf" } else { "hf  " },
                applied.layers
            );
            assert!(d <= TOL, "{case} (gguf {from_gguf}): {d}");
            assert!(
                before > 50.0 * TOL,
                "{case}: the adapter should change the logits"
            );
        }
    }
}

#[test]
fn a_scale_of_zero_is_the_base_model() {
    let (ids, _) = golden("llama-all");
    let mut m = base_hf();
    let base = logits(&m, &ids);
    let a = AdapterArg {
        scale: 0.0,
        route: None,
        ..arg("llama-all")
    };
    apply(&mut m, false, &a).unwrap();
    assert!(max_diff(&logits(&m, &ids), &base) < 1e-6);
}

#[test]
fn bad_adapters_are_refused_by_name() {
    let mut m = base_hf();
    let (ids, _) = golden("llama-all");
    let base = logits(&m, &ids);
    let tmp = std::env::temp_dir().join(format!("ferrolm-lora-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let err = |dir: &Path| {
        let a = AdapterArg {
            dir: dir.to_path_buf(),
            scale: 1.0,
            route: None,
        };
        format!("{:#}", apply(&mut base_hf(), false, &a).unwrap_err())
    };
    // Not a directory / no files.
    assert!(err(&tmp.join("nope")).contains("not a directory"));
    assert!(err(&tmp).contains("adapter_config.json"));
    // A prompt-tuning config.
    let src = root().join("fixtures/lora/llama-all");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        tmp.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        tmp.join("adapter_config.json"),
        r#"{"peft_type": "PROMPT_TUNING"}"#,
    )
    .unwrap();
    assert!(err(&tmp).contains("PROMPT_TUNING"));
    // Not JSON; a truncated weights file.
    std::fs::write(tmp.join("adapter_config.json"), "{").unwrap();
    assert!(err(&tmp).contains("adapter_config.json"));
    std::fs::copy(
        src.join("adapter_config.json"),
        tmp.join("adapter_config.json"),
    )
    .unwrap();
    let w = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    std::fs::write(tmp.join("adapter_model.safetensors"), &w[..w.len() / 2]).unwrap();
    assert!(err(&tmp).contains("safetensors"), "{}", err(&tmp));
    // An adapter for a wider model: refused at the first layer, the model unchanged.
    let a = AdapterArg {
        dir: tmp.clone(),
        scale: 1.0,
        route: None,
    };
    write_adapter(
        &tmp,
        &[(
            "base_model.model.model.layers.0.self_attn.q_proj",
            4,
            128,
            64,
        )],
    );
    let e = format!("{:#}", apply(&mut m, false, &a).unwrap_err());
    assert!(e.contains("q_proj") && e.contains("another model"), "{e}");
    assert_eq!(logits(&m, &ids), base);
    // A module this family does not have.
    write_adapter(
        &tmp,
        &[(
            "base_model.model.model.layers.0.self_attn.c_attn",
            4,
            64,
            64,
        )],
    );
    let e = format!("{:#}", apply(&mut m, false, &a).unwrap_err());
    assert!(e.contains("c_attn"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A LoRA adapter of the given `(module, r, in, out)` modules, all weights 0.01.
fn write_adapter(dir: &Path, modules: &[(&str, usize, usize, usize)]) {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for &(m, r, i, o) in modules {
        for (n, shape) in [("lora_A", vec![r, i]), ("lora_B", vec![o, r])] {
            let len: usize = shape.iter().product();
            let bytes = (0..len).flat_map(|_| 0.01f32.to_le_bytes()).collect();
            tensors.push((format!("{m}.{n}.weight"), shape, bytes));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8}"#,
    )
    .unwrap();
}

/// `export --merge`: the GGUF base with PEFT's adapter folded into its (f32) matrices gives
/// PEFT's logits on its own.
#[test]
fn merged_gguf_gives_the_adapters_logits() {
    let tmp = std::env::temp_dir().join(format!("ferrolm-merge-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let base = tmp.join("llama-f32.gguf");
    convert(
        &root().join("fixtures/hf/llama"),
        parse_type("f32").unwrap(),
    )
    .unwrap()
    .write_file(&base)
    .unwrap();
    let mut lm = ferrolm_engine::load(base.to_str().unwrap(), true).unwrap();
    apply(&mut lm.model, true, &arg("llama-all")).unwrap();
    let merged = tmp.join("merged.gguf");
    ferrolm_engine::lora::merge_gguf(&lm)
        .unwrap()
        .write_file(&merged)
        .unwrap();
    let m = Model::from_gguf(Arc::new(GgufFile::open(&merged).unwrap())).unwrap();
    let (ids, want) = golden("llama-all");
    let d = max_diff(&logits(&m, &ids), &want);
    println!("merged GGUF: max |logit - PEFT| {d:.1e}");
    assert!(d <= TOL, "{d}");
    // Without an adapter there is nothing to merge.
    let plain = ferrolm_engine::load(base.to_str().unwrap(), true).unwrap();
    assert!(ferrolm_engine::lora::merge_gguf(&plain).is_err());
    let _ = std::fs::remove_dir_all(&tmp);
}
