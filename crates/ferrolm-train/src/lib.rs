//! ferrolm-train: fine-tuning on the CPU. Every component's backward pass (`ops`, each checked
//! against finite differences), LoRA over a frozen base that stays in its stored format
//! (QLoRA on a quantized base: the base's input gradient reads its weight 64 rows at a time,
//! never dequantized whole), AdamW with warmup and cosine decay, and adapters saved in PEFT's
//! format.

// Index loops spell out the per-element formulas of each backward pass.
#![allow(clippy::needless_range_loop)]

pub mod adapter;
pub mod data;
pub mod full;
pub mod net;
pub mod ops;
pub mod optim;
pub mod peft;
pub mod prompt;
pub mod train;
