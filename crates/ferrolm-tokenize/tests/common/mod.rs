//! Test helpers: where the real model files are, and the golden-file loader.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Directory with the real model files (see `ferrolm_format::test_models`).
pub fn models_dir() -> Option<PathBuf> {
    Some(ferrolm_format::test_models::dir())
}

/// The model file for a golden name ("smollm2", "gemma3"), if present.
pub fn model_path(name: &str) -> Option<PathBuf> {
    let file = match name {
        "smollm2" => "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma3" => "gemma-3-270m-q4_k_m.gguf",
        other => panic!("unknown golden model {other}"),
    };
    ferrolm_format::test_models::file(file)
}

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}
