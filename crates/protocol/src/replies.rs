//! Building the acknowledgements a cloud sends, so `persisted` and `missing_from` always agree.

use crate::{SessionId, pb};

/// Every position of `session` below `persisted` is stored.
pub fn ack_persisted(session: &SessionId, persisted: u64, epoch: u64) -> pb::UploadAck {
    pb::UploadAck { session_id: session.as_str().to_owned(), persisted, missing_from: None, epoch }
}

/// The chunk was not stored: the cloud holds only positions below `persisted` (it lost the rest,
/// or the chunk started beyond them), and the edge must re-upload from there.
pub fn ack_missing(session: &SessionId, persisted: u64, epoch: u64) -> pb::UploadAck {
    pb::UploadAck {
        session_id: session.as_str().to_owned(),
        persisted,
        missing_from: Some(persisted),
        epoch,
    }
}
