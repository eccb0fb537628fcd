//! What users see of the CRD: rules with their messages, columns, names, descriptions.
//! Evaluating the rules is the API server's job; the e2e suite applies invalid manifests to a
//! real control plane and checks each message comes back.

use kube::CustomResourceExt;
use serde_json::Value;

use super::*;

fn version_json() -> Value {
    let crd = serde_json::to_value(CollabModel::crd()).expect("CRD serializes");
    crd["spec"]["versions"][0].clone()
}

fn spec_schema() -> Value {
    version_json()["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

/// The schema node at a path of property names below `spec`.
fn node(path: &[&str]) -> Value {
    path.iter().fold(spec_schema(), |schema, name| schema["properties"][*name].clone())
}

fn rules_at(path: &[&str]) -> Vec<(String, String)> {
    node(path)["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                    (text("rule"), text("message"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_cel_rule_is_in_the_schema_where_it_applies_with_its_message() {
    let expected: &[(&[&str], &str, &str)] = &[
        (&["cloud"], RULE_REPLICAS, "self.minReplicas <= self.maxReplicas"),
        (&["cloud"], RULE_ONE_METRIC, "has(self.customMetric)"),
        (&["threshold"], RULE_THRESHOLD, "self > 0.0 && self <= 1.0"),
        (&["targetAgreement"], RULE_AGREEMENT, "self > 0.0 && self <= 1.0"),
        (&[], RULE_THRESHOLD_XOR_AGREEMENT, "has(self.targetAgreement)"),
        (&[], RULE_EXIT_LAYERS, "l <= self.splitLayer"),
        (&["bundle"], RULE_BUNDLE_ONE_SOURCE, ".filter(x, x).size() == 1"),
        (&["bundle"], RULE_BUNDLE_SHA, "has(self.sha256)"),
        (&[], RULE_EDGE_ONLY_ENDPOINT, "has(self.externalCloudEndpoint)"),
        (&[], RULE_ENDPOINT_XOR_CLOUD, "!self.cloud.enabled"),
        (&[], RULE_CLOUD_NEEDS_REDIS, "has(self.context.redis)"),
        (&["context", "redis"], RULE_REDIS_ONE_SOURCE, ".filter(x, x).size() == 1"),
        (&["cloud", "grpcPort"], RULE_GRPC_PORT, "self != 8081"),
        (&[], RULE_EXTERNAL_NEEDS_TOKEN, "has(self.credentials.edgeTokenSecretRef)"),
        (&["credentials"], RULE_MUTUAL_TLS_NEEDS_TLS, "has(self.tlsSecretRef)"),
    ];
    for (path, message, rule_part) in expected {
        let rules = rules_at(path);
        assert!(
            rules.iter().any(|(rule, msg)| msg == message && rule.contains(rule_part)),
            "spec.{} lacks the rule {rule_part:?} with message {message:?}; has {rules:?}",
            path.join(".")
        );
    }
}

#[test]
fn rule_messages_name_the_fields_a_user_must_fix() {
    assert!(RULE_REPLICAS.contains("minReplicas") && RULE_REPLICAS.contains("maxReplicas"));
    assert!(RULE_EXIT_LAYERS.contains("splitLayer"));
    assert!(RULE_BUNDLE_ONE_SOURCE.contains("url") && RULE_BUNDLE_ONE_SOURCE.contains("pvc"));
    assert!(RULE_EDGE_ONLY_ENDPOINT.contains("externalCloudEndpoint"));
    assert!(RULE_THRESHOLD.contains("threshold"));
}

#[test]
fn printer_columns_show_mode_threshold_edge_cloud_and_age() {
    let columns = version_json()["additionalPrinterColumns"].clone();
    let by_name = |name: &str| {
        columns
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .map(|c| c["jsonPath"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(by_name("Mode").as_deref(), Some(".spec.mode"));
    assert_eq!(by_name("Threshold").as_deref(), Some(".spec.threshold"));
    assert_eq!(by_name("Edge Ready").as_deref(), Some(".status.readyEdgeNodes"));
    assert_eq!(by_name("Cloud").as_deref(), Some(".status.cloudReplicas"));
    assert_eq!(by_name("Age").as_deref(), Some(".metadata.creationTimestamp"));
}

#[test]
fn names_scope_and_status_subresource() {
    let crd = CollabModel::crd();
    assert_eq!(crd.spec.group, GROUP);
    assert_eq!(crd.spec.scope, "Namespaced");
    let short = crd.spec.names.short_names.clone().unwrap_or_default();
    assert!(short.contains(&"collab".to_string()));
    // Built-in short names users already type.
    for taken in ["cm", "co", "cs", "ds", "deploy", "hpa", "pdb", "svc", "sts"] {
        assert!(!short.iter().any(|s| s == taken), "{taken} clashes with a built-in");
    }
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
}

/// Every property users can set has a description for `kubectl explain`.
#[test]
fn every_spec_field_is_described() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if schema.is_null() {
            return;
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                if prop["description"].as_str().is_none_or(str::is_empty) {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        walk(path, &schema["items"], missing);
    }
    let mut missing = Vec::new();
    walk("spec", &spec_schema(), &mut missing);
    assert!(missing.is_empty(), "fields without description: {missing:?}");
}

#[test]
fn conditions_merge_by_type_under_server_side_apply() {
    let status = version_json()["schema"]["openAPIV3Schema"]["properties"]["status"].clone();
    let conditions = &status["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
}

#[test]
fn defaults_are_in_the_schema_so_kubectl_get_shows_them() {
    assert_eq!(node(&["mode"])["default"], "collaborative");
    assert_eq!(node(&["encoding"])["default"], "f32");
    assert_eq!(node(&["catchUp"])["default"], "exact");
    assert_eq!(node(&["cloud", "minReplicas"])["default"], 1);
}

/// Client-side CEL evaluation (kube-cel) of the rules: a fast check of the rule logic. The API
/// server's evaluation in the e2e suite remains the authority.
mod cel {
    use super::*;

    fn rejection(model: &CollabModel) -> Vec<String> {
        match model.validate_cel() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
        }
    }

    fn assert_rejected_with(mutate: impl FnOnce(&mut CollabModelSpec), message: &str) {
        let mut model = CollabModel::fixture();
        mutate(&mut model.spec);
        assert_eq!(rejection(&model), vec![message.to_string()]);
    }

    #[test]
    fn a_sensible_model_passes_every_rule() {
        assert_eq!(rejection(&CollabModel::fixture()), Vec::<String>::new());
    }

    #[test]
    fn min_replicas_above_max_is_rejected() {
        assert_rejected_with(
            |s| {
                s.cloud.min_replicas = 5;
                s.cloud.max_replicas = 2;
            },
            RULE_REPLICAS,
        );
    }

    #[test]
    fn a_grpc_port_on_the_workers_http_port_is_rejected() {
        assert!(RULE_GRPC_PORT.contains(&CLOUD_HTTP_PORT.to_string()));
        assert_rejected_with(|s| s.cloud.grpc_port = CLOUD_HTTP_PORT, RULE_GRPC_PORT);
    }

    #[test]
    fn threshold_outside_zero_one_is_rejected() {
        for bad in [0.0, -0.5, 1.5] {
            assert_rejected_with(|s| s.threshold = Some(bad), RULE_THRESHOLD);
        }
        let mut model = CollabModel::fixture();
        model.spec.threshold = Some(1.0);
        assert!(rejection(&model).is_empty(), "1 is a valid threshold");
    }

    #[test]
    fn exit_layer_beyond_the_split_is_rejected() {
        assert_rejected_with(|s| s.exit_layers = vec![6, 13], RULE_EXIT_LAYERS);
        assert_rejected_with(|s| s.exit_layers = vec![0], RULE_EXIT_LAYERS);
    }

    #[test]
    fn bundle_needs_exactly_one_source() {
        assert_rejected_with(|s| s.bundle = BundleSource::default(), RULE_BUNDLE_ONE_SOURCE);
        assert_rejected_with(
            |s| {
                s.bundle.pvc =
                    Some(PvcBundle { claim_name: "models".to_string(), path: String::new() })
            },
            RULE_BUNDLE_ONE_SOURCE,
        );
        assert_rejected_with(|s| s.bundle.sha256 = None, RULE_BUNDLE_SHA);
    }

    #[test]
    fn collaborative_edge_only_model_needs_an_endpoint() {
        assert_rejected_with(
            |s| {
                s.cloud.enabled = false;
                s.context = None;
            },
            RULE_EDGE_ONLY_ENDPOINT,
        );
        let mut standalone = CollabModel::fixture();
        standalone.spec.cloud.enabled = false;
        standalone.spec.context = None;
        standalone.spec.mode = Mode::Standalone;
        assert!(rejection(&standalone).is_empty(), "a standalone edge needs no cloud");
    }

    fn token_secret() -> Credentials {
        Credentials {
            edge_token_secret_ref: Some(SecretKeyRef { name: "t".into(), key: "token".into() }),
            ..Credentials::default()
        }
    }

    #[test]
    fn external_endpoint_with_a_local_cloud_is_rejected() {
        assert_rejected_with(
            |s| {
                s.external_cloud_endpoint = Some("cloud.example:443".to_string());
                s.credentials = Some(token_secret());
            },
            RULE_ENDPOINT_XOR_CLOUD,
        );
    }

    #[test]
    fn an_external_cloud_needs_a_token_secret_and_mutual_tls_needs_tls() {
        assert_rejected_with(
            |s| {
                s.cloud.enabled = false;
                s.context = None;
                s.external_cloud_endpoint = Some("cloud.example:443".to_string());
            },
            RULE_EXTERNAL_NEEDS_TOKEN,
        );
        let mut edge_only = CollabModel::fixture();
        edge_only.spec.cloud.enabled = false;
        edge_only.spec.context = None;
        edge_only.spec.external_cloud_endpoint = Some("cloud.example:443".to_string());
        edge_only.spec.credentials = Some(token_secret());
        assert!(rejection(&edge_only).is_empty(), "{:?}", rejection(&edge_only));

        assert_rejected_with(
            |s| {
                s.credentials = Some(Credentials {
                    client_ca_secret_ref: Some(SecretRef { name: "ca".into() }),
                    ..Credentials::default()
                })
            },
            RULE_MUTUAL_TLS_NEEDS_TLS,
        );
        let mut mutual = CollabModel::fixture();
        mutual.spec.credentials = Some(Credentials {
            tls_secret_ref: Some(SecretRef { name: "tls".into() }),
            client_ca_secret_ref: Some(SecretRef { name: "ca".into() }),
            edge_cert_secret_ref: Some(SecretRef { name: "edge".into() }),
            ..Credentials::default()
        });
        assert!(rejection(&mutual).is_empty(), "{:?}", rejection(&mutual));
    }

    #[test]
    fn local_cloud_without_redis_is_rejected() {
        assert_rejected_with(|s| s.context = None, RULE_CLOUD_NEEDS_REDIS);
        assert_rejected_with(
            |s| {
                if let Some(ctx) = s.context.as_mut() {
                    ctx.redis = Some(RedisSpec {
                        url: Some("redis://r:6379".to_string()),
                        managed: Some(true),
                        ..RedisSpec::default()
                    });
                }
            },
            RULE_REDIS_ONE_SOURCE,
        );
    }

    #[test]
    fn threshold_and_agreement_together_are_rejected() {
        assert_rejected_with(|s| s.target_agreement = Some(0.95), RULE_THRESHOLD_XOR_AGREEMENT);
    }

    #[test]
    fn two_autoscaling_signals_are_rejected() {
        assert_rejected_with(
            |s| {
                s.cloud.target_cpu_utilization = Some(60);
                s.cloud.custom_metric = Some(CustomMetricTarget {
                    name: "collm_cloud_rpc_in_flight".to_string(),
                    average_value: "4".to_string(),
                });
            },
            RULE_ONE_METRIC,
        );
    }
}
