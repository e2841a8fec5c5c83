//! Tests of `hf`: tiny safetensors directories built in a temp dir, garbled headers, the JSON
//! side files and pooling.

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

use super::*;

/// A fresh temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ferrolm-hf-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn json(&self, name: &str, v: serde_json::Value) {
        self.write(name, v.to_string());
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A safetensors file of `(name, dtype, shape, bytes)`, written by the safetensors crate.
fn safetensors_bytes(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// The values used in most tests: exact in f16 and bf16.
const VALUES: [f32; 4] = [1.0, -2.5, 0.375, 1024.0];

fn mixed_file() -> Vec<u8> {
    let f16: Vec<u8> = VALUES
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = VALUES
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let i64s: Vec<u8> = [0i64, 1, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
    safetensors_bytes(&[
        (
            "a.weight",
            Dtype::F32,
            vec![2, 3],
            f32_bytes(&[1., 2., 3., 4., 5., 6.]),
        ),
        ("b.half", Dtype::F16, vec![4], f16),
        ("c.brain", Dtype::BF16, vec![2, 2], bf16),
        ("embeddings.position_ids", Dtype::I64, vec![1, 3], i64s),
    ])
}

fn model_dir(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    d.json(
        "config.json",
        json!({"model_type": "bert", "hidden_size": 4}),
    );
    d
}

#[test]
fn single_file_with_every_dtype() {
    let d = model_dir("single");
    d.write("model.safetensors", mixed_file());
    assert!(HfDir::is_hf_dir(&d.0));
    let m = HfDir::open(&d.0).unwrap();
    assert_eq!(m.config["model_type"], "bert");
    assert_eq!(
        m.tensor_names(),
        ["a.weight", "b.half", "c.brain", "embeddings.position_ids"]
    );
    let a = m.tensor("a.weight").unwrap();
    assert_eq!(
        (a.dtype, a.shape.clone(), a.n_elements()),
        (HfDtype::F32, vec![2, 3], 6)
    );
    assert_eq!(a.to_f32(), [1., 2., 3., 4., 5., 6.]);
    let b = m.tensor("b.half").unwrap();
    assert_eq!((b.dtype, b.bytes.len()), (HfDtype::F16, 8));
    assert_eq!(b.to_f32(), VALUES);
    let c = m.tensor("c.brain").unwrap();
    assert_eq!((c.dtype, c.shape.as_slice()), (HfDtype::BF16, &[2, 2][..]));
    assert_eq!(c.to_f32(), VALUES);

    assert!(m.tensor("embeddings.position_ids").is_none());
    assert_eq!(
        m.get("embeddings.position_ids").err().unwrap().to_string(),
        "tensor 'embeddings.position_ids' has dtype I64, which ferrolm cannot load (F32, F16, BF16)"
    );
    assert_eq!(
        m.dtype_name("embeddings.position_ids").as_deref(),
        Some("I64")
    );
    assert!(m.tensor("nope").is_none());
    let e = m.get("nope").err().unwrap().to_string();
    assert!(
        e.starts_with("tensor 'nope' not found in model directory"),
        "{e}"
    );
    assert_eq!(m.tokenizer_path(), None);
    assert_eq!(m.generation_config().unwrap(), None);
}

#[test]
fn sharded_index() {
    let d = model_dir("sharded");
    d.write(
        "model-00001-of-00002.safetensors",
        safetensors_bytes(&[("x", Dtype::F32, vec![2], f32_bytes(&[1., 2.]))]),
    );
    d.write(
        "model-00002-of-00002.safetensors",
        safetensors_bytes(&[
            ("y", Dtype::F32, vec![1], f32_bytes(&[3.])),
            ("z", Dtype::F32, vec![], f32_bytes(&[4.])),
        ]),
    );
    // A loose file the index does not name is ignored.
    d.write(
        "consolidated.safetensors",
        safetensors_bytes(&[("x", Dtype::F32, vec![1], f32_bytes(&[9.]))]),
    );
    let index = |map: serde_json::Value| json!({"metadata": {"total_size": 16}, "weight_map": map});
    d.json(
        "model.safetensors.index.json",
        index(json!({
            "x": "model-00001-of-00002.safetensors",
            "y": "model-00002-of-00002.safetensors",
            "z": "model-00002-of-00002.safetensors",
        })),
    );
    let m = HfDir::open(&d.0).unwrap();
    assert_eq!(m.tensor_names(), ["x", "y", "z"]);
    assert_eq!(m.tensor("x").unwrap().to_f32(), [1., 2.]);
    assert_eq!(m.tensor("y").unwrap().to_f32(), [3.]);
    let z = m.tensor("z").unwrap();
    assert_eq!((z.n_elements(), z.to_f32()), (1, vec![4.]));

    // The index and the shards disagree.
    d.json(
        "model.safetensors.index.json",
        index(json!({"x": "model-00002-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"})),
    );
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert!(
        e.contains(
            "puts tensor 'x' in 'model-00002-of-00002.safetensors', which does not contain it"
        ),
        "{e}"
    );
    // A shard is missing.
    d.json(
        "model.safetensors.index.json",
        index(json!({"x": "model-00003-of-00003.safetensors"})),
    );
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert!(
        e.contains("lacks shard 'model-00003-of-00003.safetensors'"),
        "{e}"
    );
    // A shard outside the directory.
    d.json(
        "model.safetensors.index.json",
        index(json!({"x": "../model.safetensors"})),
    );
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert!(e.contains("not a file inside the directory"), "{e}");
    // No weight_map.
    d.json("model.safetensors.index.json", json!({"metadata": {}}));
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert!(e.contains("has no \"weight_map\" object"), "{e}");
}

#[test]
fn loose_shards_without_index() {
    let d = model_dir("loose");
    d.write(
        "b.safetensors",
        safetensors_bytes(&[("y", Dtype::F32, vec![1], f32_bytes(&[2.]))]),
    );
    d.write(
        "a.safetensors",
        safetensors_bytes(&[("x", Dtype::F32, vec![1], f32_bytes(&[1.]))]),
    );
    let m = HfDir::open(&d.0).unwrap();
    assert_eq!(m.tensor_names(), ["x", "y"]);
    assert_eq!(m.tensor("y").unwrap().to_f32(), [2.]);

    d.write(
        "c.safetensors",
        safetensors_bytes(&[("x", Dtype::F32, vec![1], f32_bytes(&[3.]))]),
    );
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert!(
        e.starts_with("tensor 'x' is in both 'a.safetensors' and 'c.safetensors'"),
        "{e}"
    );
}

#[test]
fn directory_errors_say_what_to_do() {
    let d = TempDir::new("errors");
    assert!(!HfDir::is_hf_dir(&d.0));
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert_eq!(
        e,
        format!(
            "model directory '{}' has no config.json; point at the directory that holds \
             config.json and the *.safetensors weights",
            d.0.display()
        )
    );
    let file = d.write("x.gguf", b"GGUF");
    let e = HfDir::open(&file).err().unwrap().to_string();
    assert!(e.ends_with("is not a directory; a Hugging Face model is a directory holding config.json and *.safetensors weights"), "{e}");

    d.write("config.json", b"{not json");
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert!(
        e.contains("config.json' is not valid JSON (") && !e.contains('\n'),
        "{e}"
    );

    d.json("config.json", json!({}));
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert!(
        e.contains("has no safetensors weights") && e.ends_with("download the weights too"),
        "{e}"
    );
    d.write("pytorch_model.bin", b"PK");
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert!(e.ends_with("convert it to safetensors"), "{e}");

    d.write("model.safetensors", b"");
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert!(e.contains("model.safetensors' is empty"), "{e}");
    d.write("model.safetensors", b"\x08\0\0\0\0\0\0\0{\"a\":1}");
    let e = HfDir::open(&d.0).err().unwrap().to_string();
    assert!(
        e.contains("is not a valid safetensors file (")
            && e.ends_with("re-download or re-convert the model"),
        "{e}"
    );
}

/// A refusal must be one line of sane length; an acceptance must give in-bounds tensors whose
/// byte length matches shape x dtype.
fn check_parse(bytes: &[u8]) -> bool {
    match parse_safetensors(bytes) {
        Ok(tensors) => {
            for (_, e) in tensors {
                let n: usize = e.shape.iter().product();
                assert!(e.start <= e.end && e.end <= bytes.len());
                assert_eq!(n * e.dtype.bitsize(), (e.end - e.start) * 8);
            }
            true
        }
        Err(msg) => {
            assert!(!msg.contains(['\n', '\r']), "multi-line error: {msg:?}");
            assert!(msg.len() < 600, "overlong error: {msg:?}");
            false
        }
    }
}

fn with_header(header: &str, data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data_len, 0);
    b
}

#[test]
fn garbled_headers_are_errors_not_panics() {
    let good = mixed_file();
    assert!(check_parse(&good));
    // Every truncation fails.
    for len in 0..good.len() {
        assert!(!check_parse(&good[..len]), "truncated to {len} accepted");
    }
    // Trailing bytes fail too (the data must end where the last tensor ends).
    let mut longer = good.clone();
    longer.push(0);
    assert!(!check_parse(&longer));
    // Every single-byte corruption, with a few values, parses or fails cleanly.
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    for pos in 0..8 + n {
        for v in [0u8, b'"', b'9', b'-', b'{', b'}', b',', 0xff] {
            let mut b = good.clone();
            b[pos] = v;
            check_parse(&b);
        }
    }
    // Hand-made bad headers.
    let bad = [
        (u64::MAX.to_le_bytes().to_vec()),
        ((1u64 << 40).to_le_bytes().to_vec()),
        with_header("", 0),
        with_header("[]", 0),
        with_header("null", 0),
        with_header(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            4,
        ),
        with_header(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}"#,
            4,
        ),
        with_header(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
            4,
        ),
        with_header(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        ),
        with_header(
            r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
            4,
        ),
        with_header(
            r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        ),
        with_header(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#,
            4,
        ),
        with_header(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}"#,
            4,
        ),
        with_header(r#"{"a":{"dtype":"F32","shape":[1]}}"#, 4),
        with_header(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        ),
        with_header(r#"{"__metadata__":{"format":1}}"#, 0),
        with_header(&"[".repeat(10_000), 0),
        with_header(
            &format!(
                r#"{{"{}":{{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}}}"#,
                "x".repeat(5000)
            ),
            4,
        ),
    ];
    for b in &bad {
        assert!(!check_parse(b), "accepted {:?}", String::from_utf8_lossy(b));
    }
    // Non-UTF-8 header.
    let mut b = with_header("{\"a\"}", 0);
    b[9] = 0xff;
    assert!(!check_parse(&b));
    // Valid edge cases: no tensors; a zero-size tensor.
    assert!(check_parse(&with_header("{}", 0)));
    assert!(check_parse(&with_header(
        r#"{"a":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}}"#,
        0
    )));
}

#[test]
fn generation_config_fields() {
    let d = model_dir("gen");
    d.write("model.safetensors", mixed_file());
    d.write("tokenizer.json", "{}");
    d.json(
        "generation_config.json",
        json!({
            "bos_token_id": 1, "eos_token_id": [2, 7], "pad_token_id": -1,
            "do_sample": true, "temperature": 1, "top_k": 50, "top_p": 0.9,
            "num_beams": 4, "length_penalty": 2.0, "early_stopping": "never",
            "max_new_tokens": null, "max_length": 20, "repetition_penalty": 1.1,
            "no_repeat_ngram_size": 3, "decoder_start_token_id": 0,
            "forced_eos_token_id": 2, "transformers_version": "4.50.0"
        }),
    );
    let m = HfDir::open(&d.0).unwrap();
    assert_eq!(m.tokenizer_path(), Some(d.0.join("tokenizer.json")));
    let g = m.generation_config().unwrap().unwrap();
    assert_eq!(
        g,
        GenerationConfig {
            eos_token_ids: vec![2, 7],
            bos_token_id: Some(1),
            pad_token_id: None,
            decoder_start_token_id: Some(0),
            forced_eos_token_id: Some(2),
            forced_bos_token_id: None,
            do_sample: Some(true),
            temperature: Some(1.0),
            top_k: Some(50),
            top_p: Some(0.9),
            num_beams: Some(4),
            length_penalty: Some(2.0),
            early_stopping: Some(json!("never")),
            max_new_tokens: None,
            max_length: Some(20),
            repetition_penalty: Some(1.1),
            no_repeat_ngram_size: Some(3),
        }
    );
    let one = GenerationConfig::from_json(&json!({"eos_token_id": 5})).unwrap();
    assert_eq!(one.eos_token_ids, [5]);
    assert_eq!(
        GenerationConfig::from_json(&json!({})).unwrap(),
        GenerationConfig::default()
    );

    d.json("generation_config.json", json!({"top_k": "many"}));
    let e = m.generation_config().err().unwrap().to_string();
    assert!(e.ends_with("generation_config.json': 'top_k' is \"many\", expected a non-negative integer; fix or delete the file"), "{e}");
    d.json("generation_config.json", json!({"eos_token_id": [1, 2.5]}));
    let e = m.generation_config().err().unwrap().to_string();
    assert!(
        e.contains("'eos_token_id' is 2.5, expected a token id"),
        "{e}"
    );
    d.write("generation_config.json", "{");
    assert!(m.generation_config().is_err());
}

#[test]
fn sentence_config_from_modules_json() {
    let d = model_dir("st");
    d.write("model.safetensors", mixed_file());
    let modules = |extra: serde_json::Value| {
        let mut v = json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]);
        if !extra.is_null() {
            v.as_array_mut().unwrap().push(extra);
        }
        v
    };
    d.json("modules.json", modules(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})));
    d.json(
        "1_Pooling/config.json",
        json!({"word_embedding_dimension": 4, "pooling_mode_cls_token": false,
               "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
               "pooling_mode_mean_sqrt_len_tokens": false}),
    );
    d.json(
        "sentence_bert_config.json",
        json!({"max_seq_length": 256, "do_lower_case": false}),
    );
    let m = HfDir::open(&d.0).unwrap();
    assert_eq!(
        m.sentence_config().unwrap(),
        SentenceConfig {
            pooling: Pooling::Mean,
            normalize: true,
            max_seq_length: Some(256),
            do_lower_case: false,
            has_modules_json: true,
        }
    );

    // Newer configs name the mode; no Normalize module.
    d.json("modules.json", modules(serde_json::Value::Null));
    d.json(
        "1_Pooling/config.json",
        json!({"embedding_dimension": 4, "pooling_mode": "lasttoken"}),
    );
    d.json(
        "sentence_bert_config.json",
        json!({"max_seq_length": null, "do_lower_case": true}),
    );
    let s = m.sentence_config().unwrap();
    assert_eq!(
        (s.pooling, s.normalize, s.max_seq_length, s.do_lower_case),
        (Pooling::LastToken, false, None, true)
    );

    // Modules ferrolm does not apply, and combined modes, are refused.
    d.json("modules.json", modules(json!({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})));
    let e = m.sentence_config().err().unwrap().to_string();
    assert!(e.contains("lists module sentence_transformers.models.Dense ('2_Dense'), which ferrolm does not apply"), "{e}");
    d.json("modules.json", modules(serde_json::Value::Null));
    d.json(
        "1_Pooling/config.json",
        json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}),
    );
    let e = m.sentence_config().err().unwrap().to_string();
    assert!(e.contains("pooling combines modes cls+mean"), "{e}");
    d.json("1_Pooling/config.json", json!({"pooling_mode": "median"}));
    let e = m.sentence_config().err().unwrap().to_string();
    assert!(e.contains("unknown pooling mode 'median'"), "{e}");
    d.json(
        "modules.json",
        json!([{"path": "", "type": "sentence_transformers.models.Transformer"}]),
    );
    let e = m.sentence_config().err().unwrap().to_string();
    assert!(e.contains("has no Pooling module"), "{e}");
}

