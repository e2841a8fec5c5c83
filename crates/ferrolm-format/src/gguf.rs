//! GGUF v2/v3 parsing: the header (metadata and tensor infos), and the memory-mapped file.
//!
//! Layout (all little-endian):
//! ```text
//! "GGUF" u32:version u64:n_tensors u64:n_kv
//! n_kv      x ( string:key  u32:value_type  value )
//! n_tensors x ( string:name u32:n_dims u64:dims[n_dims] u32:ggml_type u64:offset )
//! padding to `general.alignment` (default 32), then the tensor data; offsets are relative to it
//! string = u64:len bytes[len];  array = u32:elem_type u64:count values[count]
//! ```
//! The parser trusts nothing: every length is checked against the bytes that remain before
//! anything is allocated for it, and every tensor is checked to lie inside the file, so the
//! rest of ferrolm can slice tensor data without further checks.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use crate::error::{shown, FormatError};
use crate::types::GgmlType;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// The metadata key that overrides the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest allowed nesting of metadata arrays (an array of arrays is depth 2).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// GGUF metadata value type ids, as stored in the file.
pub(crate) mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Fewest bytes a value of GGUF type `ty` can take, or `None` for an unknown type.
fn min_value_bytes(ty: u32) -> Option<usize> {
    use value_type::*;
    Some(match ty {
        U8 | I8 | BOOL => 1,
        U16 | I16 => 2,
        U32 | I32 | F32 => 4,
        U64 | I64 | F64 | STRING => 8,
        ARRAY => 4 + 8,
        _ => return None,
    })
}

/// Fewest bytes of one metadata entry: key length, value type, one-byte value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Fewest bytes of one tensor info: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Floats, and integers converted to `f64` (exactly for magnitudes below 2^53).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the value's type: "u8", "i32", "f32", "bool", "string", "array", ...
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// The GGUF value type id this value is stored with.
    pub(crate) fn type_id(&self) -> u32 {
        use value_type::*;
        match self {
            MetaValue::U8(_) => U8,
            MetaValue::I8(_) => I8,
            MetaValue::U16(_) => U16,
            MetaValue::I16(_) => I16,
            MetaValue::U32(_) => U32,
            MetaValue::I32(_) => I32,
            MetaValue::U64(_) => U64,
            MetaValue::I64(_) => I64,
            MetaValue::F32(_) => F32,
            MetaValue::F64(_) => F64,
            MetaValue::Bool(_) => BOOL,
            MetaValue::String(_) => STRING,
            MetaValue::Array(_) => ARRAY,
        }
    }
}

/// Where one tensor's data lies, and its shape and type. Produced only by a successful parse, so
/// `offset..offset + n_bytes` is inside the file and `dims[0]` is a whole number of blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) length; 1 to 4 entries, each >= 1.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Elements per row, `dims[0]`.
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Rows: the product of `dims[1..]`.
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product()
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.row_len()).unwrap_or(0)
    }
}

/// A parsed GGUF header.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    pub alignment: usize,
    /// In file order; keys are unique.
    pub metadata: Vec<(String, MetaValue)>,
    /// In file order; names are unique.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset where tensor data starts (end of header rounded up to `alignment`).
    pub data_start: usize,
}

impl GgufHeader {
    /// Parses and validates a header from the full file bytes. See the module doc for what is
    /// checked. Never panics; allocations are bounded by the bytes present.
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader, FormatError> {
        parse_header(bytes)
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }
}

/// A GGUF file mapped read-only into memory, with its parsed header.
pub struct GgufFile {
    pub header: GgufHeader,
    map: memmap2::Mmap,
}

