//! Replays the fuzz corpus (fuzz/corpus/gguf_parse, and fuzz/artifacts/gguf_parse when present)
//! through `fuzz_one`, so every input the fuzzer ever kept or crashed on is an ordinary test.
//!
//! The seed files themselves are made by the ignored test `write_seed_corpus`:
//! `cargo test -p ferrolm-format --test fuzz_corpus -- --ignored write_seed_corpus`.

use std::path::{Path, PathBuf};

mod common;

use common::kitchen_sink;
use ferrolm_format::{fuzz_one, GgufHeader, GgufWriter};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn replay_corpus_and_artifacts() {
    let corpus = files_in(&fuzz_dir().join("corpus/gguf_parse"));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/gguf_parse is empty; run write_seed_corpus"
    );
    let artifacts = files_in(&fuzz_dir().join("artifacts/gguf_parse"));
    for path in corpus.iter().chain(&artifacts) {
        let bytes = std::fs::read(path).unwrap();
        let result = std::panic::catch_unwind(|| fuzz_one(&bytes));
        assert!(result.is_ok(), "fuzz_one panicked on {}", path.display());
    }
    eprintln!(
        "replayed {} corpus files and {} artifacts",
        corpus.len(),
        artifacts.len()
    );
}

#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    let dir = fuzz_dir().join("corpus/gguf_parse");
    std::fs::create_dir_all(&dir).unwrap();
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    seeds.push(("empty_v3".into(), GgufWriter::new().to_bytes().unwrap()));
    let sink = kitchen_sink(3, None);
    seeds.push(("kitchen_sink_v3".into(), sink.clone()));
    seeds.push(("kitchen_sink_v2_align64".into(), kitchen_sink(2, Some(64))));
    let mut one = GgufWriter::new();
    one.add_f32_tensor("output_norm.weight", &[8], &[1.0; 8])
        .unwrap();
    seeds.push(("one_f32_tensor".into(), one.to_bytes().unwrap()));
    for cut in [3, 20, 100, 400, sink.len() / 2, sink.len() - 1] {
        seeds.push((format!("kitchen_sink_cut_{cut}"), sink[..cut].to_vec()));
    }
    for (name, bytes) in &seeds {
        assert!(bytes.len() < 64 * 1024);
        std::fs::write(dir.join(format!("seed_{name}.gguf")), bytes).unwrap();
    }
    // The untruncated seeds must parse.
    for (name, bytes) in &seeds[..4] {
        GgufHeader::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
