//! `ferrolm finetune` end to end on the tiny llama fixture (token ids): LoRA writes a PEFT
//! adapter that `--lora` applies; full fine-tuning with LOMO (from the safetensors base,
//! converted in memory) writes a GGUF that `logits` runs; bad combinations are refused by name.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrolm-finetune-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ferrolm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Arithmetic progressions mod 128 as `input_ids` lines.
fn data(dir: &Path) -> PathBuf {
    let p = dir.join("ids.jsonl");
    let lines: Vec<String> = (0..40u32)
        .map(|i| {
            let s = (i * 37) % 100;
            let ids: Vec<u32> = (0..24).map(|k| (s + 3 * k) % 128).collect();
            serde_json::json!({ "input_ids": ids }).to_string()
        })
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

fn logits(model: &str, extra: &[&str]) -> Vec<f64> {
    let mut args = vec![
        "logits",
        "-m",
        model,
        "--ids",
        "7,10,13,16,19",
        "--all",
        "--json",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = ferrolm(&args);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array().map_or_else(
                || vec![r.as_f64().unwrap()],
                |a| a.iter().map(|x| x.as_f64().unwrap()).collect(),
            )
        })
        .collect()
}

#[test]
fn lora_and_full_fine_tuning_from_the_command_line() {
    let dir = tmp();
    let data = data(&dir);
    let base = root().join("fixtures/hf/llama");
    let base = base.to_str().unwrap();
    let summary =
        |out: &str| -> Value { serde_json::from_str(out.lines().last().unwrap()).unwrap() };
    // LoRA: a PEFT adapter that --lora applies.
    let lora = dir.join("lora");
    let (ok, out, err) = ferrolm(&[
        "finetune",
        "-m",
        base,
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "20",
        "--lr",
        "5e-3",
        "--rank",
        "4",
        "--out",
        lora.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let s = summary(&out);
    assert!(
        s["eval_loss_after"].as_f64() < s["eval_loss_before"].as_f64(),
        "{s}"
    );
    assert!(
        lora.join("adapter_model.safetensors").exists()
            && lora.join("adapter_config.json").exists()
    );
    let plain = logits(base, &[]);
    let adapted = logits(base, &["--lora", lora.to_str().unwrap()]);
    assert!(plain
        .iter()
        .zip(&adapted)
        .any(|(a, b)| (a - b).abs() > 1e-3));
    // Full fine-tuning with LOMO: the model written as GGUF, which runs.
    let full = dir.join("full");
    let (ok, out, err) = ferrolm(&[
        "finetune",
        "-m",
        base,
        "--data",
        data.to_str().unwrap(),
        "--method",
        "full",
        "--optimizer",
        "lomo",
        "--steps",
        "60",
        "--lr",
        "5e-2",
        "--out",
        full.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let s = summary(&out);
    assert_eq!(s["optimizer"], "lomo");
    assert_eq!(s["sequences_per_step"], 1);
    let (before, after) = (
        s["eval_loss_before"].as_f64().unwrap(),
        s["eval_loss_after"].as_f64().unwrap(),
    );
    println!("full LOMO: held-out loss {before:.3} -> {after:.3}");
    assert!(after < before, "{s}");
    let gguf = full.join("model.gguf");
    let trained = logits(gguf.to_str().unwrap(), &[]);
    assert_eq!(trained.len(), plain.len());
    assert!(plain
        .iter()
        .zip(&trained)
        .any(|(a, b)| (a - b).abs() > 1e-2));
    // Refused by name.
    for (args, says) in [
        (
            vec!["--method", "full", "--optimizer", "lomo", "--batch", "4"],
            "--batch 1",
        ),
        (
            vec!["--method", "full", "--optimizer", "sgd"],
            "--optimizer 'sgd'",
        ),
        (
            vec!["--method", "full", "--lora", lora.to_str().unwrap()],
            "--lora",
        ),
    ] {
        let mut a = vec![
            "finetune",
            "-m",
            base,
            "--data",
            data.to_str().unwrap(),
            "--out",
            "unused",
        ];
        a.extend(args);
        let (ok, _, err) = ferrolm(&a);
        assert!(!ok && err.contains(says), "{a:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
