//! Every bad request answers in OpenAI's error shape (`{"error": {"message", "type", "param",
//! "code"}}`) with the right status, and the server keeps serving.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Checks status, shape, and `param` / `code` where given; returns the message.
fn expect(r: &Response, status: u16, param: Option<&str>, code: Option<&str>) -> String {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v = r.json();
    let e = v["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {v}"));
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"]);
    let message = e["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty() && !message.contains('\n'));
    assert!(e["type"].is_string());
    if let Some(p) = param {
        assert_eq!(e["param"].as_str(), Some(p), "{message}");
    }
    if let Some(c) = code {
        assert_eq!(e["code"].as_str(), Some(c), "{message}");
    }
    message
}

fn raw(s: &Server, method: &str, path: &str, body: &[u8]) -> Response {
    request(s.addr, method, path, Some(body))
}

#[test]
fn malformed_requests() {
    let Some(s) = shared() else { return };
    let chat = "/v1/chat/completions";
    let m = expect(&raw(s, "POST", chat, b"{\"model\":"), 400, None, None);
    assert!(m.contains("not valid JSON"), "{m}");
    expect(&raw(s, "POST", chat, b"[1,2]"), 400, None, None);
    expect(&raw(s, "POST", chat, b""), 400, None, None);
    expect(
        &s.post(chat, &json!({"model": SMOL})),
        400,
        Some("messages"),
        None,
    );
    expect(
        &s.post(chat, &json!({"messages": []})),
        400,
        Some("model"),
        None,
    );
    expect(
        &s.post(chat, &json!({"model": SMOL, "messages": "hi"})),
        400,
        Some("messages"),
        None,
    );
    expect(
        &s.post(chat, &json!({"model": SMOL, "messages": []})),
        400,
        Some("messages"),
        None,
    );
    expect(
        &s.post(
            chat,
            &json!({"model": SMOL, "messages": [{"role": 5, "content": "hi"}]}),
        ),
        400,
        Some("messages[0].role"),
        None,
    );
    expect(
        &s.post(
            chat,
            &json!({"model": SMOL, "messages": [{"role": "wizard", "content": "hi"}]}),
        ),
        400,
        Some("messages[0].role"),
        None,
    );
    expect(
        &s.post(
            chat,
            &json!({"model": SMOL, "messages": [{"role": "user"}]}),
        ),
        400,
        Some("messages[0].content"),
        None,
    );
    expect(
        &s.post(chat, &chat_body("hi", json!({"temperature": "hot"}))),
        400,
        Some("temperature"),
        None,
    );
    expect(
        &s.post(chat, &chat_body("hi", json!({"max_tokens": -1}))),
        400,
        Some("max_tokens"),
        None,
    );
    expect(
        &s.post(chat, &chat_body("hi", json!({"stop": 5}))),
        400,
        Some("stop"),
        None,
    );
    expect(
        &s.post("/v1/completions", &json!({"model": SMOL})),
        400,
        Some("prompt"),
        None,
    );
    expect(
        &s.post(
            "/v1/completions",
            &json!({"model": SMOL, "prompt": {"a": 1}}),
        ),
        400,
        Some("prompt"),
        None,
    );
    expect(
        &s.post("/v1/embeddings", &json!({"model": SMOL})),
        400,
        Some("input"),
        None,
    );
}

#[test]
fn out_of_range_values() {
    let Some(s) = shared() else { return };
    let chat = "/v1/chat/completions";
    for (extra, param) in [
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"temperature": -1}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"n": 0}), "n"),
        (json!({"n": 1000}), "n"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
        (json!({"presence_penalty": 2.5}), "presence_penalty"),
        (json!({"frequency_penalty": -9}), "frequency_penalty"),
        (json!({"logit_bias": {"17": 101}}), "logit_bias.17"),
        (
            json!({"logit_bias": {"99999999": 1}}),
            "logit_bias.99999999",
        ),
        (json!({"logit_bias": {"hello": 1}}), "logit_bias"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (json!({"top_k": -5}), "top_k"),
        (json!({"min_p": 2}), "min_p"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
    ] {
        let m = expect(
            &s.post(chat, &chat_body("hi", extra.clone())),
            400,
            Some(param),
            None,
        );
        assert!(m.contains(param.split('.').next().unwrap()), "{extra}: {m}");
    }
    expect(
        &s.post(
            "/v1/completions",
            &json!({"model": SMOL, "prompt": [1, 2, 999999]}),
        ),
        400,
        Some("prompt"),
        None,
    );
    expect(
        &s.post(
            "/v1/embeddings",
            &json!({"model": SMOL, "input": "x", "encoding_format": "hex"}),
        ),
        400,
        Some("encoding_format"),
        None,
    );
}

#[test]
fn not_implemented_yet_is_named() {
    let Some(s) = shared() else { return };
    let chat = "/v1/chat/completions";
    // Tools on a model whose template cannot describe them; legacy function calling.
    for (extra, param, says) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
            "--chat-template",
        ),
        (
            json!({"functions": [{"name": "f"}]}),
            "functions",
            "pass them as 'tools'",
        ),
    ] {
        let m = expect(
            &s.post(chat, &chat_body("hi", extra)),
            400,
            Some(param),
            Some("unsupported_parameter"),
        );
        assert!(m.contains(says), "{m}");
    }
    let m = expect(
        &s.post(chat, &chat_body("hi", json!({"tool_choice": "required"}))),
        400,
        Some("tool_choice"),
        None,
    );
    assert!(m.contains("needs 'tools'"), "{m}");
    // Neutral values of those fields are fine.
    let ok = chat_body(
        "hi",
        json!({"max_tokens": 1, "response_format": {"type": "text"}, "tools": [], "tool_choice": "none", "user": "u"}),
    );
    assert_eq!(s.post(chat, &ok).status, 200);
    expect(
        &s.post(
            chat,
            &json!({"model": SMOL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        ),
        400,
        Some("messages[0].content[0].type"),
        Some("unsupported_parameter"),
    );
}

#[test]
fn bad_response_formats() {
    let Some(s) = shared() else { return };
    let chat = "/v1/chat/completions";
    for (format, param, says) in [
        (
            json!({"type": "json_schema"}),
            "response_format.json_schema",
            "required",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}),
            "response_format.json_schema.schema",
            "JSON schema object",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}),
            "response_format",
            "invalid JSON schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 1}}}),
            "response_format",
            "Unsatisfiable",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/none"}}}),
            "response_format",
            "invalid JSON schema",
        ),
    ] {
        let body = chat_body("hi", json!({ "response_format": format.clone() }));
        let m = expect(&s.post(chat, &body), 400, Some(param), None);
        assert!(m.contains(says) && !m.contains('\n'), "{format}: {m}");
    }
}

