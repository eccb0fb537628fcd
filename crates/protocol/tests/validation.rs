//! Every way an upload or a next-token request is refused, with the gRPC code and the message a
//! user sees; and what is accepted comes out with the rows it went in with.

use collm_protocol::outgoing::{encode_upload, next_token_request, upload_chunk};
use collm_protocol::pb::{self, upload_chunk::Checksum};
use collm_protocol::{
    Capabilities, Encoding, Limits, ProtocolError, Sampling, SessionId, ValidNextToken,
    ValidUpload, ValidVerify, check_contiguous, check_uploaded,
};
use prost::bytes::Bytes;
use sha2::Digest;
use tonic::Code;

const H: u32 = 8;

fn limits() -> Limits {
    Limits { max_chunk_rows: 16, max_chunk_bytes: 1024, max_top_k: 5, ..Limits::new(H, 100) }
}

fn session() -> SessionId {
    SessionId::parse("chat-1").expect("valid id")
}

fn rows(n: usize) -> Vec<f32> {
    (0..n * H as usize).map(|i| ((i as f32) * 0.61).cos() * (1 + i % 3) as f32).collect()
}

fn chunk(start: u64, n: usize, encoding: Encoding) -> pb::UploadChunk {
    encode_upload(&session(), start, H, encoding, &rows(n))
}

/// Parses and returns the refusal as the client would see it.
fn refused(chunk: pb::UploadChunk) -> tonic::Status {
    tonic::Status::from(ValidUpload::parse(chunk, &limits()).expect_err("must be refused"))
}

fn assert_status(status: &tonic::Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(needle), "{:?} lacks {needle:?}", status.message());
}

/// Recomputes the CRC after a test tampers with a chunk, so only the tampering is refused.
fn resealed(mut c: pb::UploadChunk) -> pb::UploadChunk {
    c.checksum = Some(Checksum::Crc32c(crc32c::crc32c(&c.payload)));
    c
}

#[test]
fn every_encoding_round_trips_through_a_chunk() {
    let original = rows(3);
    for (encoding, tol) in
        [(Encoding::F32, 0.0), (Encoding::F16, 1e-2), (Encoding::Int8, 3.0 / 127.0)]
    {
        let up = ValidUpload::parse(chunk(4, 3, encoding), &limits()).expect("valid chunk");
        assert_eq!(
            (up.start, up.rows, up.end(), up.encoding, up.hidden_size),
            (4, 3, 7, encoding, H)
        );
        assert_eq!(up.payload.len(), 3 * encoding.row_bytes(H as usize));
        let back = up.decode();
        assert_eq!(back.len(), original.len());
        for (a, b) in original.iter().zip(&back) {
            assert!((a - b).abs() <= tol, "{encoding:?}: {a} vs {b}");
        }
    }
}

#[test]
fn a_sha256_checksum_is_accepted_and_checked() {
    let mut c = chunk(0, 2, Encoding::F16);
    c.checksum = Some(Checksum::Sha256(sha2::Sha256::digest(&c.payload).to_vec()));
    ValidUpload::parse(c.clone(), &limits()).expect("valid sha256");
    c.checksum = Some(Checksum::Sha256(vec![0; 32]));
    assert_status(&refused(c.clone()), Code::InvalidArgument, "SHA-256 checksum mismatch");
    c.checksum = Some(Checksum::Sha256(vec![0; 20]));
    assert_status(&refused(c), Code::InvalidArgument, "32 bytes, got 20");
}

#[test]
fn a_wrong_hidden_size_is_invalid_argument() {
    let c = encode_upload(&session(), 0, H * 2, Encoding::F32, &rows(2));
    assert_status(
        &refused(c),
        Code::InvalidArgument,
        "hidden size 16 does not match the model's hidden size 8",
    );
}

#[test]
fn unknown_and_unspecified_encodings_are_invalid_argument() {
    for value in [0, 7] {
        let mut c = chunk(0, 1, Encoding::F32);
        c.encoding = value;
        assert_status(
            &refused(c),
            Code::InvalidArgument,
            &format!("unknown hidden-state encoding {value}"),
        );
    }
}

#[test]
fn a_payload_that_does_not_hold_the_announced_rows_is_invalid_argument() {
    let mut c = chunk(0, 2, Encoding::Int8);
    c.rows = 3;
    assert_status(
        &refused(c),
        Code::InvalidArgument,
        "int8 payload of 24 bytes does not hold 3 rows of 8 values (expected 36 bytes)",
    );
    let mut c = chunk(0, 2, Encoding::F16);
    c.payload = c.payload.slice(1..);
    assert_status(&refused(resealed(c)), Code::InvalidArgument, "expected 32 bytes");
}

