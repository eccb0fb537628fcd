//! The worker's KV caches are only caches: an evicted session is rebuilt from the stored rows
//! with the same answer, and a request for a position already passed is answered from the
//! cached positions before it (the cache cut back, not rebuilt). SIGTERM stops the worker
//! cleanly.

mod common;

use std::time::Duration;

use collm_protocol::outgoing::{encode_upload, next_token_request};
use collm_protocol::{BearerToken, CloudServiceClient, Encoding, Sampling, SessionId, pb};
use common::*;
use tokio_stream::StreamExt;

async fn rebuilds(url: String) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    let mut a = CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-a")?);
    let hidden = a.health(pb::HealthRequest {}).await?.into_inner().hidden_size;
    let rows: Vec<f32> = (0..4 * hidden).map(|i| ((i % 13) as f32 - 6.0) * 0.07).collect();
    let (s1, s2, fresh) =
        (SessionId::parse("s1")?, SessionId::parse("s2")?, SessionId::parse("fresh")?);
    let chunks: Vec<_> =
        [&s1, &s2].iter().map(|s| encode_upload(s, 0, hidden, Encoding::F16, &rows)).collect();
    let acks: Vec<_> = a.upload(tokio_stream::iter(chunks)).await?.into_inner().collect().await;
    assert!(acks.iter().all(|ack| ack.as_ref().is_ok_and(|ack| ack.persisted == 4)), "{acks:?}");
    let ask = |s: &SessionId, after| next_token_request(s, after, Sampling::default(), 0.5, 3);

    a.next_token(ask(&s1, 1)).await?;
    // One cached session only: s2 evicts s1, whose next answer needs a rebuild from the store.
    a.next_token(ask(&s2, 1)).await?;
    let evicted = a.next_token(ask(&s1, 3)).await?.into_inner();
    // Asking again for an earlier position cuts the cache back to it and runs it again.
    let earlier = a.next_token(ask(&s1, 2)).await?.into_inner();

    let chunk = encode_upload(&fresh, 0, hidden, Encoding::F16, &rows);
    let acks: Vec<_> =
        a.upload(tokio_stream::iter(vec![chunk])).await?.into_inner().collect().await;
    assert_eq!(acks.len(), 1);
    let direct3 = a.next_token(ask(&fresh, 3)).await?.into_inner();
    let end = a.end_session(pb::EndSessionRequest { session_id: "fresh".into() }).await?;
    assert!(end.into_inner().existed);
    let chunk = encode_upload(&fresh, 0, hidden, Encoding::F16, &rows);
    let _: Vec<_> = a.upload(tokio_stream::iter(vec![chunk])).await?.into_inner().collect().await;
    let direct2 = a.next_token(ask(&fresh, 2)).await?.into_inner();

    assert_eq!((evicted.token, evicted.top_k), (direct3.token, direct3.top_k));
    // Position 2 alone on the cut-back cache, against positions 0..=2 in one pass: the same
    // tokens, probabilities equal up to the rounding of a differently batched run.
    let alternatives = |r: &pb::NextTokenReply| r.top_k.iter().map(|t| t.token).collect::<Vec<_>>();
    assert_eq!((earlier.token, alternatives(&earlier)), (direct2.token, alternatives(&direct2)));
    for (a, b) in earlier.top_k.iter().zip(&direct2.top_k) {
        assert!((a.prob - b.prob).abs() < 1e-5, "{earlier:?} vs {direct2:?}");
    }
    Ok(())
}

#[test]
fn evicted_or_rewound_sessions_are_rebuilt_from_the_store_with_the_same_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let worker = Worker::start_with(&bundle, dir.path(), &["--cached-sessions", "1"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), rebuilds(worker.url.clone())).await
    })
    .expect("within 60 s")
    .expect("rebuilt answers match");
}

#[test]
fn sigterm_stops_the_worker_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let mut worker = Worker::start(&bundle, dir.path());
    let status = worker.terminate();
    assert!(status.success(), "worker exited with {status}");
}