#[test]
fn sentence_config_without_modules_json() {
    let d = model_dir("st-bare");
    d.write("model.safetensors", mixed_file());
    let m = HfDir::open(&d.0).unwrap();
    let plain = SentenceConfig {
        pooling: Pooling::Mean,
        normalize: false,
        max_seq_length: None,
        do_lower_case: false,
        has_modules_json: false,
    };
    assert_eq!(m.sentence_config().unwrap(), plain);
    // A causal LM defaults to last-token pooling, as in sentence-transformers.
    let causal = json!({"architectures": ["Qwen2ForCausalLM"]});
    assert_eq!(
        SentenceConfig::read(&d.0, &causal).unwrap().pooling,
        Pooling::LastToken
    );
    let bidirectional = json!({"architectures": ["Qwen2ForCausalLM"], "is_causal": false});
    assert_eq!(
        SentenceConfig::read(&d.0, &bidirectional).unwrap().pooling,
        Pooling::Mean
    );

    // Module directories are honoured.
    d.json(
        "1_Pooling/config.json",
        json!({"pooling_mode_cls_token": true}),
    );
    std::fs::create_dir_all(d.0.join("2_Normalize")).unwrap();
    std::fs::create_dir_all(d.0.join("x_Dense")).unwrap();
    d.json("sentence_bert_config.json", json!({"max_seq_length": 128}));
    assert_eq!(
        m.sentence_config().unwrap(),
        SentenceConfig {
            pooling: Pooling::Cls,
            normalize: true,
            max_seq_length: Some(128),
            ..plain
        }
    );
}

