//! Malformed or over-quota gRPC input to a real worker: each gets a clear status with the right
//! code, and the worker keeps serving afterwards.

mod common;

use std::time::Duration;

use collm_protocol::outgoing::{encode_upload, next_token_request};
use collm_protocol::{BearerToken, CloudServiceClient, Encoding, Sampling, SessionId, pb};
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Client = CloudServiceClient<InterceptedService<Channel, BearerToken>>;

/// The status that ends an upload stream carrying only `chunk`.
async fn refused(client: &mut Client, chunk: pb::UploadChunk) -> tonic::Status {
    let acks: Vec<_> = match client.upload(tokio_stream::iter(vec![chunk])).await {
        Ok(stream) => stream.into_inner().collect().await,
        Err(status) => return status,
    };
    match acks.into_iter().find_map(Result::err) {
        Some(status) => status,
        None => panic!("the chunk was accepted"),
    }
}

fn expect(status: &tonic::Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(needle), "{:?} should mention {needle:?}", status.message());
}

async fn bad_input(url: String) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    let mut c = CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-a")?);
    let health = c.health(pb::HealthRequest {}).await?.into_inner();
    let h = health.hidden_size;
    let s = SessionId::parse("bad")?;
    let row: Vec<f32> = (0..h).map(|i| i as f32 * 0.01).collect();

    let wrong_width =
        encode_upload(&s, 0, h + 1, Encoding::F32, &[row.clone(), vec![0.0]].concat());
    expect(&refused(&mut c, wrong_width).await, Code::InvalidArgument, "hidden size");

    let mut unspecified = encode_upload(&s, 0, h, Encoding::F32, &row);
    unspecified.encoding = 0;
    expect(&refused(&mut c, unspecified).await, Code::InvalidArgument, "encoding");

    let mut nan = row.clone();
    nan[1] = f32::NAN;
    expect(
        &refused(&mut c, encode_upload(&s, 0, h, Encoding::F32, &nan)).await,
        Code::InvalidArgument,
        "non-finite",
    );

    let mut corrupt = encode_upload(&s, 0, h, Encoding::F32, &row);
    corrupt.checksum = Some(pb::upload_chunk::Checksum::Crc32c(0));
    expect(&refused(&mut c, corrupt).await, Code::InvalidArgument, "checksum");

    let too_many = health.max_chunk_rows as usize + 1;
    let big: Vec<f32> = row.iter().copied().cycle().take(too_many * h as usize).collect();
    expect(
        &refused(&mut c, encode_upload(&s, 0, h, Encoding::F16, &big)).await,
        Code::ResourceExhausted,
        "rows per chunk",
    );

    let beyond = encode_upload(&s, health.max_context, h, Encoding::F32, &row);
    expect(&refused(&mut c, beyond).await, Code::OutOfRange, "context");

    // Requests for positions never uploaded, of sessions that never existed, with a bad draw.
    let status = c.next_token(next_token_request(&s, 0, Sampling::default(), 0.5, 0)).await;
    expect(&status.expect_err("unknown session"), Code::NotFound, "unknown session");
    let acks: Vec<_> = c
        .upload(tokio_stream::iter(vec![encode_upload(&s, 0, h, Encoding::F32, &row)]))
        .await?
        .into_inner()
        .collect()
        .await;
    assert!(acks.iter().all(Result::is_ok), "{acks:?}");
    let status = c.next_token(next_token_request(&s, 1, Sampling::default(), 0.5, 0)).await;
    expect(&status.expect_err("not uploaded"), Code::FailedPrecondition, "upload up to 1");
    let status = c.next_token(next_token_request(&s, 0, Sampling::default(), 1.5, 0)).await;
    expect(&status.expect_err("u out of range"), Code::InvalidArgument, "uniform draw");

    // Still serving, and the good session answers.
    assert!(c.health(pb::HealthRequest {}).await?.into_inner().serving);
    c.next_token(next_token_request(&s, 0, Sampling::default(), 0.5, 2)).await?;
    Ok(())
}

async fn over_quota(url: String) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    let mut c = CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-a")?);
    let h = c.health(pb::HealthRequest {}).await?.into_inner().hidden_size;
    let rows = vec![0.25f32; 3 * h as usize];
    let s = SessionId::parse("long")?;
    let chunk = encode_upload(&s, 0, h, Encoding::F32, &rows);
    expect(&refused(&mut c, chunk).await, Code::ResourceExhausted, "quota exceeded");
    let chunk = encode_upload(&s, 0, h, Encoding::F32, &rows[..2 * h as usize]);
    let acks: Vec<_> =
        c.upload(tokio_stream::iter(vec![chunk])).await?.into_inner().collect().await;
    assert!(acks.iter().all(Result::is_ok), "within the quota: {acks:?}");
    let chunk =
        encode_upload(&SessionId::parse("second")?, 0, h, Encoding::F32, &rows[..h as usize]);
    expect(&refused(&mut c, chunk).await, Code::ResourceExhausted, "sessions");
    Ok(())
}

#[test]
fn quotas_refuse_long_sessions_and_extra_sessions_with_their_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let flags = ["--positions-per-session", "2", "--sessions-per-client", "1"];
    let worker = Worker::start_with(&bundle, dir.path(), &flags);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), over_quota(worker.url.clone())).await
    })
    .expect("within 60 s")
    .expect("quotas hold");
}

#[test]
fn malformed_grpc_input_gets_a_clear_status_and_the_worker_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let worker = Worker::start(&bundle, dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), bad_input(worker.url.clone())).await
    })
    .expect("within 60 s")
    .expect("every refusal is clear");
}
