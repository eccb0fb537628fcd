//! The edge keeps what it uploaded for the life of a session: when the cloud loses a session
//! (expired, ended, flushed), the gRPC transport uploads the rows again and gets the answer an
//! uninterrupted session gives.

mod common;

use collm_cloud_client::GrpcCloud;
use collm_protocol::{BearerToken, CloudServiceClient, pb};
use collm_runtime::transport::CloudTransport;
use common::*;

#[test]
fn a_session_the_cloud_lost_is_uploaded_again_and_answers_as_if_never_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let worker = Worker::start(&bundle, dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut raw = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(worker.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connects");
        CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-a").expect("token"))
    });
    let hidden =
        rt.block_on(raw.health(pb::HealthRequest {})).expect("health").into_inner().hidden_size
            as usize;
    let rows: Vec<f32> = (0..4 * hidden).map(|i| ((i % 11) as f32 - 5.0) * 0.09).collect();
    let mut cloud = GrpcCloud::connect(&worker.url, "tok-a", hidden).expect("connects");

    // The reference: one session that is never interrupted.
    cloud.upload(2, upload(0, &rows, hidden)).expect("upload");
    let reference = cloud.next_token(2, ask(3)).expect("answer");

    let forget = |raw: &mut CloudServiceClient<_>, id: String| {
        let reply = rt.block_on(raw.end_session(pb::EndSessionRequest { session_id: id }));
        assert!(reply.expect("ends").into_inner().existed);
    };
    let id = cloud.wire_session_id(1).expect("id").to_string();
    cloud.upload(1, upload(0, &rows[..3 * hidden], hidden)).expect("upload");
    cloud.next_token(1, ask(2)).expect("answer");

    // Lost before the next upload: the cloud answers the upload with `missing_from`.
    forget(&mut raw, id.clone());
    cloud.upload(1, upload(3, &rows[3 * hidden..], hidden)).expect("upload");
    assert_eq!(cloud.next_token(1, ask(3)).expect("answer after re-upload"), reference);

    // Lost after every row was acknowledged: the next-token request itself finds nothing.
    forget(&mut raw, id);
    assert_eq!(cloud.next_token(1, ask(3)).expect("answer after re-upload"), reference);
    cloud.end_session(1);
    cloud.end_session(2);
}
