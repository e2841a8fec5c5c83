//! Hugging Face `tokenizer.json` tokenizers: the ids of the Python `tokenizers` library, special
//! ids from the side files, truncation as `transformers` does it, and streaming bytes.
//!
//! Three tiny tokenizers are built here (BERT-like WordPiece, GPT-2-like byte-level BPE,
//! Llama-like SentencePiece BPE with byte fallback); their expected ids were checked against
//! Python `tokenizers` on the same JSON. The real all-MiniLM-L6-v2 tokenizer is compared with
//! `tests/golden/tokenize_minilm_hf.json` (from `scripts/gen_hf_tokenizer_golden.py`) when the
//! catalog has it (skipped otherwise, also in CI, which does not pull it).

mod common;

use std::path::{Path, PathBuf};

use ferrolm_tokenize::{hf_chat_template, HfSpecial, Tokenizer};
use serde::Deserialize;
use serde_json::{json, Value};

/// A fresh temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ferrolm-hftok-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn json(&self, name: &str, v: &Value) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn added(id: u32, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": !special, "special": special})
}

fn template(single: &[&str], tokens: &[(&str, u32)]) -> Value {
    let piece = |p: &&str| match *p {
        "$A" => json!({"Sequence": {"id": "A", "type_id": 0}}),
        t => json!({"SpecialToken": {"id": t, "type_id": 0}}),
    };
    let special: serde_json::Map<String, Value> = tokens
        .iter()
        .map(|(t, id)| (t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]})))
        .collect();
    json!({"type": "TemplateProcessing",
           "single": single.iter().map(piece).collect::<Vec<_>>(),
           "pair": single.iter().map(piece).collect::<Vec<_>>(),
           "special_tokens": special})
}

fn vocab(tokens: &[&str]) -> Value {
    let map: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    Value::Object(map)
}

const BERT_VOCAB: [&str; 20] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "!", ",", "the", "cat",
    "##e", "sat", "caf", ".", "[", "]", "sep", "s",
];

/// BERT-like: BertNormalizer (lowercase), WordPiece, `[CLS] $A [SEP]`; with the truncation and
/// padding sections ferrolm must ignore.
fn bert_json() -> Value {
    json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 12}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [added(0, "[PAD]", true), added(1, "[UNK]", true), added(2, "[CLS]", true),
                         added(3, "[SEP]", true), added(4, "[MASK]", true)],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": template(&["[CLS]", "$A", "[SEP]"], &[("[CLS]", 2), ("[SEP]", 3)]),
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab(&BERT_VOCAB)}
    })
}