#[test]
fn pooling_modes() {
    // T = 3 tokens, C = 2.
    let h = [1.0, -1.0, 3.0, 5.0, 2.0, -3.0];
    let p = |mode| pool(&h, 2, mode, false);
    assert_eq!(p(Pooling::Cls), [1.0, -1.0]);
    assert_eq!(p(Pooling::LastToken), [2.0, -3.0]);
    assert_eq!(p(Pooling::Max), [3.0, 5.0]);
    assert_eq!(p(Pooling::Mean), [2.0, 1.0 / 3.0]);
    let s3 = 3f64.sqrt();
    assert_eq!(
        p(Pooling::MeanSqrtLen),
        [(6.0 / s3) as f32, (1.0 / s3) as f32]
    );
    // Weights 1, 2, 3 over a total of 6.
    assert_eq!(
        p(Pooling::WeightedMean),
        [(1.0 + 6.0 + 6.0) / 6.0, (-1.0 + 10.0 - 9.0) / 6.0]
    );

    let n = pool(&[3.0, -4.0, 0.0, 4.0], 2, Pooling::Max, true);
    assert_eq!(n, [0.6, 0.8]);
    // torch's F.normalize leaves the zero vector at zero.
    assert_eq!(pool(&[0.0, 0.0], 2, Pooling::Mean, true), [0.0, 0.0]);
    assert_eq!(pool(&[], 2, Pooling::Mean, false), [0.0, 0.0]);
    assert!(pool(&[1.0, f32::NAN, 2.0, 0.0], 2, Pooling::Max, false)[1].is_nan());
}

/// The real all-MiniLM-L6-v2 directory, if the catalog has it (skipped otherwise, also in CI,
/// which does not pull it).
#[test]
fn real_minilm_directory() {
    let dir = crate::test_models::dir().join("all-minilm-l6-v2");
    if !dir.join("config.json").is_file() {
        eprintln!("skipping: {} not found", dir.display());
        return;
    }
    let m = HfDir::open(Path::new(&dir)).unwrap();
    assert_eq!(m.config["model_type"], "bert");
    let w = m.get("embeddings.word_embeddings.weight").unwrap();
    assert_eq!(
        (w.dtype, w.shape.as_slice()),
        (HfDtype::F32, &[30522, 384][..])
    );
    assert!(m.get("embeddings.position_ids").is_err());
    assert_eq!(m.sentence_config().unwrap().pooling, Pooling::Mean);
}
