//! Tool calling in the Hermes format the ChatML-family templates use: the template describes
//! `tools` to the model, the model answers `<tool_call>{"name": ..., "arguments": {...}}
//! </tool_call>`, and those blocks come back as OpenAI `tool_calls`. `tool_choice` `required`
//! or a named function is enforced by constrained decoding (a Lark grammar around the
//! functions' JSON schemas), so even a small model calls validly.

use crate::error::{ApiError, ApiResult};
use crate::wire::{FunctionCall, ToolCall};
use ferrolm_engine::constrain::Grammar;
use serde_json::{json, Value};

/// How the model may use the tools (`tool_choice`).
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// Described to the model; its text is returned as it is.
    None,
    /// The model decides; `<tool_call>` blocks in its answer become `tool_calls`.
    Auto,
    /// It must call one of the tools (constrained).
    Required,
    /// It must call this one (constrained).
    Named(String),
}

/// The functions a request offers and how they may be used.
#[derive(Clone, Debug)]
pub struct ToolPlan {
    /// `tools` as given: `[{"type": "function", "function": {"name", "description",
    /// "parameters"}}]`.
    pub tools: Value,
    pub choice: ToolChoice,
}

impl ToolPlan {
    /// Whether the answer is parsed for tool calls.
    pub fn parses(&self) -> bool {
        self.choice != ToolChoice::None
    }

    fn names(&self) -> Vec<&str> {
        self.tools
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["function"]["name"].as_str())
            .collect()
    }

    /// The constraint that forces one call (`required`, a named function), else `None`.
    pub fn grammar(&self) -> Option<Grammar> {
        let only = match &self.choice {
            ToolChoice::Required => None,
            ToolChoice::Named(n) => Some(n.as_str()),
            _ => return None,
        };
        let calls: Vec<Value> = self
            .tools
            .as_array()?
            .iter()
            .map(|t| &t["function"])
            .filter(|f| only.is_none_or(|n| f["name"] == n))
            .map(|f| {
                let params = match &f["parameters"] {
                    Value::Object(o) if !o.is_empty() => f["parameters"].clone(),
                    _ => json!({"type": "object"}),
                };
                json!({
                    "type": "object",
                    "properties": {"name": {"const": f["name"]}, "arguments": params},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let schema = json!({ "anyOf": calls });
        Some(Grammar::Lark(format!(
            "start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {schema}\n"
        )))
    }
}

/// Checks `tools` and `tool_choice`; `None` when the request offers no tools.
pub fn tool_plan(tools: Option<&Value>, choice: Option<&Value>) -> ApiResult<Option<ToolPlan>> {
    let tools = match tools {
        None | Some(Value::Null) => {
            return match choice {
                None | Some(Value::Null) => Ok(None),
                Some(v) if v == "none" || v == "auto" => Ok(None),
                Some(_) => Err(ApiError::invalid(
                    "tool_choice",
                    "'tool_choice' needs 'tools' to choose from",
                )),
            };
        }
        Some(t) => t,
    };
    let list = tools
        .as_array()
        .ok_or_else(|| ApiError::invalid("tools", "'tools' must be an array of functions"))?;
    if list.is_empty() {
        return Ok(None);
    }
    for (i, t) in list.iter().enumerate() {
        if t["type"] != "function" {
            return Err(ApiError::invalid(
                &format!("tools[{i}].type"),
                format!("'tools[{i}].type' must be 'function'"),
            ));
        }
        let name = t["function"]["name"].as_str().unwrap_or("");
        if name.is_empty() {
            return Err(ApiError::invalid(
                &format!("tools[{i}].function.name"),
                format!("'tools[{i}].function.name' must be a non-empty string"),
            ));
        }
        let p = &t["function"]["parameters"];
        if !(p.is_null() || p.is_object()) {
            return Err(ApiError::invalid(
                &format!("tools[{i}].function.parameters"),
                format!("'tools[{i}].function.parameters' must be a JSON schema object"),
            ));
        }
    }
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("'tool_choice' must be 'none', 'auto', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got '{other}'"),
                ))
            }
        },
        Some(v) => match v["function"]["name"].as_str() {
            Some(n) if v["type"] == "function" => ToolChoice::Named(n.to_string()),
            _ => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "'tool_choice' as an object must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ))
            }
        },
    };
    let plan = ToolPlan {
        tools: tools.clone(),
        choice,
    };
    if let ToolChoice::Named(n) = &plan.choice {
        if !plan.names().contains(&n.as_str()) {
            return Err(ApiError::invalid(
                "tool_choice",
                format!(
                    "'tool_choice' names '{n}', which is not among the tools ({})",
                    plan.names().join(", ")
                ),
            ));
        }
    }
    Ok(Some(plan))
}