#[test]
fn bert_wordpiece() {
    let d = TempDir::new("bert");
    let path = d.json("tokenizer.json", &bert_json());
    d.json(
        "tokenizer_config.json",
        &json!({"do_lower_case": true, "unk_token": "[UNK]", "sep_token": "[SEP]",
                "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}),
    );
    let special = HfSpecial::from_dir(&d.0);
    assert_eq!(special.pad.as_deref(), Some("[PAD]"));
    let t = Tokenizer::from_hf_file(&path, special).unwrap();
    assert!(t.is_hf());

    let enc = |s: &str| t.encode(s, true, true).unwrap();
    // Truncation (4) and padding (12) of the file are ignored.
    assert_eq!(enc("Hello, worlds!"), [2, 5, 9, 6, 7, 8, 3]);
    assert_eq!(
        t.encode("Hello, worlds!", false, true).unwrap(),
        [5, 9, 6, 7, 8]
    );
    assert_eq!(enc("The CAT sat."), [2, 10, 11, 13, 15, 3]);
    assert_eq!(enc("Café"), [2, 14, 12, 3]);
    assert_eq!(enc("zebra"), [2, 1, 3]);
    assert_eq!(enc(""), [2, 3]);
    // Special-token strings: parsed, or plain text with parse_special = false.
    assert_eq!(enc("hello [SEP] world"), [2, 5, 3, 6, 3]);
    assert_eq!(
        t.encode("hello [SEP] world", true, false).unwrap(),
        [2, 5, 16, 18, 17, 6, 3]
    );

    // Truncation keeps [CLS] .. [SEP].
    let long = "hello world hello world";
    assert_eq!(t.encode_truncated(long, 4).unwrap(), [2, 5, 6, 3]);
    assert_eq!(t.encode_truncated(long, 2).unwrap(), [2, 3]);
    assert_eq!(t.encode_truncated(long, 100).unwrap(), enc(long));

    assert_eq!(t.decode(&enc("Hello, worlds!"), false), "hello, worlds!");
    assert_eq!(
        t.decode(&enc("Hello, worlds!"), true),
        "[CLS] hello, worlds! [SEP]"
    );
    assert_eq!(t.decode(&[5, 999, 6], false), "hello world");
    // Per-token bytes: WordPiece joins, no whole-text cleanup.
    let bytes: Vec<u8> = [5, 9, 6, 7]
        .iter()
        .flat_map(|&i| t.token_bytes(i, false))
        .collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), " hello , worlds");
    assert!(t.token_bytes(2, false).is_empty());
    assert_eq!(t.token_bytes(2, true), b" [CLS]");

    assert_eq!(t.vocab_size(), BERT_VOCAB.len());
    assert_eq!(
        (t.unk_id(), t.pad_id(), t.bos_id(), t.eos_id()),
        (Some(1), Some(0), None, None)
    );
    assert!(!t.add_bos() && !t.add_eos());
    assert!(t.end_of_generation_ids().is_empty());
    assert_eq!(t.token_to_id("##s"), Some(7));
    assert_eq!(t.id_to_token(12), Some("##e"));
    assert_eq!(t.id_to_token(20), None);
    assert!(t.is_control(3) && !t.is_control(5));
    assert_eq!(t.eot_id(), None);
}

#[test]
fn lowercase_like_sentence_transformers() {
    let mut j = bert_json();
    j["normalizer"] = json!({"type": "NFC"});
    let d = TempDir::new("lower");
    let path = d.json("tokenizer.json", &j);
    let t = Tokenizer::from_hf_file(&path, HfSpecial::default()).unwrap();
    assert_eq!(t.encode("HELLO", false, true).unwrap(), [1]);
    let t = t.with_lowercase().unwrap();
    assert_eq!(t.encode("HELLO", false, true).unwrap(), [5]);
    assert_eq!(
        t.encode("HELLO [SEP]", false, false).unwrap(),
        [5, 16, 18, 17]
    );
}

/// GPT-2's byte alphabet: byte -> printable character.
fn byte_alphabet() -> Vec<char> {
    let printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = vec!['\0'; 256];
    for &b in &printable {
        chars[b as usize] = char::from_u32(b).unwrap();
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            chars[b as usize] = char::from_u32(256 + n).unwrap();
            n += 1;
        }
    }
    chars
}

const BPE_MERGED: [&str; 9] = [
    "he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "Ġworl", "Ġworld",
];

/// GPT-2/Qwen-like: byte-level BPE over the 256-character alphabet, no BOS, chat specials.
fn byte_level_json() -> Value {
    let alphabet: Vec<String> = byte_alphabet().iter().map(|c| c.to_string()).collect();
    let mut tokens: Vec<&str> = alphabet.iter().map(String::as_str).collect();
    tokens.extend(BPE_MERGED);
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d",
    ];
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                            "use_regex": true});
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(265, "<|endoftext|>", true), added(266, "<|im_end|>", true),
                         added(267, "<tool>", false)],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab(&tokens), "merges": merges}
    })
}

