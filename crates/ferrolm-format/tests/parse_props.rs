//! Property tests: damaged copies of a valid file never make the parser (or anything a parsed
//! header promises, see `fuzz_one`) panic, and what `GgufWriter` writes parses back unchanged.

mod common;

use ferrolm_format::{fuzz_one, GgmlType, GgufHeader, GgufWriter, MetaValue};
use proptest::prelude::*;

fn meta_value() -> impl Strategy<Value = MetaValue> {
    let leaf = prop_oneof![
        any::<u8>().prop_map(MetaValue::U8),
        any::<i16>().prop_map(MetaValue::I16),
        any::<u32>().prop_map(MetaValue::U32),
        any::<i64>().prop_map(MetaValue::I64),
        (-1e6f32..1e6).prop_map(MetaValue::F32),
        any::<bool>().prop_map(MetaValue::Bool),
        ".{0,12}".prop_map(MetaValue::String),
    ];
    // Arrays hold one type: a run of one leaf kind, possibly nested once.
    prop_oneof![
        3 => leaf.clone(),
        1 => prop::collection::vec(any::<i32>().prop_map(MetaValue::I32), 0..6).prop_map(MetaValue::Array),
        1 => prop::collection::vec(".{0,6}".prop_map(MetaValue::String), 0..6).prop_map(MetaValue::Array),
        1 => prop::collection::vec(
            prop::collection::vec(any::<u16>().prop_map(MetaValue::U16), 0..4).prop_map(MetaValue::Array),
            0..3
        )
        .prop_map(MetaValue::Array),
    ]
}

proptest! {
    #[test]
    fn damaged_files_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = common::kitchen_sink(3, None);
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        let cut = cut.index(bytes.len() + 1);
        fuzz_one(&bytes[..cut]);
    }

    #[test]
    fn written_files_parse_back(
        meta in prop::collection::vec(("[a-z.]{1,12}", meta_value()), 0..8),
        shapes in prop::collection::vec((1usize..4, 1usize..3, 0usize..3), 0..5),
    ) {
        let mut w = GgufWriter::new();
        let mut expected_meta: Vec<(String, MetaValue)> = Vec::new();
        for (k, v) in meta {
            if k == "general.alignment" {
                continue;
            }
            match expected_meta.iter_mut().find(|(ek, _)| *ek == k) {
                Some(entry) => entry.1 = v.clone(),
                None => expected_meta.push((k.clone(), v.clone())),
            }
            w.add_meta(k, v);
        }
        let types = [GgmlType::F32, GgmlType::Q4_0, GgmlType::Q6_K];
        for (i, (blocks, rows, t)) in shapes.into_iter().enumerate() {
            let ty = types[t];
            let dims = [blocks * ty.block_size(), rows];
            let data = common::block_data(ty, blocks * rows, i as u64 + 1);
            w.add_tensor(format!("t{i}"), &dims, ty, data).unwrap();
        }
        let bytes = w.to_bytes().unwrap();
        let h = GgufHeader::parse(&bytes).unwrap();
        prop_assert_eq!(h.metadata, expected_meta);
        fuzz_one(&bytes);
    }
}
