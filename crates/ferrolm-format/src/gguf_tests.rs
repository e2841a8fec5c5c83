//! Unit tests of the GGUF parser: valid files round-trip through `GgufWriter`, and every kind of
//! damaged file is refused with the right one-line error and without panicking.

use super::*;
use crate::writer::GgufWriter;

/// Hand-assembles GGUF bytes, for files the writer would refuse to make.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw(b"GGUF".to_vec()).u32(version).u64(n_tensors).u64(n_kv)
    }
    fn u32(mut self, v: u32) -> Raw {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Raw {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn str(self, s: &[u8]) -> Raw {
        let mut r = self.u64(s.len() as u64);
        r.0.extend(s);
        r
    }
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key.as_bytes()).u32(value_type::U32).u32(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
        let mut r = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    fn data(mut self, n: usize) -> Vec<u8> {
        self.0.resize(self.0.len().next_multiple_of(32) + n, 0xAB);
        self.0
    }
}

fn parse_err(bytes: &[u8]) -> FormatError {
    match GgufHeader::parse(bytes) {
        Ok(h) => panic!("parsed unexpectedly: {h:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line message: {msg}");
            e
        }
    }
}

/// A small valid file: two metadata entries, an F32 and a Q4_0 tensor.
fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_meta("general.architecture", MetaValue::String("llama".into()));
    w.add_meta(
        "tokenizer.ggml.tokens",
        MetaValue::Array(vec![MetaValue::String("a".into()); 3]),
    );
    w.add_f32_tensor("norm.weight", &[4], &[1.0, 2.0, 3.0, 4.0])
        .unwrap();
    w.add_tensor(
        "blk.0.attn_q.weight",
        &[32, 2],
        GgmlType::Q4_0,
        vec![0x11; 36],
    )
    .unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn writer_output_parses_back() {
    let bytes = small_file();
    let h = GgufHeader::parse(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, 32);
    assert_eq!(h.data_start % 32, 0);
    assert_eq!(h.get_str("general.architecture"), Some("llama"));
    assert_eq!(
        h.get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len()),
        Some(3)
    );
    let norm = h.tensor("norm.weight").unwrap();
    assert_eq!(
        (norm.offset, norm.n_bytes, norm.row_len(), norm.n_rows()),
        (h.data_start, 16, 4, 1)
    );
    assert_eq!(&bytes[norm.offset..norm.offset + 4], &1.0f32.to_le_bytes());
    let q = h.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.ty, q.dims.clone(), q.n_bytes, q.offset),
        (GgmlType::Q4_0, vec![32, 2], 36, h.data_start + 32)
    );
    assert_eq!(q.n_elements(), 64);
    assert!(h.tensor("missing").is_none());
}

#[test]
fn custom_alignment_and_version_2() {
    let mut w = GgufWriter::new();
    w.set_version(2);
    w.add_meta(ALIGNMENT_KEY, MetaValue::U32(256));
    w.add_f32_tensor("a", &[3], &[0.0; 3]).unwrap();
    w.add_f32_tensor("b", &[3], &[0.0; 3]).unwrap();
    let h = GgufHeader::parse(&w.to_bytes().unwrap()).unwrap();
    assert_eq!((h.version, h.alignment, h.data_start), (2, 256, 256));
    assert_eq!(h.tensors[1].offset, 512);
}

#[test]
fn wrong_magic() {
    let e = parse_err(b"PK\x03\x04 rest of a zip file");
    assert_eq!(
        e.to_string(),
        r#"not a GGUF file: magic is "PK\x03\x04", expected "GGUF" (is this a GGUF model? pass a .gguf file)"#
    );
}

#[test]
fn every_prefix_of_a_valid_file_fails_cleanly() {
    let bytes = small_file();
    let h = GgufHeader::parse(&bytes).unwrap();
    let needed = h
        .tensors
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap();
    for cut in 0..bytes.len() {
        let result = std::panic::catch_unwind(|| GgufHeader::parse(&bytes[..cut]));
        let result = result.unwrap_or_else(|_| panic!("panicked on a prefix of {cut} bytes"));
        if cut < needed {
            let e = result.expect_err("a prefix that cuts tensor data parsed");
            let msg = e.to_string();
            assert!(
                msg.starts_with("truncated") || msg.contains("extends past the end of the file"),
                "cut {cut}: {msg}"
            );
        } else {
            assert!(result.is_ok(), "cut {cut} only removes padding");
        }
    }
    let e = parse_err(&bytes[..10]);
    assert_eq!(
        e.to_string(),
        "truncated GGUF file: needed 8 bytes at offset 8 while reading the tensor count, file has 10 bytes (the download may be incomplete)"
    );
}

