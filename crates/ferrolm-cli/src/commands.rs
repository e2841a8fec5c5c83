//! The one-shot commands: tokenize, logits, generate, info, pull; and the shared set-up
//! (threads, model loading, sampling parameters from flags).

use crate::{BeamOpts, ConstrainOpts, DecodeOpts, ModelOpts, SampleOpts};
use anyhow::{anyhow, bail, Context, Result};
use ferrolm_engine::constrain::{Constraint, Grammar};
use ferrolm_engine::{
    catalog, generate as run_generate, Decoding, Draft, FinishReason, GenerateRequest, LoadedModel,
    Speculative,
};
use ferrolm_model::spec::Topology;
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
    let mut lm = ferrolm_engine::load_with(&m.model, m.json, m.quantize.as_deref())?;
    for a in &m.lora {
        let from_gguf = lm.file.is_some();
        let applied = ferrolm_engine::lora::apply(&mut lm.model, from_gguf, a)?;
        if !m.json {
            eprintln!(
                "LoRA '{}': {} layers, rank {}, scaling {} x {}",
                a.dir.display(),
                applied.layers,
                applied.rank,
                applied.scaling,
                a.scale
            );
        }
    }
    let long = m.long.args();
    long.apply_scaling(&mut lm.model)?;
    // Checked now, so a bad combination fails before any work.
    long.policy(&lm.model)?;
    Ok(lm)
}

/// `convert HF_DIR OUT.gguf --type T`.
pub fn convert(input: &std::path::Path, output: &std::path::Path, ty: &str) -> Result<()> {
    let ty = ferrolm_engine::convert::parse_type(ty)?;
    if !ferrolm_format::hf::HfDir::is_hf_dir(input) {
        bail!(
            "'{}' is not a Hugging Face model directory (no config.json)",
            input.display()
        );
    }
    let w = ferrolm_engine::convert::convert(input, ty)?;
    let tmp = output.with_extension("gguf.partial");
    w.write_file(&tmp)?;
    std::fs::rename(&tmp, output)?;
    let size = std::fs::metadata(output)?.len();
    eprintln!(
        "wrote {} ({:.1} MB, matrices {})",
        output.display(),
        size as f64 / 1e6,
        ty.name()
    );
    Ok(())
}

pub fn new_cache(lm: &LoadedModel, m: &ModelOpts) -> Result<KvCache> {
    let n_ctx = m.ctx.unwrap_or(lm.model.config.context_length);
    if n_ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    let soft = match &m.prompt_adapter {
        Some(dir) => ferrolm_engine::lora::load_prompt(&lm.model, dir)?,
        None => Vec::new(),
    };
    let n_soft = soft.len() / lm.model.config.hidden;
    let mut kv = lm
        .model
        .new_cache_with(n_ctx + n_soft, precision(m, &lm.model));
    m.long.args().apply(&lm.model, &mut kv)?;
    if n_soft > 0 {
        lm.model.prefill_soft(&soft, &mut kv)?;
    }
    Ok(kv)
}

/// `--cache-type`, or the model's own default (f16 for GGUF, f32 for HF).
pub fn precision(m: &ModelOpts, model: &ferrolm_model::Model) -> ferrolm_model::KvPrecision {
    match m.cache_type.as_deref() {
        Some("f32") => ferrolm_model::KvPrecision::F32,
        Some(_) => ferrolm_model::KvPrecision::F16,
        None => model.kv_precision,
    }
}

