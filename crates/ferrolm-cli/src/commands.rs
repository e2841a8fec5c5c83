//! The one-shot commands: tokenize, logits, generate, info, pull; and the shared set-up
//! (threads, model loading, sampling parameters from flags).

use crate::{ModelOpts, SampleOpts};
use anyhow::{anyhow, bail, Result};
use ferrolm_engine::{catalog, generate as run_generate, load, GenerateRequest, LoadedModel};
use ferrolm_model::{KvCache, Logits};
use ferrolm_sample::SamplingParams;
use ferrolm_tokenize::ChatMessage;
use serde_json::json;
use std::io::Write;
use std::sync::atomic::AtomicBool;

/// Sets the worker thread count before any parallel work starts.
pub fn set_threads(n: Option<usize>) {
    if let Some(n) = n.filter(|&n| n > 0) {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}

pub fn open(m: &ModelOpts) -> Result<LoadedModel> {
    set_threads(m.threads);
    load(&m.model, m.json)
}

pub fn new_cache(lm: &LoadedModel, m: &ModelOpts) -> Result<KvCache> {
    let n_ctx = m.ctx.unwrap_or(lm.model.config.context_length);
    if n_ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    Ok(lm.model.new_cache_with(n_ctx, precision(m)))
}

pub fn precision(m: &ModelOpts) -> ferrolm_model::KvPrecision {
    if m.cache_type == "f32" {
        ferrolm_model::KvPrecision::F32
    } else {
        ferrolm_model::KvPrecision::F16
    }
}

pub fn sampling(s: &SampleOpts) -> Result<SamplingParams> {
    let mut logit_bias = Vec::new();
    for b in &s.logit_bias {
        let (id, v) = b
            .split_once('=')
            .ok_or_else(|| anyhow!("--logit-bias '{b}' should be ID=BIAS, e.g. 42=-inf"))?;
        let id: u32 = id
            .trim()
            .parse()
            .map_err(|_| anyhow!("--logit-bias '{b}': '{id}' is not a token id"))?;
        let v: f32 = match v.trim() {
            "-inf" => f32::NEG_INFINITY,
            x => x
                .parse()
                .map_err(|_| anyhow!("--logit-bias '{b}': '{x}' is not a number"))?,
        };
        logit_bias.push((id, v));
    }
    let p = SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        typical_p: s.typical_p,
        tfs_z: s.tfs,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n,
        frequency_penalty: s.frequency_penalty,
        presence_penalty: s.presence_penalty,
        logit_bias,
        seed: s.seed,
    };
    p.validate()?;
    Ok(p)
}

/// Prompt ids for TEXT (or explicit ids), checked against the vocabulary.
fn prompt_ids(
    lm: &LoadedModel,
    ids: Option<Vec<u32>>,
    text: Option<String>,
    parse_special: bool,
) -> Result<Vec<u32>> {
    let ids = match (ids, text) {
        (Some(ids), None) => ids,
        (None, Some(t)) => lm.tokenizer.encode(&t, true, parse_special)?,
        (Some(_), Some(_)) => bail!("give either TEXT or --ids, not both"),
        (None, None) => bail!("no prompt: give TEXT or --ids"),
    };
    let v = lm.model.config.vocab_size as u32;
    if let Some(bad) = ids.iter().find(|&&i| i >= v) {
        bail!("token id {bad} is outside the vocabulary (0..{v})");
    }
    Ok(ids)
}

/// Chat-template rendering of one user turn, tokenized with special tokens parsed.
pub fn chat_prompt(lm: &LoadedModel, messages: &[ChatMessage]) -> Result<Vec<u32>> {
    let text = lm.template.render(messages, true)?;
    let bos_text = lm
        .tokenizer
        .bos_id()
        .and_then(|b| lm.tokenizer.id_to_token(b))
        .unwrap_or("");
    let add_bos = !(lm.tokenizer.add_bos() && !bos_text.is_empty() && text.starts_with(bos_text));
    Ok(lm.tokenizer.encode(&text, add_bos, true)?)
}

pub fn tokenize(m: &ModelOpts, special: bool, text: &str) -> Result<()> {
    set_threads(m.threads);
    let (_, file) = ferrolm_engine::open_gguf(&m.model, m.json)?;
    let tok = ferrolm_tokenize::Tokenizer::from_vocab(ferrolm_engine::vocab_spec(&file.header)?)?;
    let ids = tok.encode(text, true, special)?;
    println!("{}", json!({ "ids": ids }));
    if !m.json {
        for id in &ids {
            eprintln!("{id:>8}  {:?}", tok.id_to_token(*id).unwrap_or("?"));
        }
    }
    Ok(())
}

fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| (i, row[i as usize]))
        .collect()
}

pub fn logits(
    m: &ModelOpts,
    top: usize,
    ids: Option<Vec<u32>>,
    all: bool,
    one_by_one: bool,
    text: Option<String>,
) -> Result<()> {
    let lm = open(m)?;
    let ids = prompt_ids(&lm, ids, text, false)?;
    let mut kv = new_cache(&lm, m)?;
    let which = if all { Logits::All } else { Logits::Last };
    let rows: Vec<Vec<f32>> = if one_by_one {
        let mut rows = Vec::with_capacity(ids.len());
        for &id in &ids {
            rows.extend(
                lm.model
                    .forward(&[id], &mut kv, Logits::Last)?
                    .to_vec2::<f32>()?,
            );
        }
        if !all {
            rows.drain(..rows.len() - 1);
        }
        rows
    } else {
        lm.model.forward(&ids, &mut kv, which)?.to_vec2()?
    };
    let last = rows.last().ok_or_else(|| anyhow!("no logits"))?;
    let top: Vec<_> = top_k(last, top)
        .into_iter()
        .map(|(i, l)| json!([i, l]))
        .collect();
    let mut v = json!({ "ids": ids, "top": top });
    if all {
        v["logits"] = json!(rows);
    }
    println!("{v}");
    Ok(())
}

