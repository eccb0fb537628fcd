//! The `ContextStore` contract, one set of test functions run against every store: the
//! in-memory store, the Redis store on a real `redis-server`, and the Redis store on a real
//! three-node Redis Cluster. Whatever the worker relies on (contiguity, trimming, quotas, TTL,
//! isolation between clients, ending) therefore holds whichever store it is given.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use collm_cloud_worker::Error;
use collm_cloud_worker::clients::ClientId;
use collm_cloud_worker::context::{
    Appended, ContextStore, InMemoryStore, RedisConfig, RedisStore, StoreLimits,
};
use collm_protocol::outgoing::encode_upload;
use collm_protocol::{Encoding, Limits, ProtocolError, SessionId, ValidUpload};
use collm_testkit::{RedisCluster, RedisServer};

const H: u32 = 4;

fn client(name: &str) -> ClientId {
    ClientId::new(name)
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("session id")
}

/// Rows `start..start + rows` of a session: values that differ per position and per session.
fn values(session: &str, start: u64, rows: u32) -> Vec<f32> {
    let salt = session.bytes().map(f32::from).sum::<f32>() / 64.0;
    (0..rows * H).map(|i| salt + start as f32 + i as f32 / 8.0).collect()
}

fn upload_as(session: &str, start: u64, rows: u32, encoding: Encoding) -> ValidUpload {
    let chunk = encode_upload(&sid(session), start, H, encoding, &values(session, start, rows));
    ValidUpload::parse(chunk, &Limits::new(H, 64)).expect("valid upload")
}

fn upload(session: &str, start: u64, rows: u32) -> ValidUpload {
    upload_as(session, start, rows, Encoding::F16)
}

fn decoded(rows: &[ValidUpload]) -> Vec<f32> {
    rows.iter().flat_map(ValidUpload::decode).collect()
}

enum Backend {
    Memory,
    Redis,
    Cluster,
}

/// Runs `contract` on a fresh store of `backend` (and its servers, stopped afterwards).
fn run<F, Fut>(backend: Backend, limits: StoreLimits, contract: F)
where
    F: FnOnce(Arc<dyn ContextStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let redis = |urls: Vec<String>| {
        let config = RedisConfig { urls, ..RedisConfig::new("") };
        Arc::new(RedisStore::new(&config, limits).expect("redis store")) as Arc<dyn ContextStore>
    };
    match backend {
        Backend::Memory => rt.block_on(contract(Arc::new(InMemoryStore::new(limits)))),
        Backend::Redis => {
            let server = RedisServer::start();
            rt.block_on(contract(redis(vec![server.url()])));
        }
        Backend::Cluster => {
            let cluster = RedisCluster::start(3);
            rt.block_on(contract(redis(cluster.urls())));
        }
    }
}

/// One test per store for a contract function.
macro_rules! contract {
    ($name:ident, $limits:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn in_memory() {
                run(Backend::Memory, $limits, super::$name);
            }

            #[test]
            fn redis() {
                run(Backend::Redis, $limits, super::$name);
            }

            #[test]
            fn redis_cluster() {
                run(Backend::Cluster, $limits, super::$name);
            }
        }
    };
}

const ROOMY: StoreLimits = StoreLimits {
    positions_per_session: 64,
    sessions_per_client: 16,
    ttl: Duration::from_secs(600),
};

