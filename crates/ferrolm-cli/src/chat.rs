//! `ferrolm chat`: an interactive REPL with history, streaming answers, `/reset` and `/exit`.
//! Ctrl-C while an answer streams stops that answer; at the prompt it leaves.

use crate::commands::{chat_prompt, constraint, decoding, grammar, new_cache, open, sampling};
use crate::{ConstrainOpts, DecodeOpts, ModelOpts, SampleOpts};
use anyhow::Result;
use ferrolm_engine::{generate, GenerateRequest};
use ferrolm_tokenize::ChatMessage;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub fn run(
    m: &ModelOpts,
    s: &SampleOpts,
    c: &ConstrainOpts,
    d: &DecodeOpts,
    system: Option<String>,
) -> Result<()> {
    let grammar = grammar(c)?;
    let lm = open(m)?;
    let params = sampling(s, &lm)?;
    let (rule, speculative) = decoding(d, s, m)?;
    // Compiled once; every answer starts from a fresh copy.
    let constraint = constraint(grammar, &lm)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicBool::new(false));
    {
        let (cancel, busy) = (cancel.clone(), busy.clone());
        ctrlc::set_handler(move || {
            if busy.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
            } else {
                println!();
                std::process::exit(0);
            }
        })?;
    }
    let base: Vec<ChatMessage> = system
        .into_iter()
        .map(|c| ChatMessage {
            role: "system".into(),
            content: c,
        })
        .collect();
    let mut history = base.clone();
    eprintln!(
        "ferrolm chat with {} (/reset clears the history, /exit leaves, Ctrl-C stops an answer)",
        lm.name
    );
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let input = line.trim_end_matches(['\n', '\r']);
        match input.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = base.clone();
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage {
            role: "user".into(),
            content: input.to_string(),
        });
        // The whole conversation is re-rendered each turn, so the template's formatting stays exact.
        let prompt = match chat_prompt(&lm, &history) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                history.pop();
                continue;
            }
        };
        let mut kv = new_cache(&lm, m)?;
        let req = GenerateRequest {
            prompt,
            max_tokens: s.n,
            sampling: params.clone(),
            stop: s.stop.clone(),
            ignore_eos: false,
            constraint: constraint.clone(),
            decoding: rule.clone(),
            speculative: speculative.clone(),
        };
        cancel.store(false, Ordering::SeqCst);
        busy.store(true, Ordering::SeqCst);
        let mut out = std::io::stdout();
        let result = generate(&lm, &mut kv, &req, &cancel, &mut |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        });
        busy.store(false, Ordering::SeqCst);
        println!();
        match result {
            Ok(o) => {
                if o.finish == ferrolm_engine::FinishReason::Cancelled {
                    eprintln!("(stopped)");
                }
                history.push(ChatMessage {
                    role: "assistant".into(),
                    content: o.text.trim().to_string(),
                });
            }
            Err(e) => {
                eprintln!("error: {e}");
                history.pop();
            }
        }
    }
    Ok(())
}
