//! The cloud-only baseline: a worker started with `--full` streams, over `Generate`, exactly the
//! tokens (and probabilities) the whole model gives in one process (`collm generate --mode
//! full`) for the same prompt, sampling and seed; bad requests are INVALID_ARGUMENT and a worker
//! serving only the cloud partition says so with FAILED_PRECONDITION. Real worker processes.

mod common;
mod serving_support;

use collm_protocol::generate::generate_request;
use collm_protocol::{BearerToken, CloudServiceClient, Sampling, pb};
use common::{field, generate_json, path_str, tiny_bundle};
use serving_support::*;
use tokio_stream::StreamExt;
use tonic::Code;

type Client = CloudServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

async fn client(url: String) -> anyhow::Result<Client> {
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    Ok(CloudServiceClient::with_interceptor(channel, BearerToken::new("tok-a")?))
}

/// The streamed tokens and probabilities, or the status that ended the call.
async fn generate(
    client: &mut Client,
    req: pb::GenerateRequest,
) -> Result<Vec<(u32, f32)>, tonic::Status> {
    let mut stream = client.generate(req).await?.into_inner();
    let mut out = vec![];
    while let Some(token) = stream.next().await {
        let token = token?;
        out.push((token.token, token.prob));
    }
    Ok(out)
}

fn ids(v: &[serde_json::Value]) -> Vec<u32> {
    v.iter().map(|x| x.as_u64().expect("token id") as u32).collect()
}

#[test]
fn generate_streams_the_in_process_full_model_tokens_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = tiny_bundle(dir.path());
    let tokens = tokens_file(dir.path());
    let worker = |extra: &[&str]| {
        let mut args = vec!["--bundle", path_str(&bundle), "--tokens", path_str(&tokens)];
        args.extend(["--listen", "127.0.0.1:0"]);
        args.extend_from_slice(extra);
        ServingWorker::start(&args)
    };
    let full = worker(&["--full"]);
    let split_only = worker(&[]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    let vocab = manifest["config"]["vocab_size"].as_u64().expect("vocab_size") as u32;

    let cases = [("greedy", "0", "0"), ("sampled", "0.9", "11")];
    let references: Vec<_> = cases
        .iter()
        .map(|(_, temperature, seed)| {
            let args = ["--mode", "full", "--max-tokens", "20", "--temperature", temperature];
            let mut args = args.to_vec();
            args.extend(["--seed", seed]);
            generate_json(&bundle, &args)
        })
        .collect();

    assert_ne!(
        field(&references[0], "tokens"),
        field(&references[1], "tokens"),
        "the sampled case must exercise the seed, not repeat the greedy tokens"
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        let mut c = client(full.url()).await?;
        let max_context = c.health(pb::HealthRequest {}).await?.into_inner().max_context;
        for ((name, temperature, seed), reference) in cases.iter().zip(&references) {
            let prompt = ids(&field(reference, "prompt_ids"));
            let sampling = Sampling { temperature: temperature.parse()?, ..Sampling::default() };
            let req = generate_request(prompt, 20, sampling, seed.parse()?, vec![]);
            let streamed = generate(&mut c, req).await?;
            let expected = ids(&field(reference, "tokens"));
            assert!(!expected.is_empty());
            let tokens: Vec<u32> = streamed.iter().map(|(t, _)| *t).collect();
            assert_eq!(
                tokens, expected,
                "{name}: streamed tokens differ from the in-process model"
            );
            let probs: Vec<f32> = streamed.iter().map(|(_, p)| *p).collect();
            let expected: Vec<f32> = field(reference, "confidences")
                .iter()
                .map(|p| p.as_f64().expect("confidence") as f32)
                .collect();
            assert_eq!(probs, expected, "{name}: probabilities differ");
        }

        let prompt = ids(&field(&references[0], "prompt_ids"));
        let bad = [
            (vec![], "empty"),
            (vec![1; max_context as usize], "leaves no room"),
            (vec![1, vocab], "not a token of this model"),
        ];
        for (ids, why) in bad {
            let err = generate(&mut c, generate_request(ids, 4, Sampling::default(), 0, vec![]))
                .await
                .expect_err(why);
            assert_eq!(err.code(), Code::InvalidArgument, "{why}: {}", err.message());
            assert!(err.message().contains(why), "{:?} lacks {why:?}", err.message());
        }
        let stop_beyond =
            generate_request(prompt.clone(), 4, Sampling::default(), 0, vec![vocab + 5]);
        let err = generate(&mut c, stop_beyond).await.expect_err("unknown stop id");
        assert_eq!(err.code(), Code::InvalidArgument);

        let mut split = client(split_only.url()).await?;
        let err = generate(&mut split, generate_request(prompt, 4, Sampling::default(), 0, vec![]))
            .await
            .expect_err("split-only worker");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("--full"), "{}", err.message());
        anyhow::Ok(())
    })
    .expect("generate over gRPC");
}