#[test]
fn tensor_past_end() {
    let bytes = small_file();
    let h = GgufHeader::parse(&bytes).unwrap();
    let e = parse_err(&bytes[..h.data_start + 40]);
    assert_eq!(
        e.to_string(),
        format!(
            "tensor 'blk.0.attn_q.weight' extends past the end of the file (offset {} + size 36 > file size {}; the file may be truncated)",
            h.data_start + 32,
            h.data_start + 40
        )
    );
}

#[test]
fn unsupported_and_unknown_types() {
    let mut w = GgufWriter::new();
    w.add_tensor(
        "blk.0.attn_q.weight",
        &[256],
        GgmlType::IQ2_XXS,
        vec![0; 66],
    )
    .unwrap();
    let e = parse_err(&w.to_bytes().unwrap());
    assert!(
        e.to_string().starts_with(
            "tensor 'blk.0.attn_q.weight' has type IQ2_XXS, which ferrolm does not support (supported: F32, F16, BF16, Q4_0,"
        ),
        "{e}"
    );
    assert!(e
        .to_string()
        .ends_with("; re-quantize the model with one of those types"));

    let bytes = Raw::header(3, 1, 0).tensor("t", &[32], 99, 0).data(64);
    let e = parse_err(&bytes);
    assert!(
        e.to_string()
            .starts_with("tensor 't' has unknown type id 99 (supported: F32"),
        "{e}"
    );
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48] {
        let bytes = Raw::header(3, 0, 1).kv_u32(ALIGNMENT_KEY, a).data(0);
        let e = parse_err(&bytes);
        assert!(
            e.to_string()
                .starts_with(&format!("invalid general.alignment {a}: ")),
            "{e}"
        );
    }
    let bytes = Raw::header(3, 0, 1)
        .str(ALIGNMENT_KEY.as_bytes())
        .u32(value_type::STRING)
        .str(b"32")
        .data(0);
    assert!(matches!(
        parse_err(&bytes),
        FormatError::BadAlignment { .. }
    ));
    // Any non-negative integer type is accepted.
    let bytes = Raw::header(3, 0, 1)
        .str(ALIGNMENT_KEY.as_bytes())
        .u32(value_type::U64)
        .u64(64)
        .data(0);
    assert_eq!(GgufHeader::parse(&bytes).unwrap().alignment, 64);
}

#[test]
fn versions_and_endianness() {
    let e = parse_err(&Raw::header(1, 0, 0).data(0));
    assert!(
        e.to_string()
            .starts_with("GGUF version 1 is not supported: ferrolm reads versions 2 and 3"),
        "{e}"
    );
    let e = parse_err(&Raw::header(4, 0, 0).data(0));
    assert!(
        e.to_string().starts_with("GGUF version 4 is not supported"),
        "{e}"
    );
    let e = parse_err(&Raw::header(3u32.swap_bytes(), 0, 0).data(0));
    assert!(e.to_string().starts_with("GGUF file is big-endian"), "{e}");
    assert!(GgufHeader::parse(&Raw::header(2, 0, 0).data(0)).is_ok());
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    for (n_tensors, n_kv) in [(u64::MAX, 0), (0, u64::MAX), (1 << 40, 0), (0, 1 << 60)] {
        let e = parse_err(&Raw::header(3, n_tensors, n_kv).data(64));
        assert!(matches!(e, FormatError::CountTooLarge { .. }), "{e}");
    }
    // An array claiming 2^62 elements.
    let bytes = Raw::header(3, 0, 1)
        .str(b"k")
        .u32(value_type::ARRAY)
        .u32(value_type::U8)
        .u64(1 << 62)
        .data(8);
    let e = parse_err(&bytes);
    assert!(
        e.to_string()
            .contains("the element count of metadata key 'k'"),
        "{e}"
    );
    // Strings (keys and values) longer than the file.
    let e = parse_err(&Raw::header(3, 0, 1).u64(u64::MAX).data(64));
    assert!(
        e.to_string()
            .starts_with("truncated GGUF file: needed 18446744073709551615 bytes"),
        "{e}"
    );
    let bytes = Raw::header(3, 0, 1)
        .str(b"k")
        .u32(value_type::STRING)
        .u64(1 << 40)
        .data(0);
    assert!(matches!(parse_err(&bytes), FormatError::Truncated { .. }));
}

