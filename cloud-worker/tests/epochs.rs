//! One round trip per ask, epochs and verification against a real worker over gRPC:
//! - a next-token request sent before its rows waits for them (bounded) and is answered; one
//!   whose rows never come fails after the bound naming the first missing position;
//! - after a rollback (a new epoch rewriting rows) answers follow the new rows, and a request
//!   or an upload of the old epoch is refused with ABORTED;
//! - Verify judges a draft against what NextToken answers position by position;
//! - a worker started without a capability neither announces nor serves it.

mod common;

use std::time::{Duration, Instant};

use collm_protocol::outgoing::{encode_upload, next_token_request};
use collm_protocol::{
    BearerToken, Capabilities, CloudServiceClient, Encoding, Sampling, SessionId, pb,
};
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Client = CloudServiceClient<InterceptedService<Channel, BearerToken>>;

async fn client(url: &str) -> anyhow::Result<Client> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?.connect().await?;
    Ok(CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-a")?))
}

/// Rows `start..start + n` of a session: distinct, finite values.
fn rows(h: u32, start: u64, n: u32, salt: f32) -> Vec<f32> {
    (0..n * h).map(|i| ((start as f32 + i as f32) * 0.37 + salt).sin()).collect()
}

fn chunk(
    s: &SessionId,
    h: u32,
    start: u64,
    n: u32,
    salt: f32,
    epoch: u64,
    from: u64,
) -> pb::UploadChunk {
    let mut c = encode_upload(s, start, h, Encoding::F32, &rows(h, start, n, salt));
    c.epoch = epoch;
    c.rewrite_from = from;
    c
}

/// Sends `chunks` on one upload stream and returns the acks (or the status that ended it).
async fn upload(
    c: &mut Client,
    chunks: Vec<pb::UploadChunk>,
) -> Result<Vec<pb::UploadAck>, tonic::Status> {
    let n = chunks.len();
    let mut acks = c.upload(tokio_stream::iter(chunks)).await?.into_inner();
    let mut out = vec![];
    while out.len() < n {
        match acks.next().await {
            Some(ack) => out.push(ack?),
            None => break,
        }
    }
    Ok(out)
}

fn ask(s: &SessionId, after: u64, epoch: u64, rollbacks: Vec<u64>) -> pb::NextTokenRequest {
    let mut req = next_token_request(s, after, Sampling::default(), 0.5, 0);
    req.epoch = epoch;
    req.rollbacks = rollbacks;
    req
}

#[test]
fn asks_wait_for_their_rows_and_old_epochs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let worker = Worker::start_with(&bundle, dir.path(), &["--row-wait-ms", "1500"]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = client(&worker.url).await?;
        let health = c.health(pb::HealthRequest {}).await?.into_inner();
        assert_eq!(Capabilities::from_wire(&health.capabilities), Capabilities::all());
        let h = health.hidden_size;
        let s = SessionId::parse("early")?;

        // The ask goes out first; its rows follow 300 ms later on the upload stream.
        let mut asker = c.clone();
        let early = tokio::spawn({
            let s = s.clone();
            async move { asker.next_token(ask(&s, 5, 0, vec![])).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        upload(&mut c, vec![chunk(&s, h, 0, 6, 0.0, 0, 0)]).await?;
        let answered = early.await??.into_inner();
        let again = c.next_token(ask(&s, 5, 0, vec![])).await?.into_inner();
        assert_eq!(answered.token, again.token, "the waited-for answer is the stored rows' answer");

        // Rows that never come: refused after the bound, naming where the session ends.
        let t = Instant::now();
        let missing = c.next_token(ask(&s, 9, 0, vec![])).await.expect_err("never uploaded");
        assert!(t.elapsed() >= Duration::from_millis(1400), "waited {:?}", t.elapsed());
        assert_eq!(missing.code(), Code::FailedPrecondition, "{}", missing.message());
        assert!(missing.message().contains("positions below 6"), "{}", missing.message());

        // A rollback to 3: epoch 1 rewrites positions 3.. with other rows. The answer after 5
        // is now the one of a session uploaded with those rows from the start.
        let acks = upload(&mut c, vec![chunk(&s, h, 3, 3, 9.0, 1, 3)]).await?;
        assert_eq!((acks[0].persisted, acks[0].epoch), (6, 1));
        let rewritten = c.next_token(ask(&s, 5, 1, vec![3])).await?.into_inner();
        let fresh = SessionId::parse("fresh")?;
        let rows_of_branch = [rows(h, 0, 3, 0.0), rows(h, 3, 3, 9.0)].concat();
        upload(&mut c, vec![encode_upload(&fresh, 0, h, Encoding::F32, &rows_of_branch)]).await?;
        let reference = c.next_token(ask(&fresh, 5, 0, vec![])).await?.into_inner();
        assert_eq!((rewritten.token, rewritten.prob), (reference.token, reference.prob));

        // The old branch is refused: an ask of epoch 0, and an upload of epoch 0.
        let stale = c.next_token(ask(&s, 5, 0, vec![])).await.expect_err("epoch 0 ask");
        assert_eq!(stale.code(), Code::Aborted, "{}", stale.message());
        assert!(stale.message().contains("epoch 0"), "{}", stale.message());
        let stale = upload(&mut c, vec![chunk(&s, h, 6, 1, 0.0, 0, 0)]).await.expect_err("old");
        assert_eq!(stale.code(), Code::Aborted, "{}", stale.message());
        Ok::<_, anyhow::Error>(())
    })
    .expect("conversation");
}

#[test]
fn verify_judges_a_draft_as_next_token_answers_position_by_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    // Checked (the default: one batched pass, near ties again one position at a time), with
    // a bound so wide that every verdict runs again one position at a time, in one batched
    // pass, and one position at a time.
    for flags in
        [&[][..], &["--verify-rounding", "100"], &["--verify", "batched"], &["--verify", "singly"]]
    {
        let worker = Worker::start_with(&bundle, dir.path(), flags);
        verifies_as_next_token_answers(&worker.url);
    }
}

