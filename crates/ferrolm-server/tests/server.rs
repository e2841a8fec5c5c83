//! The server end to end over loopback with the real SmolLM2 (and all-MiniLM-L6-v2 for
//! embeddings): the models list, chat and completions with and without streaming (SSE framing,
//! usage, `[DONE]`), log-probabilities, `n`, stop strings, embeddings against
//! sentence-transformers, cancellation freeing the KV blocks, concurrent requests answering as
//! they do alone, `response_format` (JSON schema and object) enforced, and graceful shutdown.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Read;
use std::time::{Duration, Instant};

#[test]
fn lists_models_and_routes_by_model() {
    let Some(s) = shared() else { return };
    let r = s.get("/v1/models");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&SMOL), "{ids:?}");
    assert_eq!(v["data"][0]["object"], "model");
    let r = s.get(&format!("/v1/models/{SMOL}"));
    assert_eq!((r.status, r.json()["id"].as_str()), (200, Some(SMOL)));
    assert_eq!(s.get("/v1/models/nope").status, 404);
    assert_eq!(s.get("/health").json()["status"], "ok");
}

/// Content of a greedy chat answer, and the whole response.
fn greedy_chat(s: &Server, content: &str, max_tokens: usize) -> (String, Value) {
    let r = s.post(
        "/v1/chat/completions",
        &chat_body(content, json!({"max_tokens": max_tokens, "temperature": 0})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    (
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string(),
        v,
    )
}

#[test]
fn chat_answers_as_the_cli_generates() {
    let Some(s) = shared() else { return };
    let (text, v) = greedy_chat(s, "What is the capital of France?", 16);
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], SMOL);
    let c = &v["choices"][0];
    assert_eq!(
        (c["index"].as_u64(), c["message"]["role"].as_str()),
        (Some(0), Some("assistant"))
    );
    let u = &v["usage"];
    let (p, n) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(u["total_tokens"].as_u64(), Some(p + n));
    assert!(
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            <= p
    );
    assert_eq!(c["finish_reason"], if n == 16 { "length" } else { "stop" });

    // The same prompt through the engine's one-sequence path (`ferrolm generate --chat`).
    let lm = smol().unwrap();
    let prompt = lm
        .chat_prompt(&[ferrolm_tokenize::ChatMessage::new(
            "user",
            "What is the capital of France?",
        )])
        .unwrap();
    assert_eq!(p as usize, prompt.len());
    let mut kv = lm.model.new_cache(2048);
    let out = ferrolm_engine::generate(
        &lm,
        &mut kv,
        &ferrolm_engine::GenerateRequest {
            prompt,
            max_tokens: 16,
            sampling: ferrolm_sample::SamplingParams::greedy(),
            stop: vec![],
            ignore_eos: false,
            constraint: None,
            ..Default::default()
        },
        &std::sync::atomic::AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(text, out.text);
}

#[test]
fn chat_stream_is_framed_as_openai() {
    let Some(s) = shared() else { return };
    let q = "Name three colours.";
    let (want, _) = greedy_chat(s, q, 12);
    let r = s.post(
        "/v1/chat/completions",
        &chat_body(
            q,
            json!({"max_tokens": 12, "temperature": 0, "stream": true,
                   "stream_options": {"include_usage": true}}),
        ),
    );
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    for c in &chunks {
        assert_eq!(
            (c["object"].as_str(), c["id"].as_str()),
            (Some("chat.completion.chunk"), Some(id))
        );
        assert!(
            c.get("usage").is_some(),
            "include_usage puts usage (null) in every chunk"
        );
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let (usage, content) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    let (last, body) = content.split_last().unwrap();
    assert!(["stop", "length"].contains(&last["choices"][0]["finish_reason"].as_str().unwrap()));
    let mut text = String::new();
    for c in body {
        assert!(c["choices"][0]["finish_reason"].is_null());
        text.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap());
    }
    text.push_str(
        last["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or(""),
    );
    assert_eq!(text, want, "streamed and collected answers agree");
    let u = &usage["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    // Without stream_options there is no usage chunk and no usage field.
    let r = s.post(
        "/v1/chat/completions",
        &chat_body(
            q,
            json!({"max_tokens": 3, "temperature": 0, "stream": true}),
        ),
    );
    let events = r.events();
    assert!(events.iter().all(|e| !e.contains("\"usage\"")));
    assert_eq!(events.last().unwrap(), "[DONE]");
}

#[test]
fn completions_stream_and_collect_alike() {
    let Some(s) = shared() else { return };
    let body = json!({"model": SMOL, "prompt": "The three primary colours are", "max_tokens": 10, "temperature": 0});
    let r = s.post("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let want = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(10));
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let events = s.post("/v1/completions", &sb).events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, want);
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"].as_u64(),
        Some(10)
    );

    // echo puts the prompt first; a default max_tokens of 16 as OpenAI's.
    let r = s.post(
        "/v1/completions",
        &json!({"model": SMOL, "prompt": "Hello", "temperature": 0, "echo": true, "ignore_eos": true}),
    );
    let v = r.json();
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Hello"));
    assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(16));
}

#[test]
fn n_stop_seed_and_logprobs() {
    let Some(s) = shared() else { return };
    // n choices, seeded seed, seed + 1, ...: reproducible, and (here) different.
    let body = chat_body(
        "Write a word.",
        json!({"max_tokens": 8, "n": 3, "seed": 7, "temperature": 1.0}),
    );
    let a = s.post("/v1/chat/completions", &body).json();
    let b = s.post("/v1/chat/completions", &body).json();
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                assert_eq!(c["index"].as_u64(), Some(i as u64));
                c["message"]["content"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(texts(&a).len(), 3);
    assert_eq!(texts(&a), texts(&b), "the same seed gives the same choices");
    assert!(
        texts(&a).iter().any(|t| t != &texts(&a)[0]),
        "{:?}",
        texts(&a)
    );

    // A stop string ends the answer before its first occurrence, and is not part of it.
    let q = "Count from one to ten.";
    let (full, _) = greedy_chat(s, q, 30);
    assert!(full.len() >= 8, "{full:?}");
    let mid = (full.len() / 2..)
        .find(|&i| full.is_char_boundary(i))
        .unwrap();
    let stop: String = full[mid..].chars().take(3).collect();
    let v = s
        .post(
            "/v1/chat/completions",
            &chat_body(
                q,
                json!({"max_tokens": 30, "temperature": 0, "stop": [stop, "zzz"]}),
            ),
        )
        .json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        &full[..full.find(&stop).unwrap()],
        "stop {stop:?}"
    );

    // Log-probabilities in OpenAI's chat shape: the chosen token and the top ones, descending.
    let v = s
        .post(
            "/v1/chat/completions",
            &chat_body(
                "Say hello.",
                json!({"max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 3,
                       "ignore_eos": true}),
            ),
        )
        .json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 6);
    let mut joined = String::new();
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let lps: Vec<f64> = top.iter().map(|x| x["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]) && lps[0] <= 0.0);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(t["token"], top[0]["token"]);
        assert_eq!(
            t["bytes"].as_array().unwrap().len(),
            t["token"].as_str().unwrap().len()
        );
        joined.push_str(t["token"].as_str().unwrap());
    }
    assert_eq!(
        joined,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // The legacy completions shape.
    let v = s
        .post(
            "/v1/completions",
            &json!({"model": SMOL, "prompt": "One, two,", "max_tokens": 4, "temperature": 0,
                    "logprobs": 2, "ignore_eos": true}),
        )
        .json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["text_offset"][0].as_u64(), Some(0));
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
}

#[test]
fn embeddings_match_sentence_transformers() {
    let Some(s) = shared() else { return };
    if minilm().is_none() {
        return;
    }
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/minilm/golden.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let sentences = g["sentences"].clone();
    let r = s.post(
        "/v1/embeddings",
        &json!({"model": MINILM, "input": sentences}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), sentences.as_array().unwrap().len());
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"].as_u64(), Some(i as u64));
        let e: Vec<f64> = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let want: Vec<f64> = g["embeddings"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let cos = e.iter().zip(&want).map(|(a, b)| a * b).sum::<f64>()
            / (e.iter().map(|a| a * a).sum::<f64>().sqrt()
                * want.iter().map(|b| b * b).sum::<f64>().sqrt());
        assert!(cos >= 0.9999, "sentence {i}: cosine {cos}");
    }
    let tokens: usize = g["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().len())
        .sum();
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(tokens as u64));

    // base64 is the same floats, little-endian.
    let one = json!({"model": MINILM, "input": "hello"});
    let f = s.post("/v1/embeddings", &one).json();
    let mut b64 = one.clone();
    b64["encoding_format"] = json!("base64");
    let b = s.post("/v1/embeddings", &b64).json();
    let bytes = decode_base64(b["data"][0]["embedding"].as_str().unwrap());
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let want: Vec<f32> = f["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats, want);

    // The encoder does not generate.
    let r = s.post(
        "/v1/completions",
        &json!({"model": MINILM, "prompt": "hi", "max_tokens": 2}),
    );
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("model"))
    );
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let n = q
            .iter()
            .take_while(|&&c| c != b'=')
            .fold(0u32, |n, &c| n << 6 | val(c) as u32)
            << (6 * q.iter().filter(|&&c| c == b'=').count());
        let k = 3 - q.iter().filter(|&&c| c == b'=').count();
        out.extend(&n.to_be_bytes()[1..1 + k]);
    }
    out
}