/// An array nested `depth` levels deep around one u8.
fn nested(depth: usize) -> Vec<u8> {
    let mut r = Raw::header(3, 0, 1).str(b"deep").u32(value_type::ARRAY);
    for level in 0..depth {
        let elem = if level + 1 == depth {
            value_type::U8
        } else {
            value_type::ARRAY
        };
        r = r.u32(elem).u64(1);
    }
    r.0.push(5);
    r.data(0)
}

#[test]
fn array_nesting_is_limited() {
    let h = GgufHeader::parse(&nested(MAX_ARRAY_DEPTH)).unwrap();
    let mut v = h.get("deep").unwrap();
    for _ in 0..MAX_ARRAY_DEPTH {
        v = &v.as_array().unwrap()[0];
    }
    assert_eq!(v, &MetaValue::U8(5));
    let e = parse_err(&nested(MAX_ARRAY_DEPTH + 1));
    assert!(matches!(e, FormatError::NestingTooDeep { .. }), "{e}");
}

#[test]
fn every_value_type_round_trips() {
    let values = vec![
        MetaValue::U8(1),
        MetaValue::I8(-2),
        MetaValue::U16(3),
        MetaValue::I16(-4),
        MetaValue::U32(5),
        MetaValue::I32(-6),
        MetaValue::U64(u64::MAX),
        MetaValue::I64(i64::MIN),
        MetaValue::F32(1.5),
        MetaValue::F64(-2.25),
        MetaValue::Bool(false),
        MetaValue::String("h\u{e9}llo".into()),
        MetaValue::Array(vec![
            MetaValue::Array(vec![MetaValue::I16(1)]),
            MetaValue::Array(vec![]),
        ]),
    ];
    let mut w = GgufWriter::new();
    for (i, v) in values.iter().enumerate() {
        w.add_meta(format!("k{i}"), v.clone());
    }
    let h = GgufHeader::parse(&w.to_bytes().unwrap()).unwrap();
    let got: Vec<MetaValue> = h.metadata.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(got, values);
}

#[test]
fn meta_value_accessors() {
    assert_eq!(MetaValue::I32(-1).as_u64(), None);
    assert_eq!(MetaValue::I32(7).as_u64(), Some(7));
    assert_eq!(MetaValue::U64(u64::MAX).as_i64(), None);
    assert_eq!(MetaValue::U8(3).as_i64(), Some(3));
    assert_eq!(MetaValue::U16(3).as_f64(), Some(3.0));
    assert_eq!(MetaValue::F32(0.5).as_f64(), Some(0.5));
    assert_eq!(MetaValue::F32(0.5).as_u64(), None);
    assert_eq!(MetaValue::Bool(true).as_u64(), None);
    assert_eq!(MetaValue::Bool(true).as_bool(), Some(true));
    assert_eq!(MetaValue::String("x".into()).as_str(), Some("x"));
    assert_eq!(MetaValue::String("x".into()).type_name(), "string");
    assert_eq!(MetaValue::Array(vec![]).as_array(), Some(&[][..]));
    assert_eq!(MetaValue::I64(0).type_name(), "i64");
}

