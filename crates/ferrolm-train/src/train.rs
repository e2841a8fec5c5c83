//! The training loop: shuffled epochs, gradient accumulation over `batch x grad_accum`
//! sequences per step (the loss a mean over their target tokens), AdamW with warmup and cosine
//! decay, clipping, held-out loss before and after, checkpoints and resuming; the caller sees
//! each step (progress) and saves the adapter in PEFT's format.

use crate::data::Example;
use crate::net::{run, Adapter, LoraConfig};
use crate::optim::{clip, schedule, AdamW};
use anyhow::{bail, Result};
use ferrolm_model::Model;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub lora: LoraConfig,
    pub epochs: Option<usize>,
    pub steps: Option<usize>,
    pub lr: f32,
    pub batch: usize,
    pub grad_accum: usize,
    pub eval_split: f32,
    pub seed: u64,
    pub warmup_ratio: f32,
    pub weight_decay: f32,
    pub clip: f32,
    pub out: PathBuf,
    /// Write a checkpoint every this many steps (and at the end), into `out/checkpoint-STEP`.
    pub save_every: Option<usize>,
    /// Continue from the checkpoint in this directory (the same data and settings).
    pub resume: Option<PathBuf>,
}

/// A checkpoint: every trainable tensor and the optimizer's moments (`checkpoint.safetensors`,
/// tensors `p.{i}`, `m.{i}`, `v.{i}`), the step and losses so far (`trainer_state.json`).
pub fn save_checkpoint(
    dir: &std::path::Path,
    ad: &Adapter,
    opt: &AdamW,
    step: usize,
    losses: &[(usize, f64)],
) -> Result<()> {
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut data: Vec<(String, Vec<u8>, usize)> = Vec::new();
    for (i, p) in ad.params().iter().enumerate() {
        data.push((format!("p.{i}"), bytes(p), p.len()));
        data.push((format!("m.{i}"), bytes(&opt.m[i]), p.len()));
        data.push((format!("v.{i}"), bytes(&opt.v[i]), p.len()));
    }
    let views = data
        .iter()
        .map(|(n, b, len)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, &tmp.join("checkpoint.safetensors"))?;
    let state = serde_json::json!({"step": step, "adam_t": opt.t, "losses": losses, "n_params": ad.params().len()});
    std::fs::write(
        tmp.join("trainer_state.json"),
        serde_json::to_string(&state)?,
    )?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)?;
    Ok(())
}

/// Restores a checkpoint into `ad` and `opt`; returns the step it was taken at and the losses.
pub fn load_checkpoint(
    dir: &std::path::Path,
    ad: &mut Adapter,
    opt: &mut AdamW,
) -> Result<(usize, Vec<(usize, f64)>)> {
    use anyhow::Context;
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("trainer_state.json")).with_context(|| {
            format!(
                "--resume '{}': no trainer_state.json (is it a checkpoint directory?)",
                dir.display()
            )
        })?,
    )
    .context("trainer_state.json is not valid JSON")?;
    let bytes = std::fs::read(dir.join("checkpoint.safetensors"))
        .with_context(|| format!("--resume '{}': no checkpoint.safetensors", dir.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .context("checkpoint.safetensors is damaged")?;
    let n = ad.params().len();
    if state["n_params"].as_u64() != Some(n as u64) {
        bail!("--resume: the checkpoint holds another adapter (different method, rank or targets)");
    }
    let read = |name: String, want: usize| -> Result<Vec<f32>> {
        let t = st
            .tensor(&name)
            .with_context(|| format!("checkpoint lacks '{name}'"))?;
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if v.len() != want {
            bail!(
                "--resume: '{name}' has {} values, the adapter {want} (different settings?)",
                v.len()
            );
        }
        Ok(v)
    };
    let sizes: Vec<usize> = ad.params().iter().map(|p| p.len()).collect();
    for (i, p) in ad.params_mut().into_iter().enumerate() {
        p.copy_from_slice(&read(format!("p.{i}"), sizes[i])?);
    }
    for (i, &len) in sizes.iter().enumerate() {
        opt.m[i] = read(format!("m.{i}"), len)?;
        opt.v[i] = read(format!("v.{i}"), len)?;
    }
    opt.t = state["adam_t"].as_u64().unwrap_or(0);
    let losses = state["losses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| Some((x[0].as_u64()? as usize, x[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok((
        state["step"]
            .as_u64()
            .context("trainer_state.json lacks 'step'")? as usize,
        losses,
    ))
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub steps: usize,
    pub train_examples: usize,
    pub eval_examples: usize,
    /// (step, mean train loss of the step).
    pub losses: Vec<(usize, f64)>,
    pub eval_before: Option<f64>,
    pub eval_after: Option<f64>,
    pub tokens: usize,
    pub seconds: f64,
    pub params: usize,
}

impl Summary {
    /// Records step `step` (from 0) of `total`, whose token losses sum to `loss` over `denom`
    /// targets, and reports it: (step, total, mean loss, lr, tokens/s so far).
    pub(crate) fn record(
        &mut self,
        (step, total): (usize, usize),
        (loss, denom): (f64, usize),
        lr: f32,
        start: Instant,
        on_step: &mut impl FnMut(usize, usize, f64, f32, f64),
    ) {
        let mean = loss / denom.max(1) as f64;
        self.losses.push((step + 1, mean));
        self.steps = step + 1;
        let tps = self.tokens as f64 / start.elapsed().as_secs_f64();
        on_step(step + 1, total, mean, lr, tps);
    }
}

