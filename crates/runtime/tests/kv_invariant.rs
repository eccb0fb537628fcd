//! Incremental decoding with the KV cache computes exactly what recomputing the whole sequence
//! computes (the cache is an optimisation, never a change of answer).

mod support;

use collm_bundle::graph::names;
use collm_runtime::partition::{Partition, PartitionInput, PartitionShape};

#[test]
fn incremental_decoding_equals_recomputing_the_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = support::tiny_bundle(dir.path(), 2, &[1, 2]);
    let b = dir.path().join("bundle");
    let mut edge =
        Partition::load(&b.join("edge.onnx"), PartitionShape::new(&m.config, 0..2)).expect("edge");
    let layers = m.config.num_layers;
    let mut cloud =
        Partition::load(&b.join("cloud.onnx"), PartitionShape::new(&m.config, 2..layers))
            .expect("cloud");
    let ids: Vec<u32> = vec![1, 40, 77, 3, 120, 9, 200, 31, 58, 2, 99, 7];
    let n = ids.len();
    let vocab = m.config.vocab_size;
    let wanted = [names::HIDDEN, "exit_logits.1"];

    // Whole sequence at once, logits for every position.
    let mut ec = edge.empty_cache().expect("cache");
    let mut out = edge.run(&mut ec, PartitionInput::Tokens(&ids), n, &wanted).expect("edge run");
    let hidden = out.take(names::HIDDEN).expect("hidden");
    let exit_all = out.take("exit_logits.1").expect("exit logits");
    let mut cc = cloud.empty_cache().expect("cache");
    let all = cloud
        .run(&mut cc, PartitionInput::Hidden(&hidden), n, &[names::LOGITS])
        .expect("cloud run");
    let all = all.get(names::LOGITS).expect("logits").to_vec();

    // A prefix, then one token at a time.
    let mut ec = edge.empty_cache().expect("cache");
    let mut cc = cloud.empty_cache().expect("cache");
    let mut worst = 0f32;
    let prefix = 5;
    let mut start = 0;
    for end in std::iter::once(prefix).chain(prefix + 1..=n) {
        let mut out =
            edge.run(&mut ec, PartitionInput::Tokens(&ids[start..end]), 1, &wanted).expect("edge");
        let h = out.take(names::HIDDEN).expect("hidden");
        let logits =
            cloud.run(&mut cc, PartitionInput::Hidden(&h), 1, &[names::LOGITS]).expect("cloud");
        let step = logits.get(names::LOGITS).expect("logits");
        let exit_step = out.get("exit_logits.1").expect("exit logits");
        let reference = &all[(end - 1) * vocab..end * vocab];
        let exit_reference = &exit_all[(end - 1) * vocab..end * vocab];
        for (a, b) in step.iter().zip(reference).chain(exit_step.iter().zip(exit_reference)) {
            worst = worst.max((a - b).abs());
        }
        start = end;
    }
    assert_eq!(ec.len(), n);
    assert!(worst <= 1e-4, "incremental logits differ by {worst}");
}

#[test]
fn the_context_limit_is_enforced_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = support::tiny_bundle(dir.path(), 2, &[1, 2]);
    let b = dir.path().join("bundle");
    let mut edge =
        Partition::load(&b.join("edge.onnx"), PartitionShape::new(&m.config, 0..2)).expect("edge");
    let mut cache = edge.empty_cache().expect("cache");
    let ids = vec![5u32; m.config.max_position + 1];
    let err = edge.run(&mut cache, PartitionInput::Tokens(&ids), 1, &[]).err().expect("must fail");
    assert!(err.to_string().contains("context"), "{err}");
    assert_eq!(cache.len(), 0, "a refused run leaves the cache untouched");
}

#[test]
fn a_truncated_cache_continues_as_if_the_dropped_positions_never_ran() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = support::tiny_bundle(dir.path(), 2, &[1, 2]);
    let b = dir.path().join("bundle");
    let mut edge =
        Partition::load(&b.join("edge.onnx"), PartitionShape::new(&m.config, 0..2)).expect("edge");
    let wanted = [names::HIDDEN, "exit_logits.2"];
    let kept: Vec<u32> = vec![1, 40, 77, 3, 120];
    let (guess, truth): (Vec<u32>, Vec<u32>) = (vec![9, 200, 31], vec![58, 2]);

    // The kept positions, a guessed run, a rollback to the kept ones, then the true tokens.
    let mut rolled = edge.empty_cache().expect("cache");
    let seq = |c: &mut _, ids: &[u32], edge: &mut Partition| {
        let mut out = edge.run(c, PartitionInput::Tokens(ids), 1, &wanted).expect("run");
        (out.take(names::HIDDEN).expect("hidden"), out.take("exit_logits.2").expect("logits"))
    };
    seq(&mut rolled, &kept, &mut edge);
    seq(&mut rolled, &guess, &mut edge);
    assert_eq!(rolled.len(), kept.len() + guess.len());
    rolled.truncate(kept.len()).expect("truncate");
    assert_eq!(rolled.len(), kept.len());
    rolled.truncate(kept.len() + 10).expect("truncating beyond the length changes nothing");
    assert_eq!(rolled.len(), kept.len());
    let after_rollback = seq(&mut rolled, &truth, &mut edge);

    let mut fresh = edge.empty_cache().expect("cache");
    seq(&mut fresh, &kept, &mut edge);
    let reference = seq(&mut fresh, &truth, &mut edge);
    let worst = after_rollback
        .0
        .iter()
        .zip(&reference.0)
        .chain(after_rollback.1.iter().zip(&reference.1))
        .fold(0f32, |w, (a, b)| w.max((a - b).abs()));
    assert!(worst <= 1e-5, "a rolled-back cache differs from a fresh one by {worst}");
    assert_eq!(rolled.len(), fresh.len());
}
