//! `ferrolm finetune`: LoRA / QLoRA training from the command line.

use crate::perplexity::peak_rss_mib;
use crate::ModelOpts;
use anyhow::{bail, Result};
use clap::Args;
use ferrolm_train::net::{Adapter, LoraConfig};
use ferrolm_train::train::{split, train, TrainConfig};
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub m: ModelOpts,
    /// Training data, JSON lines: {"messages": [...]}, {"prompt", "completion"}, {"text"} or
    /// {"input_ids"}.
    #[arg(long)]
    pub data: PathBuf,
    /// lora (beside a full-precision base: a GGUF base's matrices are widened to f32 at load),
    /// or qlora (beside a quantized base: a GGUF base as stored; a Hugging Face base quantized
    /// at load, to q4_k unless --quantize says otherwise).
    #[arg(long, default_value = "lora")]
    pub method: String,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f32,
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Projections to adapt (Hugging Face names).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub targets: Vec<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f32,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Tokens kept per example.
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    /// Fraction of the examples held out for the evaluation loss.
    #[arg(long, default_value_t = 0.1)]
    pub eval_split: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Warmup as a fraction of the steps.
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the gradient's global norm to this.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// Virtual tokens (prompt tuning, P-tuning).
    #[arg(long, default_value_t = 20)]
    pub virtual_tokens: usize,
    /// P-tuning: the width of the MLP prompt encoder.
    #[arg(long, default_value_t = 128)]
    pub encoder_hidden: usize,
    /// Write a checkpoint (adapter tensors, optimizer state, step) into OUT/checkpoint-STEP
    /// every this many steps and at the end.
    #[arg(long, default_value_t = 50)]
    pub save_every: usize,
    /// Continue from a checkpoint directory (same data and settings; the result equals an
    /// uninterrupted run).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where the adapter goes (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &FinetuneArgs) -> Result<()> {
    let mut m = a.m.clone();
    if m.prompt_adapter.is_some() {
        bail!("finetune does not take --prompt-adapter: it trains a new adapter from the base");
    }
    match a.method.as_str() {
        "lora" => {}
        "qlora" => {
            if m.quantize.is_none()
                && !m.model.ends_with(".gguf")
                && std::path::Path::new(&m.model).is_dir()
            {
                m.quantize = Some("q4_k".into());
            }
        }
        "prompt" | "ptuning" => {}
        "full" => bail!("--method full is not built yet; use lora, qlora, prompt or ptuning"),
        other => bail!("--method '{other}': expected lora, qlora, prompt, ptuning or full"),
    }
    if !(0.0..1.0).contains(&a.dropout) {
        bail!("--dropout must be in [0, 1)");
    }
    if !(0.0..1.0).contains(&a.eval_split) {
        bail!("--eval-split must be in [0, 1)");
    }
    let mut lm = crate::commands::open(&m)?;
    if a.method == "lora" && lm.file.is_some() {
        // LoRA proper trains beside a full-precision base: a GGUF base's matrices are widened
        // to f32 from their stored values (qlora keeps them in their blocks).
        lm.model.widen_to_f32()?;
    }
    let examples = ferrolm_train::data::load(&lm, &a.data, a.max_len)?;
    let (tr, ev) = split(examples, a.eval_split, a.seed);
    let lora = LoraConfig {
        r: a.rank,
        alpha: a.alpha,
        dropout: a.dropout,
        targets: a.targets.clone(),
    };
    let mut ad = match a.method.as_str() {
        "prompt" => Adapter::new_prompt(&lm.model, a.virtual_tokens, None, a.seed)?,
        "ptuning" => {
            Adapter::new_prompt(&lm.model, a.virtual_tokens, Some(a.encoder_hidden), a.seed)?
        }
        _ => Adapter::new(&lm.model, lora.clone(), a.seed)?,
    };
    let cfg = TrainConfig {
        lora,
        epochs: a.epochs,
        steps: a.steps,
        lr: a.lr,
        batch: a.batch,
        grad_accum: a.grad_accum,
        eval_split: a.eval_split,
        seed: a.seed,
        warmup_ratio: a.warmup,
        weight_decay: a.weight_decay,
        clip: a.max_grad_norm,
        out: a.out.clone(),
        save_every: Some(a.save_every),
        resume: a.resume.clone(),
    };
    if !m.json {
        eprintln!(
            "finetune {}: {} ({} trainable parameters), {} training / {} held-out examples",
            a.method,
            lm.name,
            ad.n_params(),
            tr.len(),
            ev.len()
        );
    }
    let quiet = m.json;
    let s = train(
        &lm.model,
        &mut ad,
        &tr,
        &ev,
        &cfg,
        |step, total, loss, lr, tps| {
            if !quiet {
                eprint!("\rstep {step}/{total}  loss {loss:.4}  lr {lr:.2e}  {tps:.0} tok/s   ");
            }
        },
    )?;
    if !quiet {
        eprintln!();
    }
    let peak = peak_rss_mib();
    ferrolm_train::peft::save(&ad, &lm.model, lm.file.is_some(), &lm.name, &a.out)?;
    let fmt = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    if m.json {
        println!(
            "{}",
            serde_json::json!({
                "method": a.method, "model": lm.name, "steps": s.steps, "params": s.params,
                "train_examples": s.train_examples, "eval_examples": s.eval_examples,
                "losses": s.losses, "eval_loss_before": s.eval_before, "eval_loss_after": s.eval_after,
                "tokens": s.tokens, "seconds": s.seconds, "tokens_per_s": s.tokens as f64 / s.seconds,
                "peak_rss_mib": peak, "out": a.out,
            })
        );
    } else {
        println!(
            "{} steps, {} tokens in {:.1} s ({:.0} tok/s), peak RSS {:.0} MiB; held-out loss {} -> {}; adapter in {}",
            s.steps,
            s.tokens,
            s.seconds,
            s.tokens as f64 / s.seconds,
            peak,
            fmt(s.eval_before),
            fmt(s.eval_after),
            a.out.display()
        );
    }
    Ok(())
}