/// Splits an answer into its text and its `<tool_call>` blocks (each a JSON object with
/// `name` and `arguments`); a block that does not parse stays in the text.
pub fn parse_calls(text: &str, id_prefix: &str) -> (String, Vec<ToolCall>) {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let (mut rest, mut content, mut calls) = (text, String::new(), Vec::new());
    while let Some(start) = rest.find(OPEN) {
        content.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let (body, next) = match after.find(CLOSE) {
            Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
            None => (after, ""),
        };
        match serde_json::from_str::<Value>(body.trim()) {
            Ok(v) if v["name"].is_string() => {
                let args = match &v["arguments"] {
                    Value::String(s) => s.clone(),
                    Value::Null => "{}".to_string(),
                    a => a.to_string(),
                };
                calls.push(ToolCall {
                    index: None,
                    id: format!("{id_prefix}{}", calls.len()),
                    kind: "function",
                    function: FunctionCall {
                        name: v["name"].as_str().unwrap_or_default().to_string(),
                        arguments: args,
                    },
                });
            }
            _ => content.push_str(&rest[start..rest.len() - next.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    (content.trim().to_string(), calls)
}

/// Messages in OpenAI's shape for the template: assistant `tool_calls` with their
/// `arguments` parsed into objects (what templates render), tool results with their ids.
pub fn template_messages(
    messages: &[ferrolm_tokenize::ChatMessage],
    raw: &[crate::wire::Message],
) -> Value {
    let out: Vec<Value> = messages
        .iter()
        .zip(raw)
        .map(|(m, r)| {
            let mut v = json!({"role": m.role, "content": m.content});
            if let Some(Value::Array(calls)) = &r.tool_calls {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        if let Some(Value::String(a)) = c.pointer("/function/arguments") {
                            if let Ok(obj) = serde_json::from_str::<Value>(a) {
                                c["function"]["arguments"] = obj;
                            }
                        }
                        c
                    })
                    .collect();
                v["tool_calls"] = Value::Array(calls);
            }
            if let Some(id) = &r.tool_call_id {
                v["tool_call_id"] = json!(id);
            }
            if let Some(n) = &r.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_split_from_text() {
        let (text, calls) = parse_calls(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "call_",
        );
        assert_eq!(text, "Let me check.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].function.name, "get_weather");
        assert_eq!(calls[0].function.arguments, r#"{"city":"Paris"}"#);
        // A block that is not a call stays text.
        let (text, calls) = parse_calls("<tool_call>not json</tool_call> ok", "c");
        assert_eq!(
            (text.as_str(), calls.len()),
            ("<tool_call>not json</tool_call> ok", 0)
        );
    }

    proptest::proptest! {
        /// Any answer, with call markers and JSON scattered in it, splits without a panic,
        /// every call parsed is a named function with JSON arguments, and text with no
        /// complete call comes back whole.
        #[test]
        fn any_answer_splits(parts in proptest::collection::vec(
            proptest::prop_oneof![
                "[^<]{0,12}",
                proptest::strategy::Just("<tool_call>".to_string()),
                proptest::strategy::Just("</tool_call>".to_string()),
                proptest::strategy::Just(r#"{"name": "f", "arguments": {"x": 1}}"#.to_string()),
                proptest::strategy::Just(r#"{"name": 3}"#.to_string()),
                proptest::strategy::Just("é✓\n".to_string()),
            ],
            0..12,
        )) {
            let text: String = parts.concat();
            let (content, calls) = parse_calls(&text, "c");
            for c in &calls {
                proptest::prop_assert!(!c.function.name.is_empty());
                proptest::prop_assert!(serde_json::from_str::<Value>(&c.function.arguments).is_ok());
            }
            if !text.contains("<tool_call>") {
                proptest::prop_assert_eq!(content, text.trim());
                proptest::prop_assert!(calls.is_empty());
            }
        }

        /// Any JSON as `tools` / `tool_choice` is accepted or refused with a 400, never a
        /// panic; an accepted forced choice always yields a grammar.
        #[test]
        fn any_tools_value_is_checked(tools in arb_json(3), choice in arb_json(2)) {
            if let Ok(Some(p)) = tool_plan(Some(&tools), Some(&choice)) {
                if matches!(p.choice, ToolChoice::Required | ToolChoice::Named(_)) {
                    proptest::prop_assert!(p.grammar().is_some());
                }
            }
        }
    }

    fn arb_json(depth: u32) -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            prop_oneof![
                Just("function".to_string()),
                Just("required".to_string()),
                Just("auto".to_string()),
                Just("none".to_string()),
                Just("name".to_string()),
                "[a-z]{0,6}",
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(depth, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("type".to_string()),
                        Just("function".to_string()),
                        Just("name".to_string()),
                        Just("parameters".to_string()),
                        "[a-z]{1,4}",
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn tool_choice_is_checked() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let p = tool_plan(Some(&tools), Some(&json!("required")))
            .unwrap()
            .unwrap();
        assert!(p.grammar().is_some());
        let named = json!({"type": "function", "function": {"name": "g"}});
        let e = tool_plan(Some(&tools), Some(&named)).unwrap_err();
        assert!(e.message.contains("not among the tools"), "{}", e.message);
        assert!(tool_plan(None, Some(&json!("required"))).is_err());
        assert!(tool_plan(Some(&json!([{"type": "function", "function": {}}])), None).is_err());
        let auto = tool_plan(Some(&tools), None).unwrap().unwrap();
        assert_eq!(auto.choice, ToolChoice::Auto);
        assert!(auto.grammar().is_none());
    }
}
