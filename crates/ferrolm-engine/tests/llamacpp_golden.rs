//! ferrolm against llama.cpp on the real catalog models: token ids, next-token logits,
//! greedy continuations and perplexity windows, compared with the golden files that
//! `scripts/gen_golden_llamacpp.py` wrote from llama.cpp.
//!
//! The models are fetched through the catalog on first use (CI pulls them beforehand).

use ferrolm_engine::{catalog, load, LoadedModel};
use ferrolm_model::Logits;
use ferrolm_sample::argmax;
use serde_json::Value;

fn golden(name: &str) -> Value {
    let p = format!(
        "{}/../../tests/golden/llamacpp_{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn model(name: &str) -> LoadedModel {
    std::env::set_var(
        "RAYON_NUM_THREADS",
        std::env::var("FERROLM_TEST_THREADS").unwrap_or("1".into()),
    );
    let path = catalog::resolve(name, true)
        .expect("catalog model (run `ferrolm pull NAME` first if offline)");
    load(path.to_str().unwrap(), true).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// What one model's comparison measured.
struct Report {
    /// Max |ferrolm - llama.cpp| over llama.cpp's top-20 tokens, worst prompt.
    worst: f32,
    /// The same between llama.cpp batched and llama.cpp fed token by token: its own noise.
    noise: f32,
    /// Mean number of leading greedy tokens equal to llama.cpp's (of 24).
    agree: f64,
    /// Prompts whose top-1 differs from llama.cpp's batched top-1.
    top1_miss: Vec<String>,
    /// ... of which neither llama.cpp run (batched, token by token) has our top-1.
    top1_foreign: Vec<String>,
    /// Prompts with a clear top-1 (llama.cpp's top-2 margin >= 0.25) where ours differs.
    top1_clear_miss: Vec<String>,
    /// Max |difference| over the top-20 after removing each side's mean (softmax ignores a
    /// uniform shift), worst prompt.
    worst_centered: f32,
    /// Median over prompts of the raw max |difference|.
    median: f32,
    /// Max |difference| of ours fed token by token against llama.cpp fed token by token
    /// (the decode path), worst prompt.
    worst_incremental: f32,
}

fn top20(v: &Value) -> Vec<(usize, f32)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_u64().unwrap() as usize,
                e[1].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

/// Runs every golden prompt through ferrolm and compares with llama.cpp.
fn compare(name: &str) -> Report {
    let g = golden(name);
    let lm = model(name);
    let mut r = Report {
        worst: 0.0,
        noise: 0.0,
        agree: 0.0,
        top1_miss: vec![],
        top1_foreign: vec![],
        top1_clear_miss: vec![],
        worst_centered: 0.0,
        median: 0.0,
        worst_incremental: 0.0,
    };
    let mut per_prompt = Vec::new();
    let prompts = g["prompts"].as_array().unwrap();
    let mut agree_sum = 0usize;
    for p in prompts {
        let text = p["prompt"].as_str().unwrap();
        let want = ids_of(&p["ids"]);
        let ids = lm.tok().unwrap().encode(text, true, false).unwrap();
        assert_eq!(ids, want, "token ids differ for {text:?}");
        let mut kv = lm.model.new_cache(256);
        let row: Vec<f32> = lm
            .model
            .forward(&ids, &mut kv, Logits::Last)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let (batched, incremental) = (top20(&p["top20"]), top20(&p["top20_incremental"]));
        let d = batched
            .iter()
            .map(|&(id, l)| (row[id] - l).abs())
            .fold(0f32, f32::max);
        let shift = batched.iter().map(|&(id, l)| row[id] - l).sum::<f32>() / batched.len() as f32;
        let dc = batched
            .iter()
            .map(|&(id, l)| (row[id] - l - shift).abs())
            .fold(0f32, f32::max);
        r.worst_centered = r.worst_centered.max(dc);
        per_prompt.push(d);
        let noise = batched
            .iter()
            .zip(&incremental)
            .map(|(a, b)| (a.1 - b.1).abs())
            .fold(0f32, f32::max);
        let ours = argmax(&row);
        let inc_top1 = incremental
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
            .0 as u32;
        let margin = batched[0].1 - batched[1].1;
        if ours != batched[0].0 as u32 {
            r.top1_miss.push(text.to_string());
            if margin >= 0.25 {
                r.top1_clear_miss.push(text.to_string());
            }
            if ours != inc_top1 {
                r.top1_foreign.push(text.to_string());
            }
        }
        r.worst = r.worst.max(d);
        r.noise = r.noise.max(noise);
        // The decode path: the same prompt one token at a time.
        let mut kv1 = lm.model.new_cache(256);
        let mut last = Vec::new();
        for &id in &ids {
            last = lm
                .model
                .forward(&[id], &mut kv1, Logits::Last)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
        }
        let di = incremental
            .iter()
            .map(|&(id, l)| (last[id] - l).abs())
            .fold(0f32, f32::max);
        r.worst_incremental = r.worst_incremental.max(di);
        // greedy continuation, ignoring end-of-sequence
        let want_gen = ids_of(&p["greedy24"]);
        let mut tok = ours;
        let mut agree = 0;
        for (i, &w) in want_gen.iter().enumerate() {
            if tok != w {
                break;
            }
            agree += 1;
            if i + 1 == want_gen.len() {
                break;
            }
            let l: Vec<f32> = lm
                .model
                .forward(&[tok], &mut kv, Logits::Last)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap();
            tok = argmax(&l);
        }
        agree_sum += agree;
        eprintln!(
            "{name}: {:<44} |d| {d:.3} centered {dc:.3} (llama.cpp self {noise:.3}) top-2 margin {margin:.3} top-1 {} greedy {agree}/24",
            format!("{text:?}").chars().take(44).collect::<String>(),
            if ours == batched[0].0 as u32 { "same" } else { "DIFF" }
        );
    }
    r.agree = agree_sum as f64 / prompts.len() as f64;
    per_prompt.sort_by(f32::total_cmp);
    r.median = per_prompt[per_prompt.len() / 2];
    eprintln!(
        "{name}: max|dlogit| over top-20: median {:.4}, worst {:.4} (centered {:.4}); token by token against llama.cpp token by token: worst {:.4}; llama.cpp batched vs token-by-token: up to {:.3}; top-1 differs on {} of {} prompts ({} with a top-2 margin >= 0.25; {} not produced by either llama.cpp run); mean greedy agreement {:.1}/24",
        r.median, r.worst, r.worst_centered, r.worst_incremental, r.noise, r.top1_miss.len(), prompts.len(), r.top1_clear_miss.len(), r.top1_foreign.len(), r.agree
    );
    r
}

fn check_special(name: &str) {
    let g = golden(name);
    let lm = model(name);
    for s in g["special"].as_array().unwrap() {
        let text = s["prompt"].as_str().unwrap();
        assert_eq!(
            lm.tok().unwrap().encode(text, true, true).unwrap(),
            ids_of(&s["ids_special"]),
            "{text:?} special"
        );
        assert_eq!(
            lm.tok().unwrap().encode(text, true, false).unwrap(),
            ids_of(&s["ids_plain"]),
            "{text:?} plain"
        );
    }
}

/// Perplexity over the first `n` golden windows, same windowing as `ferrolm perplexity`.
fn perplexity_windows(name: &str, n: usize) {
    let g = golden(name);
    let lm = model(name);
    let ppl = &g["perplexity"];
    let ctx = ppl["ctx"].as_u64().unwrap() as usize;
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3").unwrap();
    let toks = lm.tok().unwrap().encode(&text, false, false).unwrap();
    assert_eq!(toks.len() as u64, ppl["file_tokens"].as_u64().unwrap());
    let bos = if lm.tok().unwrap().add_bos() {
        lm.tok().unwrap().bos_id()
    } else {
        None
    };
    let per = ctx - usize::from(bos.is_some());
    let (mut ours, mut theirs, mut count) = (0f64, 0f64, 0usize);
    let n = n.min(toks.len().div_ceil(per));
    for (w, chunk) in toks.chunks(per).take(n).enumerate() {
        let mut window: Vec<u32> = bos.into_iter().collect();
        window.extend_from_slice(chunk);
        let mut kv = lm.model.new_cache(window.len());
        let lp = lm.model.score(&window, &mut kv).unwrap();
        let nll: f64 = -lp.iter().sum::<f64>();
        let gw = &ppl["windows"][w];
        assert_eq!(lp.len() as u64, gw["tokens_scored"].as_u64().unwrap());
        ours += nll;
        theirs += gw["nll"].as_f64().unwrap();
        count += lp.len();
    }
    let (p_ours, p_theirs) = ((ours / count as f64).exp(), (theirs / count as f64).exp());
    let rel = (p_ours / p_theirs - 1.0).abs();
    eprintln!("{name}: perplexity over {n} windows of {ctx}: ferrolm {p_ours:.10}, llama.cpp {p_theirs:.10} (relative difference {rel:.1e})");
    // The issue asks for 1%; with the same arithmetic (and log-softmax in f64 on both sides)
    // the figures agree to rounding.
    assert!(rel < 1e-6, "perplexity {p_ours} vs llama.cpp {p_theirs}");
}

fn windows_to_check() -> usize {
    std::env::var("FERROLM_PPL_WINDOWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX)
}

/// The bounds every model must meet. ferrolm reproduces llama.cpp's arithmetic (see
/// `ferrolm_kernels::numerics` and the kernels' summation orders): its batched path against
/// llama.cpp's batched prompt evaluation, its single-token path against llama.cpp's decode.
/// llama.cpp's own two paths differ by up to ~0.8 in logits on these prompts, so anything
/// short of the same arithmetic would miss these bounds. The bars (top-1 identical,
/// worst difference <= 0.5, greedy agreement >= 16 of 24) are the looser outer limits.
fn assert_report(r: &Report) {
    assert!(r.top1_miss.is_empty(), "top-1 differs on {:?}", r.top1_miss);
    assert!(
        r.worst <= 0.01,
        "max logit difference {} (batched)",
        r.worst
    );
    assert!(
        r.worst_incremental <= 0.01,
        "max logit difference {} (token by token)",
        r.worst_incremental
    );
    assert!(r.agree >= 23.5, "mean greedy agreement {}", r.agree);
}

#[test]
fn smollm2_matches_llamacpp() {
    assert_report(&compare("smollm2-135m-instruct"));
    check_special("smollm2-135m-instruct");
}

#[test]
fn gemma3_matches_llamacpp() {
    assert_report(&compare("gemma3-270m"));
    check_special("gemma3-270m");
}

#[test]
fn smollm2_perplexity_matches_llamacpp() {
    perplexity_windows("smollm2-135m-instruct", windows_to_check());
}

#[test]
fn gemma3_perplexity_matches_llamacpp() {
    perplexity_windows("gemma3-270m", windows_to_check());
}
