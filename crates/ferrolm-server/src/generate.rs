//! `/v1/chat/completions` and `/v1/completions`: prompts -> engine jobs (one per choice) ->
//! their events, streamed as server-sent events or collected into one response.
//!
//! Each job's sink forwards its events into an unbounded channel and returns `false` once the
//! receiver is gone (the client disconnected and the response was dropped), which cancels the
//! job on the engine thread. Dropping a [`Run`] also cancels its unfinished jobs at once.
//!
//! `response_format` is compiled into a constraint once per request, off the async workers
//! (a bad schema is a 400 naming it), and each job gets a fresh copy.

use crate::error::{body_bytes, parse, ApiError, ApiResult};
use crate::metrics::Timing;
use crate::params::{chat_messages, chat_plan, completion_plan, GenPlan};
use crate::state::{unix_now, AppState, ModelEntry};
use crate::wire::*;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ferrolm_engine::constrain::Constraint;
use ferrolm_engine::serve::{Event, Finish, Job, Overflow, TokenLogprob};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Which endpoint's shapes to answer in.
enum Kind {
    Chat,
    /// With the prompt texts to put before each choice (`echo`).
    Completion {
        echo: Option<Vec<String>>,
    },
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let run = async {
        let req: ChatRequest = parse(&body_bytes(body)?)?;
        let target = state.resolve(&req.model)?;
        let model = target.model.clone();
        let mut plan = chat_plan(&req, model.vocab_size())?;
        plan.resolved(target);
        let messages = chat_messages(&req.messages)?;
        let tool_turns = req
            .messages
            .iter()
            .any(|m| m.tool_calls.is_some() || m.tool_call_id.is_some());
        let prompt = if plan.tools.is_some() || tool_turns {
            if plan.tools.is_some() && !model.lm.template.takes_tools() {
                return Err(ApiError::unsupported(
                    "tools",
                    format!("the chat template of '{}' does not describe tools to the model; serve it with --chat-template FILE for a template that does (e.g. one in the Hermes format)", model.id),
                ));
            }
            let json = crate::tools::template_messages(&messages, &req.messages);
            model
                .lm
                .chat_prompt_json(&json, plan.tools.as_ref().map(|t| &t.tools))
        } else {
            model.lm.chat_prompt(&messages)
        }
        .map_err(|e| ApiError::invalid("messages", format!("{e:#}")))?;
        let constraint = compile(&model, &plan).await?;
        let run = Run::submit(
            &state,
            model,
            Kind::Chat,
            vec![prompt],
            plan,
            constraint,
            start,
        )?;
        Ok::<_, ApiError>(run.respond().await)
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let run = async {
        let req: CompletionRequest = parse(&body_bytes(body)?)?;
        let target = state.resolve(&req.model)?;
        let model = target.model.clone();
        let mut plan = completion_plan(&req, model.vocab_size())?;
        plan.resolved(target);
        let prompts = completion_prompts(&model, &req.prompt)?;
        let echo = req.echo.unwrap_or(false).then(|| {
            let tok = model.lm.tokenizer.as_ref();
            match &req.prompt {
                Prompt::Text(t) => vec![t.clone()],
                Prompt::Texts(ts) => ts.clone(),
                _ => prompts
                    .iter()
                    .map(|p| tok.map(|t| t.decode(p, false)).unwrap_or_default())
                    .collect(),
            }
        });
        let constraint = compile(&model, &plan).await?;
        let run = Run::submit(
            &state,
            model,
            Kind::Completion { echo },
            prompts,
            plan,
            constraint,
            start,
        )?;
        Ok::<_, ApiError>(run.respond().await)
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

/// The plan's `response_format` compiled over the model's vocabulary, on a blocking thread
/// (the vocabulary itself is built on a model's first constrained request).
async fn compile(model: &Arc<ModelEntry>, plan: &GenPlan) -> ApiResult<Option<Constraint>> {
    let Some(grammar) = plan.grammar.clone() else {
        return Ok(None);
    };
    let lm = model.lm.clone();
    tokio::task::spawn_blocking(move || lm.constraint(&grammar))
        .await
        .map_err(|e| ApiError::internal(format!("compiling response_format failed: {e}")))?
        .map(Some)
        .map_err(|e| {
            // The grammar is the forced tool call's when the request has no response_format.
            let field = if plan.tools.as_ref().is_some_and(|t| t.grammar().is_some()) {
                "tools"
            } else {
                "response_format"
            };
            ApiError::invalid(field, format!("'{field}': {e:#}"))
        })
}

/// A completion request's prompts as token ids (text with the model's special tokens).
fn completion_prompts(model: &ModelEntry, prompt: &Prompt) -> ApiResult<Vec<Vec<u32>>> {
    let encode = |text: &str| -> ApiResult<Vec<u32>> {
        let tok = model.lm.tok().map_err(|_| {
            ApiError::invalid(
                "prompt",
                "this model has no tokenizer: send 'prompt' as token ids",
            )
        })?;
        tok.encode(text, true, true)
            .map_err(|e| ApiError::invalid("prompt", format!("could not tokenize 'prompt': {e}")))
    };
    let check_ids = |ids: &[u32]| -> ApiResult<Vec<u32>> {
        let v = model.vocab_size();
        match ids.iter().find(|&&i| i as usize >= v) {
            Some(bad) => Err(ApiError::invalid(
                "prompt",
                format!("'prompt' holds token id {bad}, but the vocabulary has {v} tokens"),
            )),
            None => Ok(ids.to_vec()),
        }
    };
    let prompts = match prompt {
        Prompt::Text(t) => vec![encode(t)?],
        Prompt::Texts(ts) => ts.iter().map(|t| encode(t)).collect::<ApiResult<_>>()?,
        Prompt::Ids(ids) => vec![check_ids(ids)?],
        Prompt::IdLists(l) => l
            .iter()
            .map(|ids| check_ids(ids))
            .collect::<ApiResult<_>>()?,
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "'prompt' holds no prompts"));
    }
    Ok(prompts)
}

/// One choice's progress.
#[derive(Default)]
struct Choice {
    text: String,
    /// All log-probabilities (collected responses) or those not sent yet (streams).
    logprobs: Vec<TokenLogprob>,
    /// Characters before the next token (completions' `text_offset`).
    offset: usize,
    finish: Option<Finish>,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
    first_token: Option<std::time::Duration>,
    last_token: Option<std::time::Duration>,
}

/// What one engine event means for the response.
enum Step {
    /// Choice `i` has new text (possibly empty).
    Token(usize),
    /// Choice `i` ended.
    Done(usize),
    Failed(ApiError),
}

/// One request's jobs, from submission to the last event.
struct Run {
    state: Arc<AppState>,
    model: Arc<ModelEntry>,
    /// The name responses carry: the model's id, or the per-request adapter's name.
    name: String,
    kind: Kind,
    plan: GenPlan,
    start: Instant,
    id: String,
    created: u64,
    rx: mpsc::UnboundedReceiver<(usize, Event)>,
    /// Engine job ids by choice.
    jobs: Vec<u64>,
    choices: Vec<Choice>,
    open: usize,
}

impl Drop for Run {
    /// A response dropped early (client gone) cancels what still runs.
    fn drop(&mut self) {
        for (id, c) in self.jobs.iter().zip(&self.choices) {
            if c.finish.is_none() {
                self.model.engine.cancel(*id);
            }
        }
    }
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        // A timed-out generation was cut off by a limit, as llama.cpp's server reports it.
        Finish::Length | Finish::Timeout | Finish::Cancelled => "length",
    }
}

