//! The generated stubs work over a real socket: a tonic server on 127.0.0.1:0 with a toy
//! CloudService (acks what it validates, answers a fixed token, streams a validated prompt
//! back as its "generation") and a real tonic client carrying
//! a bearer token and a traceparent. Bounded by a timeout; the server stops when the test ends.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collm_protocol::generate::generate_request;
use collm_protocol::outgoing::{encode_upload, next_token_request};
use collm_protocol::pb;
use collm_protocol::replies::{ack_missing, ack_persisted};
use collm_protocol::trace::{self, TraceParent};
use collm_protocol::{
    BearerToken, Capabilities, CloudService, CloudServiceClient, CloudServiceServer, Encoding,
    Limits, ModelLimits, ProtocolError, Sampling, SessionId, ValidGenerate, ValidNextToken,
    ValidUpload, bearer_token, check_uploaded,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};

const H: u32 = 4;
const TOKEN: &str = "edge-a-token";

/// Persisted position per session, and the traceparent each call arrived with.
#[derive(Default)]
struct Toy {
    persisted: Arc<Mutex<HashMap<SessionId, u64>>>,
    traces: Arc<Mutex<Vec<Option<TraceParent>>>>,
}

impl Toy {
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if bearer_token(req.metadata())? != TOKEN {
            return Err(Status::permission_denied("unknown client"));
        }
        self.traces
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .push(trace::extract(req.metadata()));
        Ok(())
    }
}

fn limits() -> Limits {
    Limits::new(H, 64)
}

#[tonic::async_trait]
impl CloudService for Toy {
    type UploadStream = Pin<Box<dyn Stream<Item = Result<pb::UploadAck, Status>> + Send>>;

    async fn upload(
        &self,
        req: Request<tonic::Streaming<pb::UploadChunk>>,
    ) -> Result<Response<Self::UploadStream>, Status> {
        self.admit(&req)?;
        let persisted = Arc::clone(&self.persisted);
        let acks = req.into_inner().map(move |chunk| {
            let up = ValidUpload::parse(chunk?, &limits())?;
            let mut map = persisted.lock().map_err(|_| Status::internal("poisoned"))?;
            let held = map.entry(up.session.clone()).or_insert(0);
            let session = up.session.clone();
            match up.unstored(*held) {
                Ok(Some(new)) => *held = new.end(),
                Ok(None) => {}
                Err(ProtocolError::Gap { persisted, .. }) => {
                    return Ok(ack_missing(&session, persisted, 0));
                }
                Err(e) => return Err(e.into()),
            }
            Ok(ack_persisted(&session, *held, 0))
        });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn next_token(
        &self,
        req: Request<pb::NextTokenRequest>,
    ) -> Result<Response<pb::NextTokenReply>, Status> {
        self.admit(&req)?;
        let req = ValidNextToken::parse(req.into_inner(), &limits())?;
        let persisted = self
            .persisted
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .get(&req.session)
            .copied()
            .unwrap_or(0);
        check_uploaded(persisted, req.after)?;
        let top_k = (0..req.top_k).map(|i| pb::TokenProb { token: 42 + i, prob: 0.5 }).collect();
        Ok(Response::new(pb::NextTokenReply { token: 42, prob: 0.5, top_k, persisted }))
    }

    async fn verify(
        &self,
        _req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReply>, Status> {
        Err(Status::unimplemented("the toy cloud announces no `verify` capability"))
    }

    async fn end_session(
        &self,
        req: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionReply>, Status> {
        self.admit(&req)?;
        let session = SessionId::parse(&req.get_ref().session_id)?;
        let existed = self
            .persisted
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .remove(&session)
            .is_some();
        Ok(Response::new(pb::EndSessionReply { existed }))
    }

    async fn health(
        &self,
        _req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthReply>, Status> {
        Ok(Response::new(limits().health_reply(true, "toy", Capabilities::default())))
    }

    type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GeneratedToken, Status>> + Send>>;

    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        self.admit(&req)?;
        let limits = ModelLimits { vocab_size: 50, max_context: 64 };
        let valid = ValidGenerate::parse(req.into_inner(), &limits)?;
        let tokens: Vec<_> = valid
            .prompt_ids
            .into_iter()
            .rev()
            .take(valid.max_tokens as usize)
            .map(|token| Ok(pb::GeneratedToken { token, prob: 0.5, ..Default::default() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(tokens))))
    }
}

async fn conversation(traces: Arc<Mutex<Vec<Option<TraceParent>>>>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let toy = Toy { traces, ..Toy::default() };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CloudServiceServer::new(toy))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut client =
        CloudServiceClient::with_interceptor(channel.clone(), BearerToken::new(TOKEN)?);

    let health = client.health(pb::HealthRequest {}).await?.into_inner();
    assert_eq!((health.hidden_size, health.max_context, health.serving), (H, 64, true));

    // Three chunks of one session; the last starts beyond what the cloud holds.
    let s = SessionId::parse("s-1")?;
    let values: Vec<f32> = (0..4 * H).map(|i| i as f32 * 0.25).collect();
    let chunks = vec![
        encode_upload(&s, 0, H, Encoding::F16, &values[..2 * H as usize]),
        encode_upload(&s, 2, H, Encoding::Int8, &values[2 * H as usize..]),
        encode_upload(&s, 9, H, Encoding::F32, &values[..H as usize]),
    ];
    let mut acks = client.upload(tokio_stream::iter(chunks)).await?.into_inner();
    let mut got = Vec::new();
    while let Some(ack) = acks.message().await? {
        got.push((ack.persisted, ack.missing_from));
    }
    assert_eq!(got, [(2, None), (4, None), (4, Some(4))]);

    // Trace context set on one request reaches the server.
    let parent = TraceParent { trace_id: [0xab; 16], parent_id: [0xcd; 8], flags: 1, state: None };
    let mut req = Request::new(next_token_request(&s, 3, Sampling::default(), 0.5, 2));
    trace::inject(req.metadata_mut(), &parent);
    let reply = client.next_token(req).await?.into_inner();
    assert_eq!((reply.token, reply.persisted, reply.top_k.len()), (42, 4, 2));

    let status = client
        .next_token(next_token_request(&s, 4, Sampling::default(), 0.5, 0))
        .await
        .expect_err("position 4 was never uploaded");
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());

    // A malformed chunk ends the upload stream with the validation status.
    let mut bad = encode_upload(&s, 4, H, Encoding::F32, &values[..H as usize]);
    bad.hidden_size = H + 1;
    let mut acks = client.upload(tokio_stream::iter(vec![bad])).await?.into_inner();
    let status = acks.message().await.expect_err("wrong hidden size");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("does not match the model's hidden size 4"));

