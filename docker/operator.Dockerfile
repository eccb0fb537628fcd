# syntax=docker/dockerfile:1.7
# The collm-operator image. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t collm/operator:0.1.0 .
#
# The runtime stage holds the binary, CA certificates and nothing else to write to: the chart
# runs it as UID 65532 with a read-only root filesystem and all capabilities dropped.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

# Where the binary comes from. BINARIES=source (the default) compiles it in this build;
# BINARIES=prebuilt copies it from the build context `bin` (`--build-context bin=DIR`), for a
# builder that has just compiled the workspace: it saves compiling it twice. The binary in DIR
# must come from the same checkout, built for the image's architecture against a glibc no newer
# than the Debian release's; the stage runs it once, so one that cannot start here fails the
# build rather than the pod.
ARG BINARIES=source

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS source
ARG TARGETARCH
WORKDIR /src
# The whole workspace: cargo needs every member's manifest, and Cargo.lock pins the build.
COPY . .
# The target dir is a cache mount (one per architecture, shared by the three images), so the
# binary is copied out within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=collm-cargo-target-${TARGETARCH},target=/src/target,sharing=locked \
    cargo build --release --locked --bin collm-operator \
    && install -D -m 0755 target/release/collm-operator /out/collm-operator

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS prebuilt
COPY --from=bin --chmod=0755 collm-operator /out/collm-operator
RUN /out/collm-operator --version

FROM ${BINARIES} AS builder

FROM debian:${DEBIAN_RELEASE}-slim
LABEL org.opencontainers.image.title="collm-operator" \
      org.opencontainers.image.description="Kubernetes operator reconciling CollabModel resources into edge and cloud workloads" \
      org.opencontainers.image.licenses="Apache-2.0"
# OTLP over HTTPS needs a trust store; the API server's CA comes from the service account mount.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/collm-operator /usr/local/bin/collm-operator
# Numeric, so kubelet can check runAsNonRoot without a passwd entry.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/collm-operator"]
