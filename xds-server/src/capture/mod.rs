//! Traffic capture with iptables, as Istio's `istio-iptables` programs it in
//! REDIRECT mode: every TCP connection the application opens goes to the
//! sidecar's outbound port (15001), every TCP connection that arrives goes
//! to its inbound port (15006), and Envoy uses the original destination.
//!
//! - [`rules`]: the rules for a [`rules::CaptureConfig`], pure, in the exact
//!   form `iptables-save` prints them, so what we apply and what we read
//!   back compare line by line;
//! - [`save`]: reading `iptables-save -t nat` and computing what removing
//!   our rules takes (only the jumps into our chains, and our chains);
//! - [`apply`]: running `iptables-save` and `iptables-restore --noflush` in
//!   the current network namespace.
//!
//! Ours are the four chains Istio names (`ISTIO_INBOUND`, `ISTIO_REDIRECT`,
//! `ISTIO_IN_REDIRECT`, `ISTIO_OUTPUT`) and the rules of other chains that
//! jump into them. Nothing else in the table is read or touched.

pub mod apply;
pub mod rules;
pub mod save;

pub use rules::{CaptureConfig, InboundPorts, Ipv4Cidr};