/// Sampling parameters: the flags given, else the model's `generation_config.json` (Hugging
/// Face models: `do_sample` with its `temperature`, `top_k`, `top_p`, `repetition_penalty`,
/// or greedy), else ferrolm's defaults (greedy; top-k 40, top-p 0.95, min-p 0.05 when sampling).
pub fn sampling(s: &SampleOpts, lm: &LoadedModel) -> Result<SamplingParams> {
    let gen = lm.hf.as_ref().and_then(|h| h.generation.as_ref());
    // transformers' defaults when a config samples without naming a value.
    let (g_temp, g_top_k, g_top_p, g_min_p) = match gen {
        Some(g) if g.do_sample == Some(true) => (
            g.temperature.unwrap_or(1.0),
            g.top_k.unwrap_or(50),
            g.top_p.unwrap_or(1.0),
            0.0,
        ),
        Some(_) => (0.0, 40, 0.95, 0.0),
        None => (0.0, 40, 0.95, 0.05),
    };
    let g_rep = gen.and_then(|g| g.repetition_penalty);
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
        temperature: s.temperature.unwrap_or(g_temp),
        top_k: s.top_k.unwrap_or(g_top_k),
        top_p: s.top_p.unwrap_or(g_top_p),
        min_p: s.min_p.unwrap_or(g_min_p),
        typical_p: s.typical_p,
        tfs_z: s.tfs,
        repeat_penalty: if s.repeat_penalty != 1.0 {
            s.repeat_penalty
        } else {
            g_rep.unwrap_or(1.0)
        },
        repeat_last_n: s.repeat_last_n,
        frequency_penalty: s.frequency_penalty,
        presence_penalty: s.presence_penalty,
        logit_bias,
        seed: s.seed,
        mirostat: s.mirostat,
        mirostat_tau: s.mirostat_tau,
        mirostat_eta: s.mirostat_eta,
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
        (None, Some(t)) => lm.tok()?.encode(&t, true, parse_special)?,
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
    lm.chat_prompt(messages)
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
    decoder_ids: Option<Vec<u32>>,
    text: Option<String>,
) -> Result<()> {
    let lm = open(m)?;
    let enc_ids = prompt_ids(&lm, ids, text, false)?;
    let mut kv = new_cache(&lm, m)?;
    let ids = match (lm.model.topology(), decoder_ids) {
        (Topology::Encoder, _) => bail!(
            "{} is an encoder without an LM head; use `ferrolm embed` (with --pooling none for hidden states)",
            lm.model.config.arch
        ),
        (Topology::EncoderDecoder, dec) => {
            let dec = match dec {
                Some(d) => d,
                None => vec![lm.decoder_start().ok_or_else(|| {
                    anyhow!("give the decoder's input with --decoder-ids (the model names no decoder start token)")
                })?],
            };
            if dec.is_empty() {
                bail!("--decoder-ids is empty");
            }
            let enc = lm.model.encode(&enc_ids, None)?;
            kv = lm.model.new_cache_with(dec.len().max(kv.n_ctx), precision(m, &lm.model));
            lm.model.start_decoder(&enc, &mut kv)?;
            dec
        }
        (Topology::Decoder, Some(_)) => {
            bail!("--decoder-ids is for encoder-decoder models; this one is decoder-only")
        }
        (Topology::Decoder, None) => enc_ids,
    };
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

/// The grammar the constraint flags ask for, if any (files read, JSON parsed).
pub fn grammar(c: &ConstrainOpts) -> Result<Option<Grammar>> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("{flag} '{}': cannot read it", path.display()))
    };
    Ok(if let Some(arg) = &c.json_schema {
        let text = if arg.trim_start().starts_with('{') {
            arg.clone()
        } else {
            read("--json-schema", std::path::Path::new(arg))?
        };
        let schema = serde_json::from_str(&text)
            .with_context(|| format!("--json-schema '{arg}' is not valid JSON"))?;
        Some(Grammar::JsonSchema(schema))
    } else if c.json_object {
        Some(Grammar::JsonObject)
    } else if let Some(rx) = &c.regex {
        Some(Grammar::Regex(rx.clone()))
    } else if let Some(path) = &c.grammar {
        Some(Grammar::Lark(read("--grammar", path)?))
    } else {
        None
    })
}