async fn appends_are_contiguous_retransmissions_trimmed_and_gaps_reported(
    st: Arc<dyn ContextStore>,
) {
    let a = client("edge-a");
    assert_eq!(st.append(&a, upload("s", 0, 3)).await.ok(), Some(Appended::Persisted(3)));
    // Overlapping retransmission: only its new row is stored.
    assert_eq!(st.append(&a, upload("s", 2, 2)).await.ok(), Some(Appended::Persisted(4)));
    // Entirely old: nothing changes.
    assert_eq!(st.append(&a, upload("s", 0, 2)).await.ok(), Some(Appended::Persisted(4)));
    // Beyond what is stored: refused, with where to resume.
    assert_eq!(st.append(&a, upload("s", 6, 1)).await.ok(), Some(Appended::MissingFrom(4)));
    // A session whose first upload would start with a gap is not created.
    assert_eq!(st.append(&a, upload("t", 1, 1)).await.ok(), Some(Appended::MissingFrom(0)));
    assert!(st.session(&a, &sid("t")).await.expect("ok").is_none());

    let info = st.session(&a, &sid("s")).await.expect("ok").expect("exists");
    assert_eq!((info.persisted, info.hidden_size, info.encoding), (4, H, Encoding::F16));
    // Positions 1, 2 from the first upload, 3 from the second (its row 1), as uploaded.
    let first = upload("s", 0, 3).decode();
    let second = upload("s", 2, 2).decode();
    let h = H as usize;
    let expected: Vec<f32> = first[h..3 * h].iter().chain(&second[h..2 * h]).copied().collect();
    assert_eq!(decoded(&st.rows(&a, &sid("s"), 0, 1..4).await.expect("stored")), expected);
    assert_eq!(decoded(&st.rows(&a, &sid("s"), 0, 3..4).await.expect("stored")), &second[h..]);
    assert!(st.rows(&a, &sid("s"), 0, 2..2).await.expect("empty range").is_empty());
    let beyond = st.rows(&a, &sid("s"), 0, 2..5).await;
    assert!(
        matches!(
            beyond,
            Err(Error::Protocol(ProtocolError::NotUploaded { after: 4, persisted: 4 }))
        ),
        "{beyond:?}"
    );
    // Rows keep their transport encoding.
    let rows = st.rows(&a, &sid("s"), 0, 0..4).await.expect("stored");
    assert!(rows.iter().all(|r| r.encoding == Encoding::F16 && r.hidden_size == H));
    assert_eq!(rows.iter().map(|r| r.payload.len()).sum::<usize>(), 4 * 2 * H as usize);
}
contract!(appends_are_contiguous_retransmissions_trimmed_and_gaps_reported, ROOMY);

async fn a_session_keeps_the_encoding_of_its_first_upload(st: Arc<dyn ContextStore>) {
    let a = client("edge-a");
    st.append(&a, upload_as("s", 0, 2, Encoding::Int8)).await.expect("stored");
    let err = st.append(&a, upload_as("s", 2, 1, Encoding::F32)).await.expect_err("mixed");
    assert!(matches!(err, Error::SessionLayout { .. }), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::InvalidArgument);
    let rows = st.rows(&a, &sid("s"), 0, 0..2).await.expect("stored");
    assert_eq!(decoded(&rows), upload_as("s", 0, 2, Encoding::Int8).decode());
}
contract!(a_session_keeps_the_encoding_of_its_first_upload, ROOMY);

async fn sessions_belong_to_their_client(st: Arc<dyn ContextStore>) {
    let (a, b) = (client("edge-a"), client("edge-b"));
    let s = sid("s");
    st.append(&a, upload("s", 0, 2)).await.expect("stored");
    assert!(st.session(&b, &s).await.expect("ok").is_none());
    assert!(matches!(st.rows(&b, &s, 0, 0..1).await, Err(Error::UnknownSession(_))));
    assert!(!st.end(&b, &s).await.expect("ok"), "b cannot end a's session");
    // b's "s" is its own session: a gap for b, and b's rows never reach a.
    assert_eq!(st.append(&b, upload("s", 2, 1)).await.ok(), Some(Appended::MissingFrom(0)));
    st.append(&b, upload("other", 0, 3)).await.expect("b's rows");
    let b_rows = encode_upload(&s, 0, H, Encoding::F16, &values("b's", 0, 3));
    let b_rows = ValidUpload::parse(b_rows, &Limits::new(H, 64)).expect("valid");
    st.append(&b, b_rows.clone()).await.expect("b's own s");
    assert_eq!(decoded(&st.rows(&b, &s, 0, 0..3).await.expect("b's")), b_rows.decode());
    assert_eq!(decoded(&st.rows(&a, &s, 0, 0..2).await.expect("a's")), upload("s", 0, 2).decode());
    // Client ids that look like key syntax stay apart too.
    let (odd, odder) = (client("x}{y/z"), client("x%7D%7By%2Fz"));
    st.append(&odd, upload("s", 0, 1)).await.expect("stored");
    assert!(st.session(&odder, &s).await.expect("ok").is_none());
    assert!(st.end(&a, &s).await.expect("ok"));
    assert_eq!(st.session(&b, &s).await.expect("ok").map(|i| i.persisted), Some(3));
}
contract!(sessions_belong_to_their_client, ROOMY);

const TIGHT: StoreLimits =
    StoreLimits { positions_per_session: 4, sessions_per_client: 2, ttl: Duration::from_secs(600) };

