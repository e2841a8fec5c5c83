//! `FormatError`: everything that can be wrong with a model file, as one-line messages that say
//! what is wrong and what to do about it.

use crate::types::{removed_type_note, supported_names, GgmlType};

/// An error reading or decoding a model file. Every message is a single line.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "cannot open model file '{path}': {} (check the path, or use a catalog name such as smollm2-135m-instruct)",
        io_reason(.source)
    )]
    Open {
        path: String,
        source: std::io::Error,
    },

    #[error(
        "cannot memory-map model file '{path}': {} (the file system may not support mmap; copy the file to a local disk)",
        io_reason(.source)
    )]
    Map {
        path: String,
        source: std::io::Error,
    },

    #[error(
        "not a GGUF file: magic is \"{}\", expected \"GGUF\" (is this a GGUF model? pass a .gguf file)",
        escape_bytes(.found)
    )]
    BadMagic { found: [u8; 4] },

    #[error(
        "GGUF file is big-endian (version field reads {version:#010x}); ferrolm reads little-endian GGUF only (use the standard little-endian release of the model)"
    )]
    BigEndian { version: u32 },

    #[error("GGUF version {version} is not supported: ferrolm reads versions 2 and 3 ({})", version_hint(*.version))]
    UnsupportedVersion { version: u32 },

    #[error(
        "truncated GGUF file: needed {needed} bytes at offset {offset} while reading {what}, file has {file_len} bytes (the download may be incomplete)"
    )]
    Truncated {
        needed: u64,
        offset: usize,
        what: String,
        file_len: usize,
    },

    #[error(
        "truncated or corrupt GGUF file: {what} at offset {offset} is {count}, but only {remaining} bytes remain and each entry needs at least {min_entry_bytes} (the download may be incomplete, or the file is not a model)"
    )]
    CountTooLarge {
        what: String,
        count: u64,
        offset: usize,
        remaining: usize,
        min_entry_bytes: usize,
    },

    #[error(
        "corrupt GGUF file: {what} at offset {offset} has unknown metadata value type {type_id} (the file is damaged or from a newer GGUF version)"
    )]
    BadValueType {
        what: String,
        type_id: u32,
        offset: usize,
    },

    #[error(
        "corrupt GGUF file: metadata key '{key}' nests arrays more than {max_depth} deep (the file is damaged)"
    )]
    NestingTooDeep { key: String, max_depth: usize },

    #[error(
        "corrupt GGUF file: {what} at offset {offset} is not valid UTF-8 (the file is damaged)"
    )]
    InvalidUtf8 { what: String, offset: usize },

    #[error("corrupt GGUF file: metadata key '{key}' appears twice (the file is damaged)")]
    DuplicateKey { key: String },

    #[error(
        "invalid general.alignment {value}: it must be a nonzero power of two (the file is damaged; re-convert the model)"
    )]
    BadAlignment { value: String },

    #[error("corrupt GGUF file: tensor name '{name}' appears twice (the file is damaged)")]
    DuplicateTensor { name: String },

    #[error("corrupt GGUF file: tensor '{tensor}' {problem} (the file is damaged; re-download or re-convert the model)")]
    BadTensorShape { tensor: String, problem: String },

    #[error(
        "tensor '{tensor}' has type {ty}, which ferrolm does not support (supported: {}); re-quantize the model with one of those types",
        supported_names()
    )]
    UnsupportedType { tensor: String, ty: GgmlType },

    #[error(
        "tensor '{tensor}' has unknown type id {id}{} (supported: {}); re-quantize the model with one of those types",
        removed_note(*.id),
        supported_names()
    )]
    UnknownType { tensor: String, id: u32 },

    #[error(
        "corrupt GGUF file: tensor '{tensor}' has data offset {offset}, which is not a multiple of the alignment {alignment} (the file is damaged)"
    )]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: usize,
    },

    #[error(
        "tensor '{tensor}' extends past the end of the file (offset {offset} + size {size} > file size {file_len}; the file may be truncated)"
    )]
    TensorPastEnd {
        tensor: String,
        offset: u64,
        size: u64,
        file_len: usize,
    },

    #[error("cannot dequantize {ty}: {problem}")]
    Dequantize { ty: GgmlType, problem: String },

    #[error("cannot quantize to {ty}: {problem}")]
    Quantize { ty: GgmlType, problem: String },

    #[error("cannot write GGUF: {problem}")]
    Write { problem: String },
}

/// The OS message without Rust's " (os error N)" suffix: "No such file or directory".
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Longest key or tensor name shown in full in an error message, in characters.
const MAX_SHOWN_CHARS: usize = 96;

/// A key or tensor name from the file as shown in a message: control characters escaped (so
/// the message stays one line) and very long names cut short.
pub(crate) fn shown(name: &str) -> String {
    let mut s = String::new();
    for (i, c) in name.chars().enumerate() {
        if i == MAX_SHOWN_CHARS {
            s.push_str("...");
            break;
        }
        if c.is_control() {
            s.extend(c.escape_default());
        } else {
            s.push(c);
        }
    }
    s
}

/// Bytes as a C-style string literal body: printable ASCII as-is, the rest as `\xNN`.
pub(crate) fn escape_bytes(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(b as char);
            }
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02X}")),
        }
    }
    s
}

fn version_hint(version: u32) -> &'static str {
    if version == 1 {
        "version 1 is the 2023 pre-release format; re-convert the model with a current llama.cpp"
    } else {
        "the file may be from a newer GGUF revision or damaged; try a newer ferrolm or re-download it"
    }
}

fn removed_note(id: u32) -> String {
    match removed_type_note(id) {
        Some(note) => format!(" ({note})"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_match_the_examples() {
        let e = FormatError::BadMagic {
            found: *b"PK\x03\x04",
        };
        assert_eq!(
            e.to_string(),
            r#"not a GGUF file: magic is "PK\x03\x04", expected "GGUF" (is this a GGUF model? pass a .gguf file)"#
        );
        let e = FormatError::Open {
            path: "p".into(),
            source: std::io::Error::from_raw_os_error(2),
        };
        assert_eq!(
            e.to_string(),
            "cannot open model file 'p': No such file or directory (check the path, or use a catalog name such as smollm2-135m-instruct)"
        );
        let e = FormatError::UnknownType {
            tensor: "t".into(),
            id: 31,
        };
        assert!(
            e.to_string().contains("unknown type id 31 (Q4_0_4_4"),
            "{e}"
        );
        let e = FormatError::UnsupportedType {
            tensor: "blk.0.attn_q.weight".into(),
            ty: GgmlType::IQ2_XXS,
        };
        assert_eq!(
            e.to_string(),
            "tensor 'blk.0.attn_q.weight' has type IQ2_XXS, which ferrolm does not support (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K); re-quantize the model with one of those types"
        );
        for e in [e, FormatError::UnsupportedVersion { version: 1 }] {
            assert!(!e.to_string().contains('\n'));
        }
    }
}
