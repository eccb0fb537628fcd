//! The example CollabModels shipped with the chart must be accepted as they are: every field
//! they set exists in the CRD's schema with the right type and enum value (the API server
//! rejects unknown fields under kubectl's default strict validation), and the operator renders
//! them. The CEL rules are evaluated by the crd unit tests and, authoritatively, by the e2e
//! suite's API server.

use std::path::{Path, PathBuf};

use collm_operator::CollabModel;
use collm_operator::render::{ClusterRoles, Generated, Images, Settings, render};
use serde_json::Value;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn examples() -> Vec<(String, Value)> {
    let dir = repo_path("charts/collm/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("example is readable");
            let value: Value = serde_yaml::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            (path.file_name().expect("file name").to_string_lossy().into_owned(), value)
        })
        .collect()
}

fn crd_schema() -> Value {
    let text = std::fs::read_to_string(repo_path("crds/collabmodel.yaml")).expect("CRD readable");
    let crd: Value = serde_yaml::from_str(&text).expect("CRD parses");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The structural part of OpenAPI v3 validation the API server applies before CEL: types,
/// enums, required fields, bounds and unknown fields.
fn violations(value: &Value, schema: &Value, at: &str, out: &mut Vec<String>) {
    if value.is_null() && schema["nullable"] == Value::Bool(true) {
        return;
    }
    if let Some(options) = schema["anyOf"].as_array().or(schema["oneOf"].as_array()) {
        let fits = |option: &Value| {
            let mut found = Vec::new();
            violations(value, option, at, &mut found);
            found.is_empty()
        };
        if !options.iter().any(fits) {
            out.push(format!("{at}: matches none of the allowed forms"));
        }
    }
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!("{at}: must be an integer or a string"));
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("{at}: unexpected schema type {other}"),
    };
    if !type_ok {
        out.push(format!("{at}: must be of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {}", Value::Array(allowed.clone())));
    }
    if let (Some(v), Some(min)) = (value.as_f64(), schema["minimum"].as_f64())
        && v < min
    {
        out.push(format!("{at}: {v} is below the minimum {min}"));
    }
    if let (Some(v), Some(max)) = (value.as_f64(), schema["maximum"].as_f64())
        && v > max
    {
        out.push(format!("{at}: {v} is above the maximum {max}"));
    }
    match value {
        Value::Object(fields) => {
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().expect("required names are strings");
                if !fields.contains_key(name) {
                    out.push(format!("{at}.{name}: required"));
                }
            }
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
            for (name, field) in fields {
                let path = format!("{at}.{name}");
                if let Some(field_schema) = schema["properties"].get(name) {
                    violations(field, field_schema, &path, out);
                } else if schema["additionalProperties"].is_object() {
                    violations(field, &schema["additionalProperties"], &path, out);
                } else if !preserve && schema["properties"].is_object() {
                    out.push(format!("{path}: unknown field"));
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, item) in items.iter().enumerate() {
                violations(item, &schema["items"], &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn examples_use_only_fields_and_values_the_crd_defines() {
    let schema = crd_schema();
    for (name, example) in examples() {
        assert_eq!(example["apiVersion"], "collm.dev/v1alpha1", "{name}: apiVersion");
        assert_eq!(example["kind"], "CollabModel", "{name}: kind");
        let mut found = Vec::new();
        violations(&example["spec"], &schema["properties"]["spec"], "spec", &mut found);
        assert!(
            found.is_empty(),
            "{name} would be rejected by the API server:\n  {}",
            found.join("\n  ")
        );
    }
}

#[test]
fn the_validator_reports_what_the_api_server_rejects() {
    let schema = crd_schema();
    let (_, example) = examples().remove(0);
    let mut spec = example["spec"].clone();
    spec["splitLayr"] = Value::from(3);
    spec["mode"] = Value::from("sometimes");
    spec["splitLayer"] = Value::from("twelve");
    let mut found = Vec::new();
    violations(&spec, &schema["properties"]["spec"], "spec", &mut found);
    found.sort();
    assert_eq!(
        found,
        vec![
            r#"spec.mode: "sometimes" is not one of ["standalone","collaborative"]"#,
            r#"spec.splitLayer: must be of type "integer""#,
            "spec.splitLayr: unknown field",
        ]
    );
}

#[test]
fn the_operator_renders_every_example() {
    let settings = Settings {
        images: Images {
            edge_agent: "collm/edge-agent:test".to_string(),
            cloud_worker: "collm/cloud-worker:test".to_string(),
            redis: "redis:test".to_string(),
            pull_policy: None,
        },
        pull_secrets: Vec::new(),
        cluster_roles: ClusterRoles { edge: "edge".to_string(), cloud: "cloud".to_string() },
        operator: None,
    };
    for (name, example) in examples() {
        let mut model: CollabModel = serde_json::from_value(example)
            .unwrap_or_else(|e| panic!("{name}: not a CollabModel: {e}"));
        // As stored by the API server.
        model.metadata.namespace = Some("examples".to_string());
        model.metadata.uid = Some("00000000-0000-4000-8000-000000000000".to_string());
        model.metadata.generation = Some(1);
        if let Err(e) = render(&model, &settings, &Generated::default()) {
            panic!("{name}: the operator cannot render it: {e}");
        }
    }
}
