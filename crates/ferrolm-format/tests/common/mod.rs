//! Helpers shared by the integration tests: small valid GGUF files made with `GgufWriter`.

use ferrolm_format::{GgmlType, GgufWriter, MetaValue};

/// Deterministic filler bytes (xorshift), so the seeds are reproducible.
fn filler(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Valid block data: filler bytes with every f16 scale set to a small finite value.
pub fn block_data(ty: GgmlType, n_blocks: usize, seed: u64) -> Vec<u8> {
    let mut data = filler(seed, n_blocks * ty.type_size());
    let scale_offsets: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    for block in data.chunks_exact_mut(ty.type_size()) {
        for &o in scale_offsets {
            block[o..o + 2].copy_from_slice(&0x2C00u16.to_le_bytes()); // 0.0625
        }
        if ty == GgmlType::Q8_K {
            block[..4].copy_from_slice(&0.01f32.to_le_bytes());
        }
    }
    data
}

/// A small file with every metadata value type and one tensor of every supported type.
pub fn kitchen_sink(version: u32, alignment: Option<u32>) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_version(version);
    w.add_meta("general.architecture", MetaValue::String("llama".into()));
    if let Some(a) = alignment {
        w.add_meta("general.alignment", MetaValue::U32(a));
    }
    w.add_meta("u8", MetaValue::U8(7));
    w.add_meta("i8", MetaValue::I8(-7));
    w.add_meta("u16", MetaValue::U16(700));
    w.add_meta("i16", MetaValue::I16(-700));
    w.add_meta("llama.context_length", MetaValue::U32(2048));
    w.add_meta("i32", MetaValue::I32(-70000));
    w.add_meta("u64", MetaValue::U64(1 << 40));
    w.add_meta("i64", MetaValue::I64(-(1 << 40)));
    w.add_meta("llama.rope.freq_base", MetaValue::F32(10000.0));
    w.add_meta("f64", MetaValue::F64(0.125));
    w.add_meta("bool", MetaValue::Bool(true));
    let tokens = ["<s>", "</s>", "a", "b", "ab", "\u{e9}"].map(|s| MetaValue::String(s.into()));
    w.add_meta("tokenizer.ggml.tokens", MetaValue::Array(tokens.to_vec()));
    w.add_meta(
        "tokenizer.ggml.scores",
        MetaValue::Array((0..6).map(|i| MetaValue::F32(i as f32)).collect()),
    );
    let nested = MetaValue::Array(vec![
        MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)]),
        MetaValue::Array(vec![]),
    ]);
    w.add_meta("nested", nested);
    for (i, ty) in ferrolm_format::SUPPORTED_TYPES.into_iter().enumerate() {
        let dims = if ty.block_size() == 1 {
            vec![4, 2]
        } else {
            vec![ty.block_size()]
        };
        let n_blocks = dims.iter().product::<usize>() / ty.block_size();
        let name = format!("blk.{i}.{}.weight", ty.name().to_lowercase());
        w.add_tensor(name, &dims, ty, block_data(ty, n_blocks, i as u64 + 1))
            .unwrap();
    }
    w.to_bytes().unwrap()
}
