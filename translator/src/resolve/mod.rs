//! Policy resolution: which mTLS mode is in force, and which object decided
//! it. Listener and cluster builders ask these questions; they never read
//! policy objects themselves (the split Istio's authn applier makes).

pub mod client;
pub mod merge;
pub mod server;

pub use client::{ClientDecision, ClientPolicies, Credential, LookupStep, Sends};
pub use merge::{IndexKind, MergedId, MergedRule, RuleIndex};
pub use server::{Decided, PeerPolicies, Scope, ServerMode, WorkloadPeerPolicy};