#[test]
fn byte_level_bpe() {
    let d = TempDir::new("bytelevel");
    let path = d.json("tokenizer.json", &byte_level_json());
    d.json(
        "tokenizer_config.json",
        &json!({"eos_token": {"content": "<|im_end|>", "special": true}, "pad_token": null,
                "chat_template": "{{ messages }}"}),
    );
    d.json(
        "generation_config.json",
        &json!({"eos_token_id": [266, 265], "bos_token_id": 265}),
    );
    d.json("config.json", &json!({"eos_token_id": 7}));
    let special = HfSpecial::from_dir(&d.0);
    assert_eq!(
        special,
        HfSpecial {
            eos: Some("<|im_end|>".into()),
            bos_id: Some(265),
            eos_ids: vec![266, 265],
            ..HfSpecial::default()
        }
    );
    assert_eq!(hf_chat_template(&d.0).as_deref(), Some("{{ messages }}"));
    let t = Tokenizer::from_hf_file(&path, special).unwrap();

    assert_eq!(t.encode("hello world", true, true).unwrap(), [259, 264]);
    assert_eq!(
        t.encode("hello<|im_end|><tool>", true, true).unwrap(),
        [259, 266, 267]
    );
    // As text, `<|im_end|>` is its ten byte tokens; `<tool>` (not special) still matches.
    let literal = t.encode("hello<|im_end|><tool>", true, false).unwrap();
    assert_eq!(literal.len(), 12);
    assert_eq!((literal[0], literal[11]), (259, 267));
    assert_eq!(t.decode(&literal, false), "hello<|im_end|><tool>");

    let text = "héllo world 🦀, ok\n\ttabs";
    let ids = t.encode(text, true, true).unwrap();
    assert_eq!(t.decode(&ids, false), text);
    let stream: Vec<u8> = ids.iter().flat_map(|&i| t.token_bytes(i, false)).collect();
    assert_eq!(stream, text.as_bytes());
    // The crab's first byte alone is incomplete UTF-8, as a stream should see it.
    let crab = t.encode("🦀", false, true).unwrap();
    assert_eq!(t.token_bytes(crab[0], false), [0xF0]);

    assert_eq!(t.decode(&[259, 266, 267], false), "hello<tool>");
    assert_eq!(t.decode(&[259, 266, 267], true), "hello<|im_end|><tool>");
    assert!(t.token_bytes(266, false).is_empty());
    assert_eq!(t.token_bytes(266, true), b"<|im_end|>");
    assert_eq!(t.token_bytes(267, false), b"<tool>");

    assert_eq!(t.eos_id(), Some(266));
    assert_eq!(t.bos_id(), Some(265));
    assert!(!t.add_bos() && !t.add_eos());
    assert_eq!(t.end_of_generation_ids(), [265, 266]);
    assert_eq!(t.vocab_size(), 268);
    assert!(t.is_control(265) && !t.is_control(267));
    assert_eq!(t.encode_truncated("hello world", 1).unwrap(), [259]);
}

/// Llama-like: `▁` for spaces, BPE with byte fallback, `<s> $A`.
fn llama_json() -> Value {
    let bytes: Vec<String> = (0..=255).map(|b| format!("<0x{b:02X}>")).collect();
    let mut tokens = vec!["<unk>", "<s>", "</s>"];
    tokens.extend(bytes.iter().map(String::as_str));
    tokens.extend(["▁", "h", "i", "▁h", "▁hi"]);
    let replace = |from: &str, to: &str| json!({"type": "Replace", "pattern": {"String": from}, "content": to});
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "<unk>", true), added(1, "<s>", true), added(2, "</s>", true)],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                          replace(" ", "▁")]},
        "pre_tokenizer": null,
        "post_processor": template(&["<s>", "$A"], &[("<s>", 1)]),
        "decoder": {"type": "Sequence", "decoders": [replace("▁", " "), {"type": "ByteFallback"},
                    {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab(&tokens), "merges": ["▁ h", "▁h i"]}
    })
}

