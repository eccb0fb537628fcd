//! `collm export`: checkpoint → bundle directory.

use std::collections::BTreeMap;
use std::path::Path;

use collm_checkpoint::{Checkpoint, Weight};

use crate::graph::{self, GraphOptions};
use crate::manifest::{
    CLOUD_FILE, CLOUD_KV_FILE, EDGE_FILE, ExitHead, FORMAT_VERSION, MANIFEST_FILE, Manifest,
    Partition, TOKENIZER_FILE, TokenizerInfo, WeightFormat,
};
use crate::partition_file::{write_file, write_partition};
use crate::{Error, Result, verify, weight_report};

/// What to export: where to split, where the exits sit and how to store weights.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    pub split_layer: usize,
    /// Depths of the exit heads (each in `1..=split_layer`); empty means just `split_layer`.
    pub exit_layers: Vec<usize>,
    pub weights: WeightFormat,
    pub graph: GraphOptions,
}

impl ExportPlan {
    /// Checks the plan against the model and normalises the exit list (sorted, unique).
    pub fn validate(&self, num_layers: usize) -> Result<Vec<usize>> {
        if self.split_layer == 0 || self.split_layer >= num_layers {
            return Err(Error::Plan(format!(
                "--split-layer must be between 1 and {} for a model with {num_layers} layers, got {}",
                num_layers - 1,
                self.split_layer
            )));
        }
        let mut exits = if self.exit_layers.is_empty() {
            vec![self.split_layer]
        } else {
            self.exit_layers.clone()
        };
        exits.sort_unstable();
        exits.dedup();
        if let Some(bad) = exits.iter().find(|&&l| l == 0 || l > self.split_layer) {
            return Err(Error::Plan(format!(
                "exit layer {bad} is outside 1..={} (exits must sit on the edge, at or below the split)",
                self.split_layer
            )));
        }
        Ok(exits)
    }
}

/// What converting a matrix to the export's weight format did to its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Blocks decoded to float32: every value kept.
    Dequantized,
    /// Re-quantized to blocks by rounding to nearest.
    Requantized,
}

impl Conversion {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Dequantized => "exact, dequantized",
            Self::Requantized => "re-quantized, round to nearest",
        }
    }
}

/// Stores every matrix of the checkpoint in the requested format (the embedding stays as it
/// is: the edge gathers rows from a float table). Returns the matrices it changed, by
/// [`Checkpoint::matrices`] key.
pub fn convert_weights(
    ckpt: &mut Checkpoint,
    format: WeightFormat,
) -> BTreeMap<String, Conversion> {
    let convert = |w: &mut Weight| {
        let target = match (format, &*w) {
            (WeightFormat::Native, _) => return None,
            (WeightFormat::F32, Weight::Dense { .. }) => return None,
            (WeightFormat::F32, _) => None,
            (WeightFormat::Q8, Weight::Blocks { bits: 8, .. }) => return None,
            (WeightFormat::Q8, _) => Some(8),
            (WeightFormat::Q4, Weight::Blocks { .. }) => return None,
            (WeightFormat::Q4, Weight::Dense { .. }) => Some(4),
        };
        *w = match target {
            None => {
                let (rows, cols) = (w.rows(), w.cols());
                Weight::Dense { rows, cols, data: w.to_dense() }
            }
            Some(bits) => w.quantize(bits, 32),
        };
        Some(if target.is_some() { Conversion::Requantized } else { Conversion::Dequantized })
    };
    let mut changed = BTreeMap::new();
    for (i, l) in ckpt.layers.iter_mut().enumerate() {
        let roles = l.matrices().map(|(role, _)| role);
        for (role, w) in roles.into_iter().zip(l.matrices_mut()) {
            if let Some(c) = convert(w) {
                changed.insert(format!("layers.{i}.{role}"), c);
            }
        }
    }
    if let Some(c) = convert(&mut ckpt.lm_head) {
        changed.insert("lm_head".to_string(), c);
    }
    changed
}

/// Writes a bundle for `ckpt` into `out` (created if missing). `progress` hears each step.
pub fn export(
    mut ckpt: Checkpoint,
    plan: &ExportPlan,
    out: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Manifest> {
    let cfg = ckpt.config.clone();
    let exits = plan.validate(cfg.num_layers)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    progress("converting weights");
    let sources = weight_report::source_types(&ckpt);
    let changed = convert_weights(&mut ckpt, plan.weights);
    let weight_mappings = weight_report::weight_mappings(
        &ckpt,
        &sources,
        &|key| changed.get(key).map(|c| c.describe()),
        &plan.graph,
    );

    progress("building edge partition");
    let edge = graph::edge_graph(&ckpt, plan.split_layer, &exits, &plan.graph);
    let (edge_in, edge_out) = graph::io_specs(&edge);
    let edge_data = write_partition(out, EDGE_FILE, edge, progress)?;

    progress("building cloud partition");
    let cloud = graph::cloud_graph(&ckpt, plan.split_layer, &plan.graph);
    let (cloud_in, cloud_out) = graph::io_specs(&cloud);
    let cloud_data = write_partition(out, CLOUD_FILE, cloud, progress)?;

    progress("building cloud K/V propagation graph");
    let cloud_kv = graph::cloud_kv_graph(&ckpt, plan.split_layer, &plan.graph);
    let (cloud_kv_in, cloud_kv_out) = graph::io_specs(&cloud_kv);
    let cloud_kv_data = write_partition(out, CLOUD_KV_FILE, cloud_kv, progress)?;

    write_file(out, TOKENIZER_FILE, ckpt.tokenizer_json.as_bytes(), progress)?;

    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        source: ckpt.source.clone(),
        architecture: "llama".to_string(),
        config: cfg.clone(),
        split_layer: plan.split_layer,
        weights: plan.weights,
        edge: Partition {
            file: EDGE_FILE.to_string(),
            data_file: edge_data,
            first_layer: 0,
            end_layer: plan.split_layer,
            inputs: edge_in,
            outputs: edge_out,
        },
        cloud: Partition {
            file: CLOUD_FILE.to_string(),
            data_file: cloud_data,
            first_layer: plan.split_layer,
            end_layer: cfg.num_layers,
            inputs: cloud_in,
            outputs: cloud_out,
        },
        cloud_kv: Some(Partition {
            file: CLOUD_KV_FILE.to_string(),
            data_file: cloud_kv_data,
            first_layer: plan.split_layer,
            end_layer: cfg.num_layers,
            inputs: cloud_kv_in,
            outputs: cloud_kv_out,
        }),
        exits: exits.iter().map(|&layer| ExitHead { layer, calibration: None }).collect(),
        tokenizer: TokenizerInfo {
            file: TOKENIZER_FILE.to_string(),
            special_tokens: ckpt.special_tokens.clone(),
            chat_template: ckpt.chat_template.clone(),
        },
        encodings: vec!["f32".into(), "f16".into(), "int8".into()],
        operating_point: None,
        files: Default::default(),
        weight_mappings,
    };
    progress("hashing files");
    for f in verify::needed_files(&manifest, verify::Parts::All) {
        let sha = verify::sha256_file(&out.join(&f))?;
        manifest.files.insert(f, sha);
    }
    write_manifest(out, &manifest)?;
    Ok(manifest)
}

/// Writes `manifest.json` (atomically).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Manifest(e.to_string()))?;
    write_file(dir, MANIFEST_FILE, &json, &mut |_| {})
}