/// The decoding rule and speculative setting the flags ask for (a draft model is loaded here).
pub fn decoding(
    d: &DecodeOpts,
    s: &SampleOpts,
    m: &ModelOpts,
) -> Result<(Decoding, Option<Speculative>)> {
    let rule = match d.decoding.as_str() {
        "contrastive" => Decoding::Contrastive {
            alpha: d.penalty_alpha,
            k: s.top_k.unwrap_or(4),
        },
        "dola" => Decoding::Dola {
            layers: d.dola_layers.parse()?,
        },
        _ => Decoding::Sample,
    };
    let draft = match (d.speculative.as_deref(), &d.draft_model) {
        (None, None) => None,
        (Some(_), Some(_)) => bail!("give either --speculative or --draft-model, not both"),
        (Some("ngram"), None) => Some(Draft::Ngram { max_ngram: d.ngram }),
        (Some(x), None) => match x.strip_prefix("early-exit:").map(str::parse::<usize>) {
            Some(Ok(layer)) => Some(Draft::EarlyExit { layer }),
            _ => bail!("--speculative '{x}': give ngram or early-exit:LAYER (e.g. early-exit:8)"),
        },
        (None, Some(path)) => {
            let dm = ModelOpts {
                model: path.clone(),
                quantize: None,
                ..m.clone()
            };
            let lm = open(&dm).with_context(|| format!("loading the draft model {path}"))?;
            Some(Draft::Model(std::sync::Arc::new(lm)))
        }
    };
    let speculative = draft.map(|draft| {
        let max = d.draft_max.unwrap_or(match draft {
            Draft::Ngram { .. } => 10,
            _ => 4,
        });
        Speculative { draft, max }
    });
    if speculative.as_ref().is_some_and(|s| s.max == 0) {
        bail!("--draft-max must be at least 1");
    }
    Ok((rule, speculative))
}

/// The constraint for `grammar`, compiled over the model's vocabulary.
pub fn constraint(grammar: Option<Grammar>, lm: &LoadedModel) -> Result<Option<Constraint>> {
    grammar.map(|g| lm.constraint(&g)).transpose()
}

