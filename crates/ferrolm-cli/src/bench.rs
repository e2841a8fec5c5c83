//! `ferrolm bench`: prefill of `p` tokens in one batch, then `n` greedy decode steps, both after
//! `depth` tokens already in the context (untimed); medians over repeats, in tokens per second.

use crate::commands::open;
use crate::ModelOpts;
use anyhow::{bail, Result};
use ferrolm_model::Logits;
use ferrolm_sample::argmax;
use serde_json::json;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(m: &ModelOpts, p: usize, n: usize, repeats: usize, depth: usize) -> Result<()> {
    if p == 0 {
        bail!("-p must be at least 1");
    }
    let lm = open(m)?;
    let vocab = lm.model.config.vocab_size as u64;
    // Deterministic pseudo-random prompt, as llama-bench uses random tokens.
    let mut state = 0x9E3779B97F4A7C15u64;
    let prompt: Vec<u32> = (0..p + depth)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab) as u32
        })
        .collect();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for r in 0..repeats.max(1) {
        let mut kv = lm
            .model
            .new_cache_with(depth + p + n, crate::commands::precision(m));
        let (context, prompt) = prompt.split_at(depth);
        if depth > 0 {
            lm.model.forward(context, &mut kv, Logits::Last)?;
        }
        let t0 = Instant::now();
        let logits = lm.model.forward(prompt, &mut kv, Logits::Last)?;
        let t_pp = t0.elapsed().as_secs_f64();
        let mut tok = argmax(&logits.squeeze(0)?.to_vec1()?);
        let t1 = Instant::now();
        for _ in 0..n {
            let l = lm.model.forward(&[tok], &mut kv, Logits::Last)?;
            tok = argmax(&l.squeeze(0)?.to_vec1()?);
        }
        let t_tg = t1.elapsed().as_secs_f64();
        pp.push(p as f64 / t_pp);
        if n > 0 {
            tg.push(n as f64 / t_tg);
        }
        if !m.json {
            eprintln!(
                "run {}: pp{p} {:.1} tok/s, tg{n} {:.1} tok/s",
                r + 1,
                p as f64 / t_pp,
                if n > 0 { n as f64 / t_tg } else { 0.0 }
            );
        }
    }
    let (pp, tg) = (median(pp), if tg.is_empty() { 0.0 } else { median(tg) });
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok());
    if m.json {
        println!(
            "{}",
            json!({ "model": lm.name, "p": p, "n": n, "depth": depth, "repeats": repeats, "threads": threads, "pp_tok_s": pp, "tg_tok_s": tg })
        );
    } else {
        println!(
            "{}: pp{p} {pp:.1} tok/s, tg{n} {tg:.1} tok/s (median of {repeats}{})",
            lm.name,
            if depth > 0 {
                format!(", at depth {depth}")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
