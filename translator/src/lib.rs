//! The pure core of the control plane: mesh model -> mTLS decisions ->
//! Envoy resources. No network, no files, no clock: everything is passed in,
//! so the same input always gives byte-identical output.
#![forbid(unsafe_code)]

pub mod render;
pub mod xds;

pub use xds::{ProxyResources, Resource, ResourceMap, ResourceType};

pub mod diag;
pub mod envoy;
pub mod explain;
pub mod layout;
pub mod model;
pub mod resolve;
pub mod translate;

pub use diag::{Diagnostic, Severity};
pub use layout::Interception;
pub use translate::{ProxyPlan, Translation, translate};
