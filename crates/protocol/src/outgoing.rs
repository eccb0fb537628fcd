//! Building the messages an edge sends, so that every sender fills in the checksum and the
//! encoding the same way the cloud checks them.

use prost::bytes::Bytes;

use crate::SessionId;
use crate::codec::{self, Encoding};
use crate::pb;
use crate::valid::Sampling;

/// An upload chunk for rows already in their transport `encoding` (`payload.len()` should be
/// `rows * encoding.row_bytes(hidden_size)`), with a CRC-32C of the payload.
pub fn upload_chunk(
    session: &SessionId,
    start: u64,
    rows: u32,
    hidden_size: u32,
    encoding: Encoding,
    payload: Bytes,
) -> pb::UploadChunk {
    pb::UploadChunk {
        session_id: session.as_str().to_owned(),
        start,
        rows,
        encoding: codec::to_wire(encoding) as i32,
        hidden_size,
        checksum: Some(pb::upload_chunk::Checksum::Crc32c(crc32c::crc32c(&payload))),
        payload,
        epoch: 0,
        rewrite_from: 0,
    }
}

/// An upload chunk for row-major f32 `values` (`hidden_size` per row), encoded with `encoding`.
pub fn encode_upload(
    session: &SessionId,
    start: u64,
    hidden_size: u32,
    encoding: Encoding,
    values: &[f32],
) -> pb::UploadChunk {
    let rows = (values.len() / (hidden_size as usize).max(1)) as u32;
    let payload = Bytes::from(codec::encode(values, hidden_size as usize, encoding));
    upload_chunk(session, start, rows, hidden_size, encoding, payload)
}

/// A next-token request for the position `after` of `session`.
pub fn next_token_request(
    session: &SessionId,
    after: u64,
    sampling: Sampling,
    u: f64,
    top_k: u32,
) -> pb::NextTokenRequest {
    pb::NextTokenRequest {
        session_id: session.as_str().to_owned(),
        after,
        sampling: Some(sampling.to_wire()),
        u,
        top_k,
        edge_answered: vec![],
        epoch: 0,
        rollbacks: vec![],
        adjustment: None,
        prompt_len: 0,
    }
}
