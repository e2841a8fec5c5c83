//! Golden test: ferrolm's quantizers against ggml, byte for byte.
//!
//! tests/golden/quant_golden.json is written by scripts/gen_golden_quant.py, which runs ggml's
//! `ggml_quantize_chunk(type, x, dst, 0, nrows, n_per_row, NULL)` (the `quantize_row_*_ref`
//! quantizers) on fixed inputs: weight-like rows, outliers, zeros, tiny and subnormal values,
//! all-equal rows, exact ties, huge values. Every type must give the same bytes; F32 must give
//! the input back. No tolerance anywhere.

use std::path::PathBuf;

use ferrolm_format::{quantize, GgmlType};
use serde_json::Value;

fn golden() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/quant_golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ty_named(name: &str) -> GgmlType {
    GgmlType::all()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}

/// Decodes standard base64 (the golden file's encoding of input and output bytes).
fn base64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64 character");
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Panics with the first differing byte, which block it is in and how many bytes differ.
fn assert_same_bytes(what: &str, ty: GgmlType, got: &[u8], expected: &[u8]) {
    assert_eq!(got.len(), expected.len(), "{what} {ty}: length");
    let differing: Vec<usize> = (0..got.len()).filter(|&i| got[i] != expected[i]).collect();
    if let Some(&i) = differing.first() {
        let block = i / ty.type_size();
        panic!(
            "{what} {ty}: {} of {} bytes differ; first at byte {i} (block {block}, byte {} in it): \
             got {:#04x}, ggml wrote {:#04x}",
            differing.len(),
            got.len(),
            i % ty.type_size(),
            got[i],
            expected[i]
        );
    }
}

#[test]
fn every_type_matches_ggml_quantize_chunk() {
    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut covered: Vec<GgmlType> = vec![GgmlType::F32];
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let input = base64(case["input_f32_b64"].as_str().unwrap());
        let x: Vec<f32> = input
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let n_rows = case["nrows"].as_u64().unwrap() as usize;
        let n_per_row = case["n_per_row"].as_u64().unwrap() as usize;
        assert_eq!(x.len(), n_rows * n_per_row, "{name}");

        assert_same_bytes(
            name,
            GgmlType::F32,
            &quantize(GgmlType::F32, &x).unwrap(),
            &input,
        );
        for (ty_name, expected) in case["output_b64"].as_object().unwrap() {
            let ty = ty_named(ty_name);
            let expected = base64(expected.as_str().unwrap());
            assert_same_bytes(name, ty, &quantize(ty, &x).unwrap(), &expected);
            // Row by row gives the same bytes as the whole chunk.
            let by_row: Vec<u8> = x
                .chunks(n_per_row)
                .flat_map(|row| quantize(ty, row).unwrap())
                .collect();
            assert_same_bytes(name, ty, &by_row, &expected);
            if !covered.contains(&ty) {
                covered.push(ty);
            }
        }
    }
    for ty in GgmlType::all().filter(|&t| ferrolm_format::can_quantize(t)) {
        assert!(covered.contains(&ty), "no golden case for {ty}");
    }
}
