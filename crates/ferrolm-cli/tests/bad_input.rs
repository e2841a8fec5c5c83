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

/// A copy of an HF fixture with its `config.json` edited by `edit` (and files removed).
fn hf_variant(
    name: &str,
    fixture: &str,
    edit: impl Fn(&mut serde_json::Value),
    remove: &[&str],
) -> String {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/hf")
        .join(fixture);
    let dst = tmp(name);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let p = dst.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
    for f in remove {
        let _ = std::fs::remove_file(dst.join(f));
    }
    dst.to_str().unwrap().to_string()
}

fn hf_fails(dir: &str) -> String {
    fails(&["logits", "-m", dir, "--ids", "1,2,3"])
}

#[test]
fn hf_unknown_model_type() {
    let d = hf_variant(
        "hf-unknown",
        "llama",
        |v| v["model_type"] = "llama9".into(),
        &[],
    );
    let e = hf_fails(&d);
    assert!(
        e.contains("unknown model_type 'llama9'") && e.contains("gpt_neox"),
        "{e}"
    );
}

#[test]
fn hf_unsupported_option() {
    let d = hf_variant(
        "hf-option",
        "bloom",
        |v| v["apply_residual_connection_post_layernorm"] = true.into(),
        &[],
    );
    let e = hf_fails(&d);
    assert!(
        e.contains("apply_residual_connection_post_layernorm = true is not supported"),
        "{e}"
    );
    let d = hf_variant("hf-act", "llama", |v| v["hidden_act"] = "mish".into(), &[]);
    assert!(hf_fails(&d).contains("activation 'mish'"));
    let d = hf_variant(
        "hf-rope",
        "llama",
        |v| v["rope_parameters"]["rope_type"] = "wavy".into(),
        &[],
    );
    assert!(hf_fails(&d).contains("rope scaling type 'wavy'"));
}

#[test]
fn hf_inconsistent_config() {
    let d = hf_variant("hf-heads", "gpt2", |v| v["n_head"] = 5.into(), &[]);
    let e = hf_fails(&d);
    assert!(e.contains("not divisible by 5 attention heads"), "{e}");
    let d = hf_variant(
        "hf-kv",
        "llama",
        |v| v["num_key_value_heads"] = 3.into(),
        &[],
    );
    assert!(hf_fails(&d).contains("not a multiple of 3 KV heads"));
    let d = hf_variant(
        "hf-type",
        "llama",
        |v| v["num_hidden_layers"] = "two".into(),
        &[],
    );
    assert!(hf_fails(&d).contains("'num_hidden_layers' should be a non-negative integer"));
}

#[test]
fn hf_missing_and_mismatched_tensors() {
    let d = hf_variant(
        "hf-layers",
        "llama",
        |v| v["num_hidden_layers"] = 3.into(),
        &[],
    );
    let e = hf_fails(&d);
    assert!(e.contains("no tensor 'model.layers.2."), "{e}");
    let d = hf_variant(
        "hf-ffn",
        "llama",
        |v| v["intermediate_size"] = 100.into(),
        &[],
    );
    let e = hf_fails(&d);
    assert!(
        e.contains("'model.layers.0.mlp.up_proj.weight' has shape (96, 64)")
            && e.contains("needs (100, 64)"),
        "{e}"
    );
    let d = hf_variant("hf-noweights", "llama", |_| {}, &["model.safetensors"]);
    assert!(hf_fails(&d).contains("safetensors"));
}

#[test]
fn hf_malformed_files() {
    let d = hf_variant("hf-trunc", "llama", |_| {}, &[]);
    let p = std::path::Path::new(&d).join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    assert!(hf_fails(&d).contains("not a valid safetensors file"));
    let d = hf_variant("hf-json", "llama", |_| {}, &[]);
    std::fs::write(std::path::Path::new(&d).join("config.json"), "{not json").unwrap();
    assert!(hf_fails(&d).contains("not valid JSON"));
}

#[test]
fn hf_usage_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf");
    let llama = dir.join("llama");
    let llama = llama.to_str().unwrap();
    assert!(fails(&["generate", "-m", llama, "hello"]).contains("no tokenizer.json"));
    let bert = dir.join("bert");
    assert!(
        fails(&["logits", "-m", bert.to_str().unwrap(), "--ids", "1,2"])
            .contains("use `ferrolm embed`")
    );
    assert!(
        fails(&["logits", "-m", llama, "--ids", "1", "--decoder-ids", "0"])
            .contains("encoder-decoder")
    );
    assert!(fails(&[
        "generate",
        "-m",
        llama,
        "--ids",
        "1",
        "--beams",
        "2",
        "--num-return",
        "3"
    ])
    .contains("num_return"));
    assert!(fails(&[
        "convert",
        llama,
        &tmp("x.gguf").to_string_lossy(),
        "--type",
        "q9"
    ])
    .contains("cannot convert to 'q9'"));
    assert!(
        fails(&["logits", "-m", llama, "--ids", "1", "--quantize", "q8_1"])
            .contains("cannot convert")
    );
}

