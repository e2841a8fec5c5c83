//! Splitting text around special-token strings, as llama.cpp's `tokenizer_st_partition` does.
//!
//! llama.cpp walks the special tokens (CONTROL, USER_DEFINED or UNKNOWN attribute) longest text
//! first; for each one it splits every still-plain fragment at the token's leftmost
//! non-overlapping occurrences. Without `parse_special` only USER_DEFINED tokens take part.
//! The order matters: a longer token claims its text before a shorter one that overlaps it,
//! even when the shorter one starts earlier.
//!
//! Doing that literally costs one scan of the text per special token (gemma: ~6,400). Here one
//! Aho-Corasick pass finds every occurrence of every special token, and the same
//! longest-first, leftmost-first claims are replayed on that list. Equivalence: an occurrence
//! lies inside a plain fragment exactly when it overlaps no span claimed so far.

use std::collections::BTreeMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::vocab::{attr, Vocab};

/// A piece of the input: plain text for the backend, or a special token's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

#[derive(Debug)]
pub(crate) struct SpecialMatcher {
    /// Special token ids, longest text first (ties: lower id first). Pattern `i` of `ac` is
    /// the text of `ids[i]`.
    ids: Vec<u32>,
    /// Whether `ids[i]` is matched only with `parse_special` (CONTROL or UNKNOWN).
    parse_only: Vec<bool>,
    ac: Option<AhoCorasick>,
}

impl SpecialMatcher {
    pub(crate) fn new(vocab: &Vocab) -> SpecialMatcher {
        let special = attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN;
        let mut ids: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&id| vocab.attr(id) & special != 0)
            .collect();
        ids.sort_by_key(|&id| std::cmp::Reverse(vocab.tokens[id as usize].len()));
        let parse_only = ids
            .iter()
            .map(|&id| vocab.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0)
            .collect();
        let ac = (!ids.is_empty()).then(|| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .build(ids.iter().map(|&id| vocab.tokens[id as usize].as_bytes()))
                .expect("special-token automaton fits in memory")
        });
        SpecialMatcher { ids, parse_only, ac }
    }

    /// Split `text` into plain fragments and special tokens, in order.
    pub(crate) fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let Some(ac) = &self.ac else {
            return plain(text);
        };
        // Every occurrence of every eligible special token: (pattern, start, end).
        let mut hits: Vec<(usize, usize, usize)> = ac
            .find_overlapping_iter(text)
            .map(|m| (m.pattern().as_usize(), m.start(), m.end()))
            .filter(|&(p, _, _)| parse_special || !self.parse_only[p])
            .collect();
        if hits.is_empty() {
            return plain(text);
        }
        hits.sort_unstable();

        // Claimed spans: start -> (end, id). Spans never overlap.
        let mut claimed: BTreeMap<usize, (usize, u32)> = BTreeMap::new();
        let mut pattern = usize::MAX;
        let mut pattern_end = 0;
        for (p, start, end) in hits {
            if p != pattern {
                pattern = p;
                pattern_end = 0;
            }
            if start < pattern_end {
                continue; // overlaps this token's previous occurrence
            }
            let overlaps = claimed
                .range(..end)
                .next_back()
                .is_some_and(|(_, &(claimed_end, _))| claimed_end > start);
            if !overlaps {
                claimed.insert(start, (end, self.ids[p]));
                pattern_end = end;
            }
        }

        let mut out = Vec::with_capacity(2 * claimed.len() + 1);
        let mut pos = 0;
        for (start, (end, id)) in claimed {
            if start > pos {
                out.push(Fragment::Text(&text[pos..start]));
            }
            out.push(Fragment::Token(id));
            pos = end;
        }
        if pos < text.len() {
            out.push(Fragment::Text(&text[pos..]));
        }
        out
    }
}

fn plain(text: &str) -> Vec<Fragment<'_>> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![Fragment::Text(text)]
    }
}
