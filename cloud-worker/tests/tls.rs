//! gRPC over TLS (rustls): with `--tls-cert/--tls-key` a plaintext client is refused and a client
//! trusting the CA is served; with `--tls-client-ca` (mutual TLS) a client must also present a
//! certificate signed by that CA. Certificates come from a throwaway CA made in the test.

mod common;
mod serving_support;

use std::path::Path;

use collm_protocol::{BearerToken, CloudServiceClient, pb};
use collm_testkit::TlsFiles;
use common::{path_str, tiny_bundle};
use serving_support::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn pem(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Calls `Health` over `endpoint`; the error (connect or call) as text when refused.
fn health(endpoint: Endpoint) -> Result<pb::HealthReply, String> {
    runtime().block_on(async {
        let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
        let mut client = CloudServiceClient::with_interceptor(
            channel,
            BearerToken::new("tok-a").map_err(|e| e.to_string())?,
        );
        client.health(pb::HealthRequest {}).await.map(|r| r.into_inner()).map_err(|s| s.to_string())
    })
}

/// A fresh throwaway CA with server and client certificates, in `dir/name`.
fn pki(dir: &Path, name: &str) -> TlsFiles {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("pki dir");
    TlsFiles::generate(&dir)
}

fn endpoint(url: String, tls: Option<ClientTlsConfig>) -> Endpoint {
    let endpoint = Endpoint::from_shared(url).expect("url");
    match tls {
        Some(tls) => endpoint.tls_config(tls).expect("client TLS config"),
        None => endpoint,
    }
}

fn trusting(ca: &TlsFiles) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem(&ca.ca_cert)))
        .domain_name("localhost")
}

fn worker(bundle: &Path, dir: &Path, tls: &[&str]) -> ServingWorker {
    let tokens = tokens_file(dir);
    let mut args = vec!["--bundle", path_str(bundle), "--tokens", path_str(&tokens)];
    args.extend(["--listen", "127.0.0.1:0"]);
    args.extend_from_slice(tls);
    ServingWorker::start(&args)
}

#[test]
fn tls_refuses_plaintext_and_mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let certs = pki(dir.path(), "pki");
    let other = pki(dir.path(), "other-pki");
    let (cert, key) = (path_str(&certs.server_cert), path_str(&certs.server_key));

    let tls = worker(&bundle, dir.path(), &["--tls-cert", cert, "--tls-key", key]);
    let port = tls.grpc.port();
    let https = format!("https://localhost:{port}");
    let plain = health(endpoint(format!("http://127.0.0.1:{port}"), None));
    assert!(plain.is_err(), "a plaintext client was served: {plain:?}");
    let reply = health(endpoint(https.clone(), Some(trusting(&certs)))).expect("TLS client served");
    assert!(reply.serving);
    let untrusting = health(endpoint(https.clone(), Some(trusting(&other))));
    assert!(untrusting.is_err(), "a client that does not trust the CA connected: {untrusting:?}");
    drop(tls);

    let ca = path_str(&certs.ca_cert);
    let mtls =
        worker(&bundle, dir.path(), &["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca]);
    let https = format!("https://localhost:{}", mtls.grpc.port());
    let anonymous = health(endpoint(https.clone(), Some(trusting(&certs))));
    assert!(anonymous.is_err(), "a client without a certificate was served: {anonymous:?}");
    let identity =
        |files: &TlsFiles| Identity::from_pem(pem(&files.client_cert), pem(&files.client_key));
    let foreign =
        health(endpoint(https.clone(), Some(trusting(&certs).identity(identity(&other)))));
    assert!(foreign.is_err(), "a certificate from another CA was accepted: {foreign:?}");
    let reply = health(endpoint(https, Some(trusting(&certs).identity(identity(&certs)))))
        .expect("a client with a certificate from the CA is served");
    assert!(reply.serving);
}

#[test]
fn unusable_tls_settings_stop_the_worker_with_the_file_at_fault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let certs = pki(dir.path(), "pki");
    let tokens = tokens_file(dir.path());
    let base =
        ["--bundle", path_str(&bundle), "--tokens", path_str(&tokens), "--listen", "127.0.0.1:0"];
    let start = |tls: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(tls);
        ServingWorker::try_start(&args, false).err().unwrap_or_else(|| panic!("{tls:?} served"))
    };
    let cert = path_str(&certs.server_cert);
    let err = start(&["--tls-cert", cert, "--tls-key", cert]);
    assert!(err.contains("--tls-key") && err.contains("server.crt"), "{err}");
    let err = start(&["--tls-cert", cert, "--tls-key", "/nonexistent/tls.key"]);
    assert!(err.contains("/nonexistent/tls.key"), "{err}");
    let err = start(&["--tls-client-ca", path_str(&certs.ca_cert)]);
    assert!(err.contains("--tls-client-ca needs --tls-cert"), "{err}");
}
