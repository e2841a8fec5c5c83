//! Behaviour on small hand-made vocabularies: merge order, byte fallback, special-token
//! partitioning, end-of-generation detection, errors, and decode(encode(s)) == s for arbitrary
//! strings (proptest) in both families.

use ferrolm_tokenize::{Tokenizer, VocabSpec};
use proptest::prelude::*;

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER: i32 = 4;
const BYTE: i32 = 6;

/// GPT-2's byte alphabet (printable bytes as themselves, the rest from U+0100 on).
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        b as char
    } else {
        let shifted = (0..=b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(255 + shifted).unwrap()
    }
}

/// SentencePiece vocabulary: <unk> <s> </s>, byte tokens, then `(text, score, type)` pieces.
fn spm_spec(pieces: &[(&str, f32, i32)], add_space_prefix: bool) -> VocabSpec {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut scores = vec![0.0, 0.0, 0.0];
    let mut types = vec![2, CONTROL, CONTROL];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(BYTE);
    }
    for &(t, s, ty) in pieces {
        tokens.push(t.to_string());
        scores.push(s);
        types.push(ty);
    }
    VocabSpec {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        add_bos: Some(true),
        add_space_prefix: Some(add_space_prefix),
        ..Default::default()
    }
}

fn spm(pieces: &[(&str, f32, i32)], add_space_prefix: bool) -> Tokenizer {
    Tokenizer::from_vocab(spm_spec(pieces, add_space_prefix)).unwrap()
}

/// Byte-level BPE vocabulary: the 256 byte characters, then merges (each adds its result),
/// then `extra` (text, type) tokens.
fn bpe_spec(pre: &str, merges: &[&str], extra: &[(&str, i32)]) -> VocabSpec {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![NORMAL; 256];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(NORMAL);
    }
    for &(t, ty) in extra {
        tokens.push(t.to_string());
        types.push(ty);
    }
    VocabSpec {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: Some(types),
        merges: Some(merges.iter().map(|m| m.to_string()).collect()),
        add_bos: Some(false),
        ..Default::default()
    }
}

const MERGES: &[&str] = &["Ġ t", "h e", "Ġt he", "i n", "in g", "Ġ a", "e r", "Ġ Ġ"];

fn bpe(pre: &str) -> Tokenizer {
    let extra = [("<|im_end|>", CONTROL), ("<tool>", USER)];
    Tokenizer::from_vocab(bpe_spec(pre, MERGES, &extra)).unwrap()
}

fn texts(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| tok.id_to_token(id).unwrap().to_string())
        .collect()
}

#[test]
fn spm_merges_by_score_then_leftmost() {
    // "abc": "ab" and "bc" both tokens; the higher score wins, and on a tie the left pair.
    let tok = spm(
        &[
            ("a", -1.0, NORMAL),
            ("b", -1.0, NORMAL),
            ("c", -1.0, NORMAL),
            ("ab", -5.0, NORMAL),
            ("bc", -2.0, NORMAL),
        ],
        false,
    );
    assert_eq!(
        texts(&tok, &tok.encode("abc", false, false).unwrap()),
        ["a", "bc"]
    );
    let tok = spm(
        &[
            ("a", -1.0, NORMAL),
            ("b", -1.0, NORMAL),
            ("c", -1.0, NORMAL),
            ("ab", -2.0, NORMAL),
            ("bc", -2.0, NORMAL),
        ],
        false,
    );
    assert_eq!(
        texts(&tok, &tok.encode("abc", false, false).unwrap()),
        ["ab", "c"]
    );
}

