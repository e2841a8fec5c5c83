//! Parses the two real test models, when $FERROLM_TEST_MODELS_DIR holds them, and checks what
//! gguf-py reports about them: tensor counts, architectures, vocabularies, data offsets.
//! Skips (with a message) when the variable is unset or a file is absent.

use ferrolm_format::{dequantize_to_vec, GgmlType, GgufFile};

fn model(file: &str) -> Option<GgufFile> {
    let path = ferrolm_format::test_models::file(file)?;
    Some(GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}")))
}

/// Every tensor's first row dequantizes to finite values.
fn first_rows_dequantize(f: &GgufFile) {
    for t in &f.header.tensors {
        let row =
            dequantize_to_vec(t.ty, &f.tensor_bytes(t)[..t.row_bytes()], t.row_len()).unwrap();
        assert!(row.iter().all(|x| x.is_finite()), "{}", t.name);
    }
}

#[test]
fn smollm2_135m_q4_1() {
    let Some(f) = model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let h = &f.header;
    assert_eq!(h.version, 3);
    assert_eq!(h.tensors.len(), 272);
    assert_eq!(h.data_start, 1785664);
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    let tokens = h.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.len(), 49152);
    let emb = h.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.ty, emb.dims.clone(), emb.offset, emb.n_bytes),
        (GgmlType::Q8_0, vec![576, 49152], 1785664, 30081024)
    );
    let down = h.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(
        (down.ty, down.dims.clone(), down.n_bytes),
        (GgmlType::Q4_1, vec![1536, 576], 552960)
    );
    first_rows_dequantize(&f);
}

#[test]
fn gemma3_270m_q4_k_m() {
    let Some(f) = model("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    let h = &f.header;
    assert_eq!(h.tensors.len(), 236);
    assert_eq!(h.data_start, 6525120);
    assert_eq!(f.get_str("general.architecture"), Some("gemma3"));
    let tokens = h.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.len(), 262144);
    assert!(tokens.iter().all(|t| t.as_str().is_some()));
    assert_eq!(
        h.get("tokenizer.ggml.scores")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        262144
    );
    assert_eq!(
        h.get("tokenizer.ggml.token_type")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        262144
    );
    let mut counts = std::collections::BTreeMap::new();
    for t in &h.tensors {
        *counts.entry(t.ty.name()).or_insert(0) += 1;
    }
    let expected = [
        ("F32", 109),
        ("Q4_K", 27),
        ("Q5_0", 81),
        ("Q6_K", 9),
        ("Q8_0", 10),
    ];
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), expected);
    let k = h.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!(
        (k.ty, k.dims.clone(), k.offset, k.n_bytes),
        (GgmlType::Q5_0, vec![640, 256], 184785600, 112640)
    );
    first_rows_dequantize(&f);
}
