//! ferrolm-model: model specs (enums), architecture tables (data only), the one transformer
//! block, KV memory and the Linear extension point.
//!
//! Dimension legend (see ARCHITECTURE.md): `T` tokens in a call, `S` cached positions,
//! `C` model width, `H` query heads, `Hkv` KV heads, `D` head size, `V` vocabulary.

pub mod arch;
pub mod attention;
pub mod block;
pub mod dense;
pub mod kv;
pub mod layers;
pub mod linear;
pub mod longctx;
pub mod lora;
pub mod model;
pub mod profile;
pub mod spec;
pub mod stack;
pub mod trace;
pub mod weights;

pub use arch::{config_from_gguf, supported_gguf_arches};
pub use kv::{KvCache, KvPrecision};
pub use model::{Logits, Model, Probe};
pub use spec::ModelConfig;
