//! Fuzz target: arbitrary text through both real vocabularies (SmolLM2 byte-level BPE, Gemma 3
//! SentencePiece) and the SmolLM2 chat template. Encoding never panics, ids stay inside the
//! vocabulary, and decoding the plain encoding gives the text back.
//! The models are read from the catalog cache (`ferrolm pull ...` first).

#![no_main]
use ferrolm_format::{test_models, GgufFile};
use ferrolm_tokenize::{vocab_spec, ChatMessage, ChatTemplate, Tokenizer};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Fixture {
    toks: Vec<Tokenizer>,
    template: ChatTemplate,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let open = |f: &str| GgufFile::open(&test_models::dir().join(f)).expect("run `ferrolm pull` for the catalog models first");
        let smol = open("SmolLM2-135M-Instruct.Q4_1.gguf");
        let gemma = open("gemma-3-270m-q4_k_m.gguf");
        let template = ChatTemplate::new(smol.header.get("tokenizer.chat_template").unwrap().as_str().unwrap(), "", "<|im_end|>").unwrap();
        let toks = [smol, gemma].iter().map(|g| Tokenizer::from_vocab(vocab_spec(&g.header).unwrap()).unwrap()).collect();
        Fixture { toks, template }
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let f = fixture();
    for tok in &f.toks {
        for special in [false, true] {
            let ids = tok.encode(&text, true, special).unwrap();
            assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
        }
        let plain = tok.encode(&text, false, false).unwrap();
        assert_eq!(tok.decode(&plain, false), text, "round trip");
    }
    let msgs = [ChatMessage { role: "user".into(), content: text.to_string() }];
    let _ = f.template.render(&msgs, true);
});
