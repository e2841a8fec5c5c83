//! all-MiniLM-L6-v2 (the catalog's `all-minilm-l6-v2`, a real HF safetensors BERT with its
//! sentence-transformers modules) against sentence-transformers: the same token ids (truncated
//! at its `max_seq_length` of 256) and embeddings with cosine >= 0.9999. The reference is
//! `fixtures/minilm/golden.json`, written by `scripts/gen_golden_hf.py --minilm`.

use ferrolm_format::hf::pool;
use serde_json::Value;
use std::path::Path;

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let Some(dir) = ferrolm_format::test_models::file("all-minilm-l6-v2") else {
        return;
    };
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/minilm/golden.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let lm = ferrolm_engine::load(dir.to_str().unwrap(), true).unwrap();
    let sc = lm.hf.as_ref().unwrap().sentence;
    assert_eq!(
        sc.max_seq_length,
        Some(256),
        "sentence_bert_config.json's max_seq_length"
    );
    assert!(sc.normalize, "modules.json lists Normalize");
    let tok = lm.tok().unwrap();
    let c = lm.model.config.hidden;
    let mut worst = 1.0f64;
    for (i, s) in g["sentences"].as_array().unwrap().iter().enumerate() {
        let s = s.as_str().unwrap();
        let want_ids: Vec<u32> = g["token_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode_truncated(s, 256).unwrap();
        assert_eq!(ids, want_ids, "token ids of sentence {i}");
        let hidden = lm.model.encode(&ids, None).unwrap();
        let e = pool(&hidden, c, sc.pooling, sc.normalize);
        let want: Vec<f64> = g["embeddings"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let dot: f64 = e.iter().zip(&want).map(|(a, b)| *a as f64 * b).sum();
        let na: f64 = e.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
        let cos = dot / (na * nb);
        println!("sentence {i} ({} tokens): cosine {cos:.7}", ids.len());
        worst = worst.min(cos);
    }
    assert!(worst >= 0.9999, "worst cosine {worst}");
}
