//! `ferrolm bench`, measured as `llama-bench` measures: every test starts from an empty cache,
//! fills `depth` tokens of context (untimed), then times either a prompt of `p` tokens in one
//! batch (`pp<p>`) or `n` single-token decode steps (`tg<n>`). One untimed warm-up run first;
//! medians over repeats, in tokens per second.

use crate::commands::open;
use crate::ModelOpts;
use anyhow::{bail, Result};
use ferrolm_model::Logits;
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

/// One measurement: a prompt of `len` tokens (`prompt == true`) or `len` decode steps.
#[derive(Clone, Copy)]
struct Test {
    prompt: bool,
    len: usize,
    depth: usize,
}

impl Test {
    fn name(&self) -> String {
        let kind = if self.prompt { "pp" } else { "tg" };
        if self.depth > 0 {
            format!("{kind}{} @ d{}", self.len, self.depth)
        } else {
            format!("{kind}{}", self.len)
        }
    }
}

/// Deterministic pseudo-random tokens (llama-bench also feeds random tokens).
fn tokens(count: usize, vocab: u64, seed: u64) -> Vec<u32> {
    let mut state = 0x9E3779B97F4A7C15u64 ^ seed;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab) as u32
        })
        .collect()
}

pub fn run(
    m: &ModelOpts,
    ps: &[usize],
    ns: &[usize],
    repeats: usize,
    depths: &[usize],
    profile: bool,
) -> Result<()> {
    if m.prompt_adapter.is_some() {
        anyhow::bail!("bench does not apply --prompt-adapter");
    }
    let lm = open(m)?;
    let model = &lm.model;
    let vocab = model.config.vocab_size as u64;
    let mut tests = Vec::new();
    for &depth in depths {
        tests.extend(ps.iter().filter(|&&p| p > 0).map(|&len| Test {
            prompt: true,
            len,
            depth,
        }));
        tests.extend(ns.iter().filter(|&&n| n > 0).map(|&len| Test {
            prompt: false,
            len,
            depth,
        }));
    }
    if tests.is_empty() {
        bail!("nothing to measure: give -p and/or -n greater than 0");
    }
    let precision = crate::commands::precision(m, model);
    let once = |t: &Test| -> Result<f64> {
        let mut kv = model.new_cache_with(t.depth + t.len, precision);
        let input = tokens(t.depth + t.len, vocab, t.len as u64);
        let (context, rest) = input.split_at(t.depth);
        if t.depth > 0 {
            model.forward_hidden_chunked(context, &mut kv)?;
        }
        ferrolm_model::profile::take();
        let t0 = Instant::now();
        if t.prompt {
            model.forward(rest, &mut kv, Logits::Last)?;
        } else {
            for &tok in rest {
                model.forward(&[tok], &mut kv, Logits::Last)?;
            }
        }
        Ok(t.len as f64 / t0.elapsed().as_secs_f64())
    };
    let mut results = Vec::new();
    for t in &tests {
        // Warm-up: page the weights in and let the thread pool settle.
        once(&Test {
            len: t.len.min(16),
            depth: 0,
            ..*t
        })?;
        let mut runs = Vec::new();
        ferrolm_model::profile::enable(profile);
        let mut table: Vec<(&'static str, f64, u64)> = Vec::new();
        for _ in 0..repeats.max(1) {
            runs.push(once(t)?);
            for (name, secs, calls) in ferrolm_model::profile::take() {
                match table.iter_mut().find(|e| e.0 == name) {
                    Some(e) => {
                        e.1 += secs;
                        e.2 += calls;
                    }
                    None => table.push((name, secs, calls)),
                }
            }
        }
        ferrolm_model::profile::enable(false);
        let med = median(runs.clone());
        if !m.json {
            let list: Vec<String> = runs.iter().map(|r| format!("{r:.1}")).collect();
            println!(
                "{}: {} {med:.1} tok/s (median of {}: {})",
                lm.name,
                t.name(),
                runs.len(),
                list.join(", ")
            );
        }
        let tokens = (t.len * runs.len()) as f64;
        let total: f64 = table.iter().map(|e| e.1).sum();
        let wall: f64 = runs.iter().map(|r| t.len as f64 / r).sum();
        if profile && !m.json {
            println!("  {:<32} {:>10} {:>7}", "operation", "ms/token", "share");
            for (name, secs, _) in &table {
                println!(
                    "  {name:<32} {:>10.4} {:>6.1}%",
                    secs / tokens * 1e3,
                    secs / wall * 100.0
                );
            }
            println!(
                "  {:<32} {:>10.4} {:>6.1}%",
                "(outside these: sampling, glue)",
                (wall - total).max(0.0) / tokens * 1e3,
                (wall - total).max(0.0) / wall * 100.0
            );
        }
        let prof: Vec<_> = table
            .iter()
            .map(|(n, s, c)| json!({"op": n, "ms_per_token": s / tokens * 1e3, "calls": c}))
            .collect();
        results.push(json!({
            "test": t.name(), "kind": if t.prompt { "pp" } else { "tg" }, "n": t.len,
            "depth": t.depth, "tok_s": med, "runs": runs, "profile": prof,
        }));
    }
    if m.json {
        let threads = ferrolm_kernels::pool::global().threads();
        println!(
            "{}",
            json!({ "model": lm.name, "threads": threads, "repeats": repeats, "tests": results })
        );
    }
    Ok(())
}
