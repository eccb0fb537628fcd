//! Hidden-state payloads on the wire use the shared layout of `collm-codec`; this module maps
//! its encodings to and from the protobuf enum.

pub use collm_codec::{Encoding, decode, encode, first_non_finite};

use crate::pb;

/// The wire enum, for building an `UploadChunk`.
pub fn to_wire(encoding: Encoding) -> pb::Encoding {
    match encoding {
        Encoding::F32 => pb::Encoding::F32,
        Encoding::F16 => pb::Encoding::F16,
        Encoding::Int8 => pb::Encoding::Int8,
    }
}

/// The encoding named by a wire value; `None` for unspecified or unknown values (a chunk without
/// an encoding never gets past [`crate::ValidUpload::parse`]).
pub fn from_wire(value: i32) -> Option<Encoding> {
    match pb::Encoding::try_from(value).ok()? {
        pb::Encoding::Unspecified => None,
        pb::Encoding::F32 => Some(Encoding::F32),
        pb::Encoding::F16 => Some(Encoding::F16),
        pb::Encoding::Int8 => Some(Encoding::Int8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_map_both_ways_and_unspecified_is_no_encoding() {
        for enc in [Encoding::F32, Encoding::F16, Encoding::Int8] {
            assert_eq!(from_wire(to_wire(enc) as i32), Some(enc));
        }
        assert_eq!(from_wire(0), None);
        assert_eq!(from_wire(99), None);
    }
}
