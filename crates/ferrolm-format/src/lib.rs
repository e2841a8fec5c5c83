//! ferrolm-format: reading model files.
//!
//! - [`gguf`]: a bounds-checked GGUF v2/v3 parser ([`GgufHeader`]) and the memory-mapped file
//!   ([`GgufFile`]). Parsing validates everything the rest of ferrolm relies on: tensors lie
//!   inside the file, are aligned, have supported types and whole blocks per row.
//! - [`types`]: [`GgmlType`], every ggml element type with its id, name and block layout.
//! - [`dequant`]: the scalar reference dequantization ([`dequantize`]), equal bit for bit to
//!   ggml's; fast kernels elsewhere are tested against it.
//! - [`quant`]: weight quantization ([`quantize`]) into F16/BF16, Q4_0..Q8_0 and Q2_K..Q6_K,
//!   equal byte for byte to ggml's reference quantizers (`ggml_quantize_chunk` without an
//!   importance matrix).
//! - [`writer`]: [`GgufWriter`], which writes GGUF files (tests, fuzz seeds, conversion).
//! - [`hf`]: Hugging Face model directories ([`hf::HfDir`]): `config.json`, memory-mapped and
//!   validated safetensors weights (single, sharded or loose), `generation_config.json`, the
//!   sentence-transformers files and their pooling ([`hf::pool`]).
//! - [`fuzz_one`]: the fuzz target body, shared by `fuzz/` and the corpus replay test.
//! - [`FormatError`]: one-line errors that say what is wrong and what to do.
//!
//! ```
//! use ferrolm_format::{dequantize_to_vec, GgufHeader, GgufWriter, MetaValue};
//!
//! let mut w = GgufWriter::new();
//! w.add_meta("general.architecture", MetaValue::String("llama".into()));
//! w.add_f32_tensor("output_norm.weight", &[4], &[1.0, 2.0, 3.0, 4.0])?;
//! let bytes = w.to_bytes()?;
//!
//! let header = GgufHeader::parse(&bytes)?;
//! assert_eq!(header.get_str("general.architecture"), Some("llama"));
//! let t = header.tensor("output_norm.weight").unwrap();
//! let values = dequantize_to_vec(t.ty, &bytes[t.offset..t.offset + t.n_bytes], t.n_elements())?;
//! assert_eq!(values, [1.0, 2.0, 3.0, 4.0]);
//! # Ok::<(), ferrolm_format::FormatError>(())
//! ```

pub mod dequant;
pub mod error;
mod fuzz;
pub mod gguf;
pub mod hf;
pub mod quant;
pub mod test_models;
pub mod types;
pub mod writer;

pub use dequant::{dequantize, dequantize_to_vec};
pub use error::FormatError;
pub use fuzz::fuzz_one;
pub use gguf::{GgufFile, GgufHeader, MetaValue, TensorInfo};
pub use quant::{can_quantize, quantize, quantize_into};
pub use types::{GgmlType, SUPPORTED_TYPES};
pub use writer::GgufWriter;