#[test]
fn spm_byte_fallback_and_prefix_space() {
    let tok = spm(
        &[
            ("▁", -1.0, NORMAL),
            ("h", -1.0, NORMAL),
            ("i", -1.0, NORMAL),
            ("▁hi", -1.0, NORMAL),
            ("hi", -3.0, NORMAL),
        ],
        true,
    );
    // Prefix space; "é" is not a token -> its two UTF-8 bytes.
    let ids = tok.encode("hi é", true, false).unwrap();
    assert_eq!(texts(&tok, &ids), ["<s>", "▁hi", "▁", "<0xC3>", "<0xA9>"]);
    assert_eq!(
        tok.decode(&ids[1..], false),
        "hi é",
        "decode drops the prefix space"
    );
    // After a special token the next fragment gets the prefix space again (parse_special).
    let ids = tok.encode("hi</s>hi", false, true).unwrap();
    assert_eq!(texts(&tok, &ids), ["▁hi", "</s>", "▁hi"]);
    // Without parse_special the control token is plain text.
    let ids = tok.encode("</s>", false, false).unwrap();
    assert!(!ids.contains(&2));
    assert_eq!(tok.decode(&ids, false), "</s>");
}

#[test]
fn spm_unknown_without_byte_tokens() {
    let spec = VocabSpec {
        model: "gemma".into(),
        tokens: vec!["<unk>".into(), "a".into()],
        token_types: Some(vec![2, NORMAL]),
        unk_id: Some(0),
        add_space_prefix: Some(false),
        ..Default::default()
    };
    let tok = Tokenizer::from_vocab(spec.clone()).unwrap();
    assert_eq!(tok.encode("aéa", false, false).unwrap(), [1, 0, 1]);
    // Without tokenizer.ggml.unknown_token_id, SentencePiece's unknown id defaults to 0.
    let tok = Tokenizer::from_vocab(VocabSpec {
        unk_id: None,
        ..spec
    })
    .unwrap();
    assert_eq!(tok.unk_id(), Some(0));
    assert_eq!(tok.encode("é", false, false).unwrap(), [0]);
}

#[test]
fn bpe_merges_and_special_partition() {
    let tok = bpe("smollm");
    let ids = tok.encode("the thing", false, false).unwrap();
    assert_eq!(texts(&tok, &ids), ["t", "he", "Ġt", "h", "ing"]);
    // User-defined tokens split out always; control tokens only with parse_special.
    let ids = tok.encode("a<tool>b<|im_end|>", false, false).unwrap();
    let t = texts(&tok, &ids);
    assert!(
        t.contains(&"<tool>".to_string()) && !t.contains(&"<|im_end|>".to_string()),
        "{t:?}"
    );
    let ids = tok.encode("a<tool>b<|im_end|>", false, true).unwrap();
    assert_eq!(texts(&tok, &ids), ["a", "<tool>", "b", "<|im_end|>"]);
    // Control tokens render only on request; user-defined tokens always, as raw text.
    assert_eq!(tok.decode(&ids, false), "a<tool>b");
    assert_eq!(tok.decode(&ids, true), "a<tool>b<|im_end|>");
    // smollm isolates every digit.
    let ids = tok.encode("2024", false, false).unwrap();
    assert_eq!(ids.len(), 4);
}

#[test]
fn longer_special_claims_first_even_if_shorter_starts_earlier() {
    // llama.cpp's order: "bcd" (longer) is matched before "ab", so "abcd" -> a, <bcd>.
    let tok = Tokenizer::from_vocab(bpe_spec("gpt2", &[], &[("ab", USER), ("bcd", USER)])).unwrap();
    let ids = tok.encode("abcd ab", false, false).unwrap();
    assert_eq!(texts(&tok, &ids), ["a", "bcd", "Ġ", "ab"]);
}

#[test]
fn end_of_generation_set_follows_llamacpp() {
    let extra = [
        ("<|endoftext|>", CONTROL),
        ("<|im_end|>", NORMAL),
        ("<|fim_pad|>", NORMAL),
        ("<|im_start|>", CONTROL),
    ];
    let mut spec = bpe_spec("gpt2", &[], &extra);
    spec.eos_id = Some(256);
    let tok = Tokenizer::from_vocab(spec).unwrap();
    // <|im_end|> and <|fim_pad|> are promoted to control and end generation; <|im_start|> not.
    assert_eq!(tok.end_of_generation_ids(), [256, 257, 258]);
    assert!(tok.is_control(257) && tok.is_control(258));
    assert_eq!(
        tok.eot_id(),
        Some(257),
        "<|im_end|> ranks before <|endoftext|>"
    );
}