#[test]
fn sentencepiece_byte_fallback() {
    let d = TempDir::new("llama");
    let path = d.json("tokenizer.json", &llama_json());
    d.json(
        "special_tokens_map.json",
        &json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    );
    d.json(
        "tokenizer_config.json",
        &json!({"bos_token": "<unk>", "add_bos_token": true}),
    );
    let t = Tokenizer::from_hf_file(&path, HfSpecial::from_dir(&d.0)).unwrap();
    assert_eq!(
        (t.bos_id(), t.eos_id(), t.unk_id()),
        (Some(1), Some(2), Some(0))
    );
    assert!(t.add_bos() && !t.add_eos());
    assert_eq!(t.end_of_generation_ids(), [2]);

    let ids = t.encode("hi hi", true, true).unwrap();
    assert_eq!(ids, [1, 263, 263]);
    assert_eq!(t.decode(&ids, false), "hi hi");
    // é is not in the vocabulary: its two UTF-8 bytes.
    let ids = t.encode("hi é", true, true).unwrap();
    assert_eq!(ids, [1, 263, 259, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(t.decode(&ids, false), "hi é");
    assert_eq!(t.decode(&ids, true), "<s> hi é");
    assert_eq!(t.token_bytes(3 + 0xC3, false), [0xC3]);
    let stream: Vec<u8> = ids.iter().flat_map(|&i| t.token_bytes(i, false)).collect();
    // The stream keeps the first token's space, which decode strips.
    assert_eq!(stream, " hi é".as_bytes());
    assert_eq!(t.encode_truncated("hi hi hi", 3).unwrap(), [1, 263, 263]);
    assert_eq!(t.encode("", true, true).unwrap(), [1]);
}

#[test]
fn load_errors_are_one_line() {
    let d = TempDir::new("errors");
    let missing = d.0.join("tokenizer.json");
    let e = Tokenizer::from_hf_file(&missing, HfSpecial::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("cannot load Hugging Face tokenizer '") && !e.contains('\n'),
        "{e}"
    );
    let bad = d.json("tokenizer.json", &json!({"model": {"type": "Nope"}}));
    let e = Tokenizer::from_hf_file(&bad, HfSpecial::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.json written by the tokenizers library") && !e.contains('\n'),
        "{e}"
    );
    // Lenient side files: garbage is ignored.
    std::fs::write(d.0.join("tokenizer_config.json"), "{oops").unwrap();
    d.json(
        "generation_config.json",
        &json!({"eos_token_id": "x", "bos_token_id": -1}),
    );
    assert_eq!(HfSpecial::from_dir(&d.0), HfSpecial::default());
    assert_eq!(hf_chat_template(&d.0), None);
}

#[derive(Deserialize)]
struct Golden {
    max_length: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    ids_plain: Vec<u32>,
    ids_truncated: Vec<u32>,
    decoded: String,
    decoded_special: String,
}

/// The real all-MiniLM-L6-v2 tokenizer against Python `tokenizers` and sentence-transformers.
#[test]
fn real_minilm_matches_python() {
    let dir: PathBuf = ferrolm_format::test_models::dir().join("all-minilm-l6-v2");
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        eprintln!("skipping: {} not found", path.display());
        return;
    }
    let g: Golden = serde_json::from_str(
        &std::fs::read_to_string(common::golden_dir().join("tokenize_minilm_hf.json")).unwrap(),
    )
    .unwrap();
    let t = Tokenizer::from_hf_file(Path::new(&path), HfSpecial::from_dir(&dir)).unwrap();
    assert_eq!(t.vocab_size(), 30522);
    for c in &g.cases {
        assert_eq!(
            t.encode(&c.text, true, true).unwrap(),
            c.ids,
            "{:?}",
            c.text
        );
        assert_eq!(
            t.encode(&c.text, false, true).unwrap(),
            c.ids_plain,
            "{:?}",
            c.text
        );
        let truncated = t.encode_truncated(&c.text, g.max_length).unwrap();
        assert_eq!(truncated, c.ids_truncated, "{:?}", c.text);
        assert_eq!(t.decode(&c.ids, false), c.decoded, "{:?}", c.text);
        assert_eq!(t.decode(&c.ids, true), c.decoded_special, "{:?}", c.text);
    }
}
