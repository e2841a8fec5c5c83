//! Request fields -> engine jobs: every range checked (400 naming the field), OpenAI's
//! defaults (temperature 1, top-p 1, no top-k or min-p), `response_format` as a grammar for
//! constrained decoding, and the features not implemented yet refused by name.

use crate::error::{ApiError, ApiResult};
use crate::wire::{
    ChatRequest, CompletionRequest, Content, Message, ResponseFormat, Sampling, Stop,
};
use ferrolm_engine::constrain::Grammar;
use ferrolm_engine::{Decoding, DolaLayers, Draft, Speculative};
use ferrolm_sample::SamplingParams;
use ferrolm_tokenize::ChatMessage;

/// OpenAI's limit on stop sequences.
pub const MAX_STOP: usize = 4;
/// Most choices one request may ask for.
pub const MAX_N: u32 = 16;
/// Most alternatives per token in log-probabilities.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// What a generation request asks of the engine, before prompts are known.
#[derive(Clone, Debug)]
pub struct GenPlan {
    /// Choices per prompt.
    pub n: usize,
    /// Sampling of choice 0; choice `i` uses seed `seed + i`.
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// `None`: what the endpoint defaults to.
    pub max_tokens: Option<usize>,
    pub logprobs: Option<usize>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// `response_format`'s constraint (`None` for text).
    pub grammar: Option<Grammar>,
    /// Extensions: contrastive search / DoLa, speculative decoding.
    pub decoding: Decoding,
    pub speculative: Option<Speculative>,
    /// Tool calling (chat requests with `tools`).
    pub tools: Option<crate::tools::ToolPlan>,
    /// The per-request LoRA adapter the request's `model` names (set once it is resolved).
    pub adapter: Option<usize>,
    /// The prompt adapter's virtual tokens the request's `model` names (set once resolved).
    pub soft_prompt: Option<std::sync::Arc<Vec<f32>>>,
    /// The name responses carry (the model's, or the adapter's the request named).
    pub name: Option<String>,
}

impl GenPlan {
    /// Takes what the request's `model` field resolved to: adapters and the name to answer
    /// with.
    pub fn resolved(&mut self, t: crate::state::Target) {
        self.adapter = t.adapter;
        self.soft_prompt = t.soft;
        self.name = Some(t.name);
    }
}

/// The extension fields `decoding` (`sample`, `contrastive` with `penalty_alpha` and `top_k`,
/// `dola` with `dola_layers`) and `speculative` (`ngram` or `early-exit:LAYER`, `draft_max`).
fn decoding_fields(s: &Sampling) -> ApiResult<(Decoding, Option<Speculative>)> {
    let rule = match s.decoding.as_deref().unwrap_or("sample") {
        "sample" => Decoding::Sample,
        "contrastive" => {
            let alpha = s.penalty_alpha.unwrap_or(0.6);
            check(
                (0.0..=1.0).contains(&alpha),
                "penalty_alpha",
                "in [0, 1]",
                alpha,
            )?;
            let k = s.top_k.unwrap_or(4);
            check(k >= 1, "top_k", "at least 1 with contrastive decoding", k)?;
            Decoding::Contrastive {
                alpha,
                k: k as usize,
            }
        }
        "dola" => {
            let layers = match &s.dola_layers {
                None => Ok(DolaLayers::High),
                Some(serde_json::Value::String(x)) => x.parse(),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
                    .map(DolaLayers::List)
                    .ok_or_else(|| anyhow::anyhow!("not layer numbers")),
                Some(_) => Err(anyhow::anyhow!("not a string or a list")),
            }
            .map_err(|_| {
                ApiError::invalid(
                    "dola_layers",
                    "'dola_layers' must be \"low\", \"high\" or a list of layer numbers",
                )
            })?;
            Decoding::Dola { layers }
        }
        other => {
            return Err(ApiError::invalid(
                "decoding",
                format!("'decoding' must be 'sample', 'contrastive' or 'dola', got '{other}'"),
            ))
        }
    };
    let draft_max = s.draft_max.unwrap_or(0) as usize;
    let speculative = match s.speculative.as_deref() {
        None => None,
        Some(x) => {
            let draft = match x {
                "ngram" => Draft::Ngram { max_ngram: 3 },
                _ => match x.strip_prefix("early-exit:").map(str::parse::<usize>) {
                    Some(Ok(layer)) => Draft::EarlyExit { layer },
                    _ => {
                        return Err(ApiError::invalid(
                            "speculative",
                            format!(
                                "'speculative' must be 'ngram' or 'early-exit:LAYER', got '{x}'"
                            ),
                        ))
                    }
                },
            };
            let max = match (draft_max, &draft) {
                (0, Draft::Ngram { .. }) => 10,
                (0, _) => 4,
                (m, _) => m.min(64),
            };
            Some(Speculative { draft, max })
        }
    };
    if speculative.is_some() && rule != Decoding::Sample {
        return Err(ApiError::invalid(
            "speculative",
            "'speculative' does not combine with 'decoding' contrastive or dola",
        ));
    }
    Ok((rule, speculative))
}