async fn quotas_refuse_with_their_limits_and_ending_frees_a_session(st: Arc<dyn ContextStore>) {
    let a = client("edge-a");
    st.append(&a, upload("s1", 0, 4)).await.expect("fits");
    let err = st.append(&a, upload("s1", 4, 1)).await.expect_err("5 positions");
    assert!(matches!(err, Error::TooManyPositions { end: 5, max: 4 }), "{err}");
    st.append(&a, upload("s2", 0, 1)).await.expect("second session");
    let err = st.append(&a, upload("s3", 0, 1)).await.expect_err("third session");
    assert!(matches!(err, Error::TooManySessions { held: 2, max: 2 }), "{err}");
    assert!(err.to_string().contains("quota"), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::ResourceExhausted);
    assert!(st.session(&a, &sid("s3")).await.expect("ok").is_none(), "nothing stored");
    // Uploads to sessions already held are not refused.
    st.append(&a, upload("s2", 1, 1)).await.expect("existing session grows");
    // Another client has its own quota.
    st.append(&client("edge-b"), upload("s3", 0, 1)).await.expect("b's first session");
    assert!(st.end(&a, &sid("s1")).await.expect("ok"));
    st.append(&a, upload("s3", 0, 1)).await.expect("quota freed by ending s1");
}
contract!(quotas_refuse_with_their_limits_and_ending_frees_a_session, TIGHT);

const SHORT_LIVED: StoreLimits =
    StoreLimits { positions_per_session: 64, sessions_per_client: 2, ttl: Duration::from_secs(1) };

async fn idle_sessions_expire_use_keeps_them_and_expiry_frees_quota(st: Arc<dyn ContextStore>) {
    let a = client("edge-a");
    let (s1, s2) = (sid("s1"), sid("s2"));
    st.append(&a, upload("s1", 0, 2)).await.expect("stored");
    st.append(&a, upload("s2", 0, 2)).await.expect("stored");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Reading s2's rows counts as use; s1 is left alone.
        st.rows(&a, &s2, 0, 0..2).await.expect("s2 is in use");
    }
    assert!(st.session(&a, &s1).await.expect("ok").is_none(), "s1 idle for 1.5 s of a 1 s TTL");
    assert_eq!(st.session(&a, &s2).await.expect("ok").map(|i| i.persisted), Some(2));
    assert!(matches!(st.rows(&a, &s1, 0, 0..1).await, Err(Error::UnknownSession(_))));
    // An expired session is gone for good: its next upload must start again from 0.
    assert_eq!(st.append(&a, upload("s1", 2, 1)).await.ok(), Some(Appended::MissingFrom(0)));
    st.append(&a, upload("s3", 0, 1)).await.expect("quota freed by expiry");
}
contract!(idle_sessions_expire_use_keeps_them_and_expiry_frees_quota, SHORT_LIVED);

async fn ending_forgets_a_session_once_and_a_new_one_may_take_its_id(st: Arc<dyn ContextStore>) {
    let a = client("edge-a");
    let s = sid("s");
    st.append(&a, upload("s", 0, 3)).await.expect("stored");
    assert!(st.end(&a, &s).await.expect("ok"));
    assert!(!st.end(&a, &s).await.expect("ok"), "ended twice");
    assert!(st.session(&a, &s).await.expect("ok").is_none());
    assert!(matches!(st.rows(&a, &s, 0, 0..1).await, Err(Error::UnknownSession(_))));
    assert_eq!(st.append(&a, upload("s", 3, 1)).await.ok(), Some(Appended::MissingFrom(0)));
    assert_eq!(st.append(&a, upload("s", 0, 1)).await.ok(), Some(Appended::Persisted(1)));
}
contract!(ending_forgets_a_session_once_and_a_new_one_may_take_its_id, ROOMY);

async fn context_bytes_count_the_stored_rows(st: Arc<dyn ContextStore>) {
    let (a, b) = (client("edge-a"), client("edge-b"));
    assert_eq!(st.context_bytes().await.expect("bytes"), 0);
    st.append(&a, upload("s", 0, 3)).await.expect("stored");
    st.append(&a, upload("s", 2, 2)).await.expect("one new row");
    st.append(&b, upload_as("t", 0, 2, Encoding::Int8)).await.expect("stored");
    let f16 = Encoding::F16.row_bytes(H as usize) as u64;
    let int8 = Encoding::Int8.row_bytes(H as usize) as u64;
    assert_eq!(st.context_bytes().await.expect("bytes"), 4 * f16 + 2 * int8);
    st.end(&a, &sid("s")).await.expect("ended");
    assert_eq!(st.context_bytes().await.expect("bytes"), 2 * int8);
    st.check().await.expect("the store can serve");
}
contract!(context_bytes_count_the_stored_rows, ROOMY);

