//! Untrusted `config.json` values never panic: every key of every fixture's config is set to
//! hostile values (zero, negative, huge, wrong types, empty containers), and the model is
//! loaded and, when that succeeds, run on a few tokens. Each outcome must be a result: a
//! working model or a one-line error.

use ferrolm_format::hf::HfDir;
use ferrolm_model::{Logits, Model};
use serde_json::{json, Value};
use std::path::Path;

fn hostile() -> Vec<Value> {
    vec![
        json!(null),
        json!(0),
        json!(1),
        json!(-1),
        json!(3),
        json!(1e30),
        json!(u64::MAX),
        json!("x"),
        json!([]),
        json!({}),
        json!(true),
        json!(0.5),
    ]
}

fn try_run(dir: &Path) {
    let Ok(d) = HfDir::open(dir) else { return };
    let Ok(m) = Model::from_hf(d) else { return };
    let ids = [1u32, 2, 3];
    match m.topology() {
        ferrolm_model::spec::Topology::Decoder => {
            let mut kv = m.new_cache(8);
            let _ = m.forward(&ids, &mut kv, Logits::All);
        }
        _ => {
            if let Ok(enc) = m.encode(&ids, None) {
                let mut kv = m.new_cache(8);
                if m.start_decoder(&enc, &mut kv).is_ok() {
                    let _ = m.forward(&[0, 1], &mut kv, Logits::All);
                }
            }
        }
    }
}

#[test]
fn hostile_config_values_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf");
    let tmp = std::env::temp_dir().join(format!("ferrolm-config-fuzz-{}", std::process::id()));
    let mut cases = 0;
    for fx in [
        "llama-rope-yarn",
        "gemma3",
        "gpt2",
        "falcon",
        "mpt",
        "qwen2_moe",
        "t5",
        "bart",
        "bert",
        "gpt_neox",
    ] {
        let src = root.join(fx);
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        let dir = tmp.join(fx);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        let mut paths: Vec<Vec<String>> = Vec::new();
        for (k, v) in config.as_object().unwrap() {
            paths.push(vec![k.clone()]);
            if let Some(o) = v.as_object() {
                paths.extend(o.keys().map(|k2| vec![k.clone(), k2.clone()]));
            }
        }
        for path in &paths {
            for bad in hostile() {
                let mut c = config.clone();
                let mut slot = &mut c;
                for p in path {
                    slot = &mut slot[p.as_str()];
                }
                *slot = bad;
                std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
                let r = std::panic::catch_unwind(|| try_run(&dir));
                assert!(
                    r.is_ok(),
                    "{fx}: {path:?} = {} panicked",
                    slot_str(&c, path)
                );
                cases += 1;
            }
        }
    }
    println!("{cases} hostile configs, no panic");
    let _ = std::fs::remove_dir_all(&tmp);
}

fn slot_str(c: &Value, path: &[String]) -> String {
    let mut v = c;
    for p in path {
        v = &v[p.as_str()];
    }
    v.to_string()
}
