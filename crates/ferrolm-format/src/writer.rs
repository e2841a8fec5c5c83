//! `GgufWriter`: builds GGUF v3 files (metadata plus tensors) for tests, fuzz seeds and, later,
//! `ferrolm convert`. What it writes, [`GgufHeader::parse`](crate::GgufHeader::parse) reads back.
//!
//! Tensors are laid out in the order they were added, each starting at a multiple of the
//! alignment, with zero padding between them, as ggml's own writer does.

use std::io::Write;
use std::path::Path;

use crate::error::{shown, FormatError};
use crate::gguf::{value_type, MetaValue, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::types::GgmlType;

/// A GGUF file under construction, held in memory.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    version: Option<u32>,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    dims: Vec<usize>,
    ty: GgmlType,
    data: Vec<u8>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Overrides the version field (default 3). Versions other than 2 and 3 make files that
    /// ferrolm refuses; tests use that.
    pub fn set_version(&mut self, version: u32) -> &mut Self {
        self.version = Some(version);
        self
    }

    /// Adds (or replaces) a metadata entry. Setting `general.alignment` to a valid power of two
    /// changes the data layout; an invalid value is written as given (for tests) and the data
    /// laid out at the default alignment.
    pub fn add_meta(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor of type `ty` with ggml-order `dims` (`dims[0]` is the row length), whose
    /// encoded data is `data`. Checks that `data` has exactly the size the shape needs.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[usize],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self, FormatError> {
        let name = name.into();
        let problem = |problem: String| FormatError::Write {
            problem: format!("tensor '{}' {problem}", shown(&name)),
        };
        if dims.is_empty() || dims.len() > crate::gguf::MAX_DIMS || dims.contains(&0) {
            return Err(problem(format!(
                "has dims {dims:?}; it needs 1 to 4 dimensions, each at least 1"
            )));
        }
        let n_rows = dims[1..]
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let size = ty
            .row_bytes(dims[0])
            .zip(n_rows)
            .and_then(|(row, rows)| row.checked_mul(rows));
        if size != Some(data.len()) {
            return Err(problem(format!(
                "of type {ty} and dims {dims:?} needs {size:?} bytes of data, but {} were given",
                data.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(problem("was added twice".to_string()));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(self)
    }

    /// Adds an F32 tensor from values.
    pub fn add_f32_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[usize],
        values: &[f32],
    ) -> Result<&mut Self, FormatError> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, dims, GgmlType::F32, data)
    }

    /// The alignment the data will be laid out with.
    pub fn alignment(&self) -> usize {
        self.metadata
            .iter()
            .find(|(k, _)| k == ALIGNMENT_KEY)
            .and_then(|(_, v)| v.as_u64())
            .and_then(|a| usize::try_from(a).ok())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Writes the file to `path`.
    pub fn write_file(&self, path: &Path) -> Result<(), FormatError> {
        let io = |e: std::io::Error| FormatError::Write {
            problem: format!("'{}': {e}", path.display()),
        };
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        self.write_to(&mut file)?;
        file.flush().map_err(io)
    }

    /// Streams the file to `w`.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<(), FormatError> {
        let mut header = Vec::new();
        header.extend(GGUF_MAGIC);
        header.extend(self.version.unwrap_or(3).to_le_bytes());
        header.extend((self.tensors.len() as u64).to_le_bytes());
        header.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut header, key.as_bytes());
            header.extend(value.type_id().to_le_bytes());
            put_value(&mut header, key, value)?;
        }
        let alignment = self.alignment();
        let mut offset = 0usize;
        for t in &self.tensors {
            put_string(&mut header, t.name.as_bytes());
            header.extend((t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                header.extend((d as u64).to_le_bytes());
            }
            header.extend(t.ty.id().to_le_bytes());
            header.extend((offset as u64).to_le_bytes());
            offset = (offset + t.data.len()).next_multiple_of(alignment);
        }
        let padded = header.len().next_multiple_of(alignment);
        header.resize(padded, 0);

        let io = |e: std::io::Error| FormatError::Write {
            problem: e.to_string(),
        };
        w.write_all(&header).map_err(io)?;
        let zeros = vec![0u8; alignment];
        for t in &self.tensors {
            w.write_all(&t.data).map_err(io)?;
            let pad = t.data.len().next_multiple_of(alignment) - t.data.len();
            w.write_all(&zeros[..pad]).map_err(io)?;
        }
        Ok(())
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

/// Appends `value` (without its type id). Arrays must hold one type; an empty array is written
/// with element type u8.
fn put_value(out: &mut Vec<u8>, key: &str, value: &MetaValue) -> Result<(), FormatError> {
    match value {
        MetaValue::U8(v) => out.extend(v.to_le_bytes()),
        MetaValue::I8(v) => out.extend(v.to_le_bytes()),
        MetaValue::U16(v) => out.extend(v.to_le_bytes()),
        MetaValue::I16(v) => out.extend(v.to_le_bytes()),
        MetaValue::U32(v) => out.extend(v.to_le_bytes()),
        MetaValue::I32(v) => out.extend(v.to_le_bytes()),
        MetaValue::U64(v) => out.extend(v.to_le_bytes()),
        MetaValue::I64(v) => out.extend(v.to_le_bytes()),
        MetaValue::F32(v) => out.extend(v.to_le_bytes()),
        MetaValue::F64(v) => out.extend(v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(s) => put_string(out, s.as_bytes()),
        MetaValue::Array(items) => {
            let elem_ty = items.first().map_or(value_type::U8, |v| v.type_id());
            if items.iter().any(|v| v.type_id() != elem_ty) {
                return Err(FormatError::Write {
                    problem: format!(
                        "metadata array '{}' mixes element types; GGUF arrays hold one type",
                        shown(key)
                    ),
                });
            }
            out.extend(elem_ty.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}
