//! `ferrolm eval passkey`: the standard synthetic retrieval task. A random 5-digit key sits at a
//! random depth in repeated filler text of the requested length; the model, greedy, must say
//! it after "What is the pass key? The pass key is". Accuracy per length, with the time per
//! prompt token and the KV memory the sequence held, under whatever long-context flags are
//! given.

use crate::commands::{new_cache, open};
use crate::perplexity::rss_mib;
use crate::ModelOpts;
use anyhow::{bail, Result};
use ferrolm_model::Logits;
use serde_json::json;
use std::io::Write;

const INTRO: &str = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.";
const FILLER: &str =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const QUESTION: &str = " What is the pass key? The pass key is";

/// splitmix64: a small deterministic generator for keys and depths.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The prompt text: `reps` filler sentences with the key line after `at` of them.
pub fn passkey_text(reps: usize, at: usize, key: u32) -> String {
    let mut s = String::from(INTRO);
    for i in 0..=reps {
        if i == at {
            s.push_str(&format!(
                " The pass key is {key}. Remember it. {key} is the pass key."
            ));
        }
        if i < reps {
            s.push_str(FILLER);
        }
    }
    s.push_str(QUESTION);
    s
}

/// The first run of 5 digits in `text`.
pub fn first_key(text: &str) -> Option<u32> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(4))
        .find(|&i| {
            b[i..i + 5].iter().all(u8::is_ascii_digit)
                && (i == 0 || !b[i - 1].is_ascii_digit())
                && b.get(i + 5).is_none_or(|c| !c.is_ascii_digit())
        })
        .and_then(|i| text[i..i + 5].parse().ok())
}

pub fn passkey(m: &ModelOpts, lengths: &[usize], trials: usize, seed: u64) -> Result<()> {
    if trials == 0 || lengths.is_empty() {
        bail!("give at least one --lengths value and --trials >= 1");
    }
    let lm = open(m)?;
    let tok = lm.tok()?;
    let bos = if tok.add_bos() { tok.bos_id() } else { None };
    let count = |s: &str| -> Result<usize> { Ok(tok.encode(s, false, false)?.len()) };
    let per_rep = count(&FILLER.repeat(20))? as f64 / 20.0;
    let fixed = count(&passkey_text(0, 0, 12345))?;
    let policy = m.long.args().policy(&lm.model)?;
    let mut rng = Rng(seed ^ 0x5EED);
    let mut rows = Vec::new();
    for &len in lengths {
        let reps = ((len.saturating_sub(fixed + 8)) as f64 / per_rep).floor() as usize;
        let (mut correct, mut ms, mut kv_mib, mut n_tok, mut answers) =
            (0, Vec::new(), 0f64, 0usize, Vec::new());
        for trial in 0..trials {
            let key = 10_000 + (rng.next() % 90_000) as u32;
            let at = (rng.next() % (reps as u64 + 1)) as usize;
            let mut ids: Vec<u32> = bos.into_iter().collect();
            ids.extend(tok.encode(&passkey_text(reps, at, key), false, false)?);
            n_tok = ids.len();
            let mut mo = m.clone();
            if policy.stream.is_none() {
                mo.ctx = Some(mo.ctx.unwrap_or(0).max(ids.len() + 16));
            }
            let mut kv = new_cache(&lm, &mo)?;
            let t0 = std::time::Instant::now();
            let mut logits = lm.model.forward(&ids, &mut kv, Logits::Last)?;
            ms.push(1e3 * t0.elapsed().as_secs_f64() / ids.len() as f64);
            kv_mib = kv_mib.max(kv.bytes() as f64 / (1 << 20) as f64);
            let mut out = Vec::new();
            for _ in 0..8 {
                let row: Vec<f32> = logits.flatten_all()?.to_vec1()?;
                let next = row
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |x| x.0 as u32);
                out.push(next);
                if first_key(&tok.decode(&out, false)).is_some() {
                    break;
                }
                logits = lm.model.forward(&[next], &mut kv, Logits::Last)?;
            }
            let text = tok.decode(&out, false);
            let ok = first_key(&text) == Some(key);
            correct += usize::from(ok);
            answers.push(json!({"key": key, "depth": at as f64 / reps.max(1) as f64, "answer": text.trim(), "correct": ok}));
            if !m.json {
                eprint!(
                    "\r{len}: trial {}/{trials}, {correct} correct ({:.1} ms/token)   ",
                    trial + 1,
                    ms.last().unwrap()
                );
                let _ = std::io::stderr().flush();
            }
        }
        ms.sort_by(f64::total_cmp);
        let med = ms[ms.len() / 2];
        if !m.json {
            eprintln!();
            println!(
                "length {len} ({n_tok} tokens): {correct}/{trials} = {:.0}%, {med:.2} ms/token, KV {kv_mib:.1} MiB, RSS {:.0} MiB",
                100.0 * correct as f64 / trials as f64,
                rss_mib()
            );
        }
        rows.push(
            json!({"length": len, "tokens": n_tok, "trials": trials, "correct": correct,
            "accuracy": correct as f64 / trials as f64, "ms_per_token": med, "kv_mib": kv_mib,
            "rss_mib": rss_mib(), "answers": answers}),
        );
    }
    if m.json {
        println!(
            "{}",
            json!({"task": "passkey", "model": m.model, "policy": format!("{policy:?}"), "results": rows})
        );
    }
    Ok(())
}

