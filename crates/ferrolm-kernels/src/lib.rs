//! ferrolm-kernels: quantized matrix products over GGUF block layouts.
//!
//! Activations are quantized the way llama.cpp's x86 path does (so results agree with it to
//! rounding), then multiplied with weight rows still in their block format. Each fast path has
//! a slow reference in `reference` and a test comparing the two.

// Index loops below spell out llama.cpp's lane arithmetic; iterator chains would hide it.
#![allow(clippy::needless_range_loop)]

pub mod cpu;
pub mod flash;
pub mod gemm;
pub mod gemm16;
pub mod kgemm;
pub mod kquant;
pub mod numerics;
pub mod pool;
pub mod q8;
pub mod qdot;
pub mod reference;

pub use qdot::{matmul, QuantKind};
