//! What the Redis tests share beyond `common`: a raw gRPC client that names its session ids
//! (so two workers can be asked about the same session), rows to upload, and a worker start
//! that is expected to fail.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use collm_protocol::outgoing::{encode_upload, next_token_request};
use collm_protocol::{BearerToken, CloudServiceClient, Encoding, Sampling, SessionId, pb};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// One worker through its gRPC API, with one client's token.
pub struct RawCloud {
    rt: tokio::runtime::Runtime,
    client: CloudServiceClient<InterceptedService<Channel, BearerToken>>,
    pub hidden: u32,
}

impl RawCloud {
    pub fn connect(url: &str, token: &str) -> Self {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut client = rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
                .expect("url")
                .connect()
                .await
                .expect("the worker accepts connections");
            CloudServiceClient::with_interceptor(channel, BearerToken::new(token).expect("token"))
        });
        let hidden = rt.block_on(client.health(pb::HealthRequest {})).expect("health").into_inner();
        Self { rt, client, hidden: hidden.hidden_size }
    }

    /// Uploads `rows` (f32, whole rows) at `start` in one chunk; the worker's ack or status.
    pub fn upload(
        &mut self,
        session: &str,
        start: u64,
        rows: &[f32],
    ) -> Result<pb::UploadAck, tonic::Status> {
        let id = SessionId::parse(session).expect("session id");
        let chunk = encode_upload(&id, start, self.hidden, Encoding::F32, rows);
        let acks: Vec<_> = self.rt.block_on(async {
            let reply = self.client.upload(tokio_stream::iter(vec![chunk])).await?;
            Ok::<_, tonic::Status>(reply.into_inner().collect::<Vec<_>>().await)
        })?;
        acks.into_iter().next().unwrap_or_else(|| Err(tonic::Status::unknown("no ack")))
    }

    /// The greedy next token after `after`, with the three most likely alternatives.
    pub fn next(&mut self, session: &str, after: u64) -> Result<pb::NextTokenReply, tonic::Status> {
        let id = SessionId::parse(session).expect("session id");
        let req = next_token_request(&id, after, Sampling::default(), 0.5, 3);
        self.rt.block_on(self.client.next_token(req)).map(tonic::Response::into_inner)
    }

    pub fn end(&mut self, session: &str) -> Result<bool, tonic::Status> {
        let req = pb::EndSessionRequest { session_id: session.to_owned() };
        Ok(self.rt.block_on(self.client.end_session(req))?.into_inner().existed)
    }
}

/// `n` rows of hidden states of plausible magnitude, different for each `seed`.
pub fn rows(n: usize, hidden: u32, seed: u32) -> Vec<f32> {
    (0..n * hidden as usize)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 97) % 23) as f32 - 11.0)
                * 0.05
        })
        .collect()
}

/// The first `n` rows of `all`.
pub fn first(all: &[f32], n: usize, hidden: u32) -> &[f32] {
    &all[..n * hidden as usize]
}

/// Rows `from..to` of `all`.
pub fn span(all: &[f32], from: usize, to: usize, hidden: u32) -> &[f32] {
    &all[from * hidden as usize..to * hidden as usize]
}

/// Starts a `cloud-worker` that must exit during startup; its stderr.
pub fn startup_error(bundle: &Path, dir: &Path, extra: &[&str]) -> String {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "edge-a tok-a\nedge-b tok-b\n").expect("tokens file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloud-worker"))
        .args(["--bundle", bundle.to_str().expect("utf-8"), "--listen", "127.0.0.1:0"])
        .args(["--tokens", tokens.to_str().expect("utf-8")])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cloud-worker starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not stop within 60 s although its startup should fail");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success(), "the worker should have failed to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