pub fn generate(
    m: &ModelOpts,
    s: &SampleOpts,
    chat: bool,
    ids: Option<Vec<u32>>,
    text: Option<String>,
) -> Result<()> {
    let sampling = sampling(s)?;
    let lm = open(m)?;
    let prompt = if chat {
        let t = text.ok_or_else(|| anyhow!("--chat needs TEXT (the user's message)"))?;
        chat_prompt(
            &lm,
            &[ChatMessage {
                role: "user".into(),
                content: t,
            }],
        )?
    } else {
        prompt_ids(&lm, ids, text, false)?
    };
    let mut kv = new_cache(&lm, m)?;
    let req = GenerateRequest {
        prompt,
        max_tokens: s.n,
        sampling,
        stop: s.stop.clone(),
        ignore_eos: s.ignore_eos,
    };
    let cancel = AtomicBool::new(false);
    let json_out = m.json;
    let mut stdout = std::io::stdout();
    let out = run_generate(&lm, &mut kv, &req, &cancel, &mut |piece| {
        if !json_out {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if json_out {
        println!("{}", json!({ "ids": out.ids, "text": out.text }));
    } else {
        println!();
    }
    Ok(())
}

pub fn info(m: &ModelOpts) -> Result<()> {
    let lm = open(m)?;
    let h = &lm.file.header;
    let c = &lm.model.config;
    let mut types: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    let mut n_params = 0usize;
    for t in &h.tensors {
        let e = types.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
        n_params += t.n_elements();
    }
    let file_size = std::fs::metadata(&lm.path)?.len();
    let windows: Vec<String> = c
        .layers
        .iter()
        .map(|l| l.window.map(|w| w.to_string()).unwrap_or("global".into()))
        .collect();
    let template = h.get("tokenizer.chat_template").and_then(|v| v.as_str());
    let v = json!({
        "name": lm.name,
        "path": lm.path.display().to_string(),
        "architecture": c.arch,
        "gguf_version": h.version,
        "file_bytes": file_size,
        "parameters": n_params,
        "layers": c.n_layers(),
        "hidden": c.hidden,
        "ffn_hidden": c.ffn_hidden,
        "heads": c.attn.n_heads,
        "kv_heads": c.attn.n_kv_heads,
        "head_dim": c.attn.head_dim,
        "vocab_size": c.vocab_size,
        "context_length": c.context_length,
        "layer_windows": windows,
        "tied_embeddings": c.tied_embeddings,
        "tensor_types": types.iter().map(|(k, (n, b))| json!({"type": k, "tensors": n, "bytes": b})).collect::<Vec<_>>(),
        "bos": lm.tokenizer.bos_id(), "eos": lm.tokenizer.eos_id(), "add_bos": lm.tokenizer.add_bos(),
        "end_of_generation": lm.tokenizer.end_of_generation_ids(),
        "chat_template": template,
    });
    if m.json {
        println!("{v}");
        return Ok(());
    }
    println!("model         {} ({})", lm.name, lm.path.display());
    println!(
        "architecture  {}  (GGUF v{}, {:.1} MB, {:.1} M parameters)",
        c.arch,
        h.version,
        file_size as f64 / 1e6,
        n_params as f64 / 1e6
    );
    println!(
        "layers        {} x (width {}, ffn {}, heads {} / kv {}, head size {})",
        c.n_layers(),
        c.hidden,
        c.ffn_hidden,
        c.attn.n_heads,
        c.attn.n_kv_heads,
        c.attn.head_dim
    );
    println!("attention     {}", summarize_windows(&windows));
    println!(
        "vocabulary    {} tokens (bos {:?}, eos {:?}, add bos {})",
        c.vocab_size,
        lm.tokenizer.bos_id(),
        lm.tokenizer.eos_id(),
        lm.tokenizer.add_bos()
    );
    println!("context       {} tokens (training)", c.context_length);
    println!(
        "tensor types  {}",
        types
            .iter()
            .map(|(k, (n, b))| format!("{k}: {n} ({:.1} MB)", *b as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match template {
        Some(t) => println!(
            "chat template {} chars: {}",
            t.len(),
            t.chars().take(100).collect::<String>().replace('\n', "\\n")
        ),
        None => println!("chat template none in the file (ChatML is used for chat)"),
    }
    Ok(())
}

fn summarize_windows(w: &[String]) -> String {
    if w.iter().all(|x| x == "global") {
        return "global in every layer".into();
    }
    w.iter()
        .enumerate()
        .map(|(i, x)| format!("{i}:{x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn pull(name: Option<String>, list: bool) -> Result<()> {
    if list || name.is_none() {
        for e in catalog::CATALOG {
            let state = match catalog::cached_path(e)? {
                Some(p) => format!("cached at {}", p.display()),
                None => "not downloaded".into(),
            };
            println!("{:<24} {}  [{}]", e.name, e.description, state);
        }
        return Ok(());
    }
    let name = name.unwrap();
    let e = catalog::find(&name).ok_or_else(|| {
        anyhow!(
            "unknown catalog model '{name}'; available: {}",
            catalog::names().join(", ")
        )
    })?;
    let p = match catalog::cached_path(e)? {
        Some(p) => p,
        None => catalog::pull(e, false)?,
    };
    println!("{}", p.display());
    Ok(())
}
