//! The committed CRD must be exactly what the Rust types generate.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/collabmodel.yaml");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = collm_operator::crd_yaml().expect("CRD serializes");
    assert!(
        committed == generated,
        "crds/collabmodel.yaml is out of date with operator/src/crd.rs; regenerate it with\n  \
         cargo run -p collm-operator --bin crdgen > crds/collabmodel.yaml"
    );
}
