//! Every Hugging Face family against PyTorch: tiny random-weight models made by
//! `scripts/gen_golden_hf.py` (torch + transformers) under `fixtures/hf/`, loaded through the
//! production loader. All-position logits (or hidden states) within 2e-3, greedy ids identical,
//! beam search equal to `generate(num_beams=..)`.

use ferrolm_format::hf::HfDir;
use ferrolm_model::spec::Topology;
use ferrolm_model::{Logits, Model};
use ferrolm_sample::beam::{BeamParams, EarlyStopping};
use serde_json::Value;
use std::path::{Path, PathBuf};

const TOL: f32 = 2e-3;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .unwrap_or_default()
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn max_diff(ours: &[f32], theirs: &[Vec<f32>]) -> f32 {
    let flat: Vec<f32> = theirs.concat();
    assert_eq!(ours.len(), flat.len(), "shape differs");
    ours.iter()
        .zip(&flat)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Checks one fixture; returns a line of figures or the reason it failed.
fn check(dir: &Path) -> Result<String, String> {
    let err = |e: anyhow::Error| format!("{e:#}");
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("golden.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let model = Model::from_hf(HfDir::open(dir).map_err(err)?).map_err(err)?;
    let input = ids(&g["ids"]);
    let mut notes = Vec::new();
    let start = g["decoder_ids"]
        .as_array()
        .map(|_| ids(&g["decoder_ids"])[0]);
    // (what, ours, PyTorch's) for each output the fixture has.
    let mut outputs: Vec<(&str, Vec<f32>, &Value)> = Vec::new();
    let all_logits =
        |tokens: &[u32], kv: &mut ferrolm_model::KvCache| -> Result<Vec<f32>, String> {
            let t = model.forward(tokens, kv, Logits::All).map_err(err)?;
            Ok(t.flatten_all().unwrap().to_vec1().unwrap())
        };
    match model.topology() {
        Topology::Decoder => {
            let mut kv = model.new_cache(input.len());
            outputs.push(("logits", all_logits(&input, &mut kv)?, &g["logits"]));
        }
        Topology::Encoder => {
            let types = g.get("token_type_ids").map(ids);
            let h = model.encode(&input, types.as_deref()).map_err(err)?;
            outputs.push(("hidden", h, &g["hidden"]));
        }
        Topology::EncoderDecoder => {
            let h = model.encode(&input, None).map_err(err)?;
            let dec = ids(&g["decoder_ids"]);
            let mut kv = model.new_cache(dec.len());
            model.start_decoder(&h, &mut kv).map_err(err)?;
            outputs.push(("encoder", h, &g["hidden"]));
            outputs.push(("logits", all_logits(&dec, &mut kv)?, &g["logits"]));
        }
    }
    for (what, ours, theirs) in &outputs {
        let d = max_diff(ours, &rows(theirs));
        notes.push(format!("{what} {d:.1e}"));
        if d > TOL {
            return Err(format!("{what} differ by {d}"));
        }
    }
    if let Some(gr) = g.get("greedy") {
        let want = ids(&gr["new_ids"]);
        let got = ferrolm_engine::search::greedy(&model, &input, start, want.len()).map_err(err)?;
        if got != want {
            return Err(format!("greedy ids {got:?}, PyTorch {want:?}"));
        }
        notes.push(format!("greedy {} ids equal", want.len()));
    }
    let cases: Vec<Value> = match (g.get("beams_cases"), g.get("beam")) {
        (Some(Value::Array(c)), _) => c.clone(),
        (_, Some(b)) => vec![b.clone()],
        _ => Vec::new(),
    };
    for case in &cases {
        let p = BeamParams {
            num_beams: case["num_beams"].as_u64().unwrap() as usize,
            num_return: case["num_return"].as_u64().unwrap() as usize,
            length_penalty: case["length_penalty"].as_f64().unwrap() as f32,
            early_stopping: match &case["early_stopping"] {
                Value::Bool(true) => EarlyStopping::True,
                Value::String(s) if s == "never" => EarlyStopping::Never,
                _ => EarlyStopping::False,
            },
            max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as usize,
            eos: case["eos_token_id"]
                .as_u64()
                .map(|e| vec![e as u32])
                .unwrap_or_default(),
        };
        let got = ferrolm_engine::search::beam(&model, &input, start, &p).map_err(err)?;
        let want = case["beams"].as_array().unwrap();
        for (i, (o, w)) in got.iter().zip(want).enumerate() {
            let (wi, ws) = (ids(&w["ids"]), w["score"].as_f64().unwrap() as f32);
            if o.ids != wi || (o.score - ws).abs() > 1e-3 {
                return Err(format!(
                    "beam {i} (length_penalty {}): ours {:?} score {}, HF {wi:?} score {ws}",
                    p.length_penalty, o.ids, o.score
                ));
            }
        }
        notes.push(format!("beams {} equal", want.len()));
    }
    Ok(notes.join(", "))
}

#[test]
fn every_family_matches_pytorch() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures/hf is missing; run scripts/gen_golden_hf.py")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("golden.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 20, "only {} fixtures found", dirs.len());
    let mut failed = Vec::new();
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        match check(d) {
            Ok(s) => println!("{name:<22} ok: {s}"),
            Err(e) => {
                println!("{name:<22} FAILED: {e}");
                failed.push(name);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "fixtures that differ from PyTorch: {failed:?}"
    );
}
