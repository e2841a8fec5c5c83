//! Stop-string matching over streamed text pieces (pure string logic for the engine).
//!
//! Text is emitted as soon as it can no longer be part of a stop string; a tail that is
//! still a prefix of some stop string is held back until the next piece decides it.
//! The result equals "the stream up to the first occurrence of any stop string",
//! however the stream is split into pieces: a full match is reported only once no
//! earlier-starting stop string could still complete.

/// What the caller may stream after a [`StopMatcher::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopState {
    /// No stop yet; `emit` is safe to stream now (possibly empty while text is held back).
    Continue {
        /// Text to stream.
        emit: String,
    },
    /// A stop string matched: stream `emit` (the text before it) and end the generation.
    /// The stop string itself is not emitted.
    Stop {
        /// Text before the stop string.
        emit: String,
    },
}

/// Finds the first occurrence of any of a set of stop strings in streamed text.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Received text not yet emitted (always a suffix of the stream).
    held: String,
    /// Index into `stops` of the string that matched, once stopped.
    matched: Option<usize>,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            stops: stops
                .into_iter()
                .map(Into::into)
                .filter(|s: &String| !s.is_empty())
                .collect(),
            held: String::new(),
            matched: None,
        }
    }

    /// The (non-empty) stop strings.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// The stop string that ended the stream, if any.
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// True once a stop string matched; later pushes return `Stop` with nothing to emit.
    pub fn is_stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// Feeds the next piece of decoded text.
    pub fn push(&mut self, piece: &str) -> StopState {
        if self.is_stopped() {
            return StopState::Stop {
                emit: String::new(),
            };
        }
        self.held.push_str(piece);
        let full = self.earliest_full_match();
        let limit = full.map_or(self.held.len(), |(pos, _)| pos);
        if let Some(q) = self.earliest_pending(limit) {
            // An earlier stop string may still complete: emit only what precedes it.
            return StopState::Continue {
                emit: self.take_prefix(q),
            };
        }
        if let Some((pos, idx)) = full {
            return StopState::Stop {
                emit: self.stop_at(pos, idx),
            };
        }
        StopState::Continue {
            emit: std::mem::take(&mut self.held),
        }
    }

    /// Ends the stream: returns the held-back text, cut at a stop string if one is in
    /// it (then [`is_stopped`](Self::is_stopped) becomes true).
    pub fn flush(&mut self) -> String {
        if self.is_stopped() {
            self.held.clear();
            return String::new();
        }
        match self.earliest_full_match() {
            Some((pos, idx)) => self.stop_at(pos, idx),
            None => std::mem::take(&mut self.held),
        }
    }

    /// Forgets held text and any match, keeping the stop strings.
    pub fn reset(&mut self) {
        self.held.clear();
        self.matched = None;
    }

    /// Byte position and stop index of the earliest full match in `held`
    /// (ties: the stop listed first).
    fn earliest_full_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|pos| (pos, i)))
            .min()
    }

    /// Earliest start `q < limit` such that `held[q..]` is a proper prefix of a stop string.
    fn earliest_pending(&self, limit: usize) -> Option<usize> {
        let max_len = self.stops.iter().map(String::len).max()?;
        let bytes = self.held.as_bytes();
        let start = bytes.len().saturating_sub(max_len - 1);
        (start..limit).find(|&q| {
            let tail = &bytes[q..];
            self.held.is_char_boundary(q)
                && self
                    .stops
                    .iter()
                    .any(|s| s.len() > tail.len() && s.as_bytes().starts_with(tail))
        })
    }

    /// Removes and returns `held[..q]`.
    fn take_prefix(&mut self, q: usize) -> String {
        let rest = self.held.split_off(q);
        std::mem::replace(&mut self.held, rest)
    }

    /// Records the match of stop `idx` at `pos`; returns the text before it.
    fn stop_at(&mut self, pos: usize, idx: usize) -> String {
        self.matched = Some(idx);
        let mut emit = std::mem::take(&mut self.held);
        emit.truncate(pos);
        emit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cont(s: &str) -> StopState {
        StopState::Continue { emit: s.into() }
    }

    fn stop(s: &str) -> StopState {
        StopState::Stop { emit: s.into() }
    }

    #[test]
    fn stop_spanning_pieces() {
        let mut m = StopMatcher::new(["</s>"]);
        assert_eq!(m.push("Hello"), cont("Hello"));
        assert_eq!(m.push(" wor"), cont(" wor"));
        assert_eq!(m.push("ld<"), cont("ld"));
        assert_eq!(m.push("/"), cont(""));
        assert_eq!(m.push("s>more"), stop(""));
        assert_eq!(m.matched(), Some("</s>"));
        assert_eq!(m.push("ignored"), stop(""));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_inside_one_piece() {
        let mut m = StopMatcher::new(["\n\n", "User:"]);
        assert_eq!(m.push("answer.User: hi"), stop("answer."));
        assert_eq!(m.matched(), Some("User:"));
    }

    #[test]
    fn false_prefix_is_released() {
        let mut m = StopMatcher::new(["abc"]);
        assert_eq!(m.push("xab"), cont("x"));
        assert_eq!(m.push("x"), cont("abx"));
        assert_eq!(m.flush(), "");
        assert!(!m.is_stopped());
    }

    #[test]
    fn overlapping_prefix_of_itself() {
        // "aab" inside "aaab": the first 'a' is safe, the second waits.
        let mut m = StopMatcher::new(["aab"]);
        assert_eq!(m.push("aa"), cont(""));
        assert_eq!(m.push("a"), cont("a"));
        assert_eq!(m.push("b"), stop(""));
    }

    #[test]
    fn earlier_pending_stop_beats_later_full_match() {
        let mut m = StopMatcher::new(["abcd", "bc"]);
        assert_eq!(m.push("abc"), cont(""), "'abcd' may still match at 0");
        assert_eq!(m.push("d"), stop(""));
        assert_eq!(m.matched(), Some("abcd"));

        let mut m = StopMatcher::new(["abcd", "bc"]);
        m.push("abc");
        assert_eq!(m.push("x"), stop("a"));
        assert_eq!(m.matched(), Some("bc"));

        let mut m = StopMatcher::new(["abcd", "bc"]);
        m.push("abc");
        assert_eq!(m.flush(), "a", "end of stream settles the pending match");
        assert_eq!(m.matched(), Some("bc"));
    }

    #[test]
    fn flush_returns_held_prefix() {
        let mut m = StopMatcher::new(["STOP"]);
        assert_eq!(m.push("hi ST"), cont("hi "));
        assert_eq!(m.flush(), "ST");
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn multibyte_text_and_stops() {
        let mut m = StopMatcher::new(["日本", "🙂!"]);
        assert_eq!(m.push("今日"), cont("今"));
        assert_eq!(m.push("は🙂"), cont("日は"));
        assert_eq!(m.push("!"), stop(""));
        assert_eq!(m.matched(), Some("🙂!"));

        // 'è' and 'é' share their first byte; neither is a prefix of the other.
        let mut m = StopMatcher::new(["é"]);
        assert_eq!(m.push("cafè"), cont("cafè"));
        assert_eq!(m.push("café"), stop("caf"));
    }

    #[test]
    fn no_stops_and_empty_stops() {
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert_eq!(m.push("anything"), cont("anything"));
        let mut m = StopMatcher::new(["", "x"]);
        assert_eq!(m.stops(), ["x"]);
        assert_eq!(m.push("ab"), cont("ab"));
    }

    #[test]
    fn reset_allows_reuse() {
        let mut m = StopMatcher::new(["."]);
        assert_eq!(m.push("a.b"), stop("a"));
        m.reset();
        assert!(!m.is_stopped());
        assert_eq!(m.push("c"), cont("c"));
    }
}