    // A server stream of generated tokens, and a refused request as its status.
    let request = generate_request(vec![3, 4, 5], 2, Sampling::default(), 1, vec![]);
    let tokens: Vec<u32> = client
        .generate(request)
        .await?
        .into_inner()
        .map(|t| t.map(|t| t.token))
        .collect::<Result<_, _>>()
        .await?;
    assert_eq!(tokens, [5, 4]);
    let request = generate_request(vec![3, 77], 2, Sampling::default(), 1, vec![]);
    let status = client.generate(request).await.expect_err("token 77 is not in the vocabulary");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());

    let reply = client.end_session(pb::EndSessionRequest { session_id: "s-1".into() }).await?;
    assert!(reply.into_inner().existed);

    // Without the bearer token the server refuses the call.
    let mut anonymous = CloudServiceClient::new(channel);
    let status = anonymous
        .end_session(pb::EndSessionRequest { session_id: "s-1".into() })
        .await
        .expect_err("no credentials");
    assert_eq!(status.code(), Code::Unauthenticated);

    let _ = stop.send(());
    server.await??;
    Ok(())
}

#[tokio::test]
async fn generated_client_and_server_talk_over_a_real_socket() -> anyhow::Result<()> {
    let traces = Arc::new(Mutex::new(Vec::new()));
    tokio::time::timeout(Duration::from_secs(20), conversation(Arc::clone(&traces))).await??;
    let traces = traces.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let parent = TraceParent { trace_id: [0xab; 16], parent_id: [0xcd; 8], flags: 1, state: None };
    assert_eq!(traces.iter().filter(|t| t.as_ref() == Some(&parent)).count(), 1, "{traces:?}");
    Ok(())
}
