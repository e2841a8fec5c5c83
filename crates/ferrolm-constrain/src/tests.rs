//! The constraint over a synthetic vocabulary (every byte, some multi-byte pieces, special
//! tokens): random logits sampled through the real chain must always give valid output.

use super::*;
use ferrolm_sample::SamplingParams;
use serde_json::json;

/// Ids of the synthetic vocabulary's special tokens.
const BOS: TokenId = 255;
const EOS: TokenId = 256;

/// Bytes 0..=254 (id = byte), `<s>`, `<|im_end|>` (eos), then multi-byte pieces.
fn vocab_tokens() -> Vec<VocabToken> {
    let mut t: Vec<VocabToken> = (0u8..=254).map(|b| VocabToken::Text(vec![b])).collect();
    t.push(VocabToken::Special("<s>".into()));
    t.push(VocabToken::Special("<|im_end|>".into()));
    for piece in [
        "{\"", "\":", "\",", "\"}", "  ", "\n  ", "true", "false", "null", "12", "name", "abc",
        " \"", "\": \"", "],", "[{", "}]", "é", "ab",
    ] {
        t.push(VocabToken::Text(piece.as_bytes().to_vec()));
    }
    t
}

fn vocab() -> Vocabulary {
    Vocabulary::new(vocab_tokens(), &[EOS]).unwrap()
}

/// Deterministic pseudo-random logits (xorshift).
struct Noise(u64);

impl Noise {
    fn row(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 8.0
            })
            .collect()
    }
}

/// Samples under `grammar` from random logits until the constraint finishes or an eos is
/// drawn; returns the text and whether it ended properly.
fn run(v: &Vocabulary, grammar: &Grammar, seed: u64, n_logits: usize) -> (Vec<u8>, bool) {
    let mut c = Constraint::new(v, grammar).unwrap();
    let mut chain = SamplingParams {
        temperature: 0.9,
        seed,
        ..SamplingParams::default()
    }
    .build_chain();
    let tokens = vocab_tokens();
    let mut noise = Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::new();
    for _ in 0..4000 {
        let tok = c.sample(&mut chain, &noise.row(n_logits)).unwrap();
        if tok == EOS {
            return (out, true);
        }
        match &tokens[tok as usize] {
            VocabToken::Text(b) => out.extend_from_slice(b),
            VocabToken::Special(s) => panic!("special token {s} inside constrained text"),
        }
        if c.is_finished() {
            return (out, true);
        }
    }
    (out, false)
}

fn nested_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "role": {"enum": ["admin", "user", "guest"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 6},
                    "zip": {"type": "integer", "minimum": 10000, "maximum": 99999},
                    "points": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "minItems": 1, "maxItems": 4}
                },
                "required": ["city", "zip", "points"],
                "additionalProperties": false
            },
            "active": {"type": "boolean"}
        },
        "required": ["name", "age", "role", "tags", "address"],
        "additionalProperties": false
    })
}

#[test]
fn json_schema_output_always_parses_and_validates() {
    let v = vocab();
    let schema = nested_schema();
    let g = Grammar::JsonSchema(schema.clone());
    for seed in 0..20 {
        // A row longer than the vocabulary: the extra ids must never be picked.
        let (out, ended) = run(&v, &g, seed, v.len() + 5);
        assert!(ended, "seed {seed}: no end after 4000 tokens");
        let text = String::from_utf8(out).expect("UTF-8");
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text}"));
        check_json(&schema, &value).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text}"));
    }
}

#[test]
fn json_object_gives_an_object() {
    let v = vocab();
    let g = Grammar::JsonObject;
    let mut ended_any = false;
    for seed in 0..10 {
        let (out, ended) = run(&v, &g, seed, v.len());
        if !ended {
            continue; // free-form keys and strings may run long under random logits
        }
        ended_any = true;
        let text = String::from_utf8(out).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(value.is_object(), "{text}");
    }
    assert!(ended_any);
}

#[test]
fn regex_is_matched_exactly() {
    let v = vocab();
    let g = Grammar::Regex(r"[0-9]{3}-(ab|cd)+".into());
    for seed in 0..10 {
        let (out, ended) = run(&v, &g, seed, v.len());
        assert!(ended);
        let text = String::from_utf8(out).unwrap();
        let (digits, rest) = text.split_at(3);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{text}");
        let rest = rest.strip_prefix('-').unwrap_or_else(|| panic!("{text}"));
        assert!(!rest.is_empty() && rest.len() % 2 == 0, "{text}");
        assert!(
            rest.as_bytes().chunks(2).all(|p| p == b"ab" || p == b"cd"),
            "{text}"
        );
    }
    // The first step allows digits only.
    let mut c = Constraint::new(&v, &g).unwrap();
    let m = c.mask().unwrap().clone();
    let tokens = vocab_tokens();
    for id in m.to_list() {
        let VocabToken::Text(b) = &tokens[id as usize] else {
            panic!("special {id}")
        };
        assert!(b.iter().all(u8::is_ascii_digit) && b.len() <= 3, "{b:?}");
    }
    for d in b'0'..=b'9' {
        assert!(m.is_allowed(TokenId::from(d)));
    }
    assert!(!m.is_allowed(EOS) && !m.is_allowed(BOS));
}