#[test]
fn unknown_model_path_and_method() {
    let Some(s) = shared() else { return };
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
    );
    let m = expect(&r, 404, Some("model"), Some("model_not_found"));
    assert!(m.contains("gpt-4o") && m.contains(SMOL), "{m}");
    expect(
        &s.post("/v1/embeddings", &json!({"model": "nope", "input": "x"})),
        404,
        Some("model"),
        Some("model_not_found"),
    );
    expect(&s.get("/v1/nothing"), 404, None, None);
    expect(&s.get("/"), 404, None, None);
    let r = s.get("/v1/chat/completions");
    expect(&r, 405, None, None);
    assert_eq!(r.header("allow"), Some("POST"));
    expect(&raw(s, "DELETE", "/v1/models", b""), 405, None, None);
    expect(&raw(s, "POST", "/health", b"{}"), 405, None, None);
}

#[test]
fn too_long_and_too_large() {
    let Some(s) = shared() else { return };
    // The test servers hold 2048 positions.
    let long = "hello ".repeat(3000);
    let m = expect(
        &s.post("/v1/completions", &json!({"model": SMOL, "prompt": long})),
        400,
        Some("prompt"),
        Some("context_length_exceeded"),
    );
    assert!(
        m.contains("the prompt has 300") && m.contains("2048"),
        "{m}"
    );
    let m = expect(
        &s.post(
            "/v1/chat/completions",
            &chat_body("hi", json!({"max_tokens": 5000})),
        ),
        400,
        Some("messages"),
        Some("context_length_exceeded"),
    );
    assert!(m.contains("5000") && m.contains("2048"), "{m}");
    let big = format!(
        "{{\"model\":\"{SMOL}\",\"prompt\":\"{}\"}}",
        "a".repeat(MAX_BODY + 10)
    );
    expect(
        &raw(s, "POST", "/v1/completions", big.as_bytes()),
        413,
        None,
        None,
    );
    // Still serving.
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let Some(lm) = smol() else { return };
    let cfg = ferrolm_engine::serve::ServeConfig {
        max_running: 1,
        queue_capacity: 1,
        ..test_config()
    };
    let s = Server::start(vec![(lm, cfg)], Duration::from_secs(1));
    let long = chat_body(
        "Tell a story.",
        json!({"max_tokens": 1500, "ignore_eos": true, "stream": true}),
    );
    let bytes = long.to_string();
    // One running, one waiting; the third is refused.
    let a = send(
        s.addr,
        "POST",
        "/v1/chat/completions",
        Some(bytes.as_bytes()),
    );
    while s.metric("ferrolm_running", SMOL) < 1.0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let b = send(
        s.addr,
        "POST",
        "/v1/chat/completions",
        Some(bytes.as_bytes()),
    );
    while s.metric("ferrolm_queue_depth", SMOL) < 1.0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = s.post(
        "/v1/chat/completions",
        &chat_body("hi", json!({"max_tokens": 1})),
    );
    let m = expect(&r, 429, None, Some("rate_limit_exceeded"));
    assert!(m.contains("busy"), "{m}");
    assert_eq!(r.header("retry-after"), Some("1"));
    drop((a, b));
    s.stop().unwrap();
}

#[test]
fn error_bodies_are_one_json_object() {
    let Some(s) = shared() else { return };
    // Unknown fields are ignored (clients send extras), not errors.
    let r = s.post(
        "/v1/chat/completions",
        &chat_body(
            "hi",
            json!({"max_tokens": 1, "store": false, "metadata": {}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = r.json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
}
