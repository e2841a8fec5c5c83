//! Opt-in tensor tracing for numeric comparisons with other engines.
//!
//! With `FERROLM_TRACE=FILE` set, every traced intermediate is appended to FILE as
//! `u32 name length, name bytes, i64 ne[4] (fastest dimension first), f32 data` — the format
//! `scripts/llamacpp_dump.cpp` writes for llama.cpp's graph, with the same tensor names
//! (`attn_norm-3`, `kqv_out-3`, `l_out-3`, ...), so `scripts/compare_trace.py` can line the two
//! up. Without the variable, `trace` is a single atomic load.

use candle_core::Tensor;
use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

static SINK: OnceLock<Option<Mutex<File>>> = OnceLock::new();

fn sink() -> Option<&'static Mutex<File>> {
    SINK.get_or_init(|| {
        let path = std::env::var_os("FERROLM_TRACE")?;
        File::create(path).ok().map(Mutex::new)
    })
    .as_ref()
}

pub fn enabled() -> bool {
    sink().is_some()
}

/// Appends `t` under `name` (with `-{layer}` when given). Errors are ignored: tracing is a
/// debugging aid and must never change what the model computes.
pub fn trace(name: &str, layer: Option<usize>, t: &Tensor) {
    let Some(sink) = sink() else { return };
    let name = match layer {
        Some(l) => format!("{name}-{l}"),
        None => name.to_string(),
    };
    let Ok(data) = t
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
    else {
        return;
    };
    let mut ne = [1i64; 4];
    for (i, d) in t.dims().iter().rev().take(4).enumerate() {
        ne[i] = *d as i64;
    }
    let mut buf = Vec::with_capacity(4 + name.len() + 32 + data.len() * 4);
    buf.extend((name.len() as u32).to_le_bytes());
    buf.extend(name.as_bytes());
    for n in ne {
        buf.extend(n.to_le_bytes());
    }
    for v in data {
        buf.extend(v.to_le_bytes());
    }
    if let Ok(mut f) = sink.lock() {
        let _ = f.write_all(&buf);
    }
}