#[test]
fn concurrent_greedy_requests_answer_as_alone() {
    let Some(s) = shared() else { return };
    let questions = [
        "What is two plus two?",
        "Name a fruit.",
        "Describe the sea in one sentence.",
        "What colour is the sky?",
    ];
    let alone: Vec<String> = questions.iter().map(|q| greedy_chat(s, q, 24).0).collect();
    let together: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = questions
            .iter()
            .map(|q| sc.spawn(move || greedy_chat(s, q, 24).0))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
}

/// Reads a stream until `n` content chunks have arrived.
fn read_chunks(stream: &mut std::net::TcpStream, n: usize) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&seen)
        .matches("\"content\":\"")
        .count()
        < n + 1
    {
        let k = stream.read(&mut buf).unwrap();
        assert!(
            k > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..k]);
    }
}

#[test]
fn a_disconnected_stream_frees_its_blocks() {
    let Some(lm) = smol() else { return };
    let s = Server::start(vec![(lm, test_config())], Duration::from_secs(2));
    let q = "Tell me a very long story about a dragon.";
    // The prompt's blocks go into the prefix cache on the first run; they stay there.
    greedy_chat(&s, q, 1);
    let idle = s.metric("ferrolm_kv_blocks_used", SMOL);
    let body = chat_body(
        q,
        json!({"max_tokens": 1500, "ignore_eos": true, "stream": true}),
    );
    let mut stream = send(
        s.addr,
        "POST",
        "/v1/chat/completions",
        Some(body.to_string().as_bytes()),
    );
    read_chunks(&mut stream, 3);
    assert_eq!(s.metric("ferrolm_running", SMOL), 1.0);
    assert!(s.metric("ferrolm_kv_blocks_used", SMOL) > idle);
    drop(stream);
    let t = Instant::now();
    while s.metric("ferrolm_running", SMOL) > 0.0
        || s.metric("ferrolm_kv_blocks_used", SMOL) != idle
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "blocks not freed: {}",
            s.get("/metrics").body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.metric("ferrolm_requests_cancelled_total", SMOL), 1.0);
    assert_eq!(
        s.metric("ferrolm_kv_blocks_used", SMOL),
        s.metric("ferrolm_kv_blocks_cached", SMOL),
        "no block held by a sequence"
    );
    assert!(s.metric("ferrolm_generation_tokens_total", SMOL) < 1000.0);
    s.stop().unwrap();
}

