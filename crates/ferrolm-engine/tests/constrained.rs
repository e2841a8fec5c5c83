//! Constrained decoding on SmolLM2: 50 sampled generations (temperature 0.7, 50 seeds)
//! against a JSON schema with nested objects, arrays, integers and an enum all parse and
//! validate; a regex constraint is followed exactly. Prints the cost of the token masks.

use ferrolm_engine::constrain::{check_json, Constraint, Grammar};
use ferrolm_engine::{generate, load, FinishReason, GenerateRequest, LoadedModel};
use ferrolm_sample::SamplingParams;
use ferrolm_tokenize::ChatMessage;
use serde_json::{json, Value};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn model() -> Option<LoadedModel> {
    let p = ferrolm_format::test_models::file("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    Some(load(p.to_str().unwrap(), true).unwrap())
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "role": {"enum": ["engineer", "designer", "manager"]},
            "skills": {
                "type": "array",
                "items": {"type": "string", "maxLength": 16},
                "minItems": 1,
                "maxItems": 3
            },
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "zip": {"type": "integer", "minimum": 10000, "maximum": 99999},
                    "floors": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0, "maximum": 200},
                        "maxItems": 3
                    }
                },
                "required": ["city", "zip", "floors"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "role", "skills", "address"],
        "additionalProperties": false
    })
}

fn chat(lm: &LoadedModel, user: &str) -> Vec<u32> {
    lm.chat_prompt(&[ChatMessage::new("user", user.to_string())])
        .unwrap()
}

/// Mean, median, 99th percentile and max of the durations, in milliseconds.
fn summary(mut d: Vec<Duration>) -> String {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    let mean = d.iter().map(|&x| ms(x)).sum::<f64>() / d.len() as f64;
    format!(
        "mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} tokens",
        mean,
        ms(d[d.len() / 2]),
        ms(d[(d.len() * 99 / 100).min(d.len() - 1)]),
        ms(d[d.len() - 1]),
        d.len()
    )
}

#[test]
fn smollm2_json_schema_50_of_50() {
    let Some(lm) = model() else { return };
    let t0 = Instant::now();
    let vocab = lm.constraint_vocab().unwrap();
    eprintln!(
        "vocabulary of {} tokens prepared in {:.1} ms",
        vocab.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let schema = schema();
    let grammar = Grammar::JsonSchema(schema.clone());
    let t0 = Instant::now();
    let fresh = lm.constraint(&grammar).unwrap();
    eprintln!(
        "schema compiled in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let prompt = chat(
        &lm,
        "Describe one employee of a software company as a JSON object with name, age, role, skills and address.",
    );
    let mut outputs: Vec<Vec<u32>> = Vec::new();
    let mut valid = 0;
    let t0 = Instant::now();
    for seed in 0..50u64 {
        let req = GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: 400,
            sampling: SamplingParams {
                temperature: 0.7,
                seed,
                ..SamplingParams::default()
            },
            stop: Vec::new(),
            ignore_eos: false,
            constraint: Some(fresh.clone()),
            ..Default::default()
        };
        let mut kv = lm.model.new_cache(2048);
        let out = generate(&lm, &mut kv, &req, &AtomicBool::new(false), &mut |_| {}).unwrap();
        assert_eq!(out.finish, FinishReason::Stop, "seed {seed}: {}", out.text);
        let value: Value = serde_json::from_str(&out.text)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}: {}", out.text));
        check_json(&schema, &value).unwrap_or_else(|e| panic!("seed {seed}: {e}: {}", out.text));
        if seed < 2 {
            eprintln!("seed {seed}: {}", out.text);
        }
        valid += 1;
        outputs.push(out.ids);
    }
    eprintln!(
        "{valid}/50 outputs parse and validate ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(valid, 50);
    // Replay the outputs through fresh constraints, timing each step's mask (the first
    // request's masks run while the lexer is still being built, so they count too).
    let mut times = Vec::new();
    for ids in &outputs {
        let mut c = Constraint::new(&vocab, &grammar).unwrap();
        for &t in ids {
            let t0 = Instant::now();
            let allowed = c.mask().unwrap().is_allowed(t);
            times.push(t0.elapsed());
            assert!(allowed);
            c.commit(t).unwrap();
        }
    }
    eprintln!("mask per token: {}", summary(times));
}

#[test]
fn smollm2_regex_is_followed() {
    let Some(lm) = model() else { return };
    let prompt = chat(&lm, "What is the date today? Answer as YYYY-MM-DD.");
    for seed in 0..5u64 {
        let req = GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: 32,
            sampling: SamplingParams {
                temperature: 0.7,
                seed,
                ..SamplingParams::default()
            },
            stop: Vec::new(),
            ignore_eos: false,
            constraint: Some(
                lm.constraint(&Grammar::Regex(
                    r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])".into(),
                ))
                .unwrap(),
            ),
            ..Default::default()
        };
        let mut kv = lm.model.new_cache(512);
        let out = generate(&lm, &mut kv, &req, &AtomicBool::new(false), &mut |_| {}).unwrap();
        let t = out.text.as_bytes();
        assert_eq!(t.len(), 10, "{}", out.text);
        assert!(
            t[..4]
                .iter()
                .chain(&t[5..7])
                .chain(&t[8..])
                .all(u8::is_ascii_digit)
                && t[4] == b'-'
                && t[7] == b'-',
            "{}",
            out.text
        );
        assert_eq!(out.finish, FinishReason::Stop);
    }
}
