//! Policy resolution: which mTLS mode is in force, which object decided
//! it, and which services a Sidecar puts in a proxy's outbound scope. Listener and cluster builders ask these questions; they never read
//! policy objects themselves (the split Istio's authn applier makes).

pub mod client;
pub mod merge;
pub mod server;
pub mod sidecar;

pub use client::{ClientDecision, ClientPolicies, Credential, LookupStep, Sends};
pub use merge::{IndexKind, MergedId, MergedRule, RuleIndex};
pub use server::{Decided, PeerPolicies, Scope, ServerMode, WorkloadPeerPolicy};
pub use sidecar::{Imports, SidecarScope, SidecarScopes, in_scope};
