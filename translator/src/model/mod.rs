//! The mesh model: plain data the translator works on. No Kubernetes client,
//! no Envoy protos. Config sources build it (see `build`), the resolvers and
//! the Envoy builders read it through the indexes in `index`.

pub mod build;
mod index;
mod mesh;
mod objects;

pub use index::{Index, labels_match as index_labels_match};
pub use mesh::Mesh;
pub use objects::*;