#[test]
fn shutdown_finishes_running_streams_then_returns() {
    let Some(lm) = smol() else { return };
    let s = Server::start(vec![(lm, test_config())], Duration::from_secs(30));
    let addr = s.addr;
    let body = chat_body(
        "Tell me a story.",
        json!({"max_tokens": 40, "ignore_eos": true, "stream": true}),
    );
    let mut stream = send(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(body.to_string().as_bytes()),
    );
    read_chunks(&mut stream, 1);
    let state = s.state.clone();
    let stopper = std::thread::spawn(move || s.stop());
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    assert!(rest.contains("data: [DONE]"), "{rest}");
    stopper.join().unwrap().unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer listening"
    );
    let m = state.models[0].engine.metrics();
    assert_eq!((m.requests_finished, m.requests_cancelled), (1, 0));
}

#[test]
fn response_format_json_schema_is_enforced() {
    let Some(s) = shared() else { return };
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
            "districts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 16},
                        "rank": {"type": "integer", "minimum": 1, "maximum": 9}
                    },
                    "required": ["name", "rank"],
                    "additionalProperties": false
                },
                "minItems": 1,
                "maxItems": 2
            },
            "kind": {"enum": ["capital", "port", "town"]}
        },
        "required": ["city", "population", "districts", "kind"],
        "additionalProperties": false
    });
    let format = json!({"type": "json_schema",
        "json_schema": {"name": "city", "strict": true, "schema": schema.clone()}});
    let r = s.post(
        "/v1/chat/completions",
        &chat_body(
            "Describe Paris as JSON.",
            json!({"response_format": format, "n": 4, "temperature": 0.7, "seed": 3,
                   "max_tokens": 300}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for c in choices {
        let text = c["message"]["content"].as_str().unwrap();
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        ferrolm_engine::constrain::check_json(&schema, &value)
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(c["finish_reason"], "stop", "{text}");
    }
    // json_object, streamed: the deltas join into one JSON object.
    let r = s.post(
        "/v1/chat/completions",
        &chat_body(
            "Give a JSON object with the keys name and age of a cat.",
            json!({"response_format": {"type": "json_object"}, "temperature": 0,
                   "max_tokens": 300, "stream": true}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        text.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(value.is_object(), "{text}");
    // Completions take it too (an extension, as vLLM's).
    let r = s.post(
        "/v1/completions",
        &json!({"model": SMOL, "prompt": "The answer in JSON:", "max_tokens": 100,
                "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "n",
                    "schema": {"type": "object", "properties": {"answer": {"type": "integer"}},
                               "required": ["answer"], "additionalProperties": false}}}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(value["answer"].is_i64(), "{text}");
}

/// `--overflow truncate` and `stream` on a 256-position context: an over-long prompt is cut to
/// fit (usage says how much was read) or streamed past the context (StreamingLLM), and a
/// request that fits answers exactly as it does under the default `error` policy.
#[test]
fn overflow_policies_truncate_and_stream() {
    use ferrolm_engine::serve::{Overflow, ServeConfig};
    let (Some(lm), Some(shared)) = (smol(), shared()) else {
        return;
    };
    let cfg = |overflow| ServeConfig {
        n_ctx: 256,
        kv_blocks: 256,
        overflow,
        ..ServeConfig::default()
    };
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(60); // ~600 tokens
    let body = |max_tokens: usize| {
        json!({"model": SMOL, "prompt": long, "max_tokens": max_tokens, "temperature": 0,
               "ignore_eos": true})
    };
    let prompt_tokens = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();

    let s = Server::start(
        vec![(lm.clone(), cfg(Overflow::Truncate))],
        Duration::from_secs(5),
    );
    let r = s.post("/v1/completions", &body(16));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(prompt_tokens(&v), 256 - 16, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    // max_tokens alone past the context cannot be truncated into it.
    let r = s.post("/v1/completions", &body(300));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("context_length_exceeded"), "{}", r.body);
    s.stop().unwrap();

    let s = Server::start(
        vec![(lm, cfg(Overflow::Stream { sinks: 4 }))],
        Duration::from_secs(5),
    );
    let r = s.post("/v1/completions", &body(300));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(prompt_tokens(&v) > 500, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 300, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("fox"),
        "a streamed continuation stays on the text: {text:?}"
    );
    // A request that fits runs in the batch as before.
    let (a, _) = greedy_chat(&s, "What is the capital of France?", 16);
    let (b, _) = greedy_chat(shared, "What is the capital of France?", 16);
    assert_eq!(a, b);
    s.stop().unwrap();
}
