//! The server's state: one engine per loaded model, found by the request's `model` field.

use crate::error::{ApiError, ApiResult};
use crate::metrics::HttpMetrics;
use anyhow::{bail, Context, Result};
use ferrolm_engine::serve::{Engine, Overflow, ServeConfig};
use ferrolm_engine::LoadedModel;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A served model: its id, weights and engine thread.
pub struct ModelEntry {
    pub id: String,
    pub lm: Arc<LoadedModel>,
    pub engine: Engine,
    /// Unix time the model was loaded.
    pub created: u64,
    /// Tokens that end a generation (not reported in log-probabilities).
    pub eog: Vec<u32>,
}

impl ModelEntry {
    /// The context size the engine enforces.
    pub fn n_ctx(&self) -> usize {
        self.engine.config().n_ctx
    }

    pub fn vocab_size(&self) -> usize {
        self.lm.model.config.vocab_size
    }
}

/// Server-wide limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A generation is cut off (finish reason `length`) after this long.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// A resolved `model` field.
pub struct Target {
    pub model: Arc<ModelEntry>,
    /// The name as requested (responses carry it).
    pub name: String,
    /// A per-request LoRA adapter (`AdapterArg::route`).
    pub adapter: Option<usize>,
    /// A prompt adapter's virtual tokens.
    pub soft: Option<Arc<Vec<f32>>>,
}

pub struct AppState {
    pub models: Vec<Arc<ModelEntry>>,
    /// Per-request LoRA adapters: `(name, index into models, route)`; a request naming one runs
    /// on that model with the adapter (`AdapterArg::route`).
    pub adapters: Vec<(String, usize, usize)>,
    /// Per-request prompt adapters: `(name, index into models, virtual tokens (N, C))`; a
    /// request naming one runs with the tokens before its prompt (outside the batch).
    pub prompt_adapters: Vec<(String, usize, Arc<Vec<f32>>)>,
    pub limits: Limits,
    pub metrics: HttpMetrics,
    pub shutting_down: AtomicBool,
    next_id: AtomicU64,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    /// Starts one engine per model; model ids must be distinct.
    pub fn new(models: Vec<(Arc<LoadedModel>, ServeConfig)>, limits: Limits) -> Result<AppState> {
        let mut entries: Vec<Arc<ModelEntry>> = Vec::new();
        for (lm, cfg) in models {
            let id = lm.name.clone();
            if entries.iter().any(|e| e.id == id) {
                bail!("two models have the id '{id}'; serve each model once");
            }
            let eog = lm.end_of_generation_ids();
            let engine = Engine::start(lm.clone(), cfg)?;
            entries.push(Arc::new(ModelEntry {
                id,
                lm,
                engine,
                created: unix_now(),
                eog,
            }));
        }
        Ok(AppState {
            models: entries,
            adapters: Vec::new(),
            prompt_adapters: Vec::new(),
            limits,
            metrics: HttpMetrics::default(),
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
        })
    }

    /// The model a request names (404 `model_not_found` otherwise).
    pub fn model(&self, id: &str) -> ApiResult<Arc<ModelEntry>> {
        self.resolve(id).map(|t| t.model)
    }

    /// What a request's `model` names: a model, or an adapter served on one.
    pub fn resolve(&self, id: &str) -> ApiResult<Target> {
        let target = |i: usize, adapter, soft| Target {
            model: self.models[i].clone(),
            name: id.to_string(),
            adapter,
            soft,
        };
        if let Some(i) = self.models.iter().position(|m| m.id == id) {
            return Ok(target(i, None, None));
        }
        if let Some((_, i, k)) = self.adapters.iter().find(|a| a.0 == id) {
            return Ok(target(*i, Some(*k), None));
        }
        if let Some((_, i, v)) = self.prompt_adapters.iter().find(|a| a.0 == id) {
            return Ok(target(*i, None, Some(v.clone())));
        }
        Err(ApiError::model_not_found(id, &self.names()))
    }

    /// Every name a request may give: models, then adapters.
    pub fn names(&self) -> Vec<String> {
        self.models
            .iter()
            .map(|m| m.id.clone())
            .chain(self.adapters.iter().map(|a| a.0.clone()))
            .chain(self.prompt_adapters.iter().map(|a| a.0.clone()))
            .collect()
    }

    /// A response id such as `chatcmpl-1f3a...`, unique within this process.
    pub fn response_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        format!("{prefix}-{t:016x}{n:08x}")
    }
}

/// Bytes of keys and values one position takes across the layers (f16 rows for an f16
/// cache, as GGUF models have; f32 otherwise).
pub fn kv_bytes_per_position(lm: &LoadedModel) -> usize {
    let c = &lm.model.config;
    let elem = match lm.model.kv_precision {
        ferrolm_model::kv::KvPrecision::F16 => 2,
        ferrolm_model::kv::KvPrecision::F32 => 4,
    };
    c.layers.len() * 2 * c.attn.n_kv_heads * c.attn.head_dim * elem
}

/// The engine's limits for `lm` from `ferrolm serve`'s flags: context `--ctx` (default: the
/// model's, at most 8192), and as many KV blocks as fit in `--kv-mem-mb`.
pub fn engine_config(lm: &LoadedModel, args: &crate::ServeArgs) -> Result<ServeConfig> {
    let base = ServeConfig::default();
    let n_ctx = args.ctx.unwrap_or(lm.model.config.context_length.min(8192));
    if n_ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    if args.max_running == 0 {
        bail!("--max-running must be at least 1");
    }
    let block_bytes = kv_bytes_per_position(lm).max(1) * base.block_size;
    let kv_blocks = (args.kv_mem_mb << 20) / block_bytes;
    let need = n_ctx.div_ceil(base.block_size);
    if kv_blocks < need {
        bail!(
            "--kv-mem-mb {} holds {} positions of '{}', less than one context of {n_ctx}; raise --kv-mem-mb to at least {} or lower --ctx",
            args.kv_mem_mb,
            kv_blocks * base.block_size,
            lm.name,
            (need * block_bytes).div_ceil(1 << 20)
        );
    }
    let mut overflow = Overflow::Error;
    for o in &args.overflow {
        let (model, policy) = match o.split_once('=') {
            Some((m, p)) => (Some(m), p),
            None => (None, o.as_str()),
        };
        if model.is_none_or(|m| m == lm.name) {
            overflow = policy
                .parse()
                .with_context(|| format!("--overflow '{o}'"))?;
        }
    }
    if let Overflow::Stream { sinks } = overflow {
        ferrolm_engine::longctx::check(
            &lm.model,
            &ferrolm_engine::longctx::streaming(sinks, n_ctx),
        )
        .with_context(|| format!("--overflow stream for '{}'", lm.name))?;
    }
    Ok(ServeConfig {
        n_ctx,
        max_running: args.max_running,
        queue_capacity: args.queue,
        kv_blocks,
        overflow,
        ..base
    })
}
