//! One request, explained: for a client workload and a service port, the
//! client's sidecar (or none), the DestinationRules the lookup considered
//! and the merged rule that applies, what the client sends to each endpoint
//! and why, the server's effective mode on the target port and the policy
//! that decided it, and the predicted outcome. The same decisions the
//! translation made, read back; `xds-server explain` prints it,
//! `/debug/explain` returns it as JSON, and `up` uses it for failed cells
//! (what `istioctl x describe` and the removed `authn tls-check` offered).
//!
//! `data` holds the answer's shape, `build` computes it, `text` prints it.

mod build;
mod data;
mod text;

pub use build::{explain, explain_request, find_service_port, find_workload};
pub use data::*;
pub use text::render_text;
