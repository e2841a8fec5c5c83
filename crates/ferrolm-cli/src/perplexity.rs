//! `ferrolm perplexity`: the file's tokens (no BOS) cut into windows of `ctx` tokens (`ctx - 1`
//! when the model adds a BOS, which then heads each window); every token but a window's first
//! is scored from the tokens before it in its window.

use crate::commands::open;
use crate::ModelOpts;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use std::io::Write;

pub fn run(m: &ModelOpts, file: &std::path::Path) -> Result<()> {
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