#[test]
fn a_corrupted_or_unsummed_payload_is_invalid_argument() {
    let mut c = chunk(0, 2, Encoding::F32);
    let mut bytes = c.payload.to_vec();
    bytes[3] ^= 0x10;
    c.payload = Bytes::from(bytes);
    assert_status(&refused(c.clone()), Code::InvalidArgument, "CRC-32C checksum mismatch");
    c.checksum = None;
    assert_status(&refused(c), Code::InvalidArgument, "no checksum");
}

#[test]
fn an_empty_chunk_is_invalid_argument() {
    let c = upload_chunk(&session(), 0, 0, H, Encoding::F16, Bytes::new());
    assert_status(&refused(c), Code::InvalidArgument, "holds no rows");
}

#[test]
fn oversize_chunks_are_resource_exhausted() {
    let c = chunk(0, 17, Encoding::Int8);
    assert_status(&refused(c), Code::ResourceExhausted, "17 rows exceeds the limit of 16 rows");
    // 16 f32 rows of 8 are 512 bytes; a 2048-byte payload is over the byte limit.
    let c = upload_chunk(&session(), 0, 16, H, Encoding::F32, Bytes::from(vec![0u8; 2048]));
    assert_status(&refused(c), Code::ResourceExhausted, "2048 bytes exceeds the limit of 1024");
}

#[test]
fn positions_beyond_the_context_are_out_of_range() {
    ValidUpload::parse(chunk(98, 2, Encoding::F16), &limits()).expect("ends exactly at 100");
    assert_status(
        &refused(chunk(99, 2, Encoding::F16)),
        Code::OutOfRange,
        "positions up to 101 exceed the context of 100",
    );
    assert_status(
        &refused(chunk(u64::MAX, 1, Encoding::F16)),
        Code::OutOfRange,
        "exceed the context",
    );
}

#[test]
fn nan_and_infinity_are_invalid_argument_with_their_position() {
    let mut values = rows(3);
    values[H as usize + 2] = f32::NAN;
    let c = encode_upload(&session(), 10, H, Encoding::F32, &values);
    assert_status(&refused(c), Code::InvalidArgument, "position 11 holds a non-finite value");
    values[H as usize + 2] = f32::INFINITY;
    let c = encode_upload(&session(), 10, H, Encoding::F16, &values);
    assert_status(&refused(c), Code::InvalidArgument, "position 11 holds a non-finite value");
    // f16 overflows to infinity for values beyond 65504.
    values[H as usize + 2] = 1e6;
    let c = encode_upload(&session(), 10, H, Encoding::F16, &values);
    assert_status(&refused(c), Code::InvalidArgument, "non-finite");
    let mut c = chunk(0, 2, Encoding::Int8);
    let mut bytes = c.payload.to_vec();
    bytes[12..16].copy_from_slice(&f32::INFINITY.to_le_bytes());
    c.payload = Bytes::from(bytes);
    assert_status(&refused(resealed(c)), Code::InvalidArgument, "position 1 holds a non-finite");
}

#[test]
fn a_bad_session_id_is_invalid_argument() {
    let mut c = chunk(0, 1, Encoding::F16);
    c.session_id = "{a}".into();
    assert_status(&refused(c.clone()), Code::InvalidArgument, "session_id contains '{'");
    c.session_id.clear();
    assert_status(&refused(c), Code::InvalidArgument, "session_id is empty");
}

#[test]
fn gaps_are_failed_precondition_and_retransmissions_are_trimmed() {
    assert_eq!(check_contiguous(10, 10), Ok(0));
    assert_eq!(check_contiguous(10, 4), Ok(6));
    let gap = tonic::Status::from(check_contiguous(10, 12).expect_err("gap"));
    assert_status(
        &gap,
        Code::FailedPrecondition,
        "starts at position 12 but the cloud holds only positions below 10",
    );

    let up = ValidUpload::parse(chunk(8, 4, Encoding::Int8), &limits()).expect("valid");
    let full = up.decode();
    let tail = up.clone().unstored(10).expect("overlaps").expect("two rows are new");
    assert_eq!((tail.start, tail.rows), (10, 2));
    assert_eq!(tail.decode(), full[2 * H as usize..]);
    assert_eq!(up.clone().unstored(8).expect("contiguous"), Some(up.clone()));
    assert_eq!(up.clone().unstored(12).expect("all stored"), None);
    assert!(matches!(up.unstored(7), Err(ProtocolError::Gap { persisted: 7, start: 8 })));
}

#[test]
fn next_token_for_a_position_never_uploaded_is_failed_precondition() {
    assert_eq!(check_uploaded(5, 4), Ok(()));
    let status = tonic::Status::from(check_uploaded(5, 5).expect_err("not uploaded"));
    assert_status(
        &status,
        Code::FailedPrecondition,
        "after position 5 requested but the cloud holds only positions below 5",
    );
}

