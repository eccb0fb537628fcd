//! Clients are their bearer tokens: client B, talking straight to the worker over gRPC, can
//! neither read, extend nor end client A's session, even when it names the same session id.

mod common;

use std::time::Duration;

use collm_protocol::outgoing::{encode_upload, next_token_request};
use collm_protocol::{BearerToken, CloudServiceClient, Encoding, Sampling, SessionId, pb};
use common::*;
use tonic::Code;

async fn isolation(url: String) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    let mut a = CloudServiceClient::with_interceptor(channel.clone(), BearerToken::new("tok-a")?);
    let mut b = CloudServiceClient::with_interceptor(channel.clone(), BearerToken::new("tok-b")?);
    let hidden = a.health(pb::HealthRequest {}).await?.into_inner().hidden_size;

    let s = SessionId::parse("shared-42")?;
    let rows: Vec<f32> = (0..3 * hidden).map(|i| ((i % 17) as f32 - 8.0) * 0.05).collect();
    let chunk = encode_upload(&s, 0, hidden, Encoding::F32, &rows);
    let acks: Vec<_> =
        a.upload(tokio_stream::iter(vec![chunk])).await?.into_inner().collect().await;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].as_ref().map(|ack| ack.persisted).ok(), Some(3));
    let greedy = || next_token_request(&s, 2, Sampling::default(), 0.5, 0);
    let before = a.next_token(greedy()).await?.into_inner();

    // B cannot read A's session.
    let status = b.next_token(greedy()).await.expect_err("B must not read A's session");
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());

    // B cannot extend it: its upload at position 3 is a gap in B's own (empty) namespace.
    let more = encode_upload(&s, 3, hidden, Encoding::F32, &rows[..hidden as usize]);
    let acks: Vec<_> = b.upload(tokio_stream::iter(vec![more])).await?.into_inner().collect().await;
    let ack = acks[0].as_ref().map_err(|s| anyhow::anyhow!("{s}"))?;
    assert_eq!((ack.persisted, ack.missing_from), (0, Some(0)), "B's chunk must not be stored");

    // B cannot end it.
    let ended = b.end_session(pb::EndSessionRequest { session_id: s.to_string() }).await?;
    assert!(!ended.into_inner().existed);

    // A's session is untouched: same answer, still three positions.
    let status = a.next_token(next_token_request(&s, 3, Sampling::default(), 0.5, 0)).await;
    assert_eq!(
        status.expect_err("position 3 was never uploaded by A").code(),
        Code::FailedPrecondition
    );
    let after = a.next_token(greedy()).await?.into_inner();
    assert_eq!((after.token, after.persisted), (before.token, 3));

    // Without a known token nothing is answered at all.
    let mut stranger =
        CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-unknown")?);
    let status = stranger.health(pb::HealthRequest {}).await.expect_err("unknown token");
    assert_eq!(status.code(), Code::Unauthenticated);
    Ok(())
}

use tokio_stream::StreamExt;

#[test]
fn client_b_cannot_read_extend_or_end_client_a_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let worker = Worker::start(&bundle, dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), isolation(worker.url.clone())).await
    })
    .expect("within 60 s")
    .expect("isolation holds");
}
