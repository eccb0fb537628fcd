//! The finalizer's cleanup on real Redis servers: every key of the model goes, on a single
//! server and on every master of a Redis Cluster (where the worker's hash-tagged keys spread
//! over all of them), and no other model's key is touched.

use std::time::Duration;

use collm_operator::cloud_context::delete_prefix;
use collm_testkit::{RedisCluster, RedisServer};

const PREFIX: &str = "collm:models:chat:";
const OTHER: &str = "collm:models:chat-2:";

/// The keys a cloud worker writes for `sessions` sessions of one client under `prefix`.
fn keys(prefix: &str, sessions: usize) -> Vec<String> {
    let mut keys = vec![format!("{prefix}client:{{edge-a}}:sessions")];
    for s in 0..sessions {
        keys.push(format!("{prefix}session:{{edge-a/s{s}}}:meta"));
        keys.push(format!("{prefix}session:{{edge-a/s{s}}}:rows"));
    }
    keys
}

fn delete(url: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(delete_prefix(url, PREFIX, Duration::from_secs(5))).expect("deleted")
}

#[test]
fn a_single_server_loses_the_models_keys_only() {
    let redis = RedisServer::start();
    for key in keys(PREFIX, 20).iter().chain(&keys(OTHER, 3)) {
        redis.cli(&["SET", key, "x"]);
    }
    assert_eq!(delete(&redis.url()), 41);
    assert_eq!(redis.cli(&["DBSIZE"]), "7", "the other model's keys stay");
    assert_eq!(delete(&redis.url()), 0, "a second run finds nothing");
}

#[test]
fn every_master_of_a_cluster_loses_the_models_keys_only() {
    let cluster = RedisCluster::start(3);
    let node = &cluster.nodes()[0];
    for key in keys(PREFIX, 20).iter().chain(&keys(OTHER, 3)) {
        // -c: follow the cluster's redirects to the node owning the key's slot.
        node.cli(&["-c", "SET", key, "x"]);
    }
    let held: Vec<u64> =
        cluster.nodes().iter().map(|n| n.cli(&["DBSIZE"]).parse().expect("a count")).collect();
    assert!(held.iter().filter(|&&n| n > 0).count() > 1, "keys on one node only: {held:?}");
    assert_eq!(delete(&node.url()), 41);
    let left: u64 =
        cluster.nodes().iter().map(|n| n.cli(&["DBSIZE"]).parse::<u64>().expect("a count")).sum();
    assert_eq!(left, 7, "the other model's keys stay");
    assert_eq!(
        delete(&cluster.nodes()[1].url()),
        0,
        "a second run, from another node, finds nothing"
    );
}
