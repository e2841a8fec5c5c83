//! ferrolm against llama.cpp on the real catalog models: token ids, next-token logits,
//! greedy continuations and perplexity windows, compared with the golden files that
//! `scripts/gen_golden_llamacpp.py` wrote from llama.cpp.
//!
//! The models are fetched through the catalog on first use (CI pulls them beforehand).

use ferrolm_engine::{catalog, load, LoadedModel};
use ferrolm_model::Logits;
use serde_json::Value;

fn golden(name: &str) -> Value {
    let p = format!("{}/../../tests/golden/llamacpp_{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn model(name: &str) -> LoadedModel {
    std::env::set_var("RAYON_NUM_THREADS", std::env::var("FERROLM_TEST_THREADS").unwrap_or("1".into()));
    let path = catalog::resolve(name, true).expect("catalog model (run `ferrolm pull NAME` first if offline)");
    load(path.to_str().unwrap(), true).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Runs every golden prompt; returns (max |logit diff| over the reference top-20, mean greedy agreement).
fn compare(name: &str) -> (f32, f64) {
    let g = golden(name);
    let lm = model(name);
    let mut worst = 0f32;
    let mut agree_sum = 0usize;
    let mut top1_miss = Vec::new();
    let prompts = g["prompts"].as_array().unwrap();
    for p in prompts {
        let text = p["prompt"].as_str().unwrap();
        let want = ids_of(&p["ids"]);
        let ids = lm.tokenizer.encode(text, true, false).unwrap();
        assert_eq!(ids, want, "token ids differ for {text:?}");
        let mut kv = lm.model.new_cache(256);
        let row: Vec<f32> = lm.model.forward(&ids, &mut kv, Logits::Last).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let top = p["top20"].as_array().unwrap();
        let ref_top1 = top[0][0].as_u64().unwrap() as u32;
        if argmax(&row) != ref_top1 {
            top1_miss.push(text.to_string());
        }
        let mut d = 0f32;
        for e in top {
            let (id, l) = (e[0].as_u64().unwrap() as usize, e[1].as_f64().unwrap() as f32);
            d = d.max((row[id] - l).abs());
        }
        worst = worst.max(d);
        // greedy continuation, ignoring end-of-sequence
        let want_gen = ids_of(&p["greedy24"]);
        let mut tok = argmax(&row);
        let mut agree = 0;
        let mut diverged = false;
        for (i, &w) in want_gen.iter().enumerate() {
            if tok != w {
                diverged = true;
            }
            if !diverged {
                agree += 1;
            }
            if diverged || i + 1 == want_gen.len() {
                break;
            }
            let l: Vec<f32> = lm.model.forward(&[tok], &mut kv, Logits::Last).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
            tok = argmax(&l);
        }
        agree_sum += agree;
        eprintln!("{name}: {:<50} max|dlogit| {d:.3}  greedy agree {agree}/24", format!("{text:?}").chars().take(50).collect::<String>());
    }
    let mean = agree_sum as f64 / prompts.len() as f64;
    eprintln!("{name}: worst max|dlogit| over top-20 = {worst:.3}; mean greedy agreement {mean:.1}/24");
    assert!(top1_miss.is_empty(), "top-1 next token differs from llama.cpp for {top1_miss:?}");
    (worst, mean)
}

fn check_special(name: &str) {
    let g = golden(name);
    let lm = model(name);
    for s in g["special"].as_array().unwrap() {
        let text = s["prompt"].as_str().unwrap();
        assert_eq!(lm.tokenizer.encode(text, true, true).unwrap(), ids_of(&s["ids_special"]), "{text:?} special");
        assert_eq!(lm.tokenizer.encode(text, true, false).unwrap(), ids_of(&s["ids_plain"]), "{text:?} plain");
    }
}

/// Perplexity over the first `n` golden windows, same windowing as `ferrolm perplexity`.
fn perplexity_windows(name: &str, n: usize) {
    let g = golden(name);
    let lm = model(name);
    let ppl = &g["perplexity"];
    let ctx = ppl["ctx"].as_u64().unwrap() as usize;
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3").unwrap();
    let toks = lm.tokenizer.encode(&text, false, false).unwrap();
    assert_eq!(toks.len() as u64, ppl["file_tokens"].as_u64().unwrap());
    let bos = if lm.tokenizer.add_bos() { lm.tokenizer.bos_id() } else { None };
    let per = ctx - usize::from(bos.is_some());
    let (mut ours, mut theirs, mut count) = (0f64, 0f64, 0usize);
    for (w, chunk) in toks.chunks(per).take(n).enumerate() {
        let mut window: Vec<u32> = bos.into_iter().collect();
        window.extend_from_slice(chunk);
        let mut kv = lm.model.new_cache(window.len());
        let lp = lm.model.score(&window, &mut kv).unwrap();
        let nll: f64 = lp.iter().map(|&x| -(x as f64)).sum();
        let gw = &ppl["windows"][w];
        assert_eq!(lp.len() as u64, gw["tokens_scored"].as_u64().unwrap());
        ours += nll;
        theirs += gw["nll"].as_f64().unwrap();
        count += lp.len();
    }
    let (p_ours, p_theirs) = ((ours / count as f64).exp(), (theirs / count as f64).exp());
    let rel = (p_ours / p_theirs - 1.0).abs();
    eprintln!("{name}: perplexity over {n} windows of {ctx}: ferrolm {p_ours:.4}, llama.cpp {p_theirs:.4} ({:.3}% apart)", rel * 100.0);
    assert!(rel < 0.01, "perplexity {p_ours} vs llama.cpp {p_theirs}");
}

fn windows_to_check() -> usize {
    std::env::var("FERROLM_PPL_WINDOWS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

#[test]
fn smollm2_matches_llamacpp() {
    let (worst, agree) = compare("smollm2-135m-instruct");
    assert!(worst <= 0.5, "max logit difference {worst}");
    assert!(agree >= 16.0, "mean greedy agreement {agree}");
    check_special("smollm2-135m-instruct");
}

#[test]
fn gemma3_matches_llamacpp() {
    let (worst, agree) = compare("gemma3-270m");
    assert!(worst <= 0.5, "max logit difference {worst}");
    assert!(agree >= 16.0, "mean greedy agreement {agree}");
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
