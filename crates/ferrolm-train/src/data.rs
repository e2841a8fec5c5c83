//! Training data: JSON lines, each one example in one of four shapes.
//!
//! - `{"messages": [{"role", "content"}, ...]}`: a chat through the model's template; the loss
//!   is on the assistant turns only.
//! - `{"prompt": "...", "completion": "..."}`: the loss is on the completion (and the end of
//!   generation token after it).
//! - `{"text": "..."}`: the loss is on every token.
//! - `{"input_ids": [...]}`: token ids as given (models without a tokenizer); loss on all.

use anyhow::{bail, Context, Result};
use ferrolm_engine::LoadedModel;
use ferrolm_tokenize::ChatMessage;
use serde_json::Value;
use std::path::Path;

/// One tokenized example: `targets[i]` is the token position `i` must predict, where the loss
/// counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub targets: Vec<Option<u32>>,
}

impl Example {
    /// `ids` with the loss on the tokens at `loss[i] == true` (each predicted by the one
    /// before).
    pub fn new(ids: Vec<u32>, loss: &[bool]) -> Example {
        let targets = (0..ids.len())
            .map(|i| (i + 1 < ids.len() && loss[i + 1]).then(|| ids[i + 1]))
            .collect();
        Example { ids, targets }
    }
    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|t| t.is_some()).count()
    }
}

fn encode(lm: &LoadedModel, text: &str, bos: bool) -> Result<Vec<u32>> {
    let tok = lm.tok()?;
    Ok(tok.encode(text, bos && tok.add_bos(), true)?)
}

/// One line's example (`None` for a blank line).
pub fn parse_line(lm: &LoadedModel, line: &str, max_len: usize) -> Result<Option<Example>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(line).context("not valid JSON")?;
    let (ids, loss): (Vec<u32>, Vec<bool>) = if let Some(ids) = v.get("input_ids") {
        let ids: Vec<u32> = ids
            .as_array()
            .context("'input_ids' must be an array of token ids")?
            .iter()
            .map(|x| {
                x.as_u64()
                    .filter(|&x| x < u32::MAX as u64)
                    .map(|x| x as u32)
            })
            .collect::<Option<_>>()
            .context("'input_ids' must hold non-negative integers")?;
        let n = ids.len();
        (ids, vec![true; n])
    } else if let Some(t) = v.get("text") {
        let t = t.as_str().context("'text' must be a string")?;
        let ids = encode(lm, t, true)?;
        let n = ids.len();
        (ids, vec![true; n])
    } else if let (Some(p), Some(c)) = (v.get("prompt"), v.get("completion")) {
        let (p, c) = (
            p.as_str().context("'prompt' must be a string")?,
            c.as_str().context("'completion' must be a string")?,
        );
        let mut ids = encode(lm, p, true)?;
        let n_p = ids.len();
        ids.extend(encode(lm, c, false)?);
        if let Some(&eos) = lm.end_of_generation_ids().first() {
            ids.push(eos);
        }
        let loss = (0..ids.len()).map(|i| i >= n_p).collect();
        (ids, loss)
    } else if let Some(msgs) = v.get("messages") {
        let msgs: Vec<ChatMessage> = msgs
            .as_array()
            .context("'messages' must be an array")?
            .iter()
            .map(|m| {
                Some(ChatMessage::new(
                    m.get("role")?.as_str()?,
                    m.get("content")?.as_str()?,
                ))
            })
            .collect::<Option<_>>()
            .context("each message needs string 'role' and 'content'")?;
        if !msgs.iter().any(|m| m.role == "assistant") {
            bail!("the conversation has no assistant turn to learn from");
        }
        // The whole chat; each assistant turn's tokens lie between the prompt that opens it
        // and the chat rendered through it.
        let full = chat_ids(lm, &msgs, false)?;
        let mut loss = vec![false; full.len()];
        for (i, m) in msgs.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let start = chat_ids(lm, &msgs[..i], true)?.len();
            let end = chat_ids(lm, &msgs[..=i], false)?.len().min(full.len());
            loss[start.min(end)..end].iter_mut().for_each(|x| *x = true);
        }
        (full, loss)
    } else {
        bail!("expected one of 'messages', 'prompt' + 'completion', 'text' or 'input_ids'");
    };
    let vocab = lm.model.config.vocab_size;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        bail!("token id {bad} is outside the model's vocabulary of {vocab}");
    }
    let keep = ids.len().min(max_len);
    let ex = Example::new(ids[..keep].to_vec(), &loss[..keep]);
    if ex.n_targets() == 0 {
        bail!("nothing to learn: no loss token within --max-len {max_len}");
    }
    Ok(Some(ex))
}

fn chat_ids(lm: &LoadedModel, msgs: &[ChatMessage], open: bool) -> Result<Vec<u32>> {
    let text = lm.template.render(msgs, open)?;
    let tok = lm.tok()?;
    let bos_text = tok.bos_id().and_then(|b| tok.id_to_token(b)).unwrap_or("");
    let add_bos = tok.add_bos() && !(bos_text.is_empty() || text.starts_with(bos_text));
    Ok(tok.encode(&text, add_bos, true)?)
}

/// Every example of a JSON-lines file; an error names the line.
pub fn load(lm: &LoadedModel, path: &Path, max_len: usize) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --data '{}'", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(e) = parse_line(lm, line, max_len)
            .with_context(|| format!("{}:{}", path.display(), i + 1))?
        {
            out.push(e);
        }
    }
    if out.is_empty() {
        bail!("'{}' holds no examples", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_next_loss_tokens() {
        let e = Example::new(vec![1, 2, 3, 4], &[false, false, true, true]);
        assert_eq!(e.targets, vec![None, Some(3), Some(4), None]);
        assert_eq!(e.n_targets(), 2);
    }
}