/// Rows of session `s` on another branch: other values, epoch `epoch`, rewritten from `from`.
fn branch(start: u64, rows: u32, epoch: u64, from: u64) -> ValidUpload {
    let chunk = encode_upload(&sid("s"), start, H, Encoding::F16, &values("branch", start, rows));
    let mut u = ValidUpload::parse(chunk, &Limits::new(H, 64)).expect("valid upload");
    u.epoch = epoch;
    u.rewrite_from = from;
    u
}

async fn a_rollback_rewrites_rows_and_the_old_branch_is_refused(st: Arc<dyn ContextStore>) {
    let a = client("edge-a");
    let s = sid("s");
    assert_eq!(st.append(&a, upload("s", 0, 6)).await.ok(), Some(Appended::Persisted(6)));
    // The edge rolled back to position 4: epoch 1 rewrites positions 4 and 5.
    assert_eq!(st.append(&a, branch(4, 2, 1, 4)).await.ok(), Some(Appended::Persisted(6)));
    let info = st.session(&a, &s).await.expect("ok").expect("exists");
    assert_eq!((info.epoch, info.persisted), (1, 6));
    let h = H as usize;
    let kept = upload("s", 0, 4).decode();
    let expected: Vec<f32> = kept.iter().chain(&branch(4, 2, 1, 4).decode()).copied().collect();
    assert_eq!(decoded(&st.rows(&a, &s, 1, 0..6).await.expect("epoch 1")), expected);

    // A read on the old branch is refused loudly, not served the new rows.
    let stale = st.rows(&a, &s, 0, 0..4).await.expect_err("epoch 0 is gone");
    assert!(
        matches!(stale, Error::Protocol(ProtocolError::StaleEpoch { epoch: 0, current: 1, .. })),
        "{stale}"
    );
    assert_eq!(tonic::Status::from(stale).code(), tonic::Code::Aborted);
    // So is an upload from the old branch (a stale connection): nothing changes.
    let stale = st.append(&a, upload("s", 6, 1)).await.expect_err("epoch 0 upload");
    assert!(stale.to_string().contains("epoch 0"), "{stale}");
    assert_eq!(tonic::Status::from(stale).code(), tonic::Code::Aborted);
    // Same-epoch retransmissions stay harmless.
    assert_eq!(st.append(&a, branch(3, 3, 1, 4)).await.ok(), Some(Appended::Persisted(6)));
    assert_eq!(decoded(&st.rows(&a, &s, 1, 0..6).await.expect("unchanged")), expected);
    // A reader ahead of the store finds its rows not there yet.
    let ahead = st.rows(&a, &s, 2, 0..1).await.expect_err("epoch 2 not stored");
    assert!(matches!(ahead, Error::Protocol(ProtocolError::NotUploaded { .. })), "{ahead}");

    // Two rollbacks (to 5, then to 2) the store hears of at once: the rows from the lowest
    // go, and an upload starting above it is told where to resume.
    assert_eq!(st.append(&a, branch(3, 1, 3, 2)).await.ok(), Some(Appended::MissingFrom(2)));
    let info = st.session(&a, &s).await.expect("ok").expect("exists");
    assert_eq!((info.epoch, info.persisted), (3, 2));
    assert_eq!(st.append(&a, branch(2, 2, 3, 2)).await.ok(), Some(Appended::Persisted(4)));
    let rewritten: Vec<f32> =
        kept[..2 * h].iter().chain(&branch(2, 2, 3, 2).decode()).copied().collect();
    assert_eq!(decoded(&st.rows(&a, &s, 3, 0..4).await.expect("epoch 3")), rewritten);
    // A rollback to 0 leaves nothing of the old rows.
    assert_eq!(st.append(&a, branch(0, 1, 4, 0)).await.ok(), Some(Appended::Persisted(1)));
    assert_eq!(
        decoded(&st.rows(&a, &s, 4, 0..1).await.expect("epoch 4")),
        branch(0, 1, 4, 0).decode()
    );
}
contract!(a_rollback_rewrites_rows_and_the_old_branch_is_refused, ROOMY);