#[test]
fn lark_grammar_and_named_special_tokens() {
    let v = vocab();
    let g = Grammar::Lark(
        r#"
start: answer <|im_end|>
answer: "yes" | "no" | NUMBER
NUMBER: /[1-9][0-9]?/
"#
        .into(),
    );
    for seed in 0..10 {
        let mut c = Constraint::new(&v, &g).unwrap();
        let mut chain = SamplingParams {
            seed,
            ..SamplingParams::default()
        }
        .build_chain();
        let mut noise = Noise(seed + 1);
        let mut text = Vec::new();
        let tokens = vocab_tokens();
        loop {
            let tok = c.sample(&mut chain, &noise.row(v.len())).unwrap();
            if tok == EOS {
                break;
            }
            let VocabToken::Text(b) = &tokens[tok as usize] else {
                panic!("special {tok}")
            };
            text.extend_from_slice(b);
            assert!(text.len() < 10);
        }
        let text = String::from_utf8(text).unwrap();
        let ok = text == "yes"
            || text == "no"
            || (text.parse::<u32>().is_ok_and(|n| (1..100).contains(&n)) && !text.starts_with('0'));
        assert!(ok, "{text}");
        assert!(c.is_finished());
    }
}

#[test]
fn finished_constraint_allows_only_eos() {
    let v = vocab();
    let mut c = Constraint::new(&v, &Grammar::Regex("ab".into())).unwrap();
    c.commit(u32::from(b'a')).unwrap();
    assert!(!c.is_finished());
    c.commit(u32::from(b'b')).unwrap();
    assert!(c.is_finished());
    assert_eq!(c.mask().unwrap().to_list(), vec![EOS]);
    c.commit(EOS).unwrap();
    let mut row = vec![1.0f32; v.len() + 40];
    c.mask_logits(&mut row).unwrap();
    let finite: Vec<usize> = (0..row.len()).filter(|&i| row[i].is_finite()).collect();
    assert_eq!(finite, vec![EOS as usize]);
}

#[test]
fn disallowed_commit_is_an_error_not_a_panic() {
    let v = vocab();
    let mut c = Constraint::new(&v, &Grammar::Regex("[0-9]+".into())).unwrap();
    let e = c.commit(u32::from(b'x')).unwrap_err();
    assert!(matches!(e, ConstrainError::Rejected { .. }), "{e}");
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn bad_grammars_are_one_line_errors() {
    let v = vocab();
    for (g, expect) in [
        (
            Grammar::JsonSchema(json!({"type": "nonsense"})),
            "invalid JSON schema",
        ),
        (Grammar::JsonSchema(json!([1, 2])), "invalid JSON schema"),
        (
            Grammar::JsonSchema(json!({"type": "integer", "minimum": 5, "maximum": 1})),
            "invalid JSON schema",
        ),
        (
            Grammar::JsonSchema(json!({"$ref": "#/$defs/missing"})),
            "invalid JSON schema",
        ),
        (Grammar::Regex("(ab".into()), "invalid regex"),
        (Grammar::Regex("a{5,2}".into()), "invalid regex"),
        (Grammar::Lark("start: foo".into()), "invalid Lark grammar"),
        (
            Grammar::Lark("start: (\"a\"".into()),
            "invalid Lark grammar",
        ),
        (
            Grammar::Lark("not a grammar at all".into()),
            "invalid Lark grammar",
        ),
    ] {
        let e = match Constraint::new(&v, &g) {
            Ok(_) => panic!("{g:?} compiled"),
            Err(e) => e.to_string(),
        };
        eprintln!("{e}");
        assert!(e.starts_with(expect), "{g:?}: {e}");
        assert!(!e.contains('\n') && e.len() < 500, "{g:?}: {e}");
    }
}

#[test]
fn special_tokens_never_appear_in_json() {
    let v = vocab();
    let mut c = Constraint::new(&v, &Grammar::JsonSchema(nested_schema())).unwrap();
    let m = c.mask().unwrap();
    assert!(m.is_allowed(u32::from(b'{')));
    assert!(!m.is_allowed(BOS) && !m.is_allowed(EOS));
    assert!(!m.is_allowed(u32::from(b'x')));
}

#[test]
fn vocabulary_without_eos_still_finishes() {
    let tokens: Vec<VocabToken> = (b'a'..=b'z').map(|b| VocabToken::Text(vec![b])).collect();
    let v = Vocabulary::new(tokens, &[]).unwrap();
    assert_eq!(v.len(), 27);
    let mut c = Constraint::new(&v, &Grammar::Regex("hi".into())).unwrap();
    c.commit(7).unwrap();
    c.commit(8).unwrap();
    assert!(c.is_finished());
    assert!(Vocabulary::new(vec![VocabToken::Text(b"a".to_vec())], &[5]).is_err());
}

#[test]
fn clones_advance_independently() {
    let v = vocab();
    let fresh = Constraint::new(&v, &Grammar::Regex("a|b".into())).unwrap();
    let mut a = fresh.clone();
    let mut b = fresh.clone();
    a.commit(u32::from(b'a')).unwrap();
    assert!(a.is_finished() && !b.is_finished());
    b.commit(u32::from(b'b')).unwrap();
    assert!(b.is_finished());
}

#[test]
fn mask_application_matches_the_bitset() {
    let v = vocab();
    let mut c = Constraint::new(&v, &Grammar::JsonObject).unwrap();
    let m = c.mask().unwrap().clone();
    let mut row: Vec<f32> = (0..v.len() + 3).map(|i| i as f32).collect();
    c.mask_logits(&mut row).unwrap();
    for (i, &l) in row.iter().enumerate() {
        let allowed = i < v.len() && m.is_allowed(i as TokenId);
        assert_eq!(l.is_finite(), allowed, "id {i}");
    }
}
