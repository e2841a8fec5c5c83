//! Where tests find the real catalog models: `$FERROLM_TEST_MODELS_DIR`, else the catalog's
//! cache (`$FERROLM_HOME/models`, else the user's cache directory + `ferrolm/models`).
//! Under CI (`CI` set) a missing model fails the test instead of skipping it.

use std::path::PathBuf;

pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERROLM_TEST_MODELS_DIR") {
        return PathBuf::from(d);
    }
    if let Some(h) = std::env::var_os("FERROLM_HOME") {
        return PathBuf::from(h).join("models");
    }
    dirs::cache_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("ferrolm")
        .join("models")
}

/// The path of a model file if present; `None` (with a note) to skip, or a panic under CI.
pub fn file(name: &str) -> Option<PathBuf> {
    let p = dir().join(name);
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "real-model test needs {} (run `ferrolm pull` for the catalog models first)",
            p.display()
        );
    }
    eprintln!("skipping: {} not found (run `ferrolm pull NAME` for smollm2-135m-instruct, gemma3-270m, all-minilm-l6-v2)", p.display());
    None
}