/// Mean loss per target token over `examples` (no dropout).
pub fn eval_loss(m: &Model, ad: &Adapter, examples: &[Example]) -> Result<Option<f64>> {
    let (mut sum, mut n) = (0f64, 0usize);
    for e in examples {
        let (l, k) = run(m, ad, &e.ids, &e.targets, 1.0, None, None)?;
        sum += l;
        n += k;
    }
    Ok((n > 0).then(|| sum / n as f64))
}

/// Splits off the held-out examples (a seeded shuffle, then the last `split` of them).
pub fn split(mut all: Vec<Example>, frac: f32, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    all.shuffle(&mut rng);
    let n_eval = ((all.len() as f32) * frac).round() as usize;
    let n_eval = n_eval.min(all.len().saturating_sub(1));
    let eval = all.split_off(all.len() - n_eval);
    (all, eval)
}

/// The loop's shape: sequences per step, total steps, warmup steps; the settings checked.
pub(crate) fn plan(cfg: &TrainConfig, n_train: usize) -> Result<(usize, usize, usize)> {
    if n_train == 0 {
        bail!("no training examples left after the held-out split");
    }
    if cfg.batch == 0 || cfg.grad_accum == 0 {
        bail!("--batch and --grad-accum must be at least 1");
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        bail!("--lr must be a positive number");
    }
    let per_step = cfg.batch * cfg.grad_accum;
    let steps_per_epoch = n_train.div_ceil(per_step);
    let total = match (cfg.steps, cfg.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * steps_per_epoch,
        (None, None) => steps_per_epoch,
    };
    let warmup = ((total as f32) * cfg.warmup_ratio).round() as usize;
    Ok((per_step, total, warmup))
}

/// The examples of each step: shuffled epochs from a seeded generator (the same seed gives
/// the same order, so a resumed run replays it).
pub(crate) struct Batches {
    rng: ChaCha8Rng,
    order: Vec<usize>,
    n: usize,
}

impl Batches {
    pub(crate) fn new(seed: u64, n: usize) -> Batches {
        Batches {
            rng: ChaCha8Rng::seed_from_u64(seed),
            order: Vec::new(),
            n,
        }
    }

    pub(crate) fn next(&mut self, per_step: usize) -> Vec<usize> {
        let mut batch = Vec::with_capacity(per_step);
        while batch.len() < per_step {
            if self.order.is_empty() {
                self.order = (0..self.n).collect();
                self.order.shuffle(&mut self.rng);
            }
            batch.push(self.order.pop().unwrap());
        }
        batch
    }
}

/// Trains `ad` on `train`; `on_step` sees each step's (step, total, loss, lr, tokens/s).
pub fn train(
    m: &Model,
    ad: &mut Adapter,
    train: &[Example],
    eval: &[Example],
    cfg: &TrainConfig,
    mut on_step: impl FnMut(usize, usize, f64, f32, f64),
) -> Result<Summary> {
    let (per_step, total, warmup) = plan(cfg, train.len())?;
    let mut s = Summary {
        train_examples: train.len(),
        eval_examples: eval.len(),
        params: ad.n_params(),
        eval_before: eval_loss(m, ad, eval)?,
        ..Default::default()
    };
    let mut opt = AdamW::new(&ad.zero_grads(), cfg.weight_decay);
    let mut first = 0;
    if let Some(dir) = &cfg.resume {
        let (step, losses) = load_checkpoint(dir, ad, &mut opt)?;
        if step > total {
            bail!("--resume: the checkpoint is at step {step}, past this run's {total} steps");
        }
        first = step;
        s.losses = losses;
    }
    let mut batches = Batches::new(cfg.seed, train.len());
    let start = Instant::now();
    for step in 0..total {
        let batch = batches.next(per_step);
        if step < first {
            // Done before the checkpoint: only the data order is replayed.
            continue;
        }
        let denom: usize = batch.iter().map(|&i| train[i].n_targets()).sum();
        let mut g = ad.zero_grads();
        let mut loss = 0f64;
        for (k, &i) in batch.iter().enumerate() {
            let e = &train[i];
            let seed = cfg.seed ^ ((step as u64) << 20) ^ k as u64;
            let (l, _) = run(
                m,
                ad,
                &e.ids,
                &e.targets,
                denom as f32,
                Some(&mut g),
                Some(seed),
            )?;
            loss += l;
            s.tokens += e.ids.len();
        }
        clip(&mut g, cfg.clip);
        let lr = schedule(cfg.lr, step, total, warmup);
        let mut params = ad.params_mut();
        opt.step(&mut params, &g, lr);
        s.record((step, total), (loss, denom), lr, start, &mut on_step);
        if cfg
            .save_every
            .is_some_and(|k| (step + 1) % k == 0 || step + 1 == total)
        {
            let dir = cfg.out.join(format!("checkpoint-{}", step + 1));
            save_checkpoint(&dir, ad, &opt, step + 1, &s.losses)?;
        }
    }
    s.seconds = start.elapsed().as_secs_f64();
    s.eval_after = eval_loss(m, ad, eval)?;
    Ok(s)
}
