# syntax=docker/dockerfile:1.7
# The edge-agent image: the edge partition and its early exits behind an OpenAI-compatible HTTP
# API, with ONNX Runtime loaded from ORT_DYLIB_PATH. Build from the repository root:
#   docker build -f docker/edge-agent.Dockerfile -t collm/edge-agent:0.1.0 .
#
# Pods mount their config at /etc/collm, the bundle at /var/lib/collm/bundle (an emptyDir when the
# agent downloads it) and an emptyDir at /tmp; nothing else is written, so the root filesystem
# can be read-only. Images build for amd64 and arm64 (the ONNX Runtime hashes cover both).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie
# Any Python that pip-installs the wheel: only its shared library is kept. 3.13 is the
# Python of the Debian release.
ARG PYTHON_VERSION=3.13

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
    cargo build --release --locked --bin edge-agent \
    && install -D -m 0755 target/release/edge-agent /out/edge-agent

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS prebuilt
COPY --from=bin --chmod=0755 edge-agent /out/edge-agent
RUN /out/edge-agent --version

FROM ${BINARIES} AS builder

# Only the shared library of the pinned wheel is kept; the Python bindings are not.
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS onnxruntime
ARG ORT_VERSION=1.32.0
COPY docker/onnxruntime.requirements.txt /tmp/onnxruntime.requirements.txt
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        --no-deps --only-binary=:all: --require-hashes \
        --target /tmp/ort -r /tmp/onnxruntime.requirements.txt \
    && install -D -m 0644 "/tmp/ort/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" \
        "/out/libonnxruntime.so.${ORT_VERSION}"

FROM debian:${DEBIAN_RELEASE}-slim
ARG ORT_VERSION=1.32.0
LABEL org.opencontainers.image.title="collm-edge-agent" \
      org.opencontainers.image.description="Edge partition of a split language model with early exits, behind an OpenAI-compatible API" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=onnxruntime /out/ /opt/onnxruntime/lib/
COPY --from=builder /out/edge-agent /usr/local/bin/edge-agent
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    TMPDIR=/tmp
# Numeric and equal to the UID the operator renders into pod specs (runAsUser 65532).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/edge-agent"]