fn check(ok: bool, param: &str, expected: &str, got: impl std::fmt::Display) -> ApiResult<()> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            param,
            format!("'{param}' must be {expected}, got {got}"),
        ))
    }
}

/// A seed for requests that give none: different for every request, as OpenAI's sampling is.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The shared sampling fields, checked against OpenAI's ranges, plus `max_tokens` and
/// `logprobs` as each endpoint names them.
pub fn plan(
    s: &Sampling,
    max_tokens: Option<(u64, &str)>,
    logprobs: Option<u32>,
    vocab_size: usize,
) -> ApiResult<GenPlan> {
    let n = s.n.unwrap_or(1);
    check((1..=MAX_N).contains(&n), "n", &format!("in 1..={MAX_N}"), n)?;
    let temperature = s.temperature.unwrap_or(1.0);
    check(
        (0.0..=2.0).contains(&temperature),
        "temperature",
        "in [0, 2]",
        temperature,
    )?;
    let top_p = s.top_p.unwrap_or(1.0);
    check(top_p > 0.0 && top_p <= 1.0, "top_p", "in (0, 1]", top_p)?;
    let top_k = s.top_k.unwrap_or(0);
    check(top_k >= -1, "top_k", "a count >= 0 (0 or -1: off)", top_k)?;
    let min_p = s.min_p.unwrap_or(0.0);
    check((0.0..=1.0).contains(&min_p), "min_p", "in [0, 1]", min_p)?;
    let repeat = s.repetition_penalty.unwrap_or(1.0);
    check(
        repeat.is_finite() && repeat > 0.0,
        "repetition_penalty",
        "a number > 0",
        repeat,
    )?;
    for (name, v) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        let v = v.unwrap_or(0.0);
        check((-2.0..=2.0).contains(&v), name, "in [-2, 2]", v)?;
    }
    let mut logit_bias = Vec::new();
    for (k, &v) in s.logit_bias.iter().flatten() {
        let param = format!("logit_bias.{k}");
        let id: u32 = k.trim().parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("'logit_bias' keys must be token ids, got '{k}'"),
            )
        })?;
        check(
            (id as usize) < vocab_size,
            &param,
            &format!("a token id below the vocabulary size {vocab_size}"),
            id,
        )?;
        check((-100.0..=100.0).contains(&v), &param, "in [-100, 100]", v)?;
        logit_bias.push((id, v));
    }
    let stop = match &s.stop {
        None => Vec::new(),
        Some(Stop::One(x)) => vec![x.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    check(
        stop.len() <= MAX_STOP,
        "stop",
        &format!("at most {MAX_STOP} sequences"),
        stop.len(),
    )?;
    let stop: Vec<String> = stop.into_iter().filter(|x| !x.is_empty()).collect();
    let max_tokens = match max_tokens {
        Some((m, name)) => {
            check(m >= 1, name, "at least 1", m)?;
            Some(usize::try_from(m).unwrap_or(usize::MAX))
        }
        None => None,
    };
    let sampling = SamplingParams {
        temperature,
        top_k: top_k.max(0) as usize,
        top_p,
        min_p,
        typical_p: 1.0,
        tfs_z: 1.0,
        repeat_penalty: repeat,
        frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
        presence_penalty: s.presence_penalty.unwrap_or(0.0),
        logit_bias,
        seed: s.seed.map(|x| x as u64).unwrap_or_else(fresh_seed),
        mirostat: s.mirostat.unwrap_or(0),
        mirostat_tau: s.mirostat_tau.unwrap_or(5.0),
        mirostat_eta: s.mirostat_eta.unwrap_or(0.1),
        ..SamplingParams::default()
    };
    let (decoding, speculative) = decoding_fields(s)?;
    if (decoding != Decoding::Sample || speculative.is_some()) && logprobs.is_some() {
        return Err(ApiError::invalid(
            "logprobs",
            "'logprobs' is not available with 'decoding' contrastive/dola or 'speculative'",
        ));
    }
    sampling
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let stream = s.stream.unwrap_or(false);
    Ok(GenPlan {
        n: n as usize,
        sampling,
        stop,
        max_tokens,
        logprobs: logprobs.map(|k| k as usize),
        ignore_eos: s.ignore_eos.unwrap_or(false),
        stream,
        include_usage: stream
            && s.stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        grammar: None,
        decoding,
        speculative,
        adapter: None,
        soft_prompt: None,
        name: None,
        tools: None,
    })
}

/// `response_format` -> the grammar its output must follow.
pub fn response_grammar(f: Option<&ResponseFormat>) -> ApiResult<Option<Grammar>> {
    let Some(f) = f else {
        return Ok(None);
    };
    match f.kind.as_str() {
        "text" => Ok(None),
        "json_object" => Ok(Some(Grammar::JsonObject)),
        "json_schema" => {
            let Some(js) = &f.json_schema else {
                return Err(ApiError::invalid(
                    "response_format.json_schema",
                    "'response_format.json_schema' is required when 'response_format.type' is 'json_schema'",
                ));
            };
            match &js.schema {
                // OpenAI's schema is optional: without one, any JSON object.
                None => Ok(Some(Grammar::JsonObject)),
                Some(s) if s.is_object() || s.is_boolean() => {
                    Ok(Some(Grammar::JsonSchema(s.clone())))
                }
                Some(_) => Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    "'response_format.json_schema.schema' must be a JSON schema object",
                )),
            }
        }
        other => Err(ApiError::invalid(
            "response_format.type",
            format!("'response_format.type' must be 'text', 'json_object' or 'json_schema', got '{other}'"),
        )),
    }
}

