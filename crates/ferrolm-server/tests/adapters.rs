//! `ferrolm serve --lora NAME=DIR`: a request naming the adapter runs with it, one naming the
//! model runs without; the adapter's answers equal a model with the adapter applied to
//! everything; a prompt adapter's name runs its virtual tokens first; `/v1/models` lists
//! them; responses carry the requested name.

mod common;

use common::Server;
use ferrolm_engine::lora::{apply, AdapterArg};
use ferrolm_engine::serve::ServeConfig;
use ferrolm_engine::LoadedModel;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny(route: Option<Option<usize>>) -> Arc<LoadedModel> {
    let dir = root().join("fixtures/hf/llama");
    let mut lm = ferrolm_engine::load(dir.to_str().unwrap(), true).unwrap();
    if let Some(route) = route {
        let a = AdapterArg {
            dir: root().join("fixtures/lora/llama-all"),
            scale: 1.0,
            route,
        };
        apply(&mut lm.model, false, &a).unwrap();
    }
    Arc::new(lm)
}

fn cfg() -> ServeConfig {
    ServeConfig {
        n_ctx: 64,
        kv_blocks: 64,
        ..ServeConfig::default()
    }
}

/// The chosen tokens' log-probabilities of a greedy completion of token ids.
fn logprobs(s: &Server, model: &str) -> Vec<f64> {
    let r = s.post(
        "/v1/completions",
        &json!({"model": model, "prompt": [7, 12, 17, 22, 27, 32], "max_tokens": 6,
                "temperature": 0, "logprobs": 1, "ignore_eos": true}),
    );
    let v: Value = r.json();
    assert_eq!(v["model"], model, "{v}");
    v["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn a_request_naming_an_adapter_gets_it() {
    let grace = Duration::from_secs(1);
    let lm = tiny(Some(Some(0)));
    let c = lm.model.config.hidden;
    let virt: Vec<f32> = (0..3 * c).map(|i| ((i % 17) as f32 - 8.0) * 0.02).collect();
    let s = Server::start_with(
        vec![(lm, cfg())],
        vec![("ad".into(), 0, 0)],
        vec![("soft".into(), 0, Arc::new(virt))],
        grace,
    );
    let ids: Vec<String> = s.get("/v1/models").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["llama", "ad", "soft"]);
    assert_eq!(s.get("/v1/models/ad").json()["id"], "ad");
    let (base, ad) = (logprobs(&s, "llama"), logprobs(&s, "ad"));
    let plain = Server::start(vec![(tiny(None), cfg())], grace);
    let merged = Server::start(vec![(tiny(Some(None)), cfg())], grace);
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    assert!(close(&base, &logprobs(&plain, "llama")), "{base:?}");
    assert!(close(&ad, &logprobs(&merged, "llama")), "{ad:?}");
    assert!(!close(&base, &ad));
    // The prompt adapter: its own answer, under its name.
    let soft = logprobs(&s, "soft");
    assert!(!close(&base, &soft));
    let r = s.post("/v1/completions", &json!({"model": "nope", "prompt": [1]}));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("llama, ad"));
    for srv in [s, plain, merged] {
        srv.stop().unwrap();
    }
}
