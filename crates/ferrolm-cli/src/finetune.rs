//! `ferrolm finetune`: LoRA, QLoRA, prompt tuning, P-tuning and full fine-tuning (AdamW or
//! LOMO) from the command line.

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
    /// qlora (beside a quantized base: a GGUF base as stored; a Hugging Face base quantized
    /// at load, to q4_k unless --quantize says otherwise), prompt, ptuning, or full (every
    /// weight, in f32; writes OUT/model.gguf).
    #[arg(long, default_value = "lora")]
    pub method: String,
    /// Full fine-tuning's optimizer: adamw (the whole gradient and two moments held), or lomo
    /// (SGD fused into the backward pass: each block updated as soon as its gradient is known;
    /// one sequence per step).
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
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
    /// Peak learning rate [default: 2e-4; full with adamw 2e-5; full with lomo 1e-2].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Sequences per micro-batch [default: 4; 1 with lomo].
    #[arg(long)]
    pub batch: Option<usize>,
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
        "full" => {}
        other => bail!("--method '{other}': expected lora, qlora, prompt, ptuning or full"),
    }
    if !(0.0..1.0).contains(&a.dropout) {
        bail!("--dropout must be in [0, 1)");
    }
    if !(0.0..1.0).contains(&a.eval_split) {
        bail!("--eval-split must be in [0, 1)");
    }
    let opt: ferrolm_train::full::Optimizer = a.optimizer.parse()?;
    let full = a.method == "full";
    let lomo = full && opt == ferrolm_train::full::Optimizer::Lomo;
    let lr = a.lr.unwrap_or(match (full, lomo) {
        (true, true) => 1e-2,
        (true, false) => 2e-5,
        _ => 2e-4,
    });
    let batch = a.batch.unwrap_or(if lomo { 1 } else { 4 });
    if full && !m.lora.is_empty() {
        bail!("--method full trains the base's own weights; fold adapters in first (ferrolm export --merge) instead of giving --lora");
    }
    let mut lm = crate::commands::open(&m)?;
    if full && lm.file.is_none() {
        // A Hugging Face base: converted to an f32 GGUF in memory, since the trained model is
        // written as the base's GGUF with the trained tensors.
        if m.quantize.is_some() {
            bail!("--method full trains f32 weights; leave out --quantize");
        }
        let bytes = ferrolm_engine::convert::convert(&lm.path, ferrolm_format::GgmlType::F32)?
            .to_bytes()?;
        let file = std::sync::Arc::new(ferrolm_format::GgufFile::from_bytes(&bytes)?);
        lm.model = ferrolm_model::Model::from_gguf(file.clone())?;
        lm.file = Some(file);
    }
    if full {
        // Every weight trains in f32: the matrices and the embedding table widened.
        lm.model.widen_to_f32()?;
        lm.model.token_embedding_mut().dense_mut()?;
    }
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
        "full" => Adapter::none(&lm.model)?,
        _ => Adapter::new(&lm.model, lora.clone(), a.seed)?,
    };
    let cfg = TrainConfig {
        lora,
        epochs: a.epochs,
        steps: a.steps,
        lr,
        batch,
        grad_accum: a.grad_accum,
        eval_split: a.eval_split,
        seed: a.seed,
        warmup_ratio: a.warmup,
        weight_decay: a.weight_decay,
        clip: a.max_grad_norm,
        out: a.out.clone(),
        save_every: (!full).then_some(a.save_every),
        resume: a.resume.clone(),
    };
    let label = if full {
        format!("full ({})", a.optimizer)
    } else {
        a.method.clone()
    };
    if !m.json {
        eprintln!(
            "finetune {label}: {} ({} trainable parameters), {} training / {} held-out examples",
            lm.name,
            if full {
                ferrolm_train::full::n_params(&lm.model)
            } else {
                ad.n_params()
            },
            tr.len(),
            ev.len()
        );
    }
    let quiet = m.json;
    let progress = |step: usize, total: usize, loss: f64, lr: f32, tps: f64| {
        if !quiet {
            eprint!("\rstep {step}/{total}  loss {loss:.4}  lr {lr:.2e}  {tps:.0} tok/s   ");
        }
    };
    let s = if full {
        ferrolm_train::full::train_full(&mut lm.model, &tr, &ev, &cfg, opt, progress)?
    } else {
        train(&lm.model, &mut ad, &tr, &ev, &cfg, progress)?
    };
    if !quiet {
        eprintln!();
    }
    let peak = peak_rss_mib();
    if full {
        let base = lm.file.clone().expect("checked above");
        let w = ferrolm_train::full::to_gguf(&mut lm.model, &base)?;
        std::fs::create_dir_all(&a.out)?;
        let path = a.out.join("model.gguf");
        let tmp = path.with_extension("gguf.partial");
        w.write_file(&tmp)?;
        std::fs::rename(&tmp, &path)?;
    } else {
        ferrolm_train::peft::save(&ad, &lm.model, lm.file.is_some(), &lm.name, &a.out)?;
    }
    let fmt = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    if m.json {
        println!(
            "{}",
            serde_json::json!({
                "method": a.method, "optimizer": full.then_some(&a.optimizer), "model": lm.name, "steps": s.steps, "params": s.params,
                "train_examples": s.train_examples, "eval_examples": s.eval_examples,
                "losses": s.losses, "eval_loss_before": s.eval_before, "eval_loss_after": s.eval_after,
                "sequences_per_step": batch * a.grad_accum, "tokens": s.tokens, "seconds": s.seconds, "tokens_per_s": s.tokens as f64 / s.seconds,
                "peak_rss_mib": peak, "out": a.out,
            })
        );
    } else {
        println!(
            "{} steps, {} tokens in {:.1} s ({:.0} tok/s), peak RSS {:.0} MiB; held-out loss {} -> {}; {} in {}",
            s.steps,
            s.tokens,
            s.seconds,
            s.tokens as f64 / s.seconds,
            peak,
            fmt(s.eval_before),
            fmt(s.eval_after),
            if full { "model.gguf" } else { "adapter" },
            a.out.display()
        );
    }
    Ok(())
}
