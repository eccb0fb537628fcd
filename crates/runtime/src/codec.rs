//! Hidden-state encodings between edge and cloud: the shared `collm-codec` layout.

pub use collm_codec::{CodecError, Encoding, decode_checked as decode, encode};