/// `eval exact`: greedy answers to chats against their last assistant turn.
pub fn exact(m: &ModelOpts, data: &std::path::Path, max_tokens: usize) -> Result<()> {
    use anyhow::Context;
    let lm = open(m)?;
    let tok = lm.tok()?;
    let eog = lm.end_of_generation_ids();
    let text = std::fs::read_to_string(data)
        .with_context(|| format!("cannot read --data '{}'", data.display()))?;
    let (mut n, mut correct, mut rows) = (0usize, 0usize, Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{}:{}", data.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(where_)?;
        let msgs: Vec<ferrolm_tokenize::ChatMessage> = v["messages"]
            .as_array()
            .with_context(|| format!("{}: expected a 'messages' array", where_()))?
            .iter()
            .map(|x| {
                Some(ferrolm_tokenize::ChatMessage::new(
                    x.get("role")?.as_str()?,
                    x.get("content")?.as_str()?,
                ))
            })
            .collect::<Option<_>>()
            .with_context(|| {
                format!(
                    "{}: each message needs string 'role' and 'content'",
                    where_()
                )
            })?;
        let Some(last) = msgs.iter().rposition(|x| x.role == "assistant") else {
            bail!("{}: no assistant turn to compare with", where_());
        };
        let ids = lm.chat_prompt(&msgs[..last])?;
        let mut mo = m.clone();
        mo.ctx = Some(ids.len() + max_tokens + 1);
        let mut kv = new_cache(&lm, &mo)?;
        let mut logits = lm.model.forward(&ids, &mut kv, Logits::Last)?;
        let mut out = Vec::new();
        for _ in 0..max_tokens {
            let row: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            let next = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |x| x.0 as u32);
            if eog.contains(&next) {
                break;
            }
            out.push(next);
            logits = lm.model.forward(&[next], &mut kv, Logits::Last)?;
        }
        let answer = tok.decode(&out, false);
        let ok = answer.trim() == msgs[last].content.trim();
        n += 1;
        correct += usize::from(ok);
        rows.push(json!({"expected": msgs[last].content, "answer": answer.trim(), "correct": ok}));
        if !m.json {
            eprint!("\r{n} answered, {correct} exact   ");
            let _ = std::io::stderr().flush();
        }
    }
    if n == 0 {
        bail!("'{}' holds no examples", data.display());
    }
    if m.json {
        println!(
            "{}",
            json!({"examples": n, "correct": correct, "accuracy": correct as f64 / n as f64, "answers": rows})
        );
    } else {
        eprintln!();
        for r in rows.iter().take(5) {
            println!("expected {}  got {}", r["expected"], r["answer"]);
        }
        println!(
            "exact match: {correct}/{n} = {:.1}%",
            100.0 * correct as f64 / n as f64
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_holds_the_key_once_at_its_depth() {
        let t = passkey_text(3, 1, 54321);
        assert_eq!(t.matches("54321").count(), 2);
        assert!(t.ends_with("The pass key is"));
        let at = t.find("54321").unwrap();
        assert_eq!(t[..at].matches("The grass is green").count(), 1);
    }

    #[test]
    fn key_is_the_first_five_digits() {
        assert_eq!(first_key(" 54321. Remember"), Some(54321));
        assert_eq!(first_key("123456"), None);
        assert_eq!(first_key("is 1234"), None);
        assert_eq!(first_key("a 70001"), Some(70001));
    }
}
