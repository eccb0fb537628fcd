//! `cloud-worker --config cloud.json` alone starts a worker as the operator configures it: the
//! bundle, ports, edge token (a bare Secret value), TLS and context quotas all come from the
//! file; flags given as well win over it; a missing, malformed or mismatched file stops the
//! worker with a message naming the problem. Real worker processes.

mod common;
mod serving_support;

use std::path::Path;

use collm_protocol::outgoing::encode_upload;
use collm_protocol::{BearerToken, CloudServiceClient, Encoding, SessionId, pb};
use collm_testkit::TlsFiles;
use common::{path_str, tiny_bundle};
use serving_support::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// The operator's `cloud.json` for the tiny bundle (split after layer 2), with every port 0.
fn cloud_json(bundle: &Path, token_file: &Path, tls: &TlsFiles, split_layer: u32) -> String {
    serde_json::json!({
        "format": 1,
        "model": "tiny",
        "bundle": { "dir": bundle },
        "split_layer": split_layer,
        "grpc_port": 0,
        "http_port": 0,
        "catch_up": "exact",
        "context": {
            "key_prefix": "collm:test:tiny:",
            "ttl_seconds": 600,
            "max_positions_per_session": 3,
            "max_sessions_per_client": 1
        },
        "edge_token_file": token_file,
        "tls_cert_file": tls.server_cert,
        "tls_key_file": tls.server_key,
        "a_field_this_worker_does_not_know": [1, 2, 3]
    })
    .to_string()
}

/// Uploads `rows` positions to each session in turn; the status of each upload.
fn upload_sessions(
    port: u16,
    ca: &Path,
    sessions: &[&str],
    rows: u32,
) -> Vec<Result<u64, tonic::Status>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://localhost:{port}"))?
            .tls_config(tls)?
            .connect()
            .await?;
        let mut c =
            CloudServiceClient::with_interceptor(channel, BearerToken::new("the-edge-secret")?);
        let hidden = c.health(pb::HealthRequest {}).await?.into_inner().hidden_size;
        let values: Vec<f32> = (0..rows * hidden).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut out = vec![];
        for s in sessions {
            let chunk = encode_upload(&SessionId::parse(s)?, 0, hidden, Encoding::F16, &values);
            let acks: Vec<_> =
                c.upload(tokio_stream::iter([chunk])).await?.into_inner().collect().await;
            out.push(acks.into_iter().next().expect("one ack or status").map(|a| a.persisted));
        }
        anyhow::Ok(out)
    })
    .expect("TLS client with the edge token is served")
}

#[test]
fn a_config_file_alone_configures_the_worker_and_flags_override_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let tls = TlsFiles::generate(&pki);
    let token = dir.path().join("token");
    std::fs::write(&token, "the-edge-secret").expect("token file");
    let config = dir.path().join("cloud.json");
    std::fs::write(&config, cloud_json(&bundle, &token, &tls, 2)).expect("config");

    let worker = ServingWorker::try_start(&["--config", path_str(&config)], true)
        .unwrap_or_else(|e| panic!("--config alone: {e}"));
    assert!(
        worker.grpc.ip().is_unspecified(),
        "grpc_port listens on every interface: {}",
        worker.grpc
    );
    assert_eq!(worker.http_get("/readyz").0, 200);
    let refused = upload_sessions(worker.grpc.port(), &tls.ca_cert, &["a", "b"], 4);
    let status = refused[0].as_ref().expect_err("4 positions exceed the configured 3");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("limit of 3 positions"), "{}", status.message());
    let within = upload_sessions(worker.grpc.port(), &tls.ca_cert, &["c", "d"], 2);
    assert_eq!(within[0].as_ref().ok(), Some(&2));
    let status = within[1].as_ref().expect_err("one session per client");
    assert!(status.message().contains("the limit is 1"), "{}", status.message());
    drop(worker);

    let worker = ServingWorker::try_start(
        &[
            "--config",
            path_str(&config),
            "--positions-per-session",
            "8",
            "--sessions-per-client",
            "4",
            "--listen",
            "127.0.0.1:0",
        ],
        true,
    )
    .unwrap_or_else(|e| panic!("--config with flags: {e}"));
    assert!(worker.grpc.ip().is_loopback(), "--listen wins over grpc_port: {}", worker.grpc);
    let accepted = upload_sessions(worker.grpc.port(), &tls.ca_cert, &["a", "b"], 4);
    assert!(accepted.iter().all(|r| r.as_ref().ok() == Some(&4)), "{accepted:?}");
}

#[test]
fn a_missing_malformed_or_mismatched_config_stops_the_worker_saying_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let tls = TlsFiles::generate(&pki);
    let token = dir.path().join("token");
    std::fs::write(&token, "the-edge-secret").expect("token file");
    let fails = |text: Option<&str>| {
        let config = dir.path().join("cloud.json");
        let _ = std::fs::remove_file(&config);
        if let Some(text) = text {
            std::fs::write(&config, text).expect("config");
        }
        match ServingWorker::try_start(&["--config", path_str(&config)], false) {
            Ok(_) => panic!("{text:?} was served"),
            Err(e) => e,
        }
    };
    let e = fails(None);
    assert!(e.contains("cannot read config file") && e.contains("cloud.json"), "{e}");
    let e = fails(Some("{\"format\": 1, \"grpc_port\": "));
    assert!(e.contains("cloud.json") && e.contains("EOF"), "{e}");
    let e = fails(Some("{\"format\": 1}"));
    assert!(e.contains("no bundle"), "{e}");
    let e = fails(Some(&cloud_json(&bundle, &token, &tls, 5)));
    assert!(e.contains("split_layer 5") && e.contains("after layer 2"), "{e}");
}

#[test]
fn logs_are_json_lines_when_asked_and_an_unknown_format_stops_the_worker() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let tokens = tokens_file(dir.path());
    let worker = |format: &str| {
        Command::new(env!("CARGO_BIN_EXE_cloud-worker"))
            .args(["--bundle", path_str(&bundle), "--tokens", path_str(&tokens)])
            .args(["--listen", "127.0.0.1:0"])
            .env("COLLM_LOG_FORMAT", format)
            .env("RUST_LOG", "info,ort=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts")
    };
    let mut child = worker("json");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut starting = None;
    for line in stderr.lines().map_while(Result::ok).take(20) {
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if event["fields"]["message"] == "starting" {
            starting = Some(event);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let starting = starting.expect("the worker logs that it is starting");
    assert_eq!(starting["level"], "INFO", "{starting}");
    assert_eq!(starting["fields"]["catch_up"], "exact", "{starting}");

    let out = worker("yaml").wait_with_output().expect("exits");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid COLLM_LOG_FORMAT \"yaml\""), "{err}");
}