#[test]
fn bad_tensor_shapes() {
    let cases: [(&[u64], u32, &str); 6] = [
        (&[], 0, "has 0 dimensions"),
        (&[1, 1, 1, 1, 1], 0, "has 5 dimensions"),
        (&[4, 0], 0, "has size 0 in dimension 1"),
        (&[1 << 32, 1 << 32, 1 << 32], 0, "overflows"),
        (&[u64::MAX / 2, 4], 0, "overflows"),
        (
            &[48],
            2,
            "has row length 48, which is not a multiple of the Q4_0 block size 32",
        ),
    ];
    for (dims, ty, expected) in cases {
        let e = parse_err(&Raw::header(3, 1, 0).tensor("t", dims, ty, 0).data(256));
        assert!(
            matches!(e, FormatError::BadTensorShape { .. }),
            "{dims:?}: {e}"
        );
        assert!(e.to_string().contains(expected), "{dims:?}: {e}");
    }
}

#[test]
fn misaligned_overflowing_and_duplicate_tensors() {
    let e = parse_err(&Raw::header(3, 1, 0).tensor("t", &[4], 0, 16).data(64));
    assert!(
        e.to_string()
            .contains("data offset 16, which is not a multiple of the alignment 32"),
        "{e}"
    );
    let e = parse_err(
        &Raw::header(3, 1, 0)
            .tensor("t", &[4], 0, u64::MAX - 31)
            .data(64),
    );
    assert!(matches!(e, FormatError::TensorPastEnd { .. }), "{e}");
    let bytes = Raw::header(3, 2, 0)
        .tensor("t", &[4], 0, 0)
        .tensor("t", &[4], 0, 32)
        .data(64);
    assert_eq!(
        parse_err(&bytes).to_string(),
        "corrupt GGUF file: tensor name 't' appears twice (the file is damaged)"
    );
}

#[test]
fn keys_values_and_names() {
    let e = parse_err(&Raw::header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2).data(0));
    assert!(matches!(e, FormatError::DuplicateKey { .. }), "{e}");
    let e = parse_err(&Raw::header(3, 0, 1).str(b"k").u32(13).u32(0).data(0));
    assert!(
        e.to_string().contains("unknown metadata value type 13"),
        "{e}"
    );
    let e = parse_err(
        &Raw::header(3, 0, 1)
            .str(b"k")
            .u32(value_type::ARRAY)
            .u32(77)
            .u64(0)
            .data(0),
    );
    assert!(
        e.to_string()
            .contains("the array elements of metadata key 'k'"),
        "{e}"
    );
    let e = parse_err(
        &Raw::header(3, 0, 1)
            .str(b"\xFF\xFE")
            .u32(value_type::U8)
            .data(1),
    );
    assert!(matches!(e, FormatError::InvalidUtf8 { .. }), "{e}");
    // Names in messages are escaped and cut short, so a message stays one line.
    let long = format!("a\nb{}", "x".repeat(500));
    let e = parse_err(&Raw::header(3, 1, 0).tensor(&long, &[4], 0, 64).data(64));
    let msg = e.to_string();
    assert!(msg.starts_with("tensor 'a\\nbxxx"), "{msg}");
    assert!(msg.len() < 400, "{msg}");
    // Invalid UTF-8 in a value is replaced, not refused.
    let bytes = Raw::header(3, 0, 1)
        .str(b"k")
        .u32(value_type::STRING)
        .str(b"a\xFFb")
        .data(0);
    assert_eq!(
        GgufHeader::parse(&bytes).unwrap().get_str("k"),
        Some("a\u{FFFD}b")
    );
}

#[test]
fn open_reports_missing_and_empty_files() {
    let missing = std::path::Path::new("/nonexistent/ferrolm/model.gguf");
    let e = GgufFile::open(missing).err().unwrap();
    assert_eq!(
        e.to_string(),
        "cannot open model file '/nonexistent/ferrolm/model.gguf': No such file or directory (check the path, or use a catalog name such as smollm2-135m-instruct)"
    );
    let dir = std::env::temp_dir().join(format!("ferrolm-format-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(GgufFile::open(&empty)
        .err()
        .unwrap()
        .to_string()
        .starts_with("truncated GGUF file"));

    let path = dir.join("small.gguf");
    std::fs::write(&path, small_file()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let t = f.header.tensor("norm.weight").unwrap();
    assert_eq!(f.tensor_bytes(t).len(), 16);
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    assert_eq!(f.bytes().len(), small_file().len());
    std::fs::remove_dir_all(&dir).unwrap();
}
