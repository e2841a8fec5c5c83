//! SentencePiece tokenization (llama.cpp's `llm_tokenizer_spm`).
//!
//! Spaces become "▁"; the text is split into UTF-8 characters; then, repeatedly, the adjacent
//! pair whose concatenation is a vocabulary token with the highest score is merged (ties: the
//! leftmost pair). A final piece that is not a token falls back to its byte tokens `<0xXX>`.
//!
//! Cost: O(n log n) for n characters. Adjacent pieces are always contiguous in the text, so a
//! candidate pair is a slice of the text and looking it up allocates nothing.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::vocab::Vocab;
use crate::TokenizeError;

/// One piece of the text being merged: `text[start..start + len]`, in a doubly linked list.
/// `len == 0` marks a piece merged into its left neighbour.
#[derive(Clone, Copy)]
struct Piece {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of pieces `left` and its right neighbour `right`.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    /// Byte length of the merged text when the candidate was made; a later mismatch means
    /// one side has changed since, and the candidate is stale.
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Replace spaces with "▁" and prepend one if `prefix_space` (llama.cpp's escaping).
pub(crate) fn escape(text: &str, prefix_space: bool) -> String {
    let mut s = String::with_capacity(text.len() + 3);
    if prefix_space {
        s.push('▁');
    }
    for c in text.chars() {
        if c == ' ' {
            s.push('▁');
        } else {
            s.push(c);
        }
    }
    s
}

/// Tokenize already-escaped text, appending ids to `out`.
pub(crate) fn tokenize(vocab: &Vocab, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizeError> {
    let mut pieces: Vec<Piece> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let i = pieces.len();
        pieces.push(Piece {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: Some(i + 1),
        });
    }
    let Some(last) = pieces.last_mut() else {
        return Ok(());
    };
    last.next = None;

    let mut queue = BinaryHeap::new();
    let candidate = |pieces: &[Piece], left: Option<usize>, right: Option<usize>| {
        let (left, right) = (left?, right?);
        let (l, r) = (pieces[left], pieces[right]);
        let len = l.len + r.len;
        let id = vocab.get(&text[l.start..l.start + len])?;
        Some(Bigram {
            left,
            right,
            score: vocab.scores[id as usize],
            len,
        })
    };
    for i in 1..pieces.len() {
        queue.extend(candidate(&pieces, Some(i - 1), Some(i)));
    }

    while let Some(b) = queue.pop() {
        let (l, r) = (pieces[b.left], pieces[b.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
            continue;
        }
        pieces[b.left].len = b.len;
        pieces[b.left].next = r.next;
        pieces[b.right].len = 0;
        if let Some(n) = r.next {
            pieces[n].prev = Some(b.left);
        }
        queue.extend(candidate(&pieces, l.prev, Some(b.left)));
        queue.extend(candidate(&pieces, Some(b.left), r.next));
    }

    let mut cur = Some(0);
    while let Some(i) = cur {
        let p = pieces[i];
        let s = &text[p.start..p.start + p.len];
        match vocab.get(s) {
            Some(id) => out.push(id),
            None => byte_fallback(vocab, s, out)?,
        }
        cur = p.next;
    }
    Ok(())
}

/// A piece that is not a token: its bytes as `<0xXX>` tokens, else the unknown token once per
/// character (llama.cpp aborts here; SentencePiece emits `<unk>`).
fn byte_fallback(vocab: &Vocab, s: &str, out: &mut Vec<u32>) -> Result<(), TokenizeError> {
    let bytes: Option<Vec<u32>> = s.bytes().map(|b| vocab.spm_byte_token(b)).collect();
    match (bytes, vocab.unk) {
        (Some(ids), _) => out.extend(ids),
        (None, Some(unk)) => out.extend(s.chars().map(|_| unk)),
        (None, None) => {
            let ch = s.chars().next().unwrap_or('\0');
            return Err(TokenizeError::Unencodable {
                ch,
                byte: s.as_bytes()[0],
            });
        }
    }
    Ok(())
}
