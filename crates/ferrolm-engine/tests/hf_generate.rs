//! Generation sessions on Hugging Face models: encoder-decoder generation equals PyTorch's greedy
//! ids, and `generation_config.json`'s forced first/last tokens are honoured.

use ferrolm_engine::{generate, load, GenerateRequest};
use ferrolm_sample::SamplingParams;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/hf")
        .join(name)
}

fn greedy_request(prompt: Vec<u32>, n: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_tokens: n,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop: Vec::new(),
        ignore_eos: true,
        constraint: None,
        ..Default::default()
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn encoder_decoder_generation_equals_pytorch_greedy() {
    for name in ["t5", "t5-v1_1", "bart"] {
        let g: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("golden.json")).unwrap(),
        )
        .unwrap();
        let want = ids(&g["greedy"]["new_ids"]);
        let lm = load(fixture(name).to_str().unwrap(), true).unwrap();
        let mut kv = lm.model.new_cache(64);
        let out = generate(
            &lm,
            &mut kv,
            &greedy_request(ids(&g["ids"]), want.len()),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(out.ids, want, "{name}");
    }
}

#[test]
fn forced_first_and_last_tokens() {
    let src = fixture("bart");
    let dir = std::env::temp_dir().join(format!("ferrolm-forced-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"decoder_start_token_id": 2, "forced_bos_token_id": 7, "forced_eos_token_id": 9}"#,
    )
    .unwrap();
    let lm = load(dir.to_str().unwrap(), true).unwrap();
    let mut kv = lm.model.new_cache(64);
    let mut req = greedy_request(vec![5, 6, 7, 8], 5);
    req.ignore_eos = false;
    let out = generate(&lm, &mut kv, &req, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(out.ids.first(), Some(&7), "{:?}", out.ids);
    assert_eq!(out.ids.last(), Some(&9), "{:?}", out.ids);
    let _ = std::fs::remove_dir_all(&dir);
}