#[allow(clippy::too_many_arguments)]
pub fn generate(
    m: &ModelOpts,
    s: &SampleOpts,
    chat: bool,
    ids: Option<Vec<u32>>,
    b: &BeamOpts,
    c: &ConstrainOpts,
    d: &DecodeOpts,
    text: Option<String>,
) -> Result<()> {
    // Flag and file errors come before the model is loaded.
    let grammar = grammar(c)?;
    let lm = open(m)?;
    let sampling = sampling(s, &lm)?;
    let (rule, speculative) = decoding(d, s, m)?;
    let constraint = constraint(grammar, &lm)?;
    if b.beams.is_some_and(|n| n > 1) || b.num_return.is_some() {
        if constraint.is_some() {
            bail!("--beams does not combine with --json-schema, --json-object, --regex or --grammar yet; leave one out");
        }
        return beams(m, s, b, &lm, ids, text);
    }
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
        constraint,
        decoding: rule,
        speculative,
    };
    let cancel = AtomicBool::new(false);
    let started = std::time::Instant::now();
    let json_out = m.json;
    let mut stdout = std::io::stdout();
    let out = run_generate(&lm, &mut kv, &req, &cancel, &mut |piece| {
        if !json_out {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if json_out {
        let seconds = started.elapsed().as_secs_f64();
        let mut j = json!({
            "ids": out.ids,
            "text": out.text,
            "seconds": seconds,
            "prompt_seconds": out.prompt_seconds,
            "decode_seconds": out.decode_seconds,
            // The first token comes with the prompt's pass; the rest are decoding's.
            "decode_tokens_per_second": out.ids.len().saturating_sub(1) as f64 / out.decode_seconds.max(1e-9),
        });
        if let Some(st) = out.speculative {
            j["speculative"] = json!({
                "passes": st.steps,
                "drafted": st.drafted,
                "accepted": st.accepted,
                "acceptance": st.acceptance(),
            });
        }
        println!("{j}");
    } else {
        println!();
    }
    if let Some(c) = &req.constraint {
        if out.finish != FinishReason::Stop {
            bail!(
                "the output was cut at {} tokens before the {} was complete, so it does not parse; raise --max-tokens",
                out.ids.len(),
                c.what()
            );
        }
    }
    Ok(())
}

pub fn info(m: &ModelOpts) -> Result<()> {
    let lm = open(m)?;
    let Some(file) = &lm.file else {
        return info_hf(m, &lm);
    };
    let h = &file.header;
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
    let tok = lm.tok()?;
    let windows = layer_windows(c);
    let template = h.get("tokenizer.chat_template").and_then(|v| v.as_str());
    let mut v = config_json(&lm);
    let more = json!({
        "gguf_version": h.version,
        "file_bytes": file_size,
        "parameters": n_params,
        "tensor_types": types.iter().map(|(k, (n, b))| json!({"type": k, "tensors": n, "bytes": b})).collect::<Vec<_>>(),
        "bos": tok.bos_id(), "eos": tok.eos_id(), "add_bos": tok.add_bos(),
        "end_of_generation": tok.end_of_generation_ids(),
        "chat_template": template,
    });
    v.as_object_mut()
        .unwrap()
        .extend(more.as_object().unwrap().clone());
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
        tok.bos_id(),
        tok.eos_id(),
        tok.add_bos()
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

/// `info` for a Hugging Face directory: the config as ferrolm reads it.
fn info_hf(m: &ModelOpts, lm: &LoadedModel) -> Result<()> {
    let c = &lm.model.config;
    let mut v = config_json(lm);
    let more = json!({
        "topology": format!("{:?}", c.topology),
        "encoder_layers": c.encoder_layers.len(),
        "ffn": format!("{:?}", c.ffn),
        "norm": format!("{:?} {:?} {:?}", c.norm.kind, c.placement, c.residual),
        "position": format!("{:?}", c.layers[0].position),
        "tokenizer": lm.tokenizer.is_some(),
        "end_of_generation": lm.end_of_generation_ids(),
        "decoder_start": lm.decoder_start(),
    });
    v.as_object_mut()
        .unwrap()
        .extend(more.as_object().unwrap().clone());
    if m.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// Each layer's window (`global` for none).
fn layer_windows(c: &ferrolm_model::ModelConfig) -> Vec<String> {
    c.layers
        .iter()
        .map(|l| l.window.map(|w| w.to_string()).unwrap_or("global".into()))
        .collect()
}

/// What `info --json` says of every model: its name, path and shape.
fn config_json(lm: &LoadedModel) -> serde_json::Value {
    let c = &lm.model.config;
    json!({
        "name": lm.name,
        "path": lm.path.display().to_string(),
        "architecture": c.arch,
        "layers": c.n_layers(),
        "hidden": c.hidden,
        "ffn_hidden": c.ffn_hidden,
        "heads": c.attn.n_heads,
        "kv_heads": c.attn.n_kv_heads,
        "head_dim": c.attn.head_dim,
        "vocab_size": c.vocab_size,
        "context_length": c.context_length,
        "layer_windows": layer_windows(c),
        "tied_embeddings": c.tied_embeddings,
    })
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

/// `generate --beams B`: beam search equal to Hugging Face `generate(num_beams=B)`; prints
/// `{"beams": [{"ids", "score"(, "text")}]}` best first, new tokens only.
fn beams(
    m: &ModelOpts,
    s: &SampleOpts,
    b: &BeamOpts,
    lm: &LoadedModel,
    ids: Option<Vec<u32>>,
    text: Option<String>,
) -> Result<()> {
    use ferrolm_sample::beam::{BeamParams, EarlyStopping};
    let prompt = prompt_ids(lm, ids, text, false)?;
    let gen = lm.hf.as_ref().and_then(|h| h.generation.as_ref());
    let num_beams = b.beams.or(gen.and_then(|g| g.num_beams)).unwrap_or(1);
    let early = match b.early_stopping.as_deref() {
        Some(x) => x.to_string(),
        None => match gen.and_then(|g| g.early_stopping.clone()) {
            Some(serde_json::Value::Bool(v)) => v.to_string(),
            Some(serde_json::Value::String(v)) => v,
            _ => "false".into(),
        },
    };
    let p = BeamParams {
        num_beams,
        num_return: b.num_return.unwrap_or(1),
        length_penalty: b
            .length_penalty
            .or(gen.and_then(|g| g.length_penalty))
            .unwrap_or(1.0),
        early_stopping: match early.as_str() {
            "true" => EarlyStopping::True,
            "never" => EarlyStopping::Never,
            _ => EarlyStopping::False,
        },
        max_new_tokens: s.n,
        eos: if s.ignore_eos {
            Vec::new()
        } else {
            lm.end_of_generation_ids()
        },
    };
    let hyps = ferrolm_engine::search::beam(&lm.model, &prompt, lm.decoder_start(), &p)?;
    let out: Vec<_> = hyps
        .iter()
        .map(|h| {
            let mut v = json!({ "ids": h.ids, "score": h.score });
            if let Some(t) = &lm.tokenizer {
                v["text"] = json!(t.decode(&h.ids, false));
            }
            v
        })
        .collect();
    if m.json {
        println!("{}", json!({ "beams": out }));
    } else {
        for (i, h) in out.iter().enumerate() {
            println!(
                "#{i} score {:.4}: {}",
                h["score"],
                h.get("text")
                    .and_then(|t| t.as_str())
                    .map_or(h["ids"].to_string(), |t| t.to_string())
            );
        }
    }
    Ok(())
}

/// `embed`: sentence embeddings (`{"embeddings": [[..], ..]}`) or, with `--pooling none`,
/// last hidden states (`{"hidden": [[..], ..]}`, one row per token of the single input).
pub fn embed(
    m: &ModelOpts,
    pooling: Option<String>,
    normalize: Option<bool>,
    ids: Option<Vec<u32>>,
    texts: Vec<String>,
) -> Result<()> {
    use ferrolm_format::hf::{pool, Pooling};
    let lm = open(m)?;
    let sentence = lm.hf.as_ref().map(|h| h.sentence);
    let (own_pooling, own_norm) = lm.pooling();
    let pool_mode = match pooling.as_deref() {
        None => Some(own_pooling),
        Some("none") => None,
        Some(p) => Some(Pooling::from_config(&json!({ "pooling_mode": p }))?),
    };
    let norm = normalize.unwrap_or(own_norm);
    let max_len = sentence
        .and_then(|s| s.max_seq_length)
        .unwrap_or(lm.model.config.context_length);
    let inputs: Vec<Vec<u32>> = match (ids, texts.is_empty()) {
        (Some(ids), true) => vec![ids],
        (None, false) => texts
            .iter()
            .map(|t| Ok(lm.tok()?.encode_truncated(t, max_len)?))
            .collect::<Result<_>>()?,
        (Some(_), false) => bail!("give either TEXT arguments or --ids, not both"),
        (None, true) => bail!("nothing to embed: give one or more TEXT arguments or --ids"),
    };
    if pool_mode.is_none() && inputs.len() > 1 {
        bail!("--pooling none prints the hidden states of one input; give one TEXT");
    }
    let c = lm.model.config.hidden;
    let mut rows = Vec::new();
    for ids in &inputs {
        let hidden = lm.hidden_states(ids)?;
        match pool_mode {
            Some(p) => rows.push(pool(&hidden, c, p, norm)),
            None => rows.extend(hidden.chunks(c).map(|r| r.to_vec())),
        }
    }
    let key = if pool_mode.is_some() {
        "embeddings"
    } else {
        "hidden"
    };
    if m.json {
        println!("{}", json!({ key: rows }));
    } else {
        for r in &rows {
            let head: Vec<String> = r.iter().take(8).map(|x| format!("{x:.5}")).collect();
            println!("[{} ...] ({} dims)", head.join(", "), r.len());
        }
    }
    Ok(())
}

/// `export --merge --out OUT.gguf`: the base with its adapters folded in.
pub fn export(m: &ModelOpts, merge: bool, out: &std::path::Path) -> Result<()> {
    if !merge {
        bail!(
            "export needs --merge (folding --lora adapters into the weights is all it does so far)"
        );
    }
    if m.lora.is_empty() {
        bail!("export --merge needs at least one --lora DIR");
    }
    if m.prompt_adapter.is_some() {
        bail!("export --merge folds LoRA adapters; a --prompt-adapter has no weights to fold into");
    }
    let lm = open(m)?;
    let w = ferrolm_engine::lora::merge_gguf(&lm)?;
    let tmp = out.with_extension("gguf.partial");
    w.write_file(&tmp)?;
    std::fs::rename(&tmp, out)?;
    eprintln!("wrote {} (the adapters merged)", out.display());
    Ok(())
}