/// A chat request's plan, refusing what is not implemented yet.
pub fn chat_plan(r: &ChatRequest, vocab_size: usize) -> ApiResult<GenPlan> {
    let grammar = response_grammar(r.response_format.as_ref())?;
    let has = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    };
    // The legacy function-calling fields: refused with the way to the current ones.
    if has(&r.functions) {
        return Err(ApiError::unsupported(
            "functions",
            "'functions' (legacy function calling) is not supported; pass them as 'tools'",
        ));
    }
    if has(&r.function_call) && r.function_call.as_ref().and_then(|v| v.as_str()) != Some("none") {
        return Err(ApiError::unsupported(
            "function_call",
            "'function_call' (legacy function calling) is not supported; use 'tool_choice'",
        ));
    }
    let tools = crate::tools::tool_plan(r.tools.as_ref(), r.tool_choice.as_ref())?;
    let forced = tools.as_ref().and_then(|t| t.grammar());
    if forced.is_some() && grammar.is_some() {
        return Err(ApiError::invalid(
            "tool_choice",
            "'tool_choice' required (or a named function) and 'response_format' both constrain the answer; give one",
        ));
    }
    let grammar = grammar.or(forced);
    let logprobs = match (r.logprobs.unwrap_or(false), r.top_logprobs) {
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "'top_logprobs' needs 'logprobs': true",
            ))
        }
        (false, _) => None,
        (true, k) => Some(k.unwrap_or(0)),
    };
    if let Some(k) = logprobs {
        check(
            k <= MAX_TOP_LOGPROBS,
            "top_logprobs",
            &format!("in 0..={MAX_TOP_LOGPROBS}"),
            k,
        )?;
    }
    let max = match (r.max_completion_tokens, r.max_tokens) {
        (Some(m), _) => Some((m, "max_completion_tokens")),
        (None, Some(m)) => Some((m, "max_tokens")),
        _ => None,
    };
    Ok(GenPlan {
        grammar,
        tools,
        ..plan(&r.sampling(), max, logprobs, vocab_size)?
    })
}

/// A completion request's plan, refusing what is not implemented yet.
pub fn completion_plan(r: &CompletionRequest, vocab_size: usize) -> ApiResult<GenPlan> {
    if r.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported(
            "suffix",
            "'suffix' (insertion) is not supported; leave it out",
        ));
    }
    if let Some(b) = r.best_of {
        if b != r.n.unwrap_or(1) {
            return Err(ApiError::unsupported(
                "best_of",
                "'best_of' other than 'n' is not supported; leave it out",
            ));
        }
    }
    if let Some(k) = r.logprobs {
        check(
            k <= MAX_TOP_LOGPROBS,
            "logprobs",
            &format!("in 0..={MAX_TOP_LOGPROBS}"),
            k,
        )?;
        if r.echo == Some(true) {
            return Err(ApiError::unsupported(
                "echo",
                "'echo' together with 'logprobs' (prompt log-probabilities) is not supported",
            ));
        }
    }
    let grammar = response_grammar(r.response_format.as_ref())?;
    Ok(GenPlan {
        grammar,
        ..plan(
            &r.sampling(),
            r.max_tokens.map(|m| (m, "max_tokens")),
            r.logprobs,
            vocab_size,
        )?
    })
}