fn next(sampling: Option<pb::SamplingParams>, u: f64, top_k: u32) -> pb::NextTokenRequest {
    pb::NextTokenRequest {
        session_id: "chat-1".into(),
        after: 3,
        sampling,
        u,
        top_k,
        edge_answered: vec![],
        epoch: 0,
        rollbacks: vec![],
        adjustment: None,
        prompt_len: 0,
    }
}

fn params(temperature: f32, top_p: Option<f32>) -> Option<pb::SamplingParams> {
    Some(pb::SamplingParams { temperature, top_k: 40, top_p })
}

#[test]
fn a_next_token_request_round_trips_and_defaults_to_greedy() {
    let sampling = Sampling { temperature: 0.7, top_k: 40, top_p: 0.9 };
    let req = next_token_request(&session(), 3, sampling, 0.25, 5);
    let valid = ValidNextToken::parse(req, &limits()).expect("valid");
    let expected = ValidNextToken {
        session: session(),
        branch: Default::default(),
        after: 3,
        sampling,
        u: 0.25,
        top_k: 5,
        edge_answered: vec![],
        prompt_len: 0,
        adjustment: Default::default(),
    };
    assert_eq!(valid, expected);
    let greedy = ValidNextToken::parse(next(None, 0.0, 0), &limits()).expect("valid");
    assert_eq!(greedy.sampling, Sampling::default());
    let unset_top_p =
        ValidNextToken::parse(next(params(1.0, None), 0.5, 0), &limits()).expect("ok");
    assert_eq!(unset_top_p.sampling.top_p, 1.0);
}

#[test]
fn out_of_range_sampling_parameters_are_invalid_argument() {
    let cases = [
        (next(params(-0.1, None), 0.5, 0), "temperature must be a finite number >= 0, got -0.1"),
        (next(params(f32::NAN, None), 0.5, 0), "temperature must be"),
        (next(params(1.0, Some(0.0)), 0.5, 0), "top_p must be in (0, 1], got 0"),
        (next(params(1.0, Some(1.5)), 0.5, 0), "top_p must be in (0, 1], got 1.5"),
        (next(params(1.0, Some(f32::NAN)), 0.5, 0), "top_p must be in (0, 1]"),
        (next(None, 1.0, 0), "uniform draw u must be in [0, 1), got 1"),
        (next(None, -0.25, 0), "got -0.25"),
        (next(None, f64::NAN, 0), "uniform draw u must be in [0, 1)"),
        (next(None, 0.5, 6), "top_k of 6 alternatives exceeds the limit of 5"),
    ];
    for (req, needle) in cases {
        let err = ValidNextToken::parse(req, &limits()).expect_err(needle);
        assert_status(&tonic::Status::from(err), Code::InvalidArgument, needle);
    }
}

#[test]
fn edge_answers_beyond_what_a_context_can_hold_are_refused_before_any_work() {
    let mut req = next(None, 0.5, 0);
    req.edge_answered = (0..200).collect();
    assert!(ValidNextToken::parse(req.clone(), &limits()).is_ok(), "2 x max_context values fit");
    req.edge_answered.push(300);
    let err = ValidNextToken::parse(req, &limits()).expect_err("too many");
    assert_status(
        &tonic::Status::from(err),
        Code::ResourceExhausted,
        "edge_answered holds 201 values",
    );
}

#[test]
fn a_next_token_request_beyond_the_context_is_out_of_range() {
    let mut req = next(None, 0.5, 0);
    req.after = 100;
    let err = ValidNextToken::parse(req, &limits()).expect_err("beyond context");
    assert_status(&tonic::Status::from(err), Code::OutOfRange, "exceed the context of 100");
}

#[test]
fn each_error_maps_to_one_status_code() {
    let cases = [
        (ProtocolError::EmptyUpload, Code::InvalidArgument),
        (ProtocolError::UnknownEncoding(9), Code::InvalidArgument),
        (ProtocolError::TooManyRows { rows: 2, max: 1 }, Code::ResourceExhausted),
        (ProtocolError::PayloadTooLarge { bytes: 2, max: 1 }, Code::ResourceExhausted),
        (ProtocolError::BeyondContext { end: 2, max_context: 1 }, Code::OutOfRange),
        (ProtocolError::Gap { persisted: 1, start: 2 }, Code::FailedPrecondition),
        (ProtocolError::NotUploaded { after: 2, persisted: 1 }, Code::FailedPrecondition),
        (ProtocolError::MissingCredentials, Code::Unauthenticated),
        (ProtocolError::StaleEpoch { what: "an upload", epoch: 1, current: 2 }, Code::Aborted),
        (ProtocolError::DraftLength { len: 0, max: 4 }, Code::InvalidArgument),
        (ProtocolError::InvalidRollbacks("x".into()), Code::InvalidArgument),
    ];
    for (err, code) in cases {
        let message = err.to_string();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), code, "{message}");
        assert_eq!(status.message(), message);
    }
}

