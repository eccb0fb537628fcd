//! A bundle opened for in-process use: tokenizer, edge partition and (optionally) the cloud
//! partition, ready for `generate` and `score`.

use std::path::Path;

use collm_bundle::{Bundle, Manifest, Parts};

use crate::Result;
use crate::partition::{Partition, PartitionShape};
use crate::text::TextCodec;
use crate::transport::InProcessCloud;

pub struct SplitModel {
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
        Ok(Self { manifest: m, text, edge, cloud })
    }

    pub fn exit_layers(&self) -> Vec<usize> {
        self.manifest.exits.iter().map(|e| e.layer).collect()
    }

    /// Moves the cloud partition into an in-process transport.
    pub fn take_in_process_cloud(&mut self) -> Option<InProcessCloud> {
        self.cloud.take().map(InProcessCloud::new)
    }
}