/// Chat messages as the template takes them; only text content.
pub fn chat_messages(messages: &[Message]) -> ApiResult<Vec<ChatMessage>> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!("'messages[{i}].role' must be system, developer, user, assistant or tool, got '{other}'"),
                ))
            }
        };
        if m.tool_calls
            .as_ref()
            .is_some_and(|v| !v.is_null() && !v.is_array())
        {
            return Err(ApiError::invalid(
                &format!("messages[{i}].tool_calls"),
                format!("'messages[{i}].tool_calls' must be an array"),
            ));
        }
        let content = match &m.content {
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => texts.push(t.as_str()),
                        ("text", None) => {
                            return Err(ApiError::invalid(
                                &format!("messages[{i}].content[{j}].text"),
                                format!("'messages[{i}].content[{j}].text' is required"),
                            ))
                        }
                        (kind, _) => {
                            return Err(ApiError::unsupported(
                                &format!("messages[{i}].content[{j}].type"),
                                format!("content parts of type '{kind}' are not supported; this server takes text"),
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
            None if role == "assistant" => String::new(),
            None => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].content"),
                    format!("'messages[{i}].content' is required"),
                ))
            }
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::parse;

    fn chat(body: &str) -> ApiResult<GenPlan> {
        chat_plan(&parse::<ChatRequest>(body.as_bytes())?, 1000)
    }

    fn param(r: ApiResult<GenPlan>) -> String {
        r.unwrap_err().param.unwrap_or_default()
    }

    #[test]
    fn defaults_follow_openai() {
        let p = chat(r#"{"model":"m","messages":[]}"#).unwrap();
        assert_eq!(p.sampling.temperature, 1.0);
        assert_eq!(p.sampling.top_p, 1.0);
        assert_eq!((p.sampling.top_k, p.sampling.min_p), (0, 0.0));
        assert_eq!((p.n, p.max_tokens, p.logprobs), (1, None, None));
        assert!(!p.stream && !p.include_usage);
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let m = r#""model":"m","messages":[]"#;
        for (extra, field) in [
            (r#""temperature":3"#, "temperature"),
            (r#""top_p":0"#, "top_p"),
            (r#""n":0"#, "n"),
            (r#""max_tokens":0"#, "max_tokens"),
            (r#""presence_penalty":-3"#, "presence_penalty"),
            (r#""logit_bias":{"5":200}"#, "logit_bias.5"),
            (r#""logit_bias":{"5000":1}"#, "logit_bias.5000"),
            (r#""logit_bias":{"x":1}"#, "logit_bias"),
            (r#""stop":["a","b","c","d","e"]"#, "stop"),
            (r#""logprobs":true,"top_logprobs":21"#, "top_logprobs"),
            (r#""top_logprobs":2"#, "top_logprobs"),
            (
                r#""response_format":{"type":"xml"}"#,
                "response_format.type",
            ),
            (
                r#""response_format":{"type":"json_schema"}"#,
                "response_format.json_schema",
            ),
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"x","schema":[1]}}"#,
                "response_format.json_schema.schema",
            ),
            (r#""tools":[{"type":"function"}]"#, "tools[0].function.name"),
            (
                r#""tools":[{"type":"fn","function":{"name":"f"}}]"#,
                "tools[0].type",
            ),
            (r#""tool_choice":"required""#, "tool_choice"),
            (r#""temperature":"hot""#, "temperature"),
            (r#""stop":5"#, "stop"),
        ] {
            assert_eq!(param(chat(&format!("{{{m},{extra}}}"))), field, "{extra}");
        }
        assert_eq!(param(chat(r#"{"messages":[]}"#)), "model");
        let e = parse::<ChatRequest>(br#"{"model":"m","messages":[{"content":"x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn response_format_becomes_a_grammar() {
        let m = r#""model":"m","messages":[]"#;
        let g = |extra: &str| chat(&format!("{{{m},{extra}}}")).unwrap().grammar;
        assert_eq!(g(r#""response_format":{"type":"text"}"#), None);
        assert_eq!(
            g(r#""response_format":{"type":"json_object"}"#),
            Some(Grammar::JsonObject)
        );
        assert_eq!(
            g(
                r#""response_format":{"type":"json_schema","json_schema":{"name":"n","strict":true,"schema":{"type":"integer"}}}"#
            ),
            Some(Grammar::JsonSchema(serde_json::json!({"type": "integer"})))
        );
    }

    #[test]
    fn messages_take_text_parts() {
        let r = parse::<ChatRequest>(
            br#"{"model":"m","messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let m = chat_messages(&r.messages).unwrap();
        assert_eq!(
            (m[0].role.as_str(), m[0].content.as_str()),
            ("system", "a\nb")
        );
        let r = parse::<ChatRequest>(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            chat_messages(&r.messages).unwrap_err().param.as_deref(),
            Some("messages[0].content[0].type")
        );
    }
}
