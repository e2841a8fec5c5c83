//! `convert` round trips: a GGUF converted from a Hugging Face fixture gives the fixture's logits
//! when loaded back: exactly (up to summation order) at f32, and at f16 for fixtures stored in
//! f16; within the quantization error at q8_0. Both layouts are covered: llama.cpp's (`llama`,
//! Q/K rows permuted) and ferrolm's `ferrolm.hf_config` (every other family).

use ferrolm_engine::convert::{convert, parse_type};
use ferrolm_format::hf::HfDir;
use ferrolm_format::GgufFile;
use ferrolm_model::{KvPrecision, Logits, Model};
use std::path::Path;
use std::sync::Arc;

const IDS: [u32; 12] = [174, 170, 255, 247, 13, 51, 53, 235, 216, 106, 182, 130];

fn logits(m: &Model, ids: &[u32]) -> Vec<f32> {
    let mut kv = m.new_cache_with(ids.len(), KvPrecision::F32);
    if m.topology() == ferrolm_model::spec::Topology::EncoderDecoder {
        let enc = m.encode(ids, None).unwrap();
        m.start_decoder(&enc, &mut kv).unwrap();
        return m
            .forward(&[0, 5, 9], &mut kv, Logits::All)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
    }
    if m.topology() == ferrolm_model::spec::Topology::Encoder {
        return m.encode(ids, None).unwrap();
    }
    m.forward(ids, &mut kv, Logits::All)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn roundtrip(fixture: &str, ty: &str) -> f32 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/hf")
        .join(fixture);
    let hf = Model::from_hf(HfDir::open(&dir).unwrap()).unwrap();
    let bytes = convert(&dir, parse_type(ty).unwrap())
        .unwrap()
        .to_bytes()
        .unwrap();
    let gguf = Model::from_gguf(Arc::new(GgufFile::from_bytes(&bytes).unwrap())).unwrap();
    let d = max_diff(&logits(&hf, &IDS), &logits(&gguf, &IDS));
    println!("{fixture:<12} {ty:<5} max logit difference {d:.2e}");
    d
}

#[test]
fn f32_is_exact() {
    // llama: llama.cpp's layout (permuted q/k rows change only the summation order).
    assert!(roundtrip("llama", "f32") < 1e-5);
    for f in [
        "gpt2",
        "t5",
        "bart",
        "qwen2_moe",
        "gemma2",
        "falcon",
        "bert",
    ] {
        assert_eq!(roundtrip(f, "f32"), 0.0, "{f}");
    }
}

#[test]
fn f16_is_exact_for_f16_weights() {
    assert!(roundtrip("llama", "f16") < 1e-5);
    for f in ["mixtral", "t5", "mpt", "gptj"] {
        assert_eq!(roundtrip(f, "f16"), 0.0, "{f}");
    }
}

#[test]
fn q8_0_is_within_its_error() {
    // PyTorch with the llama fixture's matrices rounded through Q8_0 moves the logits by 0.21
    // (the tiny random models have large weights); ferrolm's Q8_0 kernels also quantize the
    // activations, as llama.cpp does.
    for f in ["llama", "gpt2", "qwen2_moe", "bart"] {
        let d = roundtrip(f, "q8_0");
        assert!(d > 0.0 && d < 0.6, "{f}: {d}");
    }
}

#[test]
fn bad_types_are_refused() {
    let e = parse_type("q9_9").unwrap_err().to_string();
    assert!(e.contains("q8_0"), "{e}");
}
