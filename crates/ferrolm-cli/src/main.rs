//! The `ferrolm` command line: argument parsing and dispatch to one module per command.
//! Every failure ends as one line on stderr and exit code 1.

mod bench;
mod chat;
mod commands;
mod eval;
mod finetune;
mod perplexity;

use clap::{Args, Parser, Subcommand};
use ferrolm_engine::catalog::DEFAULT_MODEL;

#[derive(Subcommand)]
enum EvalTask {
    /// Passkey retrieval: a random 5-digit key at a random depth in filler text of each
    /// length; accuracy per length (add the long-context flags to test a method).
    Passkey {
        #[command(flatten)]
        m: ModelOpts,
        /// Prompt lengths in tokens (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "4096,8192,16384,32768")]
        lengths: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        trials: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Exact match on chats: each JSON line's `messages` up to its last assistant turn is the
    /// prompt; the greedy answer must equal that turn (trimmed). With --lora, the adapted model.
    Exact {
        #[command(flatten)]
        m: ModelOpts,
        #[arg(long)]
        data: std::path::PathBuf,
        /// Longest answer generated.
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
    },
}

#[derive(Parser)]
#[command(
    name = "ferrolm",
    version,
    about = "Run, study and serve transformer language models on CPU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every model-using command shares.
#[derive(Args, Clone)]
pub struct ModelOpts {
    /// Model: a .gguf path, a Hugging Face directory (config.json + safetensors), or a catalog
    /// name (see `ferrolm pull --list`).
    #[arg(short = 'm', long = "model", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Context size in tokens (default: the model's training context, capped at 8192).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub json: bool,
    /// KV cache precision: f16 (as llama.cpp) or f32 (default: f16 for GGUF, f32 for HF).
    #[arg(long, value_parser = ["f16", "f32"])]
    pub cache_type: Option<String>,
    /// Hugging Face models: quantize the matrices at load (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k,
    /// q5_k, q6_k, f16, ...) to run on the quantized kernels.
    #[arg(long)]
    pub quantize: Option<String>,
    /// A LoRA adapter in PEFT's format (a directory with adapter_config.json and
    /// adapter_model.safetensors), optionally with a multiplier: DIR[:SCALE]. Repeatable.
    #[arg(long, value_name = "DIR[:SCALE]")]
    pub lora: Vec<ferrolm_engine::lora::AdapterArg>,
    /// A prompt-tuning or P-tuning adapter in PEFT's format: its virtual tokens go before
    /// every input.
    #[arg(long, value_name = "DIR")]
    pub prompt_adapter: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub long: LongOpts,
}

/// Long context (docs/long-context.md): RoPE scaling, ReRoPE, Self-Extend, streaming with
/// attention sinks, kNN memory.
#[derive(Args, Clone, Default)]
pub struct LongOpts {
    /// RoPE scaling: linear | ntk | dynamic | yarn | llama3 | longrope | rerope | leaky-rerope
    /// | none (overrides the model's own).
    #[arg(long, help_heading = "Long context")]
    pub rope_scaling: Option<String>,
    /// Scaling factor (leaky-rerope: the far positions' compression K).
    #[arg(long, help_heading = "Long context")]
    pub rope_factor: Option<f32>,
    /// The context the model was trained on (default: the model's own).
    #[arg(long, help_heading = "Long context")]
    pub orig_ctx: Option<usize>,
    /// ReRoPE's local window (default: half the trained context).
    #[arg(long, help_heading = "Long context")]
    pub rerope_window: Option<usize>,
    /// Self-Extend `G:W`: group size and neighbour window (e.g. 8:1024).
    #[arg(long, help_heading = "Long context")]
    pub self_extend: Option<String>,
    /// Streaming: keep a rolling window of the last W tokens (plus --sinks); generation goes
    /// on past any context size in constant memory.
    #[arg(long, help_heading = "Long context")]
    pub stream_window: Option<usize>,
    /// Streaming: the first S tokens kept as attention sinks.
    #[arg(long, default_value_t = 0, help_heading = "Long context")]
    pub sinks: usize,
    /// kNN memory: chunks retrieved per query and KV head (with --stream-window).
    #[arg(long, help_heading = "Long context")]
    pub memory_topk: Option<usize>,
    /// kNN memory: tokens per chunk.
    #[arg(long, default_value_t = 64, help_heading = "Long context")]
    pub memory_chunk: usize,
    /// kNN memory: tokens held per layer before the oldest chunks go (FIFO).
    #[arg(long, default_value_t = 65536, help_heading = "Long context")]
    pub memory_size: usize,
    /// kNN memory: layers with a memory, comma-separated (default: all).
    #[arg(long, help_heading = "Long context")]
    pub memory_layers: Option<String>,
}

impl LongOpts {
    pub fn args(&self) -> ferrolm_engine::longctx::LongArgs {
        ferrolm_engine::longctx::LongArgs {
            rope_scaling: self.rope_scaling.clone(),
            rope_factor: self.rope_factor,
            orig_ctx: self.orig_ctx,
            rerope_window: self.rerope_window,
            self_extend: self.self_extend.clone(),
            stream_window: self.stream_window,
            sinks: self.sinks,
            memory_topk: self.memory_topk,
            memory_chunk: self.memory_chunk,
            memory_size: self.memory_size,
            memory_layers: self.memory_layers.clone(),
        }
    }
}

/// Sampling options for `generate` and `chat`.
#[derive(Args, Clone)]
pub struct SampleOpts {
    /// Tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 128)]
    pub n: usize,
    /// 0 means greedy (default: greedy, or the model's generation_config.json).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Default 40 (or the model's generation_config.json when it samples).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Default 0.95 (or the model's generation_config.json when it samples).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Default 0.05 (0 when the model's generation_config.json decides the sampling).
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    pub typical_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub tfs: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// `ID=BIAS` (repeatable); `ID=-inf` bans a token.
    #[arg(long = "logit-bias")]
    pub logit_bias: Vec<String>,
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Mirostat: 0 = off, 2 = Mirostat 2.0 (replaces top-k/top-p/min-p; keeps the text's
    /// surprise near --mirostat-tau bits).
    #[arg(long, default_value_t = 0)]
    pub mirostat: u8,
    #[arg(long, default_value_t = 5.0)]
    pub mirostat_tau: f32,
    #[arg(long, default_value_t = 0.1)]
    pub mirostat_eta: f32,
}

/// Decoding rules beyond the sampler chain, for `generate` and `chat`.
#[derive(Args, Clone, Default)]
pub struct DecodeOpts {
    /// sample (the chain: greedy or sampling), contrastive (contrastive search:
    /// --penalty-alpha, --top-k candidates) or dola (DoLa: --dola-layers).
    #[arg(long, default_value = "sample", value_parser = ["sample", "contrastive", "dola"])]
    pub decoding: String,
    /// Contrastive search's degeneration penalty in [0, 1].
    #[arg(long, default_value_t = 0.6)]
    pub penalty_alpha: f32,
    /// DoLa's premature layers: low, high, or comma-separated hidden-state indices.
    #[arg(long, default_value = "high")]
    pub dola_layers: String,
    /// Speculative decoding (same output, fewer passes): ngram (prompt lookup) or
    /// early-exit:LAYER (the model's first LAYER layers draft). See also --draft-model.
    #[arg(long, value_name = "ngram|early-exit:LAYER")]
    pub speculative: Option<String>,
    /// Speculative decoding with this draft model (same vocabulary).
    #[arg(long, value_name = "MODEL")]
    pub draft_model: Option<String>,
    /// Longest draft per verification pass (default 10 for ngram, 4 for model drafts).
    #[arg(long)]
    pub draft_max: Option<usize>,
    /// Longest n-gram the ngram drafter looks up.
    #[arg(long, default_value_t = 3)]
    pub ngram: usize,
}

/// Constrained output for `generate` and `chat` (at most one): only tokens that keep the
/// text valid are sampled, and generation stops when it is complete.
#[derive(Args, Clone, Default)]
#[group(multiple = false)]
pub struct ConstrainOpts {
    /// Output JSON valid under this JSON schema: a file, or the schema itself when it starts
    /// with '{'.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<String>,
    /// Output any JSON object (OpenAI's `json_object`).
    #[arg(long)]
    pub json_object: bool,
    /// Output text that matches this regular expression as a whole (Rust regex syntax).
    #[arg(long, value_name = "R")]
    pub regex: Option<String>,
    /// Output text in the language of this Lark grammar file (llguidance's dialect; the
    /// top rule is `start`).
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<std::path::PathBuf>,
}

/// Beam search (`generate --beams B`), as Hugging Face `generate(num_beams=B)`.
#[derive(Args, Clone)]
pub struct BeamOpts {
    /// Beam width; 1 (default) generates by sampling / greedy.
    #[arg(long)]
    pub beams: Option<usize>,
    /// Hypotheses returned, best first.
    #[arg(long)]
    pub num_return: Option<usize>,
    /// Scores are summed log-probabilities over `length ^ length_penalty`.
    #[arg(long)]
    pub length_penalty: Option<f32>,
    /// true (stop when `beams` hypotheses are done), false (stop when no beam can do better,
    /// by the current length) or never (by the longest possible length).
    #[arg(long, value_parser = ["true", "false", "never"])]
    pub early_stopping: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Token ids of TEXT.
    Tokenize {
        #[command(flatten)]
        m: ModelOpts,
        /// Parse special-token strings such as <|im_start|> in TEXT.
        #[arg(long)]
        special: bool,
        text: String,
    },
    /// Next-token logits for TEXT or --ids.
    Logits {
        #[command(flatten)]
        m: ModelOpts,
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Comma-separated token ids instead of TEXT.
        #[arg(long, value_delimiter = ',')]
        ids: Option<Vec<u32>>,
        /// Logits of every position over the full vocabulary.
        #[arg(long)]
        all: bool,
        /// Feed the tokens one at a time (decode-path arithmetic) instead of as one batch.
        #[arg(long)]
        one_by_one: bool,
        /// Encoder-decoder models: the decoder's input ids (TEXT / --ids go to the encoder).
        #[arg(long, value_delimiter = ',')]
        decoder_ids: Option<Vec<u32>>,
        text: Option<String>,
    },
    /// Sentence embeddings (pooled as the model's sentence-transformers config says) or, with
    /// `--pooling none`, last hidden states.
    Embed {
        #[command(flatten)]
        m: ModelOpts,
        /// none, mean, cls, max, lasttoken, mean_sqrt_len (default: the model's).
        #[arg(long)]
        pooling: Option<String>,
        /// L2-normalise (default: as the model's modules say).
        #[arg(long)]
        normalize: Option<bool>,
        /// One input as comma-separated token ids instead of TEXT.
        #[arg(long, value_delimiter = ',')]
        ids: Option<Vec<u32>>,
        texts: Vec<String>,
    },
    /// Generate a continuation of TEXT (or --ids), streaming it to stdout.
    Generate {
        #[command(flatten)]
        m: ModelOpts,
        #[command(flatten)]
        s: SampleOpts,
        /// Wrap TEXT as a user turn through the model's chat template.
        #[arg(long)]
        chat: bool,
        #[arg(long, value_delimiter = ',')]
        ids: Option<Vec<u32>>,
        #[command(flatten)]
        b: BeamOpts,
        #[command(flatten)]
        c: ConstrainOpts,
        #[command(flatten)]
        d: DecodeOpts,
        text: Option<String>,
    },
    /// Interactive chat (/reset, /exit; Ctrl-C stops the current answer).
    Chat {
        #[command(flatten)]
        m: ModelOpts,
        #[command(flatten)]
        s: SampleOpts,
        #[command(flatten)]
        c: ConstrainOpts,
        #[command(flatten)]
        d: DecodeOpts,
        /// System prompt.
        #[arg(long)]
        system: Option<String>,
    },
    /// Perplexity of a text file over windows of --ctx tokens.
    Perplexity {
        #[command(flatten)]
        m: ModelOpts,
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Evaluations: `eval passkey` (retrieval of a key hidden in long filler text).
    Eval {
        #[command(subcommand)]
        task: EvalTask,
    },
    /// Prefill and decode speed.
    Bench {
        #[command(flatten)]
        m: ModelOpts,
        /// Prompt lengths to time, each prefilled in one batch (comma-separated; 0 for none).
        #[arg(short = 'p', value_delimiter = ',', default_value = "512")]
        p: Vec<usize>,
        /// Decode lengths to time, one token a step (comma-separated; 0 for none).
        #[arg(short = 'n', value_delimiter = ',', default_value = "128")]
        n: Vec<usize>,
        /// Repetitions (the median is reported).
        #[arg(short = 'r', long, default_value_t = 3)]
        repeats: usize,
        /// Tokens already in the context before each measurement (llama-bench's `-d`;
        /// comma-separated).
        #[arg(short = 'd', long, value_delimiter = ',', default_value = "0")]
        depth: Vec<usize>,
        /// Also print where the time goes: milliseconds per token by operation.
        #[arg(long)]
        profile: bool,
    },
    /// Architecture, sizes, tensor types, context and template of a model.
    Info {
        #[command(flatten)]
        m: ModelOpts,
    },
    /// Convert a Hugging Face directory into a GGUF file (loadable by ferrolm, and by llama.cpp
    /// for the LLaMA-shaped families it knows).
    Convert {
        /// The Hugging Face model directory.
        input: std::path::PathBuf,
        /// The GGUF file to write.
        output: std::path::PathBuf,
        /// Matrix type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k.
        #[arg(long = "type", default_value = "f16")]
        ty: String,
    },
    /// Fine-tune: LoRA (QLoRA over a quantized base) on a JSON-lines file; the adapter is saved
    /// in PEFT's format (docs/finetune.md).
    Finetune(finetune::FinetuneArgs),
    /// Write a model with its --lora adapters folded into the weights (--merge), as GGUF.
    Export {
        #[command(flatten)]
        m: ModelOpts,
        /// Fold the adapters into the matrices (each re-encoded in its own type).
        #[arg(long)]
        merge: bool,
        /// The GGUF file to write.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Serve models over an OpenAI-compatible HTTP API (/v1/chat/completions, ...).
    Serve(ferrolm_server::ServeArgs),
    /// Fetch a catalog model into the cache (or list the catalog).
    Pull {
        name: Option<String>,
        #[arg(long)]
        list: bool,
    },
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Finetune(a) => finetune::run(&a),
        Cmd::Export { m, merge, out } => commands::export(&m, merge, &out),
        Cmd::Tokenize { m, special, text } => commands::tokenize(&m, special, &text),
        Cmd::Logits {
            m,
            top,
            ids,
            all,
            one_by_one,
            decoder_ids,
            text,
        } => commands::logits(&m, top, ids, all, one_by_one, decoder_ids, text),
        Cmd::Embed {
            m,
            pooling,
            normalize,
            ids,
            texts,
        } => commands::embed(&m, pooling, normalize, ids, texts),
        Cmd::Generate {
            m,
            s,
            chat,
            ids,
            b,
            c,
            d,
            text,
        } => commands::generate(&m, &s, chat, ids, &b, &c, &d, text),
        Cmd::Chat { m, s, c, d, system } => chat::run(&m, &s, &c, &d, system),
        Cmd::Perplexity { m, file } => perplexity::run(&m, &file),
        Cmd::Eval {
            task:
                EvalTask::Passkey {
                    m,
                    lengths,
                    trials,
                    seed,
                },
        } => eval::passkey(&m, &lengths, trials, seed),
        Cmd::Eval {
            task:
                EvalTask::Exact {
                    m,
                    data,
                    max_tokens,
                },
        } => eval::exact(&m, &data, max_tokens),
        Cmd::Bench {
            m,
            p,
            n,
            repeats,
            depth,
            profile,
        } => bench::run(&m, &p, &n, repeats, &depth, profile),
        Cmd::Info { m } => commands::info(&m),
        Cmd::Serve(a) => {
            commands::set_threads(a.threads);
            ferrolm_server::run(&a)
        }
        Cmd::Pull { name, list } => commands::pull(name, list),
        Cmd::Convert { input, output, ty } => commands::convert(&input, &output, &ty),
    }
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // A reader that went away (`ferrolm ... | head`) is not an error of ours.
        if msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        let loc = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{loc}: {msg} (this is a bug in ferrolm; please report it with the command you ran)");
    }));
    if let Err(e) = run() {
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        // Context first, then the root cause, on one line.
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
