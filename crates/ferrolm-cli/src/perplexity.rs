//! `ferrolm perplexity`: the file's tokens (no BOS) cut into windows of `ctx` tokens (`ctx - 1`
//! when the model adds a BOS, which then heads each window); every token but a window's first
//! is scored from the tokens before it in its window.
//!
//! Under a long-context policy (`--stream-window`, `--memory-topk`, ReRoPE, Self-Extend) the
//! file runs as one sequence in one pass instead: each token scored once, from whatever the
//! cache holds then, with the process's RSS sampled along the way.

use crate::commands::open;
use crate::ModelOpts;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use std::io::Write;

pub fn run(m: &ModelOpts, file: &std::path::Path) -> Result<()> {
    if m.prompt_adapter.is_some() {
        anyhow::bail!(
            "perplexity does not apply --prompt-adapter yet (logits, generate, chat and eval do)"
        );
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read text file '{}'", file.display()))?;
    let lm = open(m)?;
    let ctx = m.ctx.unwrap_or(512);
    let tokens = lm.tok()?.encode(&text, false, false)?;
    let bos = if lm.tok()?.add_bos() {
        lm.tok()?.bos_id()
    } else {
        None
    };
    if m.long.args().policy(&lm.model)?.is_active() {
        return one_pass(m, &lm, bos, &tokens, file);
    }
    let per_window = ctx - usize::from(bos.is_some());
    if per_window < 2 {
        bail!(
            "--ctx {ctx} is too small for perplexity: use at least {}",
            2 + usize::from(bos.is_some())
        );
    }
    if tokens.len() < 2 {
        bail!(
            "'{}' has fewer than 2 tokens; nothing to score",
            file.display()
        );
    }
    let mut nll = 0f64;
    let mut scored = 0usize;
    let mut window_nll = Vec::new();
    let n_windows = tokens.len().div_ceil(per_window);
    for (wi, chunk) in tokens.chunks(per_window).enumerate() {
        let mut window = Vec::with_capacity(ctx);
        window.extend(bos);
        window.extend_from_slice(chunk);
        if window.len() < 2 {
            continue;
        }
        let mut kv = lm
            .model
            .new_cache_with(window.len(), crate::commands::precision(m, &lm.model));
        let lp = lm.model.score(&window, &mut kv)?;
        window_nll.push(-lp.iter().sum::<f64>());
        // With a BOS, the first file token is scored from the BOS; without, a window's first is not scored.
        for l in lp {
            nll -= l;
            scored += 1;
        }
        if !m.json {
            eprint!(
                "\r[{}/{n_windows}] ppl so far {:.4}",
                wi + 1,
                (nll / scored as f64).exp()
            );
            let _ = std::io::stderr().flush();
        }
    }
    if scored == 0 {
        return Err(anyhow!("no tokens were scored"));
    }
    let mean = nll / scored as f64;
    if m.json {
        println!(
            "{}",
            json!({ "tokens_scored": scored, "mean_nll": mean, "ppl": mean.exp(), "ctx": ctx, "windows": n_windows, "window_nll": window_nll })
        );
    } else {
        eprintln!();
        println!("perplexity {:.4} ({scored} tokens scored in {n_windows} windows of {ctx}, mean NLL {mean:.5})", mean.exp());
    }
    Ok(())
}

/// Resident set size of this process in MiB (Linux; 0 elsewhere).
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// The process's peak resident memory so far (`VmHWM`), in MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The whole file as one sequence under the long-context policy, in calls of 512 tokens.
fn one_pass(
    m: &ModelOpts,
    lm: &ferrolm_engine::LoadedModel,
    bos: Option<u32>,
    tokens: &[u32],
    file: &std::path::Path,
) -> Result<()> {
    let mut seq = Vec::with_capacity(tokens.len() + 1);
    seq.extend(bos);
    seq.extend_from_slice(tokens);
    let policy = m.long.args().policy(&lm.model)?;
    // Streaming needs no context size; the other policies hold the whole file.
    let n_ctx = if policy.stream.is_some() {
        m.ctx.unwrap_or(lm.model.config.context_length)
    } else {
        m.ctx.unwrap_or(0).max(seq.len())
    };
    let mut kv = lm
        .model
        .new_cache_with(n_ctx, crate::commands::precision(m, &lm.model));
    kv.set_long(policy.clone())?;
    let start = std::time::Instant::now();
    let (mut nll, mut scored) = (0f64, 0usize);
    let mut rss = vec![(0usize, rss_mib())];
    let call = 512;
    let n_calls = seq.len().div_ceil(call);
    for (ci, chunk) in seq.chunks(call).enumerate() {
        let base = ci * call;
        let h = lm.model.forward_hidden(chunk, &mut kv)?;
        for r0 in (0..chunk.len()).step_by(64) {
            let n = 64.min(chunk.len() - r0);
            let rows: Vec<Vec<f32>> = lm.model.logits(&h.narrow(0, r0, n)?)?.to_vec2()?;
            for (i, row) in rows.iter().enumerate() {
                if let Some(&next) = seq.get(base + r0 + i + 1) {
                    nll -= ferrolm_model::model::log_softmax_at(row, next as usize);
                    scored += 1;
                }
            }
        }
        if (ci + 1) % (n_calls / 10).max(1) == 0 || ci + 1 == n_calls {
            rss.push((base + chunk.len(), rss_mib()));
        }
        if !m.json {
            eprint!(
                "\r[{}/{}] ppl so far {:.4}, RSS {:.0} MiB",
                base + chunk.len(),
                seq.len(),
                (nll / scored.max(1) as f64).exp(),
                rss.last().map_or(0.0, |r| r.1)
            );
            let _ = std::io::stderr().flush();
        }
    }
    if scored == 0 {
        bail!(
            "'{}' has fewer than 2 tokens; nothing to score",
            file.display()
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let mean = nll / scored as f64;
    let held = kv.layers.iter().map(|l| l.len()).max().unwrap_or(0);
    if m.json {
        println!(
            "{}",
            json!({ "tokens_scored": scored, "mean_nll": mean, "ppl": mean.exp(), "one_pass": true,
                    "policy": format!("{policy:?}"), "seconds": secs, "ms_per_token": 1e3 * secs / seq.len() as f64,
                    "positions_held": held,
                    "rss_mib": rss.iter().map(|(t, r)| json!({"tokens": t, "rss_mib": r})).collect::<Vec<_>>() })
        );
    } else {
        eprintln!();
        println!(
            "perplexity {:.4} ({scored} tokens scored in one pass, {:.2} ms/token, cache holds {held} positions, RSS {:.0} -> {:.0} MiB)",
            mean.exp(),
            1e3 * secs / seq.len() as f64,
            rss.first().map_or(0.0, |r| r.1),
            rss.last().map_or(0.0, |r| r.1)
        );
    }
    Ok(())
}