impl GgufFile {
    /// Opens, memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufFile, FormatError> {
        let shown = || path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| FormatError::Open {
            path: shown(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| FormatError::Open {
                path: shown(),
                source,
            })?
            .len();
        if len == 0 {
            // Mapping an empty file fails on some platforms; report it as the truncation it is.
            return Err(FormatError::Truncated {
                needed: 4,
                offset: 0,
                what: What::Header(MAGIC_WHAT).to_string(),
                file_len: 0,
            });
        }
        // SAFETY: the map is read-only and private to this value. As with every mmap-based model
        // loader, a process that truncates or rewrites the file while it is mapped can make reads
        // fault or change; ferrolm never writes to model files it has open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| FormatError::Map {
            path: shown(),
            source,
        })?;
        let header = parse_header(&map)?;
        Ok(GgufFile { header, map })
    }

    /// A GGUF image held in memory (an in-memory conversion, e.g. quantization at load), in an
    /// anonymous map so the rest of ferrolm reads it exactly as a mapped file.
    pub fn from_bytes(bytes: &[u8]) -> Result<GgufFile, FormatError> {
        let io = |source| FormatError::Map {
            path: "<memory>".into(),
            source,
        };
        let mut m = memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(io)?;
        m[..bytes.len()].copy_from_slice(bytes);
        let map = m.make_read_only().map_err(io)?;
        let header = parse_header(&map[..bytes.len()])?;
        Ok(GgufFile { header, map })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The data of `t`, which must come from this file's header (it was bounds-checked when the
    /// header was parsed). Panics if `t` does not fit this file.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.offset..t.offset + t.n_bytes]
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.header.get_str(key)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.header.get_u64(key)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.header.get_f64(key)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.header.get_bool(key)
    }
}

const MAGIC_WHAT: &str = "the GGUF magic number";

/// What the parser was reading, for error messages; formatted only when an error happens.
#[derive(Clone, Copy)]
enum What<'k> {
    Header(&'static str),
    Key(u64),
    Value(&'k str),
    TensorName(u64),
    TensorInfo(&'k str),
}

impl fmt::Display for What<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            What::Header(s) => f.write_str(s),
            What::Key(i) => write!(f, "the key of metadata entry #{i}"),
            What::Value(k) => write!(f, "the value of metadata key '{}'", shown(k)),
            What::TensorName(i) => write!(f, "the name of tensor info #{i}"),
            What::TensorInfo(name) => write!(f, "the info of tensor '{}'", shown(name)),
        }
    }
}

/// A bounds-checked little-endian cursor over the file bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: What) -> Result<&'a [u8], FormatError> {
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => {
                let out = &self.bytes[self.pos..self.pos + n];
                self.pos += n;
                Ok(out)
            }
            _ => Err(FormatError::Truncated {
                needed: n,
                offset: self.pos,
                what: what.to_string(),
                file_len: self.bytes.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: What) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: What) -> Result<u32, FormatError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: What) -> Result<u64, FormatError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string's raw bytes: u64 length, then the bytes.
    fn string(&mut self, what: What) -> Result<&'a [u8], FormatError> {
        let len = self.u64(what)?;
        self.take(len, what)
    }

    /// A string that must be UTF-8 (keys and tensor names).
    fn strict_string(&mut self, what: What) -> Result<&'a str, FormatError> {
        let offset = self.pos;
        let raw = self.string(what)?;
        std::str::from_utf8(raw).map_err(|_| FormatError::InvalidUtf8 {
            what: what.to_string(),
            offset,
        })
    }

    /// Checks that `count` entries of at least `min_entry_bytes` each can fit in what remains,
    /// and returns it as a `usize` that is safe to pre-allocate for.
    fn count(
        &self,
        count: u64,
        min_entry_bytes: usize,
        what: &dyn fmt::Display,
    ) -> Result<usize, FormatError> {
        match usize::try_from(count) {
            Ok(n) if n <= self.remaining() / min_entry_bytes => Ok(n),
            _ => Err(FormatError::CountTooLarge {
                what: what.to_string(),
                count,
                offset: self.pos.saturating_sub(8),
                remaining: self.remaining(),
                min_entry_bytes,
            }),
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue, FormatError> {
        use value_type::*;
        let what = What::Value(key);
        Ok(match ty {
            U8 => MetaValue::U8(u8::from_le_bytes(self.array(what)?)),
            I8 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            U32 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            U64 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            // Strict writers store 0 or 1; any other byte reads as true, as in gguf-py.
            BOOL => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            // Values (unlike keys) are read leniently: a tokenizer vocabulary with one invalid
            // UTF-8 token should not make the whole model unloadable.
            STRING => MetaValue::String(String::from_utf8_lossy(self.string(what)?).into_owned()),
            ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(FormatError::NestingTooDeep {
                        key: shown(key),
                        max_depth: MAX_ARRAY_DEPTH,
                    });
                }
                let type_offset = self.pos;
                let elem_ty = self.u32(what)?;
                let Some(min) = min_value_bytes(elem_ty) else {
                    return Err(FormatError::BadValueType {
                        what: format!("the array elements of metadata key '{}'", shown(key)),
                        type_id: elem_ty,
                        offset: type_offset,
                    });
                };
                let raw_count = self.u64(what)?;
                let n = self.count(
                    raw_count,
                    min,
                    &format_args!("the element count of metadata key '{}'", shown(key)),
                )?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            _ => {
                return Err(FormatError::BadValueType {
                    what: format!("metadata key '{}'", shown(key)),
                    type_id: ty,
                    offset: self.pos.saturating_sub(4),
                })
            }
        })
    }
}