fn verifies_as_next_token_answers(url: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = client(url).await?;
        let h = c.health(pb::HealthRequest {}).await?.into_inner().hidden_size;
        let s = SessionId::parse("drafted")?;
        upload(&mut c, vec![chunk(&s, h, 0, 8, 0.0, 0, 0)]).await?;
        // What the full model picks after positions 4, 5, 6, 7 (one request each).
        let mut picks = vec![];
        for after in 4..8 {
            picks.push(c.next_token(ask(&s, after, 0, vec![])).await?.into_inner().token);
        }
        let verify = |draft: Vec<u32>| pb::VerifyRequest {
            session_id: s.as_str().to_owned(),
            after: 4,
            u: vec![0.5; draft.len() + 1],
            draft,
            sampling: None,
            epoch: 0,
            rollbacks: vec![],
        };
        // A draft equal to the full model's picks is accepted whole, plus its next token.
        let whole = c.verify(verify(picks[..3].to_vec())).await?.into_inner();
        assert_eq!((whole.accepted, whole.token), (3, picks[3]));
        // A draft wrong at its second token: one accepted, the model's own second token.
        let wrong = if picks[1] == 0 { 1 } else { picks[1] - 1 };
        let cut = c.verify(verify(vec![picks[0], wrong, picks[2]])).await?.into_inner();
        assert_eq!((cut.accepted, cut.token), (1, picks[1]));
        // Rows the draft needs that never come: refused naming the position.
        let beyond = c.verify(pb::VerifyRequest { after: 7, ..verify(vec![1, 2]) }).await;
        let beyond = beyond.expect_err("rows 8 and 9 were never uploaded");
        assert_eq!(beyond.code(), Code::FailedPrecondition, "{}", beyond.message());
        let unknown = c.verify(verify(vec![u32::MAX])).await.expect_err("not a token");
        assert_eq!(unknown.code(), Code::InvalidArgument, "{}", unknown.message());
        Ok::<_, anyhow::Error>(())
    })
    .expect("conversation");
}

#[test]
fn a_worker_without_a_capability_neither_announces_nor_serves_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let worker =
        Worker::start_with(&bundle, dir.path(), &["--without", "epochs", "--without", "verify"]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = client(&worker.url).await?;
        let health = c.health(pb::HealthRequest {}).await?.into_inner();
        assert!(health.capabilities.is_empty(), "{:?}", health.capabilities);
        let h = health.hidden_size;
        let s = SessionId::parse("old")?;
        // As before epochs: an ask for rows not stored yet is refused at once.
        let t = Instant::now();
        let early = c.next_token(ask(&s, 2, 0, vec![])).await.expect_err("nothing stored");
        assert!(t.elapsed() < Duration::from_secs(1), "an old worker does not wait");
        assert_eq!(early.code(), Code::NotFound, "{}", early.message());
        upload(&mut c, vec![chunk(&s, h, 0, 4, 0.0, 0, 0)]).await?;
        let rewrite = upload(&mut c, vec![chunk(&s, h, 2, 2, 1.0, 1, 2)]).await;
        let rewrite = rewrite.expect_err("rewritten rows");
        assert_eq!(rewrite.code(), Code::FailedPrecondition, "{}", rewrite.message());
        assert!(rewrite.message().contains("epochs"), "{}", rewrite.message());
        let verify = pb::VerifyRequest {
            session_id: "old".into(),
            after: 1,
            draft: vec![1],
            u: vec![0.5, 0.5],
            sampling: None,
            epoch: 0,
            rollbacks: vec![],
        };
        let refused = c.verify(verify).await.expect_err("no verify");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{}", refused.message());
        Ok::<_, anyhow::Error>(())
    })
    .expect("conversation");
}
