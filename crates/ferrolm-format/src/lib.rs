//! ferrolm-format: reading model files.
//!
//! - [`gguf`]: a bounds-checked GGUF v2/v3 parser ([`GgufHeader`]) and the memory-mapped file
//!   ([`GgufFile`]). Parsing validates everything the rest of ferrolm relies on: tensors lie
//!   inside the file, are aligned, have supported types and whole blocks per row.
//! - [`types`]: [`GgmlType`], every ggml element type with its id, name and block layout.
//! - [`dequant`]: the scalar reference dequantization ([`dequantize`]), equal bit for bit to
//!   ggml's; fast kernels elsewhere are tested against it.
//! - [`writer`]: [`GgufWriter`], which writes GGUF files (tests, fuzz seeds, conversion).
//! - [`fuzz_one`]: the fuzz target body, shared by `fuzz/` and the corpus replay test.
//! - [`FormatError`]: one-line errors that say what is wrong and what to do.

pub mod dequant;
pub mod error;
mod fuzz;
pub mod gguf;
pub mod types;
pub mod writer;

pub use dequant::{dequantize, dequantize_to_vec};
pub use error::FormatError;
pub use fuzz::fuzz_one;
pub use gguf::{GgufFile, GgufHeader, MetaValue, TensorInfo};
pub use types::{GgmlType, SUPPORTED_TYPES};
pub use writer::GgufWriter;