/// A tensor info as read, before validation against the rest of the file.
struct RawTensor<'a> {
    name: &'a str,
    dims: Vec<u64>,
    type_id: u32,
    offset: u64,
}

fn parse_header(bytes: &[u8]) -> Result<GgufHeader, FormatError> {
    let mut r = Reader { bytes, pos: 0 };

    let magic: [u8; 4] = r.array(What::Header(MAGIC_WHAT))?;
    if magic != GGUF_MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let version = r.u32(What::Header("the GGUF version"))?;
    if version != 2 && version != 3 {
        let swapped = version.swap_bytes();
        if version & 0xFFFF == 0 && (1..=3).contains(&swapped) {
            return Err(FormatError::BigEndian { version });
        }
        return Err(FormatError::UnsupportedVersion { version });
    }
    let n_tensors = r.u64(What::Header("the tensor count"))?;
    let n_kv = r.u64(What::Header("the metadata entry count"))?;

    let metadata = read_metadata(&mut r, n_kv)?;
    let alignment = alignment_of(&metadata)?;
    let raw_tensors = read_tensor_infos(&mut r, n_tensors)?;

    let header_end = r.pos;
    let data_start = header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| FormatError::BadAlignment {
            value: alignment.to_string(),
        })?;

    let mut seen = HashSet::with_capacity(raw_tensors.len());
    let mut tensors = Vec::with_capacity(raw_tensors.len());
    for raw in &raw_tensors {
        if !seen.insert(raw.name) {
            return Err(FormatError::DuplicateTensor {
                name: shown(raw.name),
            });
        }
        tensors.push(validate_tensor(raw, alignment, data_start, bytes.len())?);
    }

    Ok(GgufHeader {
        version,
        alignment,
        metadata,
        tensors,
        data_start,
    })
}

fn read_metadata(r: &mut Reader, n_kv: u64) -> Result<Vec<(String, MetaValue)>, FormatError> {
    let n = r.count(n_kv, MIN_KV_BYTES, &"the metadata entry count")?;
    let mut metadata = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    for i in 0..n as u64 {
        let key = r.strict_string(What::Key(i))?;
        if !seen.insert(key) {
            return Err(FormatError::DuplicateKey { key: shown(key) });
        }
        let ty = r.u32(What::Value(key))?;
        let value = r.value(ty, key, 0)?;
        metadata.push((key.to_string(), value));
    }
    Ok(metadata)
}

