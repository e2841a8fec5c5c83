//! The small endpoints: models, embeddings, health and metrics.

use crate::error::{body_bytes, parse, ApiError, ApiResult};
use crate::state::AppState;
use crate::wire::*;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// OpenAI's limit on inputs per embeddings request.
const MAX_EMBED_INPUTS: usize = 2048;

fn model_object(m: &crate::state::ModelEntry) -> ModelObject {
    ModelObject {
        id: m.id.clone(),
        object: "model",
        created: m.created,
        owned_by: "ferrolm",
    }
}

pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: state
            .models
            .iter()
            .map(|m| model_object(m))
            .chain(state.adapters.iter().map(|(name, i, _)| ModelObject {
                id: name.clone(),
                ..model_object(&state.models[*i])
            }))
            .chain(
                state
                    .prompt_adapters
                    .iter()
                    .map(|(name, i, _)| ModelObject {
                        id: name.clone(),
                        ..model_object(&state.models[*i])
                    }),
            )
            .collect(),
    })
}

pub async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<ModelObject>> {
    let t = state.resolve(&id)?;
    Ok(Json(ModelObject {
        id,
        ..model_object(&t.model)
    }))
}

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "shutting down"})),
        )
            .into_response()
    } else {
        Json(serde_json::json!({"status": "ok"})).into_response()
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let engines: Vec<_> = state
        .models
        .iter()
        .map(|m| (m.id.clone(), m.engine.metrics()))
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&engines),
    )
        .into_response()
}

/// Standard base64 with padding (the `encoding_format: "base64"` answer).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<EmbeddingResponse>> {
    let req: EmbeddingRequest = parse(&body_bytes(body)?)?;
    let target = state.resolve(&req.model)?;
    if target.adapter.is_some() || target.soft.is_some() {
        return Err(ApiError::invalid(
            "model",
            format!(
                "'{}' is an adapter, which applies to generation; ask embeddings of '{}'",
                req.model, target.model.id
            ),
        ));
    }
    let model = target.model;
    let base64_out = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("'encoding_format' must be 'float' or 'base64', got '{other}'"),
            ))
        }
    };
    // Inputs are cut at the sentence-transformers `max_seq_length`, as that library does.
    let cut = model
        .lm
        .hf
        .as_ref()
        .and_then(|h| h.sentence.max_seq_length)
        .unwrap_or(usize::MAX);
    let encode = |t: &str| -> ApiResult<Vec<u32>> {
        let tok = model.lm.tok().map_err(|_| {
            ApiError::invalid(
                "input",
                "this model has no tokenizer: send 'input' as token ids",
            )
        })?;
        if cut == usize::MAX {
            tok.encode(t, true, false)
        } else {
            tok.encode_truncated(t, cut)
        }
        .map_err(|e| ApiError::invalid("input", format!("could not tokenize 'input': {e}")))
    };
    let ids = |ids: &Vec<u32>| ids[..ids.len().min(cut)].to_vec();
    let inputs: Vec<Vec<u32>> = match &req.input {
        EmbedInput::Text(t) => vec![encode(t)?],
        EmbedInput::Texts(ts) => ts.iter().map(|t| encode(t)).collect::<ApiResult<_>>()?,
        EmbedInput::Ids(v) => vec![ids(v)],
        EmbedInput::IdLists(l) => l.iter().map(ids).collect(),
    };
    if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!(
                "'input' must hold 1..={MAX_EMBED_INPUTS} inputs, got {}",
                inputs.len()
            ),
        ));
    }
    let (vocab, max_len) = (model.vocab_size(), model.lm.model.config.context_length);
    for (i, ids) in inputs.iter().enumerate() {
        let param = format!("input[{i}]");
        if ids.is_empty() {
            return Err(ApiError::invalid(
                &param,
                format!("'{param}' has no tokens"),
            ));
        }
        if ids.len() > max_len {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    &param,
                    format!("'{param}' has {} tokens, but the model takes at most {max_len}; shorten it", ids.len()),
                )
            });
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid(
                &param,
                format!("'{param}' holds token id {bad}, but the vocabulary has {vocab} tokens"),
            ));
        }
    }
    let prompt_tokens = inputs.iter().map(Vec::len).sum();
    let m = model.clone();
    // The engine thread computes; this task only waits.
    let vectors = tokio::task::spawn_blocking(move || m.engine.embed(inputs))
        .await
        .map_err(|e| ApiError::internal(format!("embedding failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("embedding failed: {e:#}")))?;
    if let Some(d) = req.dimensions {
        let native = vectors.first().map_or(0, Vec::len);
        if d as usize != native {
            return Err(ApiError::unsupported(
                "dimensions",
                format!("'dimensions' other than the model's {native} is not supported"),
            ));
        }
    }
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| Embedding {
            object: "embedding",
            index,
            embedding: if base64_out {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingData::Base64(base64(&bytes))
            } else {
                EmbeddingData::Float(v)
            },
        })
        .collect();
    Ok(Json(EmbeddingResponse {
        object: "list",
        data,
        model: model.id.clone(),
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
