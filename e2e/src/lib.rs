//! The e2e harness: a cluster (KUBECONFIG or a local control plane), the Helm chart installed
//! into it, two operator replicas running as the chart's ServiceAccount, and a real Redis.
//! One environment per test binary ([`env`]); each test works in a fresh namespace.
//!
//! Tests whose pods must really run use [`node::real_node`] instead: a cluster with a real
//! node (local: `e2e/cluster/up --node`) and the images built from `docker/*.Dockerfile`, with
//! [`pods`] to wait for pods and Jobs, read their logs, exec, port-forward and report why a pod
//! does not run; [`stage::stage`] installs the chart there (the operator in its pod) and
//! serves bundles over HTTP from this machine, and [`chat`] talks to an edge agent's API.
//!
//! ```sh
//! source scripts/env.sh
//! cargo build --release -p collm-operator      # the tests run this binary
//! cargo test --release -p collm-e2e            # local control plane (e2e/cluster/up)
//! KUBECONFIG=~/.kube/config cargo test --release -p collm-e2e   # any cluster instead
//! ```
//!
//! Needs kubectl, curl, setsid and redis-server on the machine; helm and the Kubernetes
//! binaries come from `tools/build-go-tools`. `COLLM_OPERATOR_BIN` picks another operator
//! binary; `COLLM_E2E_KEEP_LOGS=1` keeps the local cluster's logs. Everything started here is
//! stopped when the test process exits, however it exits.

pub mod chart;
pub mod chat;
pub mod cluster;
pub mod node;
pub mod operator;
pub mod pods;
pub mod process;
pub mod redis;
pub mod stage;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::chart::InstalledOperator;
use crate::cluster::{Cluster, Kubectl};
use crate::operator::Replica;
use crate::process::eventually;
use crate::redis::RedisServer;

/// Everything the tests share.
pub struct Env {
    pub cluster: Cluster,
    /// Admin kubectl: to set up, to act as the user, to inspect.
    pub admin: Kubectl,
    /// kubectl as the operator's ServiceAccount (what the replicas use).
    pub operator_kubectl: Kubectl,
    pub installed: InstalledOperator,
    pub redis: RedisServer,
    pub replicas: Mutex<Vec<Replica>>,
    pub log_dir: PathBuf,
    started: Mutex<u32>,
}

static ENV: OnceLock<Result<Env, String>> = OnceLock::new();

/// The shared environment, set up by the first test that asks.
pub fn env() -> &'static Env {
    match ENV.get_or_init(|| Env::set_up().map_err(|e| format!("{e:#}"))) {
        Ok(env) => env,
        Err(e) => panic!("e2e environment: {e}"),
    }
}

impl Env {
    fn set_up() -> Result<Self> {
        let started = Instant::now();
        let log_dir = tempfile::Builder::new().prefix("collm-e2e-logs-").tempdir()?.keep();
        eprintln!("e2e: logs in {}", log_dir.display());
        let operator_binary = operator::operator_binary()?;
        let cluster = Cluster::connect_or_start()?;
        let admin = cluster.kubectl();
        let installed = chart::install(&admin).context("installing the chart")?;
        eprintln!("e2e: chart installed ({:.1?})", started.elapsed());
        let operator_kubectl = operator::service_account_kubeconfig(
            &admin,
            &installed,
            &log_dir.join("operator.kubeconfig"),
        )?;
        let redis = RedisServer::start(&log_dir)?;
        eprintln!("e2e: operator {}, redis {}", operator_binary.display(), redis.url);
        let env = Self {
            cluster,
            admin,
            operator_kubectl,
            installed,
            redis,
            replicas: Mutex::new(Vec::new()),
            log_dir,
            started: Mutex::new(0),
        };
        env.start_replica()?;
        env.start_replica()?;
        env.wait_for_leader(Duration::from_secs(30))?;
        eprintln!("e2e: environment ready in {:.1?}", started.elapsed());
        Ok(env)
    }

    /// Starts one more operator replica.
    pub fn start_replica(&self) -> Result<String> {
        let identity = {
            let mut n = self.started.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            format!("operator-{n}")
        };
        let replica = Replica::start(
            &identity,
            &self.operator_kubectl.kubeconfig,
            &self.installed,
            &self.log_dir,
        )?;
        self.replicas().push(replica);
        Ok(identity)
    }

    pub fn replicas(&self) -> MutexGuard<'_, Vec<Replica>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Lease's current holder.
    pub fn lease_holder(&self) -> Result<Option<String>> {
        let lease =
            self.admin.get(&self.installed.lease_namespace, "lease", &self.installed.lease_name)?;
        Ok(lease
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .filter(|h| !h.is_empty()))
    }

    /// Waits until a running replica holds the Lease and says so; returns its identity.
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<String> {
        eventually("an operator replica to lead", timeout, || {
            let holder = self.lease_holder()?.context("nobody holds the Lease")?;
            let mut replicas = self.replicas();
            let leader = replicas
                .iter_mut()
                .find(|r| r.identity == holder)
                .with_context(|| format!("the Lease holder {holder} is not a running replica"))?;
            anyhow::ensure!(leader.daemon.is_running(), "{holder} is not running");
            anyhow::ensure!(leader.is_leader()?, "{holder} holds the Lease but does not lead yet");
            Ok(holder)
        })
    }

    /// The operator logs' tails, for failure messages.
    pub fn operator_logs(&self) -> String {
        self.replicas()
            .iter()
            .map(|r| format!("--- {} ---\n{}", r.identity, r.daemon.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A CollabModel manifest: a valid collaborative model with a URL bundle and the given Redis
/// (`redis` is the value of spec.context.redis), with `spec` merged over it.
pub fn model(namespace: &str, name: &str, redis: Value, spec: Value) -> Value {
    let mut base = json!({
        "apiVersion": "collm.dev/v1alpha1",
        "kind": "CollabModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "bundle": {"url": "https://models.example/smollm2-135m.tar", "sha256": "ab".repeat(32)},
            "splitLayer": 24,
            "exitLayers": [24],
            "mode": "collaborative",
            "threshold": 0.8,
            "cloud": {"minReplicas": 1, "maxReplicas": 3},
            "context": {"redis": redis, "ttlSeconds": 600},
        }
    });
    merge(&mut base["spec"], spec);
    base
}

/// JSON merge patch semantics (RFC 7386): objects merge, null deletes, anything else replaces.
pub fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let object = target.as_object_mut().expect("just made an object");
            for (key, value) in fields {
                if value.is_null() {
                    object.remove(&key);
                } else {
                    merge(object.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other,
    }
}

/// A condition's (status, reason, message) in an object's status.
pub fn condition(object: &Value, type_: &str) -> Option<(String, String, String)> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        (s("status"), s("reason"), s("message"))
    })
}