impl Run {
    /// Submits `plan.n` jobs per prompt; choice `p * n + j` is prompt `p`'s `j`-th, seeded
    /// `seed + p * n + j`, each with its own copy of `constraint`.
    fn submit(
        state: &Arc<AppState>,
        model: Arc<ModelEntry>,
        kind: Kind,
        prompts: Vec<Vec<u32>>,
        plan: GenPlan,
        constraint: Option<Constraint>,
        start: Instant,
    ) -> ApiResult<Run> {
        if state
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(ApiError::shutting_down());
        }
        let (prompt_param, prefix, default_max) = match kind {
            Kind::Chat => ("messages", "chatcmpl", None),
            // OpenAI's legacy default.
            Kind::Completion { .. } => ("prompt", "cmpl", Some(16)),
        };
        let cfg = model.engine.config().clone();
        let n_ctx = cfg.n_ctx;
        for p in &prompts {
            if p.len() >= n_ctx && cfg.overflow == Overflow::Error {
                return Err(ApiError {
                    code: Some("context_length_exceeded"),
                    ..ApiError::invalid(
                        prompt_param,
                        format!(
                            "the prompt has {} tokens, but the context holds {n_ctx} (prompt and completion together); shorten the prompt",
                            p.len()
                        ),
                    )
                });
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let name = plan.name.clone().unwrap_or_else(|| model.id.clone());
        let mut run = Run {
            state: state.clone(),
            model,
            name,
            kind,
            start,
            id: state.response_id(prefix),
            created: unix_now(),
            rx,
            jobs: Vec::new(),
            choices: Vec::new(),
            open: 0,
            plan,
        };
        let n = run.plan.n;
        for (pi, prompt) in prompts.into_iter().enumerate() {
            let max_tokens = run
                .plan
                .max_tokens
                .unwrap_or_else(|| cfg.default_max_tokens(prompt.len(), default_max));
            for j in 0..n {
                let i = pi * n + j;
                let mut sampling = run.plan.sampling.clone();
                sampling.seed = sampling.seed.wrapping_add(i as u64);
                let job = Job {
                    prompt: prompt.clone(),
                    max_tokens,
                    sampling,
                    stop: run.plan.stop.clone(),
                    ignore_eos: run.plan.ignore_eos,
                    logprobs: run.plan.logprobs,
                    timeout: Some(state.limits.request_timeout),
                    constraint: constraint.clone(),
                    decoding: run.plan.decoding.clone(),
                    speculative: run.plan.speculative.clone(),
                    adapter: run.plan.adapter,
                    soft_prompt: run.plan.soft_prompt.clone(),
                };
                let tx = tx.clone();
                let sink = Box::new(move |ev| tx.send((i, ev)).is_ok());
                // On refusal, dropping `run` cancels the choices already submitted.
                let id = run
                    .model
                    .engine
                    .submit(job, sink)
                    .map_err(|e| ApiError::from_submit(e, prompt_param))?;
                run.jobs.push(id);
                run.choices.push(Choice::default());
                run.open += 1;
            }
        }
        Ok(run)
    }

    /// The next event's meaning; `None` when every choice has ended.
    async fn next(&mut self) -> Option<Step> {
        if self.open == 0 {
            return None;
        }
        let Some((i, ev)) = self.rx.recv().await else {
            return Some(Step::Failed(ApiError::internal(
                "the engine stopped before the generation ended",
            )));
        };
        let at = self.start.elapsed();
        let c = &mut self.choices[i];
        if c.finish.is_some() {
            // Nothing follows a choice's end (an `Error` may still be followed by `Done`).
            return Some(Step::Token(i));
        }
        Some(match ev {
            Event::Token { id, text, logprob } => {
                c.first_token.get_or_insert(at);
                c.last_token = Some(at);
                if let Some(lp) = logprob.filter(|_| !self.model.eog.contains(&id)) {
                    c.logprobs.push(lp);
                }
                c.text.push_str(&text);
                Step::Token(i)
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                c.finish = Some(finish);
                c.prompt_tokens = prompt_tokens;
                c.completion_tokens = completion_tokens;
                c.cached_tokens = cached_tokens;
                self.open -= 1;
                if finish == Finish::Cancelled {
                    // Only shutdown cancels a job whose client is still there.
                    return Some(Step::Failed(ApiError::shutting_down()));
                }
                self.state.metrics.observe(
                    &self.model.id,
                    &Timing {
                        first_token: c.first_token,
                        last_token: c.last_token,
                        tokens: completion_tokens,
                        total: at,
                    },
                );
                Step::Done(i)
            }
            Event::Error { message } => {
                c.finish = Some(Finish::Cancelled);
                self.open -= 1;
                Step::Failed(ApiError::internal(message))
            }
        })
    }

    async fn respond(self) -> Response {
        if self.plan.stream {
            self.stream()
        } else {
            self.collect().await
        }
    }

    fn usage(&self) -> Usage {
        let n = self.plan.n;
        let per_prompt = self.choices.iter().step_by(n);
        let prompt_tokens = per_prompt.clone().map(|c| c.prompt_tokens).sum();
        let cached_tokens = per_prompt.map(|c| c.cached_tokens).sum();
        let completion_tokens = self.choices.iter().map(|c| c.completion_tokens).sum();
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }

    fn echo(&self, i: usize) -> Option<&str> {
        match &self.kind {
            Kind::Completion { echo: Some(e) } => e.get(i / self.plan.n).map(String::as_str),
            _ => None,
        }
    }

    /// A chat answer's content and tool calls (`None` when it made none, or tools are off).
    fn answer(&self, i: usize, text: String) -> (Option<String>, Option<Vec<ToolCall>>) {
        if !self.plan.tools.as_ref().is_some_and(|t| t.parses()) {
            return (Some(text), None);
        }
        let (content, calls) = crate::tools::parse_calls(
            &text,
            &format!("call_{}{i}", self.id.rsplit('-').next().unwrap_or("")),
        );
        if calls.is_empty() {
            return (Some(text), None);
        }
        ((!content.is_empty()).then_some(content), Some(calls))
    }

    /// Waits for every choice, then answers with one JSON body.
    async fn collect(mut self) -> Response {
        while let Some(step) = self.next().await {
            if let Step::Failed(e) = step {
                return e.into_response();
            }
        }
        let usage = self.usage();
        let reason = |c: &Choice| finish_reason(c.finish.unwrap_or(Finish::Stop));
        match self.kind {
            Kind::Chat => axum::Json(ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion",
                created: self.created,
                model: self.name.clone(),
                choices: self
                    .choices
                    .iter()
                    .enumerate()
                    .map(|(index, c)| {
                        let (content, calls) = self.answer(index, c.text.clone());
                        ChatChoice {
                            index,
                            finish_reason: if calls.is_some() {
                                "tool_calls"
                            } else {
                                reason(c)
                            },
                            message: AssistantMessage {
                                role: "assistant",
                                content,
                                refusal: None,
                                tool_calls: calls,
                            },
                            logprobs: self.plan.logprobs.map(|_| chat_logprobs(&c.logprobs)),
                        }
                    })
                    .collect(),
                usage,
                system_fingerprint: None,
            })
            .into_response(),
            Kind::Completion { .. } => axum::Json(Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.name.clone(),
                choices: self
                    .choices
                    .iter()
                    .enumerate()
                    .map(|(index, c)| {
                        let echo = self.echo(index).unwrap_or("");
                        CompletionChoice {
                            index,
                            text: format!("{echo}{}", c.text),
                            logprobs: self
                                .plan
                                .logprobs
                                .map(|_| completion_logprobs(&c.logprobs, echo.chars().count())),
                            finish_reason: Some(reason(c)),
                        }
                    })
                    .collect(),
                usage: Some(Some(usage)),
                system_fingerprint: None,
            })
            .into_response(),
        }
    }

    /// One SSE frame.
    fn frame<T: serde::Serialize>(chunk: &T) -> Bytes {
        let json = serde_json::to_string(chunk).unwrap_or_default();
        Bytes::from(format!("data: {json}\n\n"))
    }

    /// One `chat.completion.chunk` frame with one choice.
    fn chat_frame(&self, choice: ChunkChoice) -> Bytes {
        Self::frame(&ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.name.clone(),
            choices: vec![choice],
            usage: self.plan.include_usage.then_some(None),
            system_fingerprint: None,
        })
    }

    /// A chunk for choice `i`: new text (`text`), or its end (`finish`); with the
    /// log-probabilities not sent yet.
    fn chunk(&mut self, i: usize, text: Option<String>, finish: Option<&'static str>) -> Bytes {
        let want_lp = self.plan.logprobs.is_some();
        let usage = self.plan.include_usage.then_some(None);
        let lps = std::mem::take(&mut self.choices[i].logprobs);
        match self.kind {
            Kind::Chat => self.chat_frame(ChunkChoice {
                index: i,
                delta: Delta {
                    role: None,
                    content: text,
                    tool_calls: None,
                },
                logprobs: (want_lp && !lps.is_empty()).then(|| chat_logprobs(&lps)),
                finish_reason: finish,
            }),
            Kind::Completion { .. } => {
                let c = &mut self.choices[i];
                let logprobs = want_lp.then(|| completion_logprobs(&lps, c.offset));
                let text = text.unwrap_or_default();
                c.offset += text.chars().count();
                Self::frame(&Completion {
                    id: self.id.clone(),
                    object: "text_completion",
                    created: self.created,
                    model: self.name.clone(),
                    choices: vec![CompletionChoice {
                        index: i,
                        text,
                        logprobs,
                        finish_reason: finish,
                    }],
                    usage,
                    system_fingerprint: None,
                })
            }
        }
    }

    /// A chat chunk carrying a choice's tool calls (each whole, with its index) and any text.
    fn calls_chunk(&mut self, i: usize, content: Option<String>, calls: Vec<ToolCall>) -> Bytes {
        let calls = calls
            .into_iter()
            .enumerate()
            .map(|(k, c)| ToolCall {
                index: Some(k),
                ..c
            })
            .collect();
        self.chat_frame(ChunkChoice {
            index: i,
            delta: Delta {
                role: None,
                content,
                tool_calls: Some(calls),
            },
            logprobs: None,
            finish_reason: None,
        })
    }

    /// The frames that open each choice: the assistant role (chat) or the echoed prompt.
    fn opening(&mut self) -> VecDeque<Bytes> {
        let mut out = VecDeque::new();
        for i in 0..self.choices.len() {
            match &self.kind {
                Kind::Chat => out.push_back(self.chat_frame(ChunkChoice {
                    index: i,
                    delta: Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        tool_calls: None,
                    },
                    logprobs: None,
                    finish_reason: None,
                })),
                Kind::Completion { echo: Some(_) } => {
                    let echo = self.echo(i).unwrap_or("").to_string();
                    out.push_back(self.chunk(i, Some(echo), None));
                }
                Kind::Completion { echo: None } => {}
            }
        }
        out
    }

    /// The frames for one step: text when there is some, the finish chunk, and after the
    /// last choice the usage chunk and `[DONE]`.
    fn frames(&mut self, step: Step, out: &mut VecDeque<Bytes>) -> bool {
        match step {
            Step::Token(i) => {
                // With tools, the answer is held until it ends (then split into text and calls).
                let held = self.plan.tools.as_ref().is_some_and(|t| t.parses());
                let c = &mut self.choices[i];
                if c.text.is_empty() || held {
                    return false;
                }
                let text = std::mem::take(&mut c.text);
                out.push_back(self.chunk(i, Some(text), None));
                false
            }
            Step::Done(i) => {
                let mut reason = finish_reason(self.choices[i].finish.unwrap_or(Finish::Stop));
                let text = std::mem::take(&mut self.choices[i].text);
                let text = match self.kind {
                    Kind::Chat => {
                        let (content, calls) = self.answer(i, text);
                        match calls {
                            Some(calls) => {
                                reason = "tool_calls";
                                out.push_back(self.calls_chunk(i, content, calls));
                                None
                            }
                            None => content.filter(|t| !t.is_empty()),
                        }
                    }
                    Kind::Completion { .. } => Some(text),
                };
                out.push_back(self.chunk(i, text, Some(reason)));
                if self.open > 0 {
                    return false;
                }
                if self.plan.include_usage {
                    let usage = Some(Some(self.usage()));
                    out.push_back(match self.kind {
                        Kind::Chat => Self::frame(&ChatChunk {
                            id: self.id.clone(),
                            object: "chat.completion.chunk",
                            created: self.created,
                            model: self.name.clone(),
                            choices: vec![],
                            usage,
                            system_fingerprint: None,
                        }),
                        Kind::Completion { .. } => Self::frame(&Completion {
                            id: self.id.clone(),
                            object: "text_completion",
                            created: self.created,
                            model: self.name.clone(),
                            choices: vec![],
                            usage,
                            system_fingerprint: None,
                        }),
                    });
                }
                out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                true
            }
            Step::Failed(e) => {
                out.push_back(Self::frame(&e.body()));
                out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                true
            }
        }
    }

    /// Answers with an event stream; dropping it (the client went away) drops the run.
    fn stream(mut self) -> Response {
        let pending = self.opening();
        let stream = futures_util::stream::unfold(
            (self, pending, false),
            |(mut run, mut pending, mut ended)| async move {
                loop {
                    if let Some(b) = pending.pop_front() {
                        return Some((Ok::<_, std::convert::Infallible>(b), (run, pending, ended)));
                    }
                    if ended {
                        return None;
                    }
                    match run.next().await {
                        Some(step) => ended = run.frames(step, &mut pending),
                        None => ended = true,
                    }
                }
            },
        );
        (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(stream),
        )
            .into_response()
    }
}

fn chat_logprobs(lps: &[TokenLogprob]) -> ChatLogprobs {
    ChatLogprobs {
        content: lps
            .iter()
            .map(|lp| ChatTokenLogprob {
                token: lp.token.clone(),
                logprob: lp.logprob,
                bytes: lp.bytes.clone(),
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|(token, bytes, logprob)| TopLogprob {
                        token: token.clone(),
                        logprob: *logprob,
                        bytes: bytes.clone(),
                    })
                    .collect(),
            })
            .collect(),
        refusal: None,
    }
}

/// The legacy shape; `offset` is the characters before the first token.
fn completion_logprobs(lps: &[TokenLogprob], mut offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for lp in lps {
        out.tokens.push(lp.token.clone());
        out.token_logprobs.push(lp.logprob);
        out.top_logprobs.push(
            lp.top
                .iter()
                .map(|(t, _, l)| (t.clone(), *l))
                .collect::<BTreeMap<_, _>>(),
        );
        out.text_offset.push(offset);
        offset += lp.token.chars().count();
    }
    out
}
