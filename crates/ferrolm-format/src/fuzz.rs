//! `fuzz_one`: the body of the `gguf_parse` fuzz target, kept in the crate so that the fuzzer
//! (fuzz/fuzz_targets/gguf_parse.rs) and an ordinary test replaying the corpus
//! (tests/fuzz_corpus.rs) run the same code.
//!
//! It parses arbitrary bytes. A refusal must be a one-line message of sane length. A success
//! must keep the parser's promises: every tensor's bytes can be sliced, the first row of every
//! tensor dequantizes, and writing the header back out with [`GgufWriter`] and parsing it again
//! gives the same metadata and tensors.
//! A broken promise panics, which is what the fuzzer looks for.

use crate::dequant::dequantize;
use crate::gguf::{GgufHeader, MetaValue};
use crate::writer::GgufWriter;

/// Longest row `fuzz_one` dequantizes, in elements.
const MAX_ROW: usize = 1 << 16;
/// Longest error message allowed, in bytes: messages name things, they do not dump them.
const MAX_MESSAGE: usize = 1024;
/// Largest rewritten file `fuzz_one` builds for the round trip, in bytes.
const MAX_REWRITE: usize = 16 << 20;

/// Parses `bytes` as GGUF and, if that succeeds, exercises the result (see the module doc).
/// Panics only if the parser breaks one of its promises.
pub fn fuzz_one(bytes: &[u8]) {
    let header = match GgufHeader::parse(bytes) {
        Ok(header) => header,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains(['\n', '\r']), "multi-line error: {msg:?}");
            assert!(msg.len() <= MAX_MESSAGE, "overlong error: {msg:?}");
            return;
        }
    };
    assert!(header.alignment.is_power_of_two());
    assert_eq!(header.data_start % header.alignment, 0);

    let mut checksum = 0u8;
    for t in &header.tensors {
        let data = &bytes[t.offset..t.offset + t.n_bytes];
        checksum ^= data.iter().fold(0, |acc, &b| acc ^ b);
        assert!(t.ty.is_supported(), "{}", t.name);
        assert_eq!(t.offset % header.alignment, 0);
        assert_eq!(t.n_bytes, t.row_bytes() * t.n_rows());
        if t.row_len() <= MAX_ROW {
            let mut row = vec![0.0f32; t.row_len()];
            dequantize(t.ty, &data[..t.row_bytes()], &mut row)
                .expect("a parsed tensor's row must dequantize");
        }
    }
    std::hint::black_box(checksum);

    let padded = |n: usize| n.checked_next_multiple_of(header.alignment);
    let rewrite_size = header.tensors.iter().try_fold(header.data_start, |acc, t| {
        acc.checked_add(padded(t.n_bytes)?)
    });
    if rewrite_size.is_some_and(|n| n <= MAX_REWRITE) {
        round_trip(bytes, &header);
    }
}

/// Writes `header` and its tensor data with `GgufWriter`, parses the result, and checks that
/// nothing changed but the tensor offsets.
fn round_trip(bytes: &[u8], header: &GgufHeader) {
    let mut w = GgufWriter::new();
    w.set_version(header.version);
    for (key, value) in &header.metadata {
        w.add_meta(key.clone(), value.clone());
    }
    for t in &header.tensors {
        let data = bytes[t.offset..t.offset + t.n_bytes].to_vec();
        w.add_tensor(t.name.clone(), &t.dims, t.ty, data)
            .expect("a parsed tensor must be writable");
    }
    let rewritten = w.to_bytes().expect("a parsed header must be writable");
    let again = GgufHeader::parse(&rewritten).expect("a rewritten file must parse");

    assert_eq!(again.version, header.version);
    assert_eq!(again.alignment, header.alignment);
    assert_eq!(again.metadata.len(), header.metadata.len());
    for ((k1, v1), (k2, v2)) in header.metadata.iter().zip(&again.metadata) {
        assert_eq!(k1, k2);
        assert!(
            same_value(v1, v2),
            "metadata '{k1}' changed: {v1:?} -> {v2:?}"
        );
    }
    assert_eq!(again.tensors.len(), header.tensors.len());
    for (t1, t2) in header.tensors.iter().zip(&again.tensors) {
        assert_eq!(
            (&t1.name, &t1.dims, t1.ty, t1.n_bytes),
            (&t2.name, &t2.dims, t2.ty, t2.n_bytes)
        );
        assert_eq!(
            bytes[t1.offset..t1.offset + t1.n_bytes],
            rewritten[t2.offset..t2.offset + t2.n_bytes]
        );
    }
}

/// Equality that compares floats by their bits, so NaN equals itself.
fn same_value(a: &MetaValue, b: &MetaValue) -> bool {
    match (a, b) {
        (MetaValue::F32(x), MetaValue::F32(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::F64(x), MetaValue::F64(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::Array(x), MetaValue::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        _ => a == b,
    }
}
