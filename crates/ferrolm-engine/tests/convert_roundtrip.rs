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

const IDS: [u32; 12] = [74, 70, 125, 117, 13, 51, 53, 105, 86, 106, 52, 30];

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
    for f in ["mixtral", "t5", "mpt", "gptj", "gpt_bigcode", "opt"] {
        assert_eq!(roundtrip(f, "f16"), 0.0, "{f}");
    }
}

/// The same GGUF with every tensor dequantized to f32: the quantized weights in exact arithmetic.
fn dequantized(bytes: &[u8]) -> Vec<u8> {
    let f = GgufFile::from_bytes(bytes).unwrap();
    let mut w = ferrolm_format::GgufWriter::new();
    for (k, v) in &f.header.metadata {
        w.add_meta(k.clone(), v.clone());
    }
    for t in &f.header.tensors {
        let v = ferrolm_format::dequantize_to_vec(t.ty, f.tensor_bytes(t), t.n_elements()).unwrap();
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(t.name.clone(), &t.dims, ferrolm_format::GgmlType::F32, data)
            .unwrap();
    }
    w.to_bytes().unwrap()
}

#[test]
fn q8_0_is_within_its_error() {
    // The error of a Q8_0 file has two parts: its weights are rounded (on these tiny random
    // models with large weights that alone moves logits by tenths), and its products quantize
    // the activations to int8 as llama.cpp does. The first is the format's; the second must be
    // small beside it.
    for f in ["llama", "gpt2", "qwen2_moe", "bart"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/hf")
            .join(f);
        let hf = Model::from_hf(HfDir::open(&dir).unwrap()).unwrap();
        let q = convert(&dir, parse_type("q8_0").unwrap())
            .unwrap()
            .to_bytes()
            .unwrap();
        let load = |b: &[u8]| Model::from_gguf(Arc::new(GgufFile::from_bytes(b).unwrap())).unwrap();
        let (lq, ld, lh) = (
            logits(&load(&q), &IDS),
            logits(&load(&dequantized(&q)), &IDS),
            logits(&hf, &IDS),
        );
        let (weights, kernels) = (max_diff(&ld, &lh), max_diff(&lq, &ld));
        println!("{f:<12} q8_0  weights rounded: {weights:.3}, int8 activations on top: {kernels:.3}, total {:.3}", max_diff(&lq, &lh));
        assert!(weights > 0.0 && kernels > 0.0, "{f}");
        assert!(
            kernels < 1.5 * weights,
            "{f}: activation quantization {kernels} vs weight rounding {weights}"
        );
    }
}

#[test]
fn bad_types_are_refused() {
    let e = parse_type("q9_9").unwrap_err().to_string();
    assert!(e.contains("q8_0"), "{e}");
}
