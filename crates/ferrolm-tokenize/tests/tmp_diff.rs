use ferrolm_tokenize::{HfSpecial, Tokenizer};
#[test]
fn diff() {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("/tmp/hfdiff.json").unwrap()).unwrap();
    let t = Tokenizer::from_hf_file(std::path::Path::new("/tmp/fh/models/all-minilm-l6-v2/tokenizer.json"), HfSpecial::default()).unwrap();
    let ids = |x: &serde_json::Value| x.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let mut bad = 0;
    for c in v.as_array().unwrap() {
        let s = c["text"].as_str().unwrap();
        let ok = t.encode(s, true, true).unwrap() == ids(&c["ids"])
            && t.encode(s, false, true).unwrap() == ids(&c["plain"])
            && t.encode(s, true, false).unwrap() == ids(&c["lit"])
            && t.encode_truncated(s, c["max"].as_u64().unwrap() as usize).unwrap() == ids(&c["trunc"])
            && t.decode(&ids(&c["ids"]), false) == c["dec"].as_str().unwrap();
        if !ok { bad += 1; if bad < 5 { eprintln!("mismatch {s:?}"); } }
    }
    assert_eq!(bad, 0);
}
