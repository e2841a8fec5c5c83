//! Golden test: ferrolm's reference dequantization against gguf-py, bit for bit.
//!
//! tests/golden/dequant.json is written by scripts/gen_dequant_golden.py: random valid blocks of
//! every supported type, and one row of a few tensors of the two real test models, each with the
//! f32 bits gguf-py produces. The model rows run only when $FERROLM_TEST_MODELS_DIR holds the
//! models. No tolerance anywhere: every value must have the same bits (NaNs included).

use std::path::PathBuf;

use ferrolm_format::{dequantize_to_vec, GgmlType, GgufFile};
use serde_json::Value;

fn golden() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/dequant.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ty_named(name: &str) -> GgmlType {
    GgmlType::all()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn bits(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u32)
        .collect()
}

/// Compares bit patterns, reporting the first mismatch with context.
fn assert_same_bits(what: &str, got: &[f32], expected: &[u32]) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (g, &e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(
            g.to_bits(),
            e,
            "{what}: element {i}: got {g:e} ({:#010x}), expected {:e} ({e:#010x})",
            g.to_bits(),
            f32::from_bits(e)
        );
    }
}

#[test]
fn synthetic_blocks_match_gguf_py() {
    let golden = golden();
    let cases = golden["synthetic"].as_array().unwrap();
    let mut covered: Vec<GgmlType> = Vec::new();
    for case in cases {
        let ty = ty_named(case["type"].as_str().unwrap());
        let n = case["n"].as_u64().unwrap() as usize;
        let bytes = hex(case["bytes_hex"].as_str().unwrap());
        let got = dequantize_to_vec(ty, &bytes, n).unwrap();
        assert_same_bits(ty.name(), &got, &bits(&case["expected_bits"]));
        covered.push(ty);
    }
    for ty in ferrolm_format::SUPPORTED_TYPES {
        assert!(covered.contains(&ty), "no golden case for {ty}");
    }
}

#[test]
fn real_model_rows_match_gguf_py() {
    let golden = golden();
    let rows = golden["models"].as_array().unwrap();
    assert!(
        !rows.is_empty(),
        "the golden file has no model rows; regenerate it with the models present"
    );
    let mut checked = 0;
    for row in rows {
        let file = row["file"].as_str().unwrap();
        let Some(path) = ferrolm_format::test_models::file(file) else {
            continue;
        };
        let gguf = GgufFile::open(&path).unwrap();
        let name = row["tensor"].as_str().unwrap();
        let t = gguf.header.tensor(name).unwrap();
        assert_eq!(t.ty.name(), row["type"].as_str().unwrap(), "{name}");
        assert_eq!(
            t.row_len() as u64,
            row["row_len"].as_u64().unwrap(),
            "{name}"
        );
        let r = row["row"].as_u64().unwrap() as usize;
        let data = &gguf.tensor_bytes(t)[r * t.row_bytes()..(r + 1) * t.row_bytes()];
        let got = dequantize_to_vec(t.ty, data, t.row_len()).unwrap();
        assert_same_bits(
            &format!("{file} {name} row {r}"),
            &got,
            &bits(&row["expected_bits"]),
        );
        checked += 1;
    }
    eprintln!("checked {checked} model rows");
}
