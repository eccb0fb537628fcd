//! The Helm chart ships the CRD in `charts/collm/crds/` (Helm installs that directory verbatim
//! and cannot template it), so the chart holds a copy of `crds/collabmodel.yaml`. These tests
//! fail when the copy or the chart's appVersion (the default image tag) falls behind.

use std::path::Path;

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn chart_crd_is_a_byte_identical_copy_of_the_generated_crd() {
    let generated = repo_file("crds/collabmodel.yaml");
    let chart = repo_file("charts/collm/crds/collabmodel.yaml");
    assert!(
        chart == generated,
        "charts/collm/crds/collabmodel.yaml differs from crds/collabmodel.yaml, so `helm install` \
         would install an outdated CRD; copy it with\n  \
         cp crds/collabmodel.yaml charts/collm/crds/collabmodel.yaml"
    );
}

#[test]
fn chart_app_version_is_the_workspace_version() {
    let chart = repo_file("charts/collm/Chart.yaml");
    let chart: serde_yaml::Value = serde_yaml::from_str(&chart).expect("Chart.yaml parses");
    let app_version = chart["appVersion"].as_str().expect("Chart.yaml has a string appVersion");
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "charts/collm/Chart.yaml appVersion is the default tag of the operator, edge-agent and \
         cloud-worker images, which are built from this workspace: set it to the workspace version"
    );
}
