//! The runtime images and the pods the operator renders must agree on the user (a read-only,
//! non-root pod runs as the image's UID) and on the ONNX Runtime build the project pins.

use std::path::Path;

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `RUNTIME_UID` of `render::pod` (the runAsUser of edge and cloud pods) and the chart's
/// operator pod.
const RUNTIME_UID: u32 = 65532;

const DOCKERFILES: [&str; 3] = [
    "docker/operator.Dockerfile",
    "docker/edge-agent.Dockerfile",
    "docker/cloud-worker.Dockerfile",
];

/// The instruction of the last stage (the image that ships) starting with `keyword`.
fn final_stage_instructions<'a>(dockerfile: &'a str, keyword: &str) -> Vec<&'a str> {
    let last_from = dockerfile.rfind("\nFROM ").expect("a FROM line");
    dockerfile[last_from..].lines().filter(|l| l.starts_with(keyword)).collect()
}

#[test]
fn every_image_runs_as_the_uid_the_pods_are_rendered_with() {
    for file in DOCKERFILES {
        let dockerfile = repo_file(file);
        let users = final_stage_instructions(&dockerfile, "USER ");
        assert_eq!(
            users,
            vec![format!("USER {RUNTIME_UID}:{RUNTIME_UID}")],
            "{file}: the shipped stage must end as USER {RUNTIME_UID}:{RUNTIME_UID} (numeric, so \
             kubelet can enforce runAsNonRoot; equal to the pods' runAsUser)"
        );
    }
}

#[test]
fn runtime_images_install_the_onnx_runtime_of_the_artifact_lock() {
    let lock = repo_file("tools/artifacts.lock");
    let pinned = lock
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"onnxruntime"))
        .map(|fields| fields[1].to_string())
        .expect("tools/artifacts.lock pins onnxruntime");

    let requirements = repo_file("docker/onnxruntime.requirements.txt");
    assert!(
        requirements.contains(&format!("onnxruntime=={pinned} ")),
        "docker/onnxruntime.requirements.txt must pin onnxruntime=={pinned} like \
         tools/artifacts.lock (and carry the wheels' sha256 hashes)"
    );
    for file in ["docker/edge-agent.Dockerfile", "docker/cloud-worker.Dockerfile"] {
        let dockerfile = repo_file(file);
        let args: Vec<&str> =
            dockerfile.lines().filter(|l| l.starts_with("ARG ORT_VERSION=")).collect();
        assert!(
            !args.is_empty() && args.iter().all(|l| *l == format!("ARG ORT_VERSION={pinned}")),
            "{file}: every ARG ORT_VERSION must be {pinned} (tools/artifacts.lock), found {args:?}"
        );
        assert_eq!(
            final_stage_instructions(&dockerfile, "ENV ORT_DYLIB_PATH="),
            vec!["ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \\"],
            "{file}: the shipped image must point ORT_DYLIB_PATH at the library it installs"
        );
    }
}

/// The stage section between `FROM ... AS name` and the next `FROM`.
fn stage<'a>(dockerfile: &'a str, name: &str) -> &'a str {
    let header = dockerfile
        .lines()
        .find(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {name}")))
        .unwrap_or_else(|| panic!("a stage named {name}"));
    let start = dockerfile.find(header).expect("header") + header.len();
    let end = dockerfile[start..].find("\nFROM ").map_or(dockerfile.len(), |i| start + i);
    &dockerfile[start..end]
}

/// CI builds the images with BINARIES=prebuilt (the workspace it has just compiled); a user's
/// `docker build` compiles in the source stage. Both must leave the same binary where the
/// shipped stage takes it from.
#[test]
fn the_compiled_and_the_prebuilt_binary_land_where_the_image_takes_it() {
    for file in DOCKERFILES {
        let dockerfile = repo_file(file);
        assert!(dockerfile.contains("\nARG BINARIES=source\n"), "{file}: source is the default");
        assert!(dockerfile.contains("\nFROM ${BINARIES} AS builder\n"), "{file}: builder stage");
        let shipped = final_stage_instructions(&dockerfile, "COPY --from=builder /out/");
        let [copy] = shipped.as_slice() else { panic!("{file}: one binary shipped: {shipped:?}") };
        let out = copy.split_whitespace().nth(2).expect("a source path");
        let binary = out.strip_prefix("/out/").expect("under /out");
        let source = stage(&dockerfile, "source");
        assert!(
            source.contains(&format!("cargo build --release --locked --bin {binary} "))
                && source.contains(&format!("install -D -m 0755 target/release/{binary} {out}\n")),
            "{file}: the source stage must compile and install {out}"
        );
        let prebuilt = stage(&dockerfile, "prebuilt");
        assert!(
            prebuilt.contains(&format!("COPY --from=bin --chmod=0755 {binary} {out}\n"))
                && prebuilt.contains(&format!("RUN {out} --version\n")),
            "{file}: the prebuilt stage must take {binary} from the `bin` context and run it"
        );
    }
}
