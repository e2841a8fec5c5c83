//! ferrolm-server: an OpenAI-compatible HTTP server (`ferrolm serve`) over the serving engine
//! of `ferrolm_engine::serve`.
//!
//! The async runtime only parses requests, submits jobs and forwards their events; every
//! model's inference runs on its engine's own thread. Every failure answers in OpenAI's error
//! shape (`error`); a panicking handler answers 500 and the server keeps serving. SIGTERM or
//! Ctrl-C stops accepting, lets running generations finish until `--shutdown-timeout`,
//! cancels the rest and exits 0.

pub mod error;
mod generate;
pub mod metrics;
pub mod params;
mod routes;
pub mod state;
pub mod tools;
pub mod wire;

pub use state::{AppState, Limits};

use anyhow::{bail, Context, Result};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use ferrolm_engine::catalog::DEFAULT_MODEL;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// `ferrolm serve` options.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// A model to serve (repeatable): a .gguf path, a Hugging Face directory or a catalog
    /// name. Requests name it by its catalog name or file stem / directory name.
    #[arg(short = 'm', long = "model", default_value = DEFAULT_MODEL)]
    pub models: Vec<String>,
    /// Worker threads for inference (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Context size per sequence (default: the model's training context, at most 8192).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Sequences generating at once, per model.
    #[arg(long, default_value_t = 64)]
    pub max_running: usize,
    /// Requests waiting beyond the running ones, per model; past it, 429.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// KV cache budget per model, in MiB (running sequences and the prefix cache).
    #[arg(long, default_value_t = 2048)]
    pub kv_mem_mb: usize,
    /// A generation is cut off (finish reason "length") after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// On SIGTERM/Ctrl-C, running generations get this many seconds to finish.
    #[arg(long, default_value_t = 10)]
    pub shutdown_timeout: u64,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 16)]
    pub max_body_mb: usize,
    /// What a request whose prompt plus max_tokens exceed the context gets: `error` (400
    /// context_length_exceeded), `truncate` (the prompt's oldest tokens dropped) or `stream`
    /// (StreamingLLM: 4 attention sinks plus a rolling window, any length in one context's
    /// memory; RoPE models). `POLICY` sets every model's; `MODEL=POLICY` one model's
    /// (repeatable).
    #[arg(long, value_name = "[MODEL=]POLICY")]
    pub overflow: Vec<String>,
    /// Hugging Face models: quantize the matrices at load (q8_0, q4_k, ...).
    #[arg(long)]
    pub quantize: Option<String>,
    /// A PEFT LoRA adapter served per request (repeatable): requests whose `model` is NAME run
    /// on the first model with the adapter; requests with different adapters (or none) share
    /// the batch.
    #[arg(long = "lora", value_name = "NAME=DIR[:SCALE]")]
    pub lora: Vec<String>,
    /// A PEFT prompt-tuning or P-tuning adapter served per request (repeatable): requests
    /// whose `model` is NAME run on the first model with its virtual tokens before the
    /// prompt (outside the batch).
    #[arg(long = "prompt-adapter", value_name = "NAME=DIR")]
    pub prompt_adapter: Vec<String>,
    /// A Jinja chat template file to use instead of the model's (e.g. one that describes
    /// `tools`, which tool calling needs): `FILE` for every model, `MODEL=FILE` for one
    /// (repeatable).
    #[arg(long = "chat-template", value_name = "[MODEL=]FILE")]
    pub chat_template: Vec<String>,
}

/// Counts every answer by route and status (`ferrolm_http_requests_total`).
async fn count(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let response = next.run(req).await;
    state
        .metrics
        .count_request(&endpoint, response.status().as_u16());
    response
}

/// The routes, with OpenAI-shaped answers for unknown paths, wrong methods, oversized bodies
/// and panics.
pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    let routes = Router::new()
        .route("/v1/models", get(routes::list_models))
        .route("/v1/models/{id}", get(routes::get_model))
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/embeddings", post(routes::embeddings))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics));
    with_layers(routes, state, max_body)
}

/// What every route gets: the fallbacks, the body limit, panic catching, request counting.
fn with_layers(routes: Router<Arc<AppState>>, state: Arc<AppState>, max_body: usize) -> Router {
    routes
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Serves until `shutdown` resolves; then stops accepting, gives running generations `grace`
/// to finish (cancelling the rest), and returns once the connections have closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    max_body: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<()> {
    let app = router(state.clone(), max_body);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    shutdown.await;
    state.shutting_down.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(());
    let engines = state.clone();
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            for m in &engines.models {
                s.spawn(|| m.engine.shutdown(grace));
            }
        })
    })
    .await?;
    // Every job has ended, so every stream is closing; idle connections are closed by axum.
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(r) => r?.context("serving")?,
        Err(_) => eprintln!("ferrolm: some connections did not close; stopping anyway"),
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Binds `host:port`, saying why not in one line.
fn bind(host: &str, port: u16) -> Result<std::net::TcpListener> {
    let addr = format!("{host}:{port}");
    let l = std::net::TcpListener::bind(&addr).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => "another server is there; pick another --port",
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges; pick another --port"
            }
            _ => "check --host: an address of this machine, such as 127.0.0.1 or 0.0.0.0",
        };
        anyhow::anyhow!("cannot listen on {addr}: {e} ({hint})")
    })?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// `ferrolm serve`: binds the address, loads the models, starts their engines and serves until
