//! `propagate` catch-up on a real worker process: over gRPC it answers exactly as the
//! in-process cloud with the same catch-up does, counts what it propagated, refuses malformed
//! edge answers, and a worker asked to propagate with a bundle that cannot stops saying why.

mod common;
mod serving_support;

use collm_protocol::outgoing::{encode_upload, next_token_request};
use collm_protocol::{BearerToken, CloudServiceClient, Encoding, Sampling, SessionId, pb};
use common::{field, generate_json, path_str, tiny_bundle};
use serving_support::*;
use tokio_stream::StreamExt;
use tonic::Code;

/// A θ at the median confidence of the tiny model's exits, which mixes edge and cloud tokens.
fn mixing_threshold(bundle: &std::path::Path) -> String {
    let standalone = generate_json(bundle, &["--mode", "standalone", "--max-tokens", "24"]);
    let mut c: Vec<f64> =
        field(&standalone, "confidences").iter().filter_map(|c| c.as_f64()).collect();
    c.sort_by(f64::total_cmp);
    format!("{}", c[c.len() / 2])
}

/// A worker on the tiny bundle with `extra` flags.
fn start(bundle: &std::path::Path, tokens: &std::path::Path, extra: &[&str]) -> ServingWorker {
    let mut args = vec!["--bundle", path_str(bundle), "--tokens", path_str(tokens)];
    args.extend(["--listen", "127.0.0.1:0"]);
    args.extend_from_slice(extra);
    ServingWorker::start(&args)
}

#[test]
fn propagate_over_grpc_equals_the_in_process_propagate_cloud_and_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let tokens = tokens_file(dir.path());
    let worker =
        start(&bundle, &tokens, &["--http-listen", "127.0.0.1:0", "--catch-up", "propagate"]);
    let threshold = mixing_threshold(&bundle);
    let common = [
        "--threshold",
        &threshold,
        "--encoding",
        "f16",
        "--seed",
        "11",
        "--max-tokens",
        "32",
        "--temperature",
        "0.8",
    ];
    let mut local_args = common.to_vec();
    local_args.extend(["--catch-up", "propagate"]);
    let local = generate_json(&bundle, &local_args);
    let url = worker.url();
    let mut remote_args = common.to_vec();
    remote_args.extend(["--cloud", &url, "--token", "tok-a"]);
    let remote = generate_json(&bundle, &remote_args);

    assert_eq!(field(&local, "tokens"), field(&remote, "tokens"), "gRPC changed the answer");
    assert_eq!(field(&local, "origins"), field(&remote, "origins"));
    let origins = field(&remote, "origins");
    let edge = origins.iter().filter(|o| *o == "edge").count();
    assert!(edge > 0 && edge < origins.len(), "θ {threshold} should mix sources: {origins:?}");
    // Every edge answer followed by a cloud answer was propagated, not computed.
    let page = worker.http_get("/metrics").1;
    let propagated = sample(&page, "collm_cloud_positions_propagated_total");
    assert!(propagated >= 1.0, "nothing propagated:\n{page}");
    assert!(propagated <= edge as f64, "{propagated} propagated but the edge answered {edge}");
}

async fn malformed_edge_answers(url: String) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    let mut a = CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-a")?);
    let hidden = a.health(pb::HealthRequest {}).await?.into_inner().hidden_size;
    let rows: Vec<f32> = (0..6 * hidden).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let s = SessionId::parse("ranges")?;
    let chunk = encode_upload(&s, 0, hidden, Encoding::F16, &rows);
    let acks: Vec<_> = a.upload(tokio_stream::iter([chunk])).await?.into_inner().collect().await;
    assert!(acks.iter().all(Result::is_ok), "{acks:?}");
    let ask = |ranges: Vec<u64>| {
        let mut req = next_token_request(&s, 5, Sampling::default(), 0.5, 0);
        req.edge_answered = ranges;
        req
    };
    for (ranges, needle) in
        [(vec![1, 3, 2], "pairs"), (vec![3, 1], "empty"), (vec![1, 3, 2, 4], "increase")]
    {
        let err = a.next_token(ask(ranges.clone())).await.expect_err("malformed");
        assert_eq!(err.code(), Code::InvalidArgument, "{ranges:?}: {err:?}");
        assert!(err.message().contains(needle), "{ranges:?}: {}", err.message());
    }
    // The session is intact: well-formed ranges are answered.
    a.next_token(ask(vec![1, 3])).await?;
    Ok(())
}

#[test]
fn malformed_edge_answers_are_invalid_argument_and_the_session_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let tokens = tokens_file(dir.path());
    let worker = start(&bundle, &tokens, &["--catch-up", "propagate"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(malformed_edge_answers(worker.url())).expect("checks hold");
}

#[test]
fn a_propagate_worker_without_the_graph_or_with_an_unknown_mode_stops_saying_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let tokens = tokens_file(dir.path());
    // A bundle exported before the propagation graph existed.
    let manifest_path = bundle.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("json");
    manifest.as_object_mut().expect("object").remove("cloud_kv");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).expect("json")).expect("write");
    let base =
        ["--bundle", path_str(&bundle), "--tokens", path_str(&tokens), "--listen", "127.0.0.1:0"];
    let mut propagate = base.to_vec();
    propagate.extend(["--catch-up", "propagate"]);
    let err = ServingWorker::try_start(&propagate, false).err().expect("refused");
    assert!(err.contains("cloud_kv.onnx") && err.contains("exactly"), "{err}");
    // The operator's cloud.json asks for it the same way.
    let config = dir.path().join("cloud.json");
    let json = serde_json::json!({"format": 1, "bundle": {"dir": bundle}, "catch_up": "propagate"});
    std::fs::write(&config, json.to_string()).expect("config");
    let from_config =
        ["--config", path_str(&config), "--tokens", path_str(&tokens), "--listen", "127.0.0.1:0"];
    let err = ServingWorker::try_start(&from_config, false).err().expect("refused");
    assert!(err.contains("cloud_kv.onnx"), "{err}");
    let mut unknown = base.to_vec();
    unknown.extend(["--catch-up", "sometimes"]);
    let err = ServingWorker::try_start(&unknown, false).err().expect("refused");
    assert!(err.contains("expected exact or propagate"), "{err}");
    // Exact catch-up needs no graph: the old bundle still serves.
    ServingWorker::start(&base);
}
