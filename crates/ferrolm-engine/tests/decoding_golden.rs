//! Contrastive search and DoLa equal the PyTorch references of `scripts/gen_golden_decoding.py`
//! (`fixtures/hf/decoding.json`) on tiny HF fixtures, and speculative decoding never changes
//! the output (greedy and sampled, every drafter) on the same fixtures.

use ferrolm_engine::{
    generate, load, Decoding, DolaLayers, Draft, GenerateRequest, LoadedModel, Speculative,
};
use ferrolm_sample::SamplingParams;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf")
}

fn open(name: &str) -> LoadedModel {
    load(&fixtures().join(name).to_string_lossy(), true).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn run(lm: &LoadedModel, req: &GenerateRequest) -> ferrolm_engine::GenerateOutput {
    let mut kv = lm.model.new_cache(64);
    generate(lm, &mut kv, req, &AtomicBool::new(false), &mut |_| {}).unwrap()
}

fn request(prompt: Vec<u32>, n: usize, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_tokens: n,
        sampling,
        ignore_eos: true,
        ..Default::default()
    }
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..Default::default()
    }
}

#[test]
fn contrastive_and_dola_equal_the_pytorch_reference() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("decoding.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for case in golden["cases"].as_array().unwrap() {
        let name = case["fixture"].as_str().unwrap();
        let lm = open(name);
        let want = ids(&case["ids"]);
        let decoding = match case["rule"].as_str().unwrap() {
            "contrastive" => Decoding::Contrastive {
                alpha: case["alpha"].as_f64().unwrap() as f32,
                k: case["k"].as_u64().unwrap() as usize,
            },
            _ => {
                let layers: DolaLayers = case["layers"].as_str().unwrap().parse().unwrap();
                let resolved = layers
                    .resolve(lm.model.n_blocks(), lm.model.config.tied_embeddings)
                    .unwrap();
                assert_eq!(
                    resolved,
                    ids(&case["resolved"])
                        .iter()
                        .map(|&x| x as usize)
                        .collect::<Vec<_>>(),
                    "{name}: DoLa layers"
                );
                Decoding::Dola { layers }
            }
        };
        let req = GenerateRequest {
            decoding: decoding.clone(),
            ..request(ids(&case["prompt"]), want.len(), greedy())
        };
        let got = run(&lm, &req).ids;
        assert_eq!(got, want, "{name}: {decoding:?}");
        checked += 1;
    }
    assert!(checked >= 19, "only {checked} cases");
}

#[test]
fn dola_without_a_premature_layer_is_an_error() {
    // gemma2 fixture: 3 layers, tied head: "low" starts at 2 = past n/2, so no layer.
    let lm = open("gemma2");
    let req = GenerateRequest {
        decoding: Decoding::Dola {
            layers: DolaLayers::Low,
        },
        ..request(vec![1, 2, 3], 4, greedy())
    };
    let mut kv = lm.model.new_cache(64);
    let err = generate(&lm, &mut kv, &req, &AtomicBool::new(false), &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no DoLa premature layer"), "{err}");
}

#[test]
fn speculative_decoding_never_changes_the_output() {
    // Fixtures with a sliding window (mistral, gemma2) check that rejected drafts are taken
    // back without losing what the window needs.
    for name in ["llama", "gpt2", "mistral", "gemma2", "qwen2_moe"] {
        let lm = open(name);
        let draft = Arc::new(open(name));
        // A repetitive prompt gives the n-gram drafter something to find.
        let prompt: Vec<u32> = [5u32, 9, 13, 21, 5, 9, 13, 21, 5, 9].to_vec();
        for sampling in [
            greedy(),
            SamplingParams {
                temperature: 0.9,
                seed: 7,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                mirostat: 2,
                mirostat_tau: 3.0,
                seed: 3,
                repeat_penalty: 1.3,
                ..Default::default()
            },
        ] {
            let plain = run(&lm, &request(prompt.clone(), 40, sampling.clone()));
            for (draft, max) in [
                (Draft::Ngram { max_ngram: 3 }, 6),
                (Draft::Ngram { max_ngram: 1 }, 1),
                (Draft::EarlyExit { layer: 1 }, 3),
                (Draft::Model(draft.clone()), 4),
            ] {
                let spec = Speculative { draft, max };
                let req = GenerateRequest {
                    speculative: Some(spec.clone()),
                    ..request(prompt.clone(), 40, sampling.clone())
                };
                let out = run(&lm, &req);
                assert_eq!(out.ids, plain.ids, "{name} {spec:?} {sampling:?}");
                let st = out.speculative.unwrap();
                assert!(st.accepted <= st.drafted);
                if matches!(spec.draft, Draft::Model(_)) && sampling.temperature == 0.0 {
                    // The model drafting for itself is almost always right.
                    assert!(st.acceptance() > 0.8, "{name}: {st:?}");
                }
            }
        }
    }
}