/// a signal.
pub fn run(args: &ServeArgs) -> Result<()> {
    // The address first: a taken port fails before minutes of loading.
    let listener = bind(&args.host, args.port)?;
    let mut models = Vec::new();
    let (mut adapters, mut prompt_adapters) = (Vec::new(), Vec::new());
    for (mi, name) in args.models.iter().enumerate() {
        let mut lm = ferrolm_engine::load_with(name, false, args.quantize.as_deref())?;
        if mi == 0 {
            for (k, spec) in args.lora.iter().enumerate() {
                let (id, dir) = spec
                    .split_once('=')
                    .with_context(|| format!("--lora '{spec}': expected NAME=DIR[:SCALE]"))?;
                let mut a: ferrolm_engine::lora::AdapterArg = dir.parse()?;
                a.route = Some(k);
                let from_gguf = lm.file.is_some();
                let applied = ferrolm_engine::lora::apply(&mut lm.model, from_gguf, &a)
                    .with_context(|| format!("--lora '{spec}'"))?;
                eprintln!(
                    "ferrolm: adapter '{id}' on '{}' ({} layers, rank {})",
                    lm.name, applied.layers, applied.rank
                );
                adapters.push((id.to_string(), 0, k));
            }
            for spec in &args.prompt_adapter {
                let (id, dir) = spec
                    .split_once('=')
                    .with_context(|| format!("--prompt-adapter '{spec}': expected NAME=DIR"))?;
                let v = ferrolm_engine::lora::load_prompt(&lm.model, std::path::Path::new(dir))
                    .with_context(|| format!("--prompt-adapter '{spec}'"))?;
                eprintln!(
                    "ferrolm: prompt adapter '{id}' on '{}' ({} virtual tokens)",
                    lm.name,
                    v.len() / lm.model.config.hidden
                );
                prompt_adapters.push((id.to_string(), 0, Arc::new(v)));
            }
        }
        for spec in &args.chat_template {
            let (target, file) = match spec.split_once('=') {
                Some((m, f)) => (Some(m), f),
                None => (None, spec.as_str()),
            };
            if target.is_some_and(|m| m != lm.name) {
                continue;
            }
            let src = std::fs::read_to_string(file)
                .with_context(|| format!("--chat-template '{spec}': cannot read '{file}'"))?;
            lm.set_chat_template(&src)
                .with_context(|| format!("--chat-template '{spec}'"))?;
        }
        let lm = Arc::new(lm);
        let cfg = state::engine_config(&lm, args)?;
        eprintln!(
            "ferrolm: '{}' ({}), context {}, {} KV blocks of {} positions, up to {} running, overflow {:?}",
            lm.name,
            lm.model.config.arch,
            cfg.n_ctx,
            cfg.kv_blocks,
            cfg.block_size,
            cfg.max_running,
            cfg.overflow
        );
        models.push((lm, cfg));
    }
    for o in &args.overflow {
        if let Some((m, _)) = o.split_once('=') {
            if !models.iter().any(|(lm, _)| lm.name == m) {
                let ids: Vec<&str> = models.iter().map(|(lm, _)| lm.name.as_str()).collect();
                bail!(
                    "--overflow '{o}': no served model is called '{m}' (served: {})",
                    ids.join(", ")
                );
            }
        }
    }
    let limits = Limits {
        request_timeout: Duration::from_secs(args.timeout),
    };
    let mut state = AppState::new(models, limits)?;
    state.adapters = adapters;
    state.prompt_adapters = prompt_adapters;
    let names = state.names();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            bail!("the name '{n}' is given twice (models and --lora / --prompt-adapter names must differ)");
        }
    }
    let state = Arc::new(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let ids: Vec<&str> = state.models.iter().map(|m| m.id.as_str()).collect();
        eprintln!(
            "ferrolm: serving {} at http://{}/v1 (Ctrl-C or SIGTERM stops)",
            ids.join(", "),
            listener.local_addr()?
        );
        serve(
            listener,
            state.clone(),
            args.max_body_mb << 20,
            signal(),
            Duration::from_secs(args.shutdown_timeout),
        )
        .await
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    eprintln!("ferrolm: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_the_error_shape() {
        let state = Arc::new(AppState::new(vec![], Limits::default()).unwrap());
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let boom = Router::new().route("/boom", get(boom));
        let app = with_layers(boom, state.clone(), 1024);
        let req = Request::get("/boom").body(Body::empty()).unwrap();
        let r = app.clone().oneshot(req).await.unwrap();
        assert_eq!(r.status(), 500);
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("boom"));
        // And the next request is served.
        let req = Request::get("/nothing").body(Body::empty()).unwrap();
        assert_eq!(app.oneshot(req).await.unwrap().status(), 404);
    }
}