#[test]
fn serve_refuses_bad_settings() {
    let e = fails(&["serve", "-m", "no-such-model.gguf", "--port", "0"]);
    assert!(e.contains("does not exist"), "{e}");
    let e = fails(&["serve", "--host", "999.1.1.1", "--port", "0"]);
    assert!(e.contains("cannot listen") && e.contains("--host"), "{e}");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let e = fails(&["serve", "--port", &port, "-m", "no-such-model.gguf"]);
    assert!(e.contains("another server"), "{e}");
    if let Some(smol) = ferrolm_format::test_models::file("SmolLM2-135M-Instruct.Q4_1.gguf") {
        let e = fails(&[
            "serve",
            "-m",
            smol.to_str().unwrap(),
            "--port",
            "0",
            "--kv-mem-mb",
            "1",
        ]);
        assert!(e.contains("--kv-mem-mb"), "{e}");
    }
}

#[test]
fn bad_constraints() {
    let missing = tmp("missing-schema.json");
    let e = fails(&[
        "generate",
        "-m",
        "no-such-model.gguf",
        "--json-schema",
        missing.to_str().unwrap(),
        "x",
    ]);
    assert!(
        e.contains("--json-schema") && e.contains("cannot read"),
        "{e}"
    );
    let e = fails(&["generate", "--json-schema", "{\"type\":", "x"]);
    assert!(e.contains("not valid JSON"), "{e}");
    let e = fails(&["generate", "--grammar", missing.to_str().unwrap(), "x"]);
    assert!(e.contains("--grammar"), "{e}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf/llama");
    let e = fails(&[
        "generate",
        "-m",
        dir.to_str().unwrap(),
        "--ids",
        "1",
        "--regex",
        "a+",
    ]);
    assert!(e.contains("tokenizer"), "{e}");
    let Some(smol) = ferrolm_format::test_models::file("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let smol = smol.to_str().unwrap();
    let lark = write("bad.lark", b"start: undefined_rule\n");
    for (flag, value, expect) in [
        ("--json-schema", r#"{"type":"wat"}"#, "invalid JSON schema"),
        (
            "--json-schema",
            r#"{"type":"integer","minimum":3,"maximum":1}"#,
            "invalid JSON schema",
        ),
        ("--regex", "(unclosed", "invalid regex"),
        ("--grammar", lark.as_str(), "invalid Lark grammar"),
    ] {
        let e = fails(&["generate", "-m", smol, flag, value, "x"]);
        assert!(e.contains(expect), "{flag} {value}: {e}");
    }
    let e = fails(&[
        "generate",
        "-m",
        smol,
        "-n",
        "3",
        "--regex",
        "[0-9]{30}",
        "x",
    ]);
    assert!(e.contains("raise --max-tokens"), "{e}");
}

#[test]
fn long_context_flags_name_what_is_wrong() {
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/hf/llama");
    let cases: &[(&[&str], &str)] = &[
        (&["--rope-scaling", "bogus"], "unknown --rope-scaling"),
        (&["--rope-scaling", "linear"], "needs --rope-factor"),
        (
            &["--rope-factor", "2"],
            "--rope-factor needs --rope-scaling",
        ),
        (
            &["--rope-scaling", "longrope", "--rope-factor", "2"],
            "per-dimension factors",
        ),
        (&["--self-extend", "8"], "expected G:W"),
        (&["--sinks", "4"], "--sinks needs --stream-window"),
        (&["--memory-topk", "4"], "needs --stream-window"),
        (
            &[
                "--stream-window",
                "64",
                "--memory-topk",
                "2",
                "--memory-size",
                "8",
            ],
            "smaller than one chunk",
        ),
        (
            &["--stream-window", "64", "--self-extend", "4:16"],
            "do not combine",
        ),
        (&["--rope-scaling", "leaky-rerope"], "--rope-factor K"),
        (
            &[
                "--stream-window",
                "64",
                "--memory-topk",
                "2",
                "--memory-layers",
                "1,99",
            ],
            "--memory-layers",
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec!["logits", "-m", fx, "--ids", "1,2,3"];
        args.extend_from_slice(flags);
        let e = fails(&args);
        assert!(e.contains(want), "{flags:?}: {e}");
    }
}