#[test]
fn gpt2_profile_cleans_spaces_on_decode() {
    let tok = bpe("gpt2");
    let ids = tok
        .encode("Hi , there . It 's ok ' yes ' no", false, false)
        .unwrap();
    assert_eq!(tok.decode(&ids, false), "Hi, there. It's ok'yes'no");
    // The space after a collapsed " ' " no longer counts as a space (llama.cpp writes NUL there).
    let ids = tok.encode("a ' ' b", false, false).unwrap();
    assert_eq!(tok.decode(&ids, false), "a'' b");
    // smollm keeps the text as is.
    let tok = bpe("smollm");
    let ids = tok.encode("Hi , there .", false, false).unwrap();
    assert_eq!(tok.decode(&ids, false), "Hi , there .");
}

#[test]
fn errors_name_the_problem() {
    let err = Tokenizer::from_vocab(VocabSpec {
        model: "bert".into(),
        tokens: vec!["a".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported tokenizer model 'bert' (tokenizer.ggml.model); supported: gpt2, llama, gemma"
    );
    let err = Tokenizer::from_vocab(bpe_spec("foo", &[], &[])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "unknown pre-tokenizer profile 'foo' (tokenizer.ggml.pre); supported: default,"
        ),
        "{msg}"
    );
    assert!(msg.ends_with("ferrolm refuses rather than guess"), "{msg}");
    let err = Tokenizer::from_vocab(VocabSpec {
        merges: None,
        ..bpe_spec("gpt2", &[], &[])
    })
    .unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.merges"));
    let mut spec = bpe_spec("gpt2", &[], &[]);
    spec.add_bos = Some(true);
    let err = Tokenizer::from_vocab(spec)
        .unwrap()
        .encode("x", true, false)
        .unwrap_err();
    assert!(err.to_string().contains("bos_token_id"), "{err}");
    for e in [
        err,
        Tokenizer::from_vocab(bpe_spec("foo", &[], &[])).unwrap_err(),
    ] {
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn decode_joins_split_utf8_and_is_lossy_only_at_the_end() {
    let tok = bpe("smollm");
    let ids = tok.encode("🦀", false, false).unwrap();
    assert_eq!(ids.len(), 4, "no merges: one id per byte");
    assert_eq!(tok.decode(&ids, false), "🦀");
    assert_eq!(tok.decode(&ids[..3], false), "\u{FFFD}");
    let streamed: Vec<u8> = ids
        .iter()
        .flat_map(|&id| tok.token_bytes(id, false))
        .collect();
    assert_eq!(streamed, "🦀".as_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn bpe_round_trip(s in "\\PC*|[ \\t\\n\\r'a-z0-9<>|_]*") {
        let tok = bpe("smollm");
        let ids = tok.encode(&s, false, false).unwrap();
        prop_assert_eq!(tok.decode(&ids, false), s.clone());
        let ids = tok.encode(&s, true, true).unwrap();
        prop_assert_eq!(tok.decode(&ids, true), s);
    }

    #[test]
    // Any text without a literal "▁" (SentencePiece decodes it as a space, as llama.cpp does).
    fn spm_round_trip(s in "[^▁]*|[ \\t\\nab<>/s]*", prefix in any::<bool>()) {
        // With the prefix space, text after a user-defined token gets a "▁" too (llama.cpp),
        // which does not round-trip; so the user-defined "\n" only without it.
        let newline_type = if prefix { NORMAL } else { USER };
        let tok = spm(&[("▁", -1.0, NORMAL), ("a", -2.0, NORMAL), ("b", -2.0, NORMAL), ("▁a", -1.5, NORMAL), ("ab", -1.0, NORMAL), ("\n", 0.0, newline_type)], prefix);
        let ids = tok.encode(&s, false, false).unwrap();
        prop_assert_eq!(tok.decode(&ids, false), s.clone());
    }
}

#[test]
fn shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<ferrolm_tokenize::ChatTemplate>();
}
