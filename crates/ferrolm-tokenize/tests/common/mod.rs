//! Test helpers: a minimal GGUF metadata reader (just enough to build a `VocabSpec` from the
//! real model files) and the golden-file loader. Test-only; the engine reads GGUF through
//! `ferrolm-format`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use ferrolm_tokenize::VocabSpec;

/// A GGUF metadata value (tensor infos are not read).
#[derive(Debug, Clone)]
pub enum Meta {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

impl Meta {
    fn as_u32(&self) -> Option<u32> {
        match self {
            Meta::Int(v) => u32::try_from(*v).ok(),
            _ => None,
        }
    }
    fn as_bool(&self) -> Option<bool> {
        match self {
            Meta::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Meta::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&[Meta]> {
        match self {
            Meta::Array(a) => Some(a),
            _ => None,
        }
    }
}

struct Reader<R: Read>(R);

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.0.read_exact(&mut b).expect("truncated GGUF header");
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        let mut b = vec![0u8; n];
        self.0.read_exact(&mut b).expect("truncated GGUF string");
        String::from_utf8(b).expect("GGUF string is UTF-8")
    }
    fn value(&mut self, ty: u32) -> Meta {
        match ty {
            0 => Meta::Int(self.bytes::<1>()[0] as i64),
            1 => Meta::Int(self.bytes::<1>()[0] as i8 as i64),
            2 => Meta::Int(u16::from_le_bytes(self.bytes()) as i64),
            3 => Meta::Int(i16::from_le_bytes(self.bytes()) as i64),
            4 => Meta::Int(self.u32() as i64),
            5 => Meta::Int(i32::from_le_bytes(self.bytes()) as i64),
            6 => Meta::Float(f32::from_le_bytes(self.bytes()) as f64),
            7 => Meta::Bool(self.bytes::<1>()[0] != 0),
            8 => Meta::Str(self.string()),
            9 => {
                let elem = self.u32();
                let n = self.u64() as usize;
                Meta::Array((0..n).map(|_| self.value(elem)).collect())
            }
            10 => Meta::Int(self.u64() as i64),
            11 => Meta::Int(i64::from_le_bytes(self.bytes())),
            12 => Meta::Float(f64::from_le_bytes(self.bytes())),
            t => panic!("unknown GGUF value type {t}"),
        }
    }
}

/// All metadata key/values of a GGUF file.
pub fn read_metadata(path: &Path) -> HashMap<String, Meta> {
    let mut r = Reader(BufReader::with_capacity(
        1 << 20,
        File::open(path).expect("open GGUF"),
    ));
    assert_eq!(&r.bytes::<4>(), b"GGUF", "not a GGUF file");
    let version = r.u32();
    assert!(version >= 2, "GGUF v{version} not supported");
    let _n_tensors = r.u64();
    let n_kv = r.u64();
    let mut out = HashMap::new();
    for _ in 0..n_kv {
        let key = r.string();
        let ty = r.u32();
        out.insert(key, r.value(ty));
    }
    out
}

/// The `tokenizer.ggml.*` metadata as a `VocabSpec`.
pub fn vocab_spec(meta: &HashMap<String, Meta>) -> VocabSpec {
    let key = |k: &str| meta.get(&format!("tokenizer.ggml.{k}"));
    let strings = |k: &str| {
        key(k).and_then(Meta::as_array).map(|a| {
            a.iter()
                .map(|m| m.as_str().expect("string array").to_string())
                .collect::<Vec<_>>()
        })
    };
    VocabSpec {
        model: key("model")
            .and_then(Meta::as_str)
            .expect("tokenizer.ggml.model")
            .to_string(),
        pre: key("pre").and_then(Meta::as_str).map(str::to_string),
        tokens: strings("tokens").expect("tokenizer.ggml.tokens"),
        scores: key("scores").and_then(Meta::as_array).map(|a| {
            a.iter()
                .map(|m| match m {
                    Meta::Float(f) => *f as f32,
                    Meta::Int(i) => *i as f32,
                    _ => panic!("score"),
                })
                .collect()
        }),
        token_types: key("token_type").and_then(Meta::as_array).map(|a| {
            a.iter()
                .map(|m| match m {
                    Meta::Int(i) => *i as i32,
                    _ => panic!("token type"),
                })
                .collect()
        }),
        merges: strings("merges"),
        bos_id: key("bos_token_id").and_then(Meta::as_u32),
        eos_id: key("eos_token_id").and_then(Meta::as_u32),
        eot_id: key("eot_token_id").and_then(Meta::as_u32),
        unk_id: key("unknown_token_id").and_then(Meta::as_u32),
        pad_id: key("padding_token_id").and_then(Meta::as_u32),
        add_bos: key("add_bos_token").and_then(Meta::as_bool),
        add_eos: key("add_eos_token").and_then(Meta::as_bool),
        add_space_prefix: key("add_space_prefix").and_then(Meta::as_bool),
    }
}

/// Directory with the real model files (see `ferrolm_format::test_models`).
pub fn models_dir() -> Option<PathBuf> {
    Some(ferrolm_format::test_models::dir())
}

/// The model file for a golden name ("smollm2", "gemma3"), if present.
pub fn model_path(name: &str) -> Option<PathBuf> {
    let file = match name {
        "smollm2" => "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma3" => "gemma-3-270m-q4_k_m.gguf",
        other => panic!("unknown golden model {other}"),
    };
    ferrolm_format::test_models::file(file)
}

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}
