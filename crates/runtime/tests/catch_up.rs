//! `propagate` catch-up on the tiny model: the exported K/V propagation graph fills the cloud's
//! cache in the layout the cloud layers read; with one cloud layer it is exact, with more it
//! is an approximation that is deterministic (a rebuild from position 0 gives the same answer
//! as the incremental path), and a bundle without the graph is refused clearly.

mod support;

use collm_bundle::Manifest;
use collm_bundle::graph::names;
use collm_runtime::partition::{Partition, PartitionInput, PartitionShape};
use collm_runtime::split::load_propagation;
use collm_runtime::{CatchUp, CloudLayers, EdgeAnswered};

const IDS: [u32; 14] = [1, 40, 77, 3, 120, 9, 200, 31, 58, 2, 99, 7, 64, 150];

fn tiny_bundle(dir: &std::path::Path, split_layer: usize) -> Manifest {
    support::tiny_bundle(dir, split_layer, &[split_layer])
}

/// The split hidden states of `IDS`, one row per position.
fn hidden_rows(dir: &std::path::Path, m: &Manifest) -> Vec<f32> {
    let shape = PartitionShape::new(&m.config, 0..m.split_layer);
    let mut edge = Partition::load(&dir.join("bundle/edge.onnx"), shape).expect("edge");
    let mut cache = edge.empty_cache().expect("cache");
    let mut out =
        edge.run(&mut cache, PartitionInput::Tokens(&IDS), 1, &[names::HIDDEN]).expect("edge run");
    out.take(names::HIDDEN).expect("hidden")
}

fn cloud_layers(dir: &std::path::Path, m: &Manifest, catch_up: CatchUp) -> CloudLayers {
    let b = dir.join("bundle");
    let shape = PartitionShape::new(&m.config, m.split_layer..m.config.num_layers);
    let partition = Partition::load(&b.join("cloud.onnx"), shape).expect("cloud");
    let propagation = load_propagation(&b, m).expect("loads");
    assert!(propagation.is_some(), "export writes the propagation graph");
    CloudLayers::new(partition, propagation, catch_up).expect("cloud layers")
}

/// Asks for the token after each of `asks` in turn on one cache; the logits of each answer and
/// the positions propagated in all.
fn ask_in_turn(
    layers: &mut CloudLayers,
    rows: &[f32],
    width: usize,
    asks: &[usize],
    edge: &EdgeAnswered,
) -> (Vec<Vec<f32>>, u64) {
    let mut cache = layers.empty_cache().expect("cache");
    let mut answers = vec![];
    let mut propagated = 0;
    for &after in asks {
        let from = cache.len();
        let stepped = layers
            .step(&mut cache, &rows[from * width..(after + 1) * width], edge, 1)
            .expect("step");
        propagated += stepped.propagated;
        answers.push(stepped.logits);
    }
    (answers, propagated)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The prompt is positions 0..5; the edge answered after 5, 6, 8, 9, 10 and 12; the cloud was
/// asked after 4 (the prompt), 7, 11 and 13.
fn scenario() -> (Vec<usize>, EdgeAnswered) {
    let mut edge = EdgeAnswered::default();
    for p in [5, 6, 8, 9, 10, 12] {
        edge.push(p);
    }
    (vec![4, 7, 11, 13], edge)
}

#[test]
fn with_one_cloud_layer_propagated_keys_and_values_are_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_bundle(dir.path(), 3);
    let width = m.config.hidden_size;
    let rows = hidden_rows(dir.path(), &m);
    let (asks, edge) = scenario();
    let (exact, none) =
        ask_in_turn(&mut cloud_layers(dir.path(), &m, CatchUp::Exact), &rows, width, &asks, &edge);
    let (propagated, n) = ask_in_turn(
        &mut cloud_layers(dir.path(), &m, CatchUp::Propagate),
        &rows,
        width,
        &asks,
        &edge,
    );
    assert_eq!((none, n), (0, 6), "exact propagates nothing; propagate every edge answer");
    for (e, p) in exact.iter().zip(&propagated) {
        // The one cloud layer's K/V only read its input: nothing is approximated.
        assert!(max_diff(e, p) <= 1e-4, "logits differ by {}", max_diff(e, p));
    }
}

#[test]
fn with_deeper_cloud_layers_propagation_approximates_and_a_rebuild_gives_the_same_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = tiny_bundle(dir.path(), 1);
    let width = m.config.hidden_size;
    let rows = hidden_rows(dir.path(), &m);
    let (asks, edge) = scenario();
    let (exact, _) =
        ask_in_turn(&mut cloud_layers(dir.path(), &m, CatchUp::Exact), &rows, width, &asks, &edge);
    let mut layers = cloud_layers(dir.path(), &m, CatchUp::Propagate);
    let (incremental, _) = ask_in_turn(&mut layers, &rows, width, &asks, &edge);
    // Before any edge answer the two modes agree; after, layers 2 and 3 see approximate K/V.
    assert!(max_diff(&exact[0], &incremental[0]) <= 1e-4);
    let last = asks.len() - 1;
    let gap = max_diff(&exact[last], &incremental[last]);
    assert!(gap > 1e-3, "propagation changed nothing ({gap}): is the graph used at all?");
    // A replica rebuilding the session from position 0 classifies every position the same way.
    let (rebuilt, propagated) = ask_in_turn(&mut layers, &rows, width, &[13], &edge);
    assert_eq!(propagated, 6);
    let diff = max_diff(&incremental[last], &rebuilt[0]);
    assert!(diff <= 1e-4, "a rebuild answers differently (by {diff})");
}

#[test]
fn propagate_without_the_graph_is_refused_naming_the_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = tiny_bundle(dir.path(), 2);
    m.cloud_kv = None;
    let b = dir.path().join("bundle");
    assert!(load_propagation(&b, &m).expect("no graph is no error").is_none());
    let shape = PartitionShape::new(&m.config, 2..m.config.num_layers);
    let partition = Partition::load(&b.join("cloud.onnx"), shape).expect("cloud");
    let err = CloudLayers::new(partition, None, CatchUp::Propagate).err().expect("refused");
    assert!(err.to_string().contains("cloud_kv.onnx"), "{err}");
}
