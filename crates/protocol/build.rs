//! Generates the gRPC types and stubs from `proto/` into OUT_DIR. The .proto files are compiled
//! in pure Rust by `protox`, so no `protoc` needs to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/collm/v1/cloud.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Payloads are handed on (to Redis, to the decoder) without copying.
        .bytes(".collm.v1.UploadChunk.payload")
        .compile_fds(descriptors)?;
    Ok(())
}
