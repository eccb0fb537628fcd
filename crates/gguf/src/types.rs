//! GGML tensor element types and their block geometry.

use std::fmt;

/// Values per quantization block for the 32-wide block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
/// IQ4_NL).
pub const QK: usize = 32;
/// Values per super-block of the K-quants (Q2_K … Q6_K).
pub const QK_K: usize = 256;

/// The element type of a GGUF tensor. Types this crate cannot decode are kept as `Other(id)` so
/// a file that contains them still opens and the error names the type only when it is used.
// Variant names are llama.cpp's type names, which users see in file names and tool output.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            20 => Self::IQ4_NL,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::IQ4_NL => 20,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// The name llama.cpp uses, or `type<id>` when the id is unknown.
    pub fn name(self) -> String {
        let known = match self.id() {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            _ => return format!("type{}", self.id()),
        };
        known.to_string()
    }

    /// `(values per block, bytes per block)`, when the layout is known. Covers the
    /// common undecodable types too, so their byte ranges can still be bounds-checked.
    pub fn block_geometry(self) -> Option<(usize, usize)> {
        Some(match self.id() {
            0 => (1, 4),
            1 => (1, 2),
            2 => (QK, 18),
            3 => (QK, 20),
            6 => (QK, 22),
            7 => (QK, 24),
            8 => (QK, 34),
            9 => (QK, 36),
            10 => (256, 84),
            11 => (256, 110),
            12 => (256, 144),
            13 => (256, 176),
            14 => (256, 210),
            15 => (256, 292),
            20 => (QK, 18),
            23 => (256, 136),
            24 => (1, 1),
            25 => (1, 2),
            26 => (1, 4),
            27 => (1, 8),
            28 => (1, 8),
            30 => (1, 2),
            _ => return None,
        })
    }

    /// Bytes needed for `n` values, or `None` when the layout is unknown, `n` is not a whole
    /// number of blocks, or the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (per_block, bytes) = self.block_geometry()?;
        let per_block = per_block as u64;
        if !n.is_multiple_of(per_block) {
            return None;
        }
        (n / per_block).checked_mul(bytes as u64)
    }
}

impl fmt::Display for GgmlType {
    /// `Q4_1`, or `IQ2_XS (id 17)` for types this crate does not decode.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(id) => write!(f, "{} (id {id})", self.name()),
            _ => f.write_str(&self.name()),
        }
    }
}
