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
//! lies inside a plain fragment exactly when it overlaps no span claimed so far. Cost:
//! O(n + h log h) for h occurrences (h <= n x the number of specials matching at one position).

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
    /// Byte length of `ids[i]`'s text.
    lens: Vec<usize>,
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
        let lens = ids
            .iter()
            .map(|&id| vocab.tokens[id as usize].len())
            .collect();
        let ac = (!ids.is_empty()).then(|| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .build(ids.iter().map(|&id| vocab.tokens[id as usize].as_bytes()))
                .expect("special-token automaton fits in memory")
        });
        SpecialMatcher {
            ids,
            parse_only,
            lens,
            ac,
        }
    }

    /// Split `text` into plain fragments and special tokens, in order.
    pub(crate) fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let Some(ac) = &self.ac else {
            return plain(text);
        };
        // Every occurrence of every eligible special token, packed as (pattern << 40 | start)
        // so that one integer sort orders them by claim order, then position.
        let mut hits: Vec<u64> = ac
            .find_overlapping_iter(text)
            .filter(|m| parse_special || !self.parse_only[m.pattern().as_usize()])
            .map(|m| (m.pattern().as_u64() << 40) | m.start() as u64)
            .collect();
        if hits.is_empty() {
            return plain(text);
        }
        assert!(text.len() < 1 << 40, "text over 1 TiB");
        hits.sort_unstable();

        // `covered[i]`: byte i belongs to a claimed special token. Claims come longest first,
        // so a claimed span can only overlap a new candidate [s, e) by covering s or e - 1
        // (a span strictly inside would be shorter).
        let mut covered = vec![false; text.len()];
        let mut claimed: Vec<(usize, usize, u32)> = Vec::new();
        let mut pattern = u64::MAX;
        let mut pattern_end = 0;
        for hit in hits {
            let (p, start) = (hit >> 40, (hit & ((1 << 40) - 1)) as usize);
            let id = self.ids[p as usize];
            let end = start + self.lens[p as usize];
            if p != pattern {
                pattern = p;
                pattern_end = 0;
            }
            // Skip overlaps with this token's previous occurrence or with earlier claims.
            if start < pattern_end || covered[start] || covered[end - 1] {
                continue;
            }
            covered[start..end].fill(true);
            claimed.push((start, end, id));
            pattern_end = end;
        }
        claimed.sort_unstable();

        let mut out = Vec::with_capacity(2 * claimed.len() + 1);
        let mut pos = 0;
        for (start, end, id) in claimed {
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
