//! Config sources: where the objects of the mesh come from. Today a local
//! directory (`files`); the Kubernetes source comes with the Kubernetes
//! issue and produces the same [`ConfigSnapshot`].

pub mod files;
pub mod kube;

use crds::{ObjectError, Parsed, Skipped};
use std::sync::Arc;

/// One consistent view of all objects from a source.
#[derive(Debug, Default)]
pub struct ConfigSnapshot {
    /// Valid objects, with when each was first seen (seconds since epoch).
    pub objects: Vec<(Parsed, i64)>,
    /// Invalid objects and unreadable files. Where an earlier version of an
    /// object was valid, it is still in `objects`.
    pub errors: Vec<ObjectError>,
    pub skipped: Vec<Skipped>,
    /// Files read.
    pub files: usize,
    /// Files parsed: those read whose text changed since the last load.
    pub parsed: usize,
}

pub type SharedSnapshot = Arc<ConfigSnapshot>;

impl ConfigSnapshot {
    /// The mesh model of these objects, and a diagnostic for each object
    /// the model had to leave out (replicas past the limit, a full pod net).
    pub fn build_mesh(
        &self,
        config: translator::model::MeshConfig,
        addressing: &translator::model::build::Addressing,
    ) -> (translator::model::Mesh, Vec<translator::Diagnostic>) {
        let inputs: Vec<translator::model::build::Input<'_>> = self
            .objects
            .iter()
            .map(|(p, seen)| translator::model::build::Input {
                object: &p.object,
                first_seen: *seen,
            })
            .collect();
        translator::model::build::build_mesh_with_diagnostics(&inputs, config, addressing)
    }
}
