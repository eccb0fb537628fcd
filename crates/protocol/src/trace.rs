//! W3C Trace Context (`traceparent`) in gRPC metadata and HTTP headers, so one trace spans edge
//! and cloud. Only the header format lives here; spans and exporters are `collm-telemetry`'s.

use std::collections::HashMap;
use std::fmt;

use tonic::metadata::{AsciiMetadataValue, MetadataKey, MetadataMap};

use crate::{ProtocolError, Result};

pub const TRACEPARENT: &str = "traceparent";
/// The vendors' part of the W3C trace context, passed on unchanged.
pub const TRACESTATE: &str = "tracestate";

/// `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`, and the `tracestate` that came
/// with it (sent on with it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
    /// The `tracestate` header's value, `None` when there was none.
    pub state: Option<String>,
}

impl TraceParent {
    pub const FLAG_SAMPLED: u8 = 0x01;

    pub fn sampled(&self) -> bool {
        self.flags & Self::FLAG_SAMPLED != 0
    }

    /// Parses a header value. Versions above 00 are read as 00 (ignoring fields appended after
    /// the flags), as the specification asks; version ff and any malformed field are refused.
    pub fn parse(value: &str) -> Result<Self> {
        let bad = |why: &str| ProtocolError::MalformedTraceparent(format!("{why} in {value:?}"));
        let b = value.as_bytes();
        if b.len() < 55 {
            return Err(bad("too short"));
        }
        let version = parse_hex::<1>(&b[0..2]).ok_or_else(|| bad("version is not 2 hex digits"))?;
        if version == [0xff] {
            return Err(bad("version ff is forbidden"));
        }
        if (version == [0x00] && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return Err(bad("unexpected length"));
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(bad("fields are not separated by '-'"));
        }
        let trace_id =
            parse_hex::<16>(&b[3..35]).ok_or_else(|| bad("trace id is not 32 hex digits"))?;
        let parent_id =
            parse_hex::<8>(&b[36..52]).ok_or_else(|| bad("parent id is not 16 hex digits"))?;
        let [flags] =
            parse_hex::<1>(&b[53..55]).ok_or_else(|| bad("flags are not 2 hex digits"))?;
        if trace_id == [0; 16] {
            return Err(bad("trace id is all zeros"));
        }
        if parent_id == [0; 8] {
            return Err(bad("parent id is all zeros"));
        }
        Ok(Self { trace_id, parent_id, flags, state: None })
    }
}

/// Lowercase hex digits only, as the specification requires.
fn parse_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        self.trace_id.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        f.write_str("-")?;
        self.parent_id.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "-{:02x}", self.flags)
    }
}

impl std::str::FromStr for TraceParent {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Where headers are read from and written to: gRPC metadata, or a plain map in tests and in
/// code that has not reached the transport yet.
pub trait Carrier {
    fn get(&self, key: &str) -> Option<&str>;
    fn set(&mut self, key: &str, value: String);
}

impl Carrier for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(String::as_str)
    }
    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value);
    }
}

impl Carrier for MetadataMap {
    fn get(&self, key: &str) -> Option<&str> {
        MetadataMap::get(self, key).and_then(|v| v.to_str().ok())
    }
    fn set(&mut self, key: &str, value: String) {
        // Keys and values written here are ASCII by construction; anything else is skipped
        // rather than failing the request it rides on.
        if let (Ok(k), Ok(v)) =
            (MetadataKey::from_bytes(key.as_bytes()), AsciiMetadataValue::try_from(value))
        {
            self.insert(k, v);
        }
    }
}

impl Carrier for http::HeaderMap {
    fn get(&self, key: &str) -> Option<&str> {
        http::HeaderMap::get(self, key).and_then(|v| v.to_str().ok())
    }
    fn set(&mut self, key: &str, value: String) {
        // As for metadata: a header that cannot be written is skipped, never fatal.
        if let (Ok(k), Ok(v)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::try_from(value))
        {
            self.insert(k, v);
        }
    }
}

/// Writes `traceparent` into the carrier.
pub fn inject(carrier: &mut impl Carrier, parent: &TraceParent) {
    carrier.set(TRACEPARENT, parent.to_string());
    if let Some(state) = &parent.state {
        carrier.set(TRACESTATE, state.clone());
    }
}

/// The caller's trace context, if it sent a well-formed one. A malformed header is ignored (the
/// receiver starts a new trace), as the specification asks, rather than failing the request.
pub fn extract(carrier: &impl Carrier) -> Option<TraceParent> {
    let mut parent = carrier.get(TRACEPARENT).and_then(|v| TraceParent::parse(v.trim()).ok())?;
    parent.state = carrier.get(TRACESTATE).map(str::to_owned);
    Some(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_round_trips() {
        let tp = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), EXAMPLE);
    }

    #[test]
    fn injected_context_is_extracted_from_a_map_grpc_metadata_and_http_headers() {
        let tp = TraceParent {
            trace_id: [7; 16],
            parent_id: [9; 8],
            flags: 0,
            state: Some("vendor=abc,other=1".into()),
        };
        let mut map = HashMap::new();
        inject(&mut map, &tp);
        assert_eq!(extract(&map).as_ref(), Some(&tp));
        let mut md = MetadataMap::new();
        inject(&mut md, &tp);
        assert_eq!(extract(&md).as_ref(), Some(&tp));
        let mut headers = http::HeaderMap::new();
        inject(&mut headers, &tp);
        assert_eq!(extract(&headers).as_ref(), Some(&tp));
        assert!(!tp.sampled());
    }

    #[test]
    fn future_versions_are_read_as_version_00() {
        let tp = TraceParent::parse(&format!("cc{}-what-comes-next", &EXAMPLE[2..])).expect("v cc");
        assert_eq!(tp.to_string(), EXAMPLE);
    }

    #[test]
    fn malformed_headers_are_refused_and_ignored_on_extract() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for value in bad {
            let err = TraceParent::parse(value).expect_err(value);
            assert_eq!(tonic::Status::from(err).code(), tonic::Code::InvalidArgument);
            let map = HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
            assert_eq!(extract(&map), None, "{value}");
        }
    }
}
