//! Tool calling on SmolLM2 served with a ChatML template that describes tools
//! (`fixtures/templates/chatml-tools.jinja`): `tool_choice` required or named gives a valid
//! call (constrained decoding over the function's schema), streamed or not; tool results go
//! back through the template; a template without tools, an unknown function, and tools with
//! `response_format` are 400s naming the field.

mod common;

use common::{Server, SMOL};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn smol(tools_template: bool) -> Option<Arc<ferrolm_engine::LoadedModel>> {
    let p = ferrolm_format::test_models::file(&format!("{SMOL}.gguf"))?;
    let mut lm = ferrolm_engine::load(p.to_str().unwrap(), true).unwrap();
    if tools_template {
        let t = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/templates/chatml-tools.jinja");
        lm.set_chat_template(&std::fs::read_to_string(t).unwrap())
            .unwrap();
    }
    Some(Arc::new(lm))
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}},
        {"type": "function", "function": {"name": "add", "description": "Adds two integers",
         "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"]}}}
    ])
}

fn ask(choice: Value, stream: bool) -> Value {
    json!({"model": SMOL, "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
           "tools": tools(), "tool_choice": choice, "temperature": 0, "max_tokens": 64, "stream": stream})
}

#[test]
fn forced_tool_calls_are_valid_and_come_back_as_tool_calls() {
    let Some(lm) = smol(true) else { return };
    let s = Server::start(vec![(lm, common::test_config())], Duration::from_secs(1));
    // Required: some function, with arguments that satisfy its schema.
    let r = s.post("/v1/chat/completions", &ask(json!("required"), false));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls", "{v}");
    assert!(c["message"]["content"].is_null(), "{v}");
    let call = &c["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    let name = call["function"]["name"].as_str().unwrap();
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    println!("required: {name}({args})");
    match name {
        "get_weather" => {
            assert!(args["city"].is_string(), "{args}");
            assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()));
        }
        "add" => assert!(args["a"].is_i64() && args["b"].is_i64(), "{args}"),
        other => panic!("unknown function {other}"),
    }
    // Named: that function.
    let named = json!({"type": "function", "function": {"name": "add"}});
    let v = s
        .post("/v1/chat/completions", &ask(named.clone(), false))
        .json();
    let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "add", "{v}");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["a"].is_i64() && args["b"].is_i64(), "{args}");
    // Streamed: one delta with the whole call (with its index), then tool_calls, [DONE].
    let r = s.post("/v1/chat/completions", &ask(named, true));
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let with_calls: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .collect();
    assert_eq!(with_calls.len(), 1, "{}", r.body);
    let d = &with_calls[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(
        (d["index"].as_u64(), d["function"]["name"].as_str()),
        (Some(0), Some("add"))
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    // The call and its result go back through the template.
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": SMOL, "tools": tools(), "temperature": 0, "max_tokens": 8,
            "messages": [
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 18}"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["usage"]["prompt_tokens"].as_u64().unwrap() > 100);
    // Bad requests.
    let bad = |body: Value, param: &str| {
        let r = s.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["error"]["param"], param, "{}", r.body);
    };
    bad(
        ask(
            json!({"type": "function", "function": {"name": "nope"}}),
            false,
        ),
        "tool_choice",
    );
    bad(ask(json!("sometimes"), false), "tool_choice");
    let mut both = ask(json!("required"), false);
    both["response_format"] = json!({"type": "json_object"});
    bad(both, "tool_choice");
    let mut no_name = ask(json!("auto"), false);
    no_name["tools"] = json!([{"type": "function", "function": {"description": "x"}}]);
    bad(no_name, "tools[0].function.name");
    s.stop().unwrap();
    // The model's own template has no tools: a 400 saying so.
    let Some(plain) = smol(false) else { return };
    let s = Server::start(vec![(plain, common::test_config())], Duration::from_secs(1));
    let r = s.post("/v1/chat/completions", &ask(json!("auto"), false));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "tools");
    assert!(r.body.contains("--chat-template"), "{}", r.body);
    s.stop().unwrap();
}
