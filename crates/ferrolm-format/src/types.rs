//! `GgmlType`: every tensor element type ggml knows, with its numeric id, name and block layout.
//!
//! ggml stores quantized tensors as rows of fixed-size blocks: `block_size` elements packed into
//! `type_size` bytes. Plain types (F32, F16, ...) are blocks of one element. The table below
//! follows `ggml/include/ggml.h` (ids) and `ggml/src/ggml-common.h` (block structs).
//! Types ferrolm cannot compute with are still listed, so an error can name them.

/// A ggml tensor element type. Variant names follow gguf-py's `GGMLQuantizationType`.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
    Q2_0,
}

/// Super-block size of the K-quants and i-quants (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// One row of the type table: (type, ggml id, name, elements per block, bytes per block).
type Row = (GgmlType, u32, &'static str, usize, usize);

/// Every known type. Sizes are the `sizeof(block_*)` of ggml-common.h.
const TABLE: [Row; 35] = {
    use GgmlType::*;
    [
        (F32, 0, "F32", 1, 4),
        (F16, 1, "F16", 1, 2),
        (Q4_0, 2, "Q4_0", 32, 2 + 16),
        (Q4_1, 3, "Q4_1", 32, 2 + 2 + 16),
        (Q5_0, 6, "Q5_0", 32, 2 + 4 + 16),
        (Q5_1, 7, "Q5_1", 32, 2 + 2 + 4 + 16),
        (Q8_0, 8, "Q8_0", 32, 2 + 32),
        (Q8_1, 9, "Q8_1", 32, 2 + 2 + 32),
        (Q2_K, 10, "Q2_K", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2),
        (Q3_K, 11, "Q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2),
        (Q4_K, 12, "Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2),
        (Q5_K, 13, "Q5_K", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2),
        (Q6_K, 14, "Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
        (Q8_K, 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2),
        (IQ2_XXS, 16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
        (IQ2_XS, 17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
        (IQ3_XXS, 18, "IQ3_XXS", QK_K, 2 + 3 * QK_K / 8),
        (IQ1_S, 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
        (IQ4_NL, 20, "IQ4_NL", 32, 2 + 16),
        (
            IQ3_S,
            21,
            "IQ3_S",
            QK_K,
            2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64,
        ),
        (IQ2_S, 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
        (IQ4_XS, 23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 64 + QK_K / 2),
        (I8, 24, "I8", 1, 1),
        (I16, 25, "I16", 1, 2),
        (I32, 26, "I32", 1, 4),
        (I64, 27, "I64", 1, 8),
        (F64, 28, "F64", 1, 8),
        (IQ1_M, 29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
        (BF16, 30, "BF16", 1, 2),
        (
            TQ1_0,
            34,
            "TQ1_0",
            QK_K,
            (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2,
        ),
        (TQ2_0, 35, "TQ2_0", QK_K, QK_K / 4 + 2),
        (MXFP4, 39, "MXFP4", 32, 1 + 16),
        (NVFP4, 40, "NVFP4", 64, 4 + 32),
        (Q1_0, 41, "Q1_0", 128, 2 + 16),
        (Q2_0, 42, "Q2_0", 64, 2 + 16),
    ]
};

/// The types ferrolm can dequantize and compute with, in the order error messages list them.
pub const SUPPORTED_TYPES: [GgmlType; 14] = {
    use GgmlType::*;
    [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
    ]
};

impl GgmlType {
    /// Every known type, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TABLE.iter().map(|row| row.0)
    }

    fn row(self) -> &'static Row {
        // The table is in declaration order, so the discriminant indexes it.
        &TABLE[self as usize]
    }

    /// The type with ggml's numeric id `id`, or `None` for ids ggml never assigned or removed.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|row| row.1 == id).map(|row| row.0)
    }

    /// ggml's numeric id (`GGML_TYPE_*`), as stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// The upper-case name used by gguf-py and llama.cpp's tools: "Q4_K", "IQ2_XXS", "BF16".
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Elements per block: 1 for plain types, 32 for Q4_0 and friends, 256 for K-quants.
    pub fn block_size(self) -> usize {
        self.row().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.row().4
    }

    /// Whether ferrolm can dequantize and compute with this type (see [`SUPPORTED_TYPES`]).
    pub fn is_supported(self) -> bool {
        SUPPORTED_TYPES.contains(&self)
    }

    /// Bytes taken by `n_elements` elements, or `None` if `n_elements` is not a whole number of
    /// blocks (or the size overflows `usize`).
    pub fn row_bytes(self, n_elements: usize) -> Option<usize> {
        if !n_elements.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// For ids ggml once assigned and later removed from GGUF: what they were.
pub(crate) fn removed_type_note(id: u32) -> Option<&'static str> {
    match id {
        4 | 5 => Some("Q4_2/Q4_3, removed from ggml in 2023"),
        31..=33 => {
            Some("Q4_0_4_4/Q4_0_4_8/Q4_0_8_8, repacked layouts ggml no longer stores in GGUF")
        }
        36..=38 => {
            Some("IQ4_NL_4_4/IQ4_NL_4_8/IQ4_NL_8_8, repacked layouts ggml no longer stores in GGUF")
        }
        _ => None,
    }
}

/// The supported type names joined for an error message: "F32, F16, BF16, Q4_0, ...".
pub(crate) fn supported_names() -> String {
    SUPPORTED_TYPES
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_declaration_order_and_ids_round_trip() {
        for (i, row) in TABLE.iter().enumerate() {
            assert_eq!(row.0 as usize, i, "{} out of order", row.2);
            assert_eq!(GgmlType::from_id(row.1), Some(row.0));
            assert_eq!(row.0.id(), row.1);
            assert_eq!(format!("{:?}", row.0), row.2);
        }
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 43, 99, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
    }

    #[test]
    fn block_sizes_match_ggml_common_h() {
        use GgmlType::*;
        let expected = [
            (Q4_0, 18),
            (Q4_1, 20),
            (Q5_0, 22),
            (Q5_1, 24),
            (Q8_0, 34),
            (Q8_1, 36),
            (Q2_K, 84),
            (Q3_K, 110),
            (Q4_K, 144),
            (Q5_K, 176),
            (Q6_K, 210),
            (Q8_K, 292),
            (IQ2_XXS, 66),
            (IQ2_XS, 74),
            (IQ3_XXS, 98),
            (IQ1_S, 50),
            (IQ3_S, 110),
            (IQ2_S, 82),
            (IQ4_XS, 136),
            (IQ1_M, 56),
            (TQ1_0, 54),
            (TQ2_0, 66),
        ];
        for (t, size) in expected {
            assert_eq!(t.type_size(), size, "{t}");
        }
    }

    #[test]
    fn row_bytes_needs_whole_blocks() {
        assert_eq!(GgmlType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4_K.row_bytes(100), None);
        assert_eq!(GgmlType::F32.row_bytes(3), Some(12));
        assert_eq!(GgmlType::F32.row_bytes(usize::MAX), None);
        assert_eq!(GgmlType::Q4_0.row_bytes(0), Some(0));
    }

    #[test]
    fn supported_list() {
        assert!(GgmlType::Q6_K.is_supported());
        assert!(!GgmlType::IQ2_XXS.is_supported());
        assert!(!GgmlType::Q8_1.is_supported());
        assert!(supported_names().starts_with("F32, F16, BF16, Q4_0"));
    }
}
