//! Bad input never crashes: each case gives one line on stderr naming what is wrong and what
//! to do, exit code 1, and no panic or backtrace.

use ferrolm_format::{GgmlType, GgufWriter, MetaValue};
use std::path::PathBuf;
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrolm-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Runs `ferrolm ARGS` and returns (exit code, stderr), checking the one-line error shape.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "args {args:?}: stderr {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    eprintln!("{args:?} -> {}", lines[0]);
    lines[0].to_string()
}

fn tiny_gguf(arch: &str, ty: GgmlType) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_meta("general.architecture", MetaValue::String(arch.into()));
    let row = ty.row_bytes(256).unwrap();
    w.add_tensor("token_embd.weight", &[256, 2], ty, vec![0u8; 2 * row])
        .unwrap();
    w.to_bytes().unwrap()
}

fn write(name: &str, bytes: &[u8]) -> String {
    let p = tmp(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

fn model_args<'a>(cmd: &'a str, path: &'a str) -> Vec<&'a str> {
    vec![cmd, "-m", path, "hello"]
}

#[test]
fn wrong_magic() {
    let p = write("magic.gguf", b"PK\x03\x04 this is a zip file, not a model");
    let e = fails(&model_args("generate", &p));
    assert!(e.contains("not a GGUF file"), "{e}");
}

#[test]
fn truncated_header() {
    let full = tiny_gguf("llama", GgmlType::F32);
    let p = write("trunc.gguf", &full[..40]);
    let e = fails(&model_args("generate", &p));
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn tensor_past_end_of_file() {
    let full = tiny_gguf("llama", GgmlType::F32);
    let p = write("short.gguf", &full[..full.len() - 16]);
    let e = fails(&model_args("logits", &p));
    assert!(e.contains("past the end") || e.contains("truncated"), "{e}");
}

#[test]
fn unsupported_tensor_type() {
    let p = write("iq.gguf", &tiny_gguf("llama", GgmlType::IQ2_XXS));
    let e = fails(&model_args("generate", &p));
    assert!(
        e.contains("IQ2_XXS") && e.contains("token_embd.weight"),
        "{e}"
    );
}

#[test]
fn unknown_architecture() {
    let p = write("arch.gguf", &tiny_gguf("mamba9", GgmlType::F32));
    let e = fails(&model_args("generate", &p));
    assert!(
        e.contains("unknown architecture 'mamba9'") && e.contains("llama"),
        "{e}"
    );
}

#[test]
fn directory_instead_of_gguf() {
    let d = tmp("hf-dir");
    std::fs::create_dir_all(&d).unwrap();
    let e = fails(&["generate", "-m", d.to_str().unwrap(), "hi"]);
    assert!(e.contains("is a directory") && e.contains(".gguf"), "{e}");
}

#[test]
fn unknown_catalog_name() {
    let e = fails(&["generate", "-m", "no-such-model", "hi"]);
    assert!(
        e.contains("unknown model 'no-such-model'") && e.contains("smollm2-135m-instruct"),
        "{e}"
    );
}

#[test]
fn missing_file() {
    let e = fails(&["generate", "-m", "./missing/model.gguf", "hi"]);
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn missing_text_file_for_perplexity() {
    let e = fails(&["perplexity", "-f", "./no/such/file.txt"]);
    assert!(e.contains("no/such/file.txt"), "{e}");
}

#[test]
fn invalid_sampling_values() {
    let e = fails(&["generate", "--temperature", "0.7", "--top-p", "1.5", "hi"]);
    assert!(e.contains("top_p"), "{e}");
}

/// Needs the default catalog model (CI pulls it before the tests).
#[test]
fn prompt_longer_than_context() {
    let e = fails(&[
        "generate",
        "--ctx",
        "4",
        "one two three four five six seven eight nine ten",
    ]);
    assert!(e.contains("--ctx") && e.contains("context"), "{e}");
    let e = fails(&[
        "logits",
        "--ctx",
        "4",
        "one two three four five six seven eight nine ten",
    ]);
    assert!(e.contains("--ctx"), "{e}");
}
