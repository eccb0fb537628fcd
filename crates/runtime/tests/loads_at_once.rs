//! Partitions loaded on several threads at the same moment all load: a server that loads its
//! partitions in parallel must not fail on a race inside ONNX Runtime.
//!
//! The race (ONNX Runtime entering our operator domain into a process-wide table) only exists
//! until the domain has been entered once in a process, and one process of 8 loading threads
//! loses it only a few times in a hundred; so the test runs its loads in [`PROCESSES`] fresh
//! processes, this binary started again with [`CHILD`] set. Without the lock that prevents the
//! race, 4 of 10 runs of 16 processes failed.

mod support;

use std::process::Command;
use std::sync::{Arc, Barrier};

use collm_runtime::partition::{Partition, PartitionShape};

/// Set in a child process: the graph file its threads load.
const CHILD: &str = "COLLM_TEST_LOADS_AT_ONCE_GRAPH";
const PROCESSES: usize = 40;
const THREADS: usize = 8;

#[test]
fn partitions_loaded_on_many_threads_at_once_all_load() {
    if let Some(graph) = std::env::var_os(CHILD) {
        return load_at_once(graph.into());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    support::tiny_bundle(dir.path(), 2, &[1]);
    let graph = dir.path().join("bundle/edge.onnx");
    let me = std::env::current_exe().expect("this test binary");
    for process in 0..PROCESSES {
        let out = Command::new(&me)
            .args(["--exact", "partitions_loaded_on_many_threads_at_once_all_load", "--nocapture"])
            .env(CHILD, &graph)
            .output()
            .expect("starts");
        assert!(
            out.status.success(),
            "process {process}: {}",
            String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn load_at_once(graph: std::path::PathBuf) {
    let bundle = graph.parent().expect("the bundle directory");
    let config = collm_bundle::read_manifest(bundle).expect("manifest").config;
    let start = Arc::new(Barrier::new(THREADS));
    let loads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (graph, shape, start) =
                (graph.clone(), PartitionShape::new(&config, 0..2), start.clone());
            std::thread::spawn(move || {
                start.wait();
                Partition::load(&graph, shape).map(|_| ()).map_err(|e| e.to_string())
            })
        })
        .collect();
    let failed: Vec<String> =
        loads.into_iter().filter_map(|t| t.join().expect("no panic").err()).collect();
    assert!(failed.is_empty(), "{} of {THREADS} loads failed: {failed:?}", failed.len());
}
