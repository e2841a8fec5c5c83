//! Serving: one engine thread per model runs a continuous-batching scheduler over a paged KV
//! cache with prefix caching. The HTTP layer (`ferrolm-server`) submits jobs with a sink for
//! their events; inference never runs on the async runtime's threads.
//!
//! - [`Engine::submit`] admits a job into a bounded queue (or refuses it: [`SubmitError`]).
//! - Every step the scheduler takes the running sequences' next tokens (one each while
//!   decoding, a prompt chunk of at most `prefill_chunk` while prefilling), up to
//!   `max_step_tokens`, and runs them as one batch ([`ferrolm_model::Model::forward_batch`]).
//!   New jobs join at any step; long prompts are cut into chunks so running streams keep flowing.
//! - KV memory is counted in blocks of `block_size` positions ([`blocks::BlockPool`]); full
//!   prompt blocks are hashed and reused by later jobs with the same prefix.
//! - A sink that returns `false` (the client went away) cancels its job at the next step and
//!   frees its blocks; so do timeouts and [`Engine::cancel`].

pub mod blocks;
mod engine;
mod scheduler;

pub use engine::Engine;

use ferrolm_constrain::Constraint;
use ferrolm_sample::SamplingParams;
use std::time::Duration;

/// Limits of one engine.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Context size per sequence (prompt + generated tokens).
    pub n_ctx: usize,
    /// Sequences decoding at once.
    pub max_running: usize,
    /// Jobs waiting beyond the running ones; past it, submissions are refused (HTTP 429).
    pub queue_capacity: usize,
    /// Tokens through the model per step (decode tokens + prompt chunks).
    pub max_step_tokens: usize,
    /// Largest prompt chunk a sequence prefills in one step.
    pub prefill_chunk: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// KV blocks in the pool (the memory budget).
    pub kv_blocks: usize,
    /// What a request gets when its prompt and `max_tokens` exceed `n_ctx`.
    pub overflow: Overflow,
}

/// What a request whose prompt plus `max_tokens` exceed the context gets (per model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Refused: HTTP 400 `context_length_exceeded`, naming the lengths.
    #[default]
    Error,
    /// The prompt's oldest tokens are dropped (a leading BOS stays) so prompt and
    /// `max_tokens` fit; generation still ends at the context.
    Truncate,
    /// The sequence runs with StreamingLLM's cache (the first `sinks` tokens and a window of
    /// the latest, positions assigned inside the cache), so prompt and completion may be any
    /// length in the memory of one context. Such sequences run outside the batch.
    Stream { sinks: usize },
}

impl std::str::FromStr for Overflow {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Overflow> {
        Ok(match s {
            "error" => Overflow::Error,
            "truncate" => Overflow::Truncate,
            "stream" => Overflow::Stream { sinks: 4 },
            _ => anyhow::bail!("overflow policy '{s}': expected error, truncate or stream"),
        })
    }
}

impl ServeConfig {
    /// `max_tokens` for a request that gave none: what the context has left, at most `cap`.
    /// A prompt that fills the context gets a quarter of it under `truncate` and `stream`
    /// (where it is not refused).
    pub fn default_max_tokens(&self, prompt: usize, cap: Option<usize>) -> usize {
        let left = self.n_ctx.saturating_sub(prompt);
        let room = if left > 0 || self.overflow == Overflow::Error {
            left
        } else {
            (self.n_ctx / 4).max(1)
        };
        room.min(cap.unwrap_or(usize::MAX))
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            n_ctx: 4096,
            max_running: 64,
            queue_capacity: 256,
            max_step_tokens: 512,
            prefill_chunk: 256,
            block_size: 16,
            kv_blocks: 8192,
            overflow: Overflow::Error,
        }
    }
}

/// One generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// `Some(k)`: report the chosen token's log-probability and the `k` most likely.
    pub logprobs: Option<usize>,
    /// The job is cancelled (finish reason `Timeout`) after this long.
    pub timeout: Option<Duration>,
    /// Sample only tokens that keep the output valid; stop when it is complete
    /// (`LoadedModel::constraint`; fresh, one per job).
    pub constraint: Option<Constraint>,
    /// Contrastive search or DoLa. Such jobs (and speculative ones) run outside the batch, on
    /// a thread of their own, through [`crate::generate_tokens`].
    pub decoding: crate::Decoding,
    pub speculative: Option<crate::Speculative>,
    /// The per-request LoRA adapter (`AdapterArg::route`) this job runs with; jobs with
    /// different adapters share a batch.
    pub adapter: Option<usize>,
    /// A prompt-tuning / P-tuning adapter's virtual tokens `(N, C)`, run into the sequence's
    /// cache before its prompt (`Model::prefill_soft`); the prompt and answer then run in the
    /// batch.
    pub soft_prompt: Option<std::sync::Arc<Vec<f32>>>,
}

impl Job {
    /// Runs outside the continuous batch (its decoding rule picks tokens differently).
    pub fn is_solo(&self) -> bool {
        self.decoding != crate::Decoding::Sample || self.speculative.is_some()
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// `max_tokens` or the context size reached.
    Length,
    /// An end-of-generation token, a stop string, or a completed constraint.
    Stop,
    Cancelled,
    Timeout,
}

/// A token's log-probability with its most likely alternatives.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// What a job reports, in order: tokens, then exactly one `Done` or `Error`.
#[derive(Clone, Debug)]
pub enum Event {
    /// A generated token and the text it completes (may be empty while UTF-8 or a possible
    /// stop string is pending).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens whose KV came from the prefix cache.
        cached_tokens: usize,
    },
    Error {
        message: String,
    },
}

/// Receives a job's events on the engine thread; returning `false` (the client is gone)
/// cancels the job.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// Why a job was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is busy: {waiting} requests are waiting; retry shortly")]
    QueueFull { waiting: usize },
    #[error("the prompt has {prompt} tokens and max_tokens is {max_tokens}, but the context holds {n_ctx}; shorten the prompt or lower max_tokens")]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        n_ctx: usize,
    },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("this model does not generate text (it is an encoder); use /v1/embeddings")]
    NotGenerative,
    /// A decoding option this model cannot do (`param` names the request field).
    #[error("{message}")]
    Unsupported {
        param: &'static str,
        message: String,
    },
}

/// A snapshot of an engine's counters for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub requests_total: u64,
    pub requests_finished: u64,
    pub requests_cancelled: u64,
    pub requests_rejected: u64,
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    pub queue_depth: usize,
    /// Generations running: in the batch plus outside it (`solo_running`).
    pub running: usize,
    /// Of those, jobs running outside the batch on threads of their own ([`Job::is_solo`],
    /// streamed long-context requests).
    pub solo_running: usize,
    pub kv_blocks_total: usize,
    /// Blocks held by running sequences plus cached prefix blocks.
    pub kv_blocks_used: usize,
    /// Of those, blocks in the prefix cache (evicted whenever sequences need room).
    pub kv_blocks_cached: usize,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Prompt tokens served from the prefix cache.
    pub prefix_cache_tokens: u64,
    pub steps: u64,
    /// Sequences pushed out for KV room (recomputed later).
    pub preemptions: u64,
}
