//! What the two protocol variants of a simulated sidecar have in common:
//! the requests that open a stream, what is done with each response (ACK
//! or NACK, then follow the names it references), and whether everything
//! asked for has arrived. `sotw.rs` and `delta.rs` implement [`Protocol`];
//! `proxy.rs` drives it over a real stream. Pure state machines: no I/O,
//! no clock, so the bookkeeping is tested on its own.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc;
use tonic::codegen::{Body, Bytes, StdError};
use translator::ResourceType;

/// The largest response a simulated sidecar accepts: the server's default
/// `--max-response-bytes`, far above tonic's client default of 4 MiB, which
/// a 1,000-service CDS comes close to.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// gRPC code a NACK carries (Envoy uses INVALID_ARGUMENT for a rejected
/// update).
const INVALID_ARGUMENT: i32 = 3;

/// A gRPC service an ADS client can call: a `tonic` channel, or the
/// server's own service in-process (tests).
pub trait AdsTransport:
    tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<StdError>,
        ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
        Future: Send,
    > + Send
    + 'static
{
}

impl<T> AdsTransport for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<StdError>,
            ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
            Future: Send,
        > + Send
        + 'static
{
}

/// What one response did to the simulated sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled<Req> {
    /// `None`: a type this sidecar does not know; ignored, as Envoy does.
    pub kind: Option<ResourceType>,
    /// The version the response carried.
    pub version: String,
    pub resources: usize,
    /// Why it was rejected, if it was (the NACK's message).
    pub nack: Option<String>,
    /// To send, in order: the ACK or NACK, then subscription changes the
    /// response caused.
    pub requests: Vec<Req>,
}

/// One protocol variant of a simulated sidecar.
pub trait Protocol: Send + 'static {
    type Request: prost::Message + Send + 'static;
    type Response: prost::Message + Default + Send + 'static;
    /// The ADS method of the variant.
    const PATH: &'static str;

    /// The requests that open a stream: wildcard CDS and LDS on the first,
    /// every type subscribed so far (with what is held) on a reconnect.
    /// The first carries the node.
    fn open(&mut self) -> Vec<Self::Request>;
    /// Decodes a response, and says what to send back.
    fn on_response(&mut self, response: Self::Response) -> Handled<Self::Request>;
    /// Whether every type has answered on this stream and every name
    /// subscribed to has arrived (or was said not to exist).
    fn synced(&self) -> bool;
}

/// The status a NACK carries.
pub(super) fn nack_status(message: &str) -> rpc::Status {
    rpc::Status {
        code: INVALID_ARGUMENT,
        message: message.to_string(),
        details: Vec::new(),
    }
}

/// The node of a simulated sidecar with `node_id`.
pub fn node(node_id: &str) -> Node {
    Node {
        id: node_id.to_string(),
        ..Default::default()
    }
}