#[test]
fn health_reply_advertises_the_limits_and_capabilities() {
    let reply = limits().health_reply(true, "bundle-sha", Capabilities::all());
    assert_eq!(
        (reply.hidden_size, reply.max_context, reply.max_chunk_rows, reply.max_chunk_bytes),
        (H, 100, 16, 1024)
    );
    assert!(reply.serving);
    assert_eq!(reply.model_id, "bundle-sha");
    assert_eq!(Capabilities::from_wire(&reply.capabilities), Capabilities::all());
    // An older cloud announces nothing; names from a newer one are ignored.
    let old = limits().health_reply(true, "m", Capabilities::default());
    assert!(old.capabilities.is_empty());
    let newer = vec!["epochs".to_owned(), "teleport".to_owned()];
    assert_eq!(Capabilities::from_wire(&newer), Capabilities { epochs: true, verify: false });
}

#[test]
fn requests_carry_a_sound_branch() {
    let mut req = next(None, 0.5, 0);
    req.epoch = 2;
    req.rollbacks = vec![7, 5];
    let v = ValidNextToken::parse(req.clone(), &limits()).expect("valid");
    assert_eq!((v.branch.epoch, v.branch.rewritten_since(0)), (2, Some(5)));
    assert_eq!(v.branch.rewritten_since(1), Some(5));
    assert_eq!(v.branch.rewritten_since(2), None, "nothing rewritten since the current epoch");
    req.rollbacks = vec![7];
    let err = ValidNextToken::parse(req.clone(), &limits()).expect_err("one short");
    assert!(err.to_string().contains("one rollback position per epoch"), "{err}");
    req.rollbacks = vec![7, 100];
    let err = ValidNextToken::parse(req, &limits()).expect_err("outside the context");
    assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);
}

fn verify(draft: Vec<u32>, u: Vec<f64>) -> pb::VerifyRequest {
    pb::VerifyRequest {
        session_id: "chat-1".into(),
        after: 3,
        draft,
        u,
        sampling: None,
        epoch: 0,
        rollbacks: vec![],
    }
}

#[test]
fn a_verify_request_needs_a_draft_and_one_draw_more() {
    let v = ValidVerify::parse(verify(vec![1, 2], vec![0.1, 0.2, 0.3]), &limits()).expect("ok");
    assert_eq!((v.rows_end(), v.sampling), (6, Sampling::default()));
    for (req, needle) in [
        (verify(vec![], vec![0.1]), "a draft holds 0 tokens"),
        (verify(vec![1; 65], vec![0.1; 66]), "a draft holds 65 tokens"),
        (verify(vec![1, 2], vec![0.1, 0.2]), "needs n + 1 uniform draws"),
        (verify(vec![1], vec![0.1, 1.0]), "uniform draw u must be in [0, 1)"),
        (pb::VerifyRequest { after: 95, ..verify(vec![1; 5], vec![0.1; 6]) }, "exceed the context"),
    ] {
        let err = ValidVerify::parse(req, &limits()).expect_err(needle);
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn an_edge_sizes_its_chunks_from_the_advertised_limits() {
    let advertised = Limits::from_health(&limits().health_reply(true, "m", Capabilities::all()));
    assert_eq!((advertised.hidden_size, advertised.max_context), (H, 100));
    // 1024 bytes: 32 f32 rows, 64 f16 rows, 85 int8 rows of 8 -- capped at 16 rows.
    assert_eq!(advertised.rows_per_chunk(Encoding::F32), 16);
    let small = Limits { max_chunk_bytes: 100, ..advertised };
    assert_eq!(small.rows_per_chunk(Encoding::F32), 3);
    assert_eq!(small.rows_per_chunk(Encoding::Int8), 8);
    let n = small.rows_per_chunk(Encoding::F32) as usize;
    ValidUpload::parse(chunk(0, n, Encoding::F32), &small).expect("a full chunk is accepted");
    assert!(ValidUpload::parse(chunk(0, n + 1, Encoding::F32), &small).is_err());
}

#[test]
fn a_prompt_that_reaches_past_the_asked_position_is_refused() {
    let mut req = next(None, 0.5, 0);
    req.prompt_len = 4;
    let ok = ValidNextToken::parse(req.clone(), &limits()).expect("the prompt's last position");
    assert_eq!(ok.prompt_len, 4);
    req.prompt_len = 5;
    let err = ValidNextToken::parse(req, &limits()).expect_err("inside the prompt");
    assert_status(
        &tonic::Status::from(err),
        Code::InvalidArgument,
        "prompt_len 5 puts the asked position 3 inside the prompt",
    );
}
