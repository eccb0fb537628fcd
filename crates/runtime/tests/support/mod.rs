//! The tiny seeded model (f32 weights) exported as a bundle into `dir/bundle`.

use collm_bundle::{ExportPlan, GraphOptions, Manifest, WeightFormat};

pub fn tiny_bundle(dir: &std::path::Path, split_layer: usize, exit_layers: &[usize]) -> Manifest {
    let gguf = dir.join("tiny.gguf");
    let spec = collm_checkpoint::tiny::TinySpec::default();
    collm_checkpoint::tiny::write_gguf(&gguf, &spec, 42, collm_gguf::GgmlType::F32)
        .expect("tiny GGUF");
    let ckpt = collm_checkpoint::Checkpoint::from_gguf(&gguf).expect("loads");
    let plan = ExportPlan {
        split_layer,
        exit_layers: exit_layers.to_vec(),
        weights: WeightFormat::F32,
        graph: GraphOptions::default(),
    };
    collm_bundle::export(ckpt, &plan, &dir.join("bundle"), &mut |_| {}).expect("exports")
}
