//! The edge agent reaches a cloud worker over mutual TLS: with the right CA and client
//! certificate it collaborates (and answers as over plain gRPC); with a certificate the worker
//! does not trust it cannot, and its answers say they are degraded.

mod common;

use collm_testkit::TlsFiles;
use common::*;
use serde_json::json;

#[test]
fn mutual_tls_between_edge_and_cloud() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let certs = TlsFiles::generate(dir.path());
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let w = worker(
        &bundle,
        dir.path(),
        &[
            "--tls-cert",
            &path(&certs.server_cert),
            "--tls-key",
            &path(&certs.server_key),
            "--tls-client-ca",
            &path(&certs.ca_cert),
        ],
    );
    let url = w.addr.replace("http://", "https://");
    let full = in_process(&bundle, &["--mode", "full", "--max-tokens", "12"]);
    let tls_flags = |cert: &std::path::Path, key: &std::path::Path| {
        vec![
            "--encoding".to_string(),
            "f32".into(),
            "--threshold".into(),
            "1.5".into(),
            "--tls-ca".into(),
            path(&certs.ca_cert),
            "--tls-cert".into(),
            path(cert),
            "--tls-key".into(),
            path(key),
        ]
    };

    let flags = tls_flags(&certs.client_cert, &certs.client_key);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = agent(&bundle, &[&url], &flags);
    let (status, answer) =
        post(&format!("http://{}", a.addr), "/v1/completions", &completion(12, json!({})));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["collm"]["degraded"], false, "{answer}");
    assert_eq!(tokens(&answer), ids(&full, "tokens"));
    drop(a);

    // The server's own certificate is not a client certificate signed for this purpose.
    let other = TlsFiles::generate(&dir.path().join("other").tap());
    let flags = tls_flags(&other.client_cert, &other.client_key);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = agent(&bundle, &[&url], &flags);
    let (status, answer) =
        post(&format!("http://{}", a.addr), "/v1/completions", &completion(4, json!({})));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["collm"]["degraded"], true,
        "an untrusted client must not reach the cloud: {answer}"
    );
}

trait Tap {
    fn tap(self) -> Self;
}

impl Tap for std::path::PathBuf {
    fn tap(self) -> Self {
        std::fs::create_dir_all(&self).expect("mkdir");
        self
    }
}