/// `general.alignment` if present (any non-negative integer type), else 32; a power of two.
fn alignment_of(metadata: &[(String, MetaValue)]) -> Result<usize, FormatError> {
    let Some((_, value)) = metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_u64().and_then(|a| usize::try_from(a).ok()) {
        Some(a) if a.is_power_of_two() => Ok(a),
        Some(a) => Err(FormatError::BadAlignment {
            value: a.to_string(),
        }),
        None => Err(FormatError::BadAlignment {
            value: format!("of type {}", value.type_name()),
        }),
    }
}

fn read_tensor_infos<'a>(
    r: &mut Reader<'a>,
    n_tensors: u64,
) -> Result<Vec<RawTensor<'a>>, FormatError> {
    let n = r.count(n_tensors, MIN_TENSOR_INFO_BYTES, &"the tensor count")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let name = r.strict_string(What::TensorName(i))?;
        let what = What::TensorInfo(name);
        let n_dims = r.u32(what)?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(FormatError::BadTensorShape {
                tensor: shown(name),
                problem: format!("has {n_dims} dimensions; it must have 1 to {MAX_DIMS}"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(what)?);
        }
        let type_id = r.u32(what)?;
        let offset = r.u64(what)?;
        out.push(RawTensor {
            name,
            dims,
            type_id,
            offset,
        });
    }
    Ok(out)
}

fn validate_tensor(
    raw: &RawTensor,
    alignment: usize,
    data_start: usize,
    file_len: usize,
) -> Result<TensorInfo, FormatError> {
    // `label` is the name as shown in errors (control characters escaped, long names cut).
    let label = shown(raw.name);
    let shape_error = |problem: String| FormatError::BadTensorShape {
        tensor: label.clone(),
        problem,
    };

    let ty = match GgmlType::from_id(raw.type_id) {
        None => {
            return Err(FormatError::UnknownType {
                tensor: label,
                id: raw.type_id,
            })
        }
        Some(ty) if !ty.is_supported() => {
            return Err(FormatError::UnsupportedType { tensor: label, ty })
        }
        Some(ty) => ty,
    };

    let mut dims = Vec::with_capacity(raw.dims.len());
    for (i, &d) in raw.dims.iter().enumerate() {
        match usize::try_from(d) {
            Ok(0) => {
                return Err(shape_error(format!(
                    "has size 0 in dimension {i} (dims {:?})",
                    raw.dims
                )))
            }
            Ok(d) => dims.push(d),
            Err(_) => {
                return Err(shape_error(format!(
                    "has dimension {i} of size {d}, too large for this machine"
                )))
            }
        }
    }
    let too_big = || {
        shape_error(format!(
            "has dims {:?}, whose element count or byte size overflows",
            raw.dims
        ))
    };
    let n_elements = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(too_big)?;
    let row_len = dims[0];
    let Some(row_bytes) = ty.row_bytes(row_len) else {
        return Err(shape_error(format!(
            "has row length {row_len}, which is not a multiple of the {ty} block size {}",
            ty.block_size()
        )));
    };
    let n_bytes = row_bytes
        .checked_mul(n_elements / row_len)
        .ok_or_else(too_big)?;

    if !raw.offset.is_multiple_of(alignment as u64) {
        return Err(FormatError::MisalignedTensor {
            tensor: label,
            offset: raw.offset,
            alignment,
        });
    }
    let past_end = || FormatError::TensorPastEnd {
        tensor: label.clone(),
        offset: (data_start as u64).saturating_add(raw.offset),
        size: n_bytes as u64,
        file_len,
    };
    let offset = usize::try_from(raw.offset)
        .ok()
        .and_then(|o| o.checked_add(data_start))
        .ok_or_else(past_end)?;
    match offset.checked_add(n_bytes) {
        Some(end) if end <= file_len => {}
        _ => return Err(past_end()),
    }

    Ok(TensorInfo {
        name: raw.name.to_string(),
        dims,
        ty,
        offset,
        n_bytes,
    })
}

#[cfg(test)]
#[path = "gguf_tests.rs"]
mod tests;
