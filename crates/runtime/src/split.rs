//! A bundle opened for in-process use: tokenizer, edge partition and (optionally) the cloud
//! partition, ready for `generate` and `score`.

use std::path::Path;

use collm_bundle::{Bundle, Manifest, Parts};

use crate::Result;
use crate::catch_up::CatchUp;
use crate::cloud_layers::CloudLayers;
use crate::partition::{Partition, PartitionShape};
use crate::text::TextCodec;
use crate::transport::InProcessCloud;

pub struct SplitModel {
    pub dir: std::path::PathBuf,
    pub manifest: Manifest,
    pub text: TextCodec,
    pub edge: Partition,
    pub cloud: Option<Partition>,
}

impl SplitModel {
    /// Verifies and loads the bundle; the cloud partition only when `with_cloud`.
    pub fn open(dir: &Path, with_cloud: bool) -> Result<Self> {
        let bundle = Bundle::open(dir, if with_cloud { Parts::All } else { Parts::Edge })?;
        let m = bundle.manifest.clone();
        let text = TextCodec::load(&bundle.path(&m.tokenizer.file), &m.tokenizer)?;
        let edge = Partition::load(
            &bundle.path(&m.edge.file),
            PartitionShape::new(&m.config, m.edge.first_layer..m.edge.end_layer),
        )?;
        let cloud = if with_cloud {
            Some(Partition::load(
                &bundle.path(&m.cloud.file),
                PartitionShape::new(&m.config, m.cloud.first_layer..m.cloud.end_layer),
            )?)
        } else {
            None
        };
        Ok(Self { dir: dir.to_path_buf(), manifest: m, text, edge, cloud })
    }

    pub fn exit_layers(&self) -> Vec<usize> {
        self.manifest.exits.iter().map(|e| e.layer).collect()
    }

    /// Moves the cloud partition into an in-process transport catching up as `catch_up` says
    /// (`propagate` loads the bundle's K/V propagation graph, verified when the bundle opened).
    pub fn take_in_process_cloud(&mut self, catch_up: CatchUp) -> Result<Option<InProcessCloud>> {
        let Some(partition) = self.cloud.take() else { return Ok(None) };
        let propagation = match catch_up {
            CatchUp::Exact => None,
            CatchUp::Propagate => load_propagation(&self.dir, &self.manifest)?,
        };
        Ok(Some(InProcessCloud::new(CloudLayers::new(partition, propagation, catch_up)?)))
    }
}

/// The bundle's K/V propagation graph, if it has one (`CloudLayers::new` checks that it covers
/// the cloud partition's layers).
pub fn load_propagation(dir: &Path, m: &Manifest) -> Result<Option<Partition>> {
    let Some(p) = &m.cloud_kv else { return Ok(None) };
    Partition::load(&dir.join(&p.file), PartitionShape::new(&m.config, p.first_layer..p.end_layer))
        .map(Some)
}
