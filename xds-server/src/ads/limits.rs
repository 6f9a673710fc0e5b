//! Bounds on what one client of the xDS port can make the server hold or
//! do. Every bound is a field of [`Limits`] (`serve` flags in `cli.rs`);
//! the checks on a single request live here, the others where they bite:
//! - gRPC message sizes and HTTP/2 streams per connection: the tonic server
//!   (`server::serve_ads`, [`super::AdsServer::into_service`]);
//! - connections and TLS handshakes: the accept loop (`xds_tls`);
//! - names, type URLs and node ids of a request: [`check_sotw`] and
//!   [`check_delta`], before the request is looked at;
//! - delta subscriptions per stream: `delta.rs`;
//! - NACK messages kept: [`truncate`], where the NACK is recorded;
//! - a proxy that stops reading: the send timeout of the stream's queue;
//! - framed responses waiting to be written, all streams together: the
//!   push budget (`grpc.rs`).
//!
//! A request past a bound ends its stream with a status naming the bound and
//! the flag that raises it; the server never buffers on a client's behalf
//! beyond them. What is left per connection is HTTP/2 flow control: a
//! client's unread requests sit in at most [`STREAM_WINDOW`] per stream and
//! [`CONNECTION_WINDOW`] per connection, since tonic only reads a stream's
//! body when its task asks for the next request.

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use std::time::Duration;
use tonic::Status;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// HTTP/2 receive window of one stream: requests a client sent that the
/// stream's task has not read yet. hyper's default, set explicitly so the
/// bound does not move with a dependency.
pub const STREAM_WINDOW: u32 = 1024 * 1024;

/// HTTP/2 receive window of one connection, shared by its streams.
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Every bound; [`Limits::DEFAULT`] documents each default and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest gRPC message decoded (a request). tonic checks the length
    /// prefix before buffering the message and ends the stream with
    /// OUT_OF_RANGE.
    pub max_request_bytes: usize,
    /// Largest gRPC message sent (a response). A response past it ends the
    /// stream with RESOURCE_EXHAUSTED and a warning, instead of being queued.
    pub max_response_bytes: usize,
    /// Bytes of framed responses not yet written to their sockets, all
    /// streams together; a stream whose next response does not fit waits
    /// for others to be written (istiod's push throttle, in bytes). A
    /// response larger than the whole budget still goes, alone.
    pub max_pending_push_bytes: usize,
    /// Longest resource name, version in `initial_resource_versions`, and
    /// node id a request may carry.
    pub max_name_bytes: usize,
    /// Most resource names one request may carry (delta: subscribe,
    /// unsubscribe and initial versions together).
    pub max_names_per_request: usize,
    /// Longest `type_url` of a request.
    pub max_type_url_bytes: usize,
    /// Longest NACK message (`error_detail.message`) kept for the debug
    /// endpoints; longer ones are truncated, not refused.
    pub max_nack_message_bytes: usize,
    /// Most resource names one delta stream may be subscribed to, all types
    /// together (a wildcard counts as none).
    pub max_delta_subscriptions: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` of an xDS connection.
    pub max_streams_per_connection: u32,
    /// Open xDS connections (TCP, including those still in their TLS
    /// handshake); past it a new connection is closed right after accept.
    pub max_connections: usize,
    /// TLS handshakes in progress; past it the accept loop waits for one to
    /// finish, so new connections queue in the kernel's backlog.
    pub max_tls_handshakes: usize,
    /// How long a client may take to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a stream's task waits for a proxy that does not read while
    /// its response queue is full before it drops the stream.
    pub send_timeout: Duration,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        // gRPC's own default. A DiscoveryRequest is a node (a few KiB of
        // metadata) and names: an EDS request naming 20,000 clusters is
        // about 1.2 MiB.
        max_request_bytes: 4 * MIB,
        // Our largest responses are a big mesh's CDS or EDS for one sidecar,
        // about 1 KiB per service port: 64 MiB is far beyond any mesh this
        // serves, and bounds the queue of a stream at 16 such responses.
        max_response_bytes: 64 * MIB,
        // Enough full pushes of a 1,000-service mesh (about 1 MiB each) in
        // flight to keep every core busy encrypting and writing, while
        // 10,000 sidecars connecting at once cannot make the server frame
        // 10,000 of them (gigabytes) before any is read.
        max_pending_push_bytes: 64 * MIB,
        // Envoy resource names are short: `outbound|8000||httpbin.foo.svc.cluster.local`
        // is at most about 330 bytes (a 253-byte host, a subset name);
        // xdstp:// names and SDS file paths are longer but well under 4 KiB.
        max_name_bytes: 4 * KIB,
        // The longest legitimate list is an EDS request naming every cluster
        // of a sidecar: one per service port it can reach, tens of thousands
        // in a large mesh without Sidecar scoping.
        max_names_per_request: 50_000,
        // The longest type URL we serve (SDS) is 68 bytes.
        max_type_url_bytes: 256,
        // Envoy's rejection messages are a line per rejected resource; the
        // first 4 KiB say what went wrong, and one is kept per type and stream.
        max_nack_message_bytes: 4 * KIB,
        // Two names per reachable cluster (CDS and EDS) in the largest mesh
        // above; at a few hundred bytes each, tens of MiB per stream at most.
        max_delta_subscriptions: 100_000,
        // An Envoy opens one ADS stream per connection; tools such as
        // grpcurl may share one for a few more.
        max_streams_per_connection: 16,
        // A large fleet of sidecars with room to reconnect; each connection
        // costs a task and HTTP/2 buffers.
        max_connections: 20_000,
        // Handshakes cost CPU (signatures) and a task each; 1,024 lets a
        // fleet reconnect quickly after a restart without spawning one task
        // per half-open connection of a flood.
        max_tls_handshakes: 1024,
        handshake_timeout: Duration::from_secs(10),
        // Far longer than a healthy Envoy takes to read a response, short
        // enough that a stuck one does not hold its queue for long.
        send_timeout: Duration::from_secs(30),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// A bound a request or stream went past, as the `limit` label of
/// `xds_refused_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    MessageSize,
    NameLength,
    NamesPerRequest,
    TypeUrlLength,
    NodeIdLength,
    DeltaSubscriptions,
}

impl Limit {
    pub const ALL: [Limit; 6] = [
        Limit::MessageSize,
        Limit::NameLength,
        Limit::NamesPerRequest,
        Limit::TypeUrlLength,
        Limit::NodeIdLength,
        Limit::DeltaSubscriptions,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Limit::MessageSize => "message_size",
            Limit::NameLength => "name_length",
            Limit::NamesPerRequest => "names_per_request",
            Limit::TypeUrlLength => "type_url_length",
            Limit::NodeIdLength => "node_id_length",
            Limit::DeltaSubscriptions => "delta_subscriptions",
        }
    }
}

/// Why a request was refused: the bound, and the status that ends the stream.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) limit: Limit,
    pub(crate) status: Status,
}

impl Refusal {
    fn invalid(limit: Limit, message: String) -> Refusal {
        Refusal {
            limit,
            status: Status::invalid_argument(message),
        }
    }
}

/// The checks both variants share: type URL and node id.
fn check_common(limits: &Limits, type_url: &str, node_id: Option<&str>) -> Result<(), Refusal> {
    if type_url.len() > limits.max_type_url_bytes {
        return Err(Refusal::invalid(
            Limit::TypeUrlLength,
            format!(
                "type_url of {} bytes is longer than the limit of {} bytes",
                type_url.len(),
                limits.max_type_url_bytes
            ),
        ));
    }
    if let Some(id) = node_id
        && id.len() > limits.max_name_bytes
    {
        return Err(Refusal::invalid(
            Limit::NodeIdLength,
            format!(
                "node.id of {} bytes is longer than the limit of {} bytes (--max-name-bytes)",
                id.len(),
                limits.max_name_bytes
            ),
        ));
    }
    Ok(())
}

fn check_count(limits: &Limits, count: usize) -> Result<(), Refusal> {
    if count > limits.max_names_per_request {
        return Err(Refusal::invalid(
            Limit::NamesPerRequest,
            format!(
                "the request names {count} resources, more than the limit of {} per request \
                 (--max-names-per-request)",
                limits.max_names_per_request
            ),
        ));
    }
    Ok(())
}

fn check_names<'a>(limits: &Limits, names: impl Iterator<Item = &'a str>) -> Result<(), Refusal> {
    for name in names {
        if name.len() > limits.max_name_bytes {
            // The name itself is not quoted: it is what is too long.
            let start: String = name.chars().take(32).collect();
            return Err(Refusal::invalid(
                Limit::NameLength,
                format!(
                    "resource name {start:?}... of {} bytes is longer than the limit of {} bytes \
                     (--max-name-bytes)",
                    name.len(),
                    limits.max_name_bytes
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a state-of-the-world request against the per-request bounds.
pub(crate) fn check_sotw(limits: &Limits, request: &DiscoveryRequest) -> Result<(), Refusal> {
    check_common(
        limits,
        &request.type_url,
        request.node.as_ref().map(|n| n.id.as_str()),
    )?;
    check_count(limits, request.resource_names.len())?;
    check_names(limits, request.resource_names.iter().map(String::as_str))
}

/// Checks a delta request against the per-request bounds.
pub(crate) fn check_delta(limits: &Limits, request: &DeltaDiscoveryRequest) -> Result<(), Refusal> {
    check_common(
        limits,
        &request.type_url,
        request.node.as_ref().map(|n| n.id.as_str()),
    )?;
    check_count(
        limits,
        request.resource_names_subscribe.len()
            + request.resource_names_unsubscribe.len()
            + request.initial_resource_versions.len(),
    )?;
    let versions = &request.initial_resource_versions;
    check_names(
        limits,
        request
            .resource_names_subscribe
            .iter()
            .chain(&request.resource_names_unsubscribe)
            .chain(versions.keys())
            .chain(versions.values())
            .map(String::as_str),
    )
}

/// The refusal of a delta stream that would be subscribed to `total` names,
/// more than `max` ([`Limits::max_delta_subscriptions`]).
pub(crate) fn check_subscriptions_of(max: usize, total: usize) -> Result<(), Refusal> {
    if total > max {
        return Err(Refusal {
            limit: Limit::DeltaSubscriptions,
            status: Status::resource_exhausted(format!(
                "the stream would be subscribed to {total} resource names, more than the limit \
                 of {max} per stream (--max-delta-subscriptions)"
            )),
        });
    }
    Ok(())
}

/// `text` cut to at most `max` bytes (on a character boundary), saying how
/// long it was when cut.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let len = text.len();
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!("... (truncated from {len} bytes)"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use tonic::Code;

    fn sotw(names: Vec<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            node: Some(Node {
                id: "sidecar~10.0.0.5~a-0.foo~foo.svc.cluster.local".to_string(),
                ..Default::default()
            }),
            type_url: translator::ResourceType::Endpoint.type_url().to_string(),
            resource_names: names,
            ..Default::default()
        }
    }

    #[test]
    fn ads_limits_refuse_long_names_many_names_long_type_urls_and_node_ids() {
        let limits = Limits::DEFAULT;
        assert!(check_sotw(&limits, &sotw(vec!["outbound|80||a".to_string()])).is_ok());

        let long = check_sotw(&limits, &sotw(vec!["x".repeat(4097)])).expect_err("too long");
        assert_eq!(long.limit, Limit::NameLength);
        assert_eq!(long.status.code(), Code::InvalidArgument);
        assert!(long.status.message().contains("4097 bytes"), "{long:?}");
        assert!(long.status.message().contains("4096"), "{long:?}");
        assert!(long.status.message().len() < 200, "{long:?}");

        let many = check_sotw(&limits, &sotw(vec!["a".to_string(); 50_001])).expect_err("many");
        assert_eq!(many.limit, Limit::NamesPerRequest);
        assert!(many.status.message().contains("50000"), "{many:?}");

        let mut request = sotw(Vec::new());
        request.type_url = "t".repeat(257);
        let url = check_sotw(&limits, &request).expect_err("long type URL");
        assert_eq!(url.limit, Limit::TypeUrlLength);

        let mut request = sotw(Vec::new());
        request.node = Some(Node {
            id: "n".repeat(5000),
            ..Default::default()
        });
        let node = check_sotw(&limits, &request).expect_err("long node id");
        assert_eq!(node.limit, Limit::NodeIdLength);
    }

    #[test]
    fn ads_limits_count_every_name_list_of_a_delta_request() {
        let limits = Limits {
            max_names_per_request: 3,
            ..Limits::DEFAULT
        };
        let mut request = DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["a".to_string(), "b".to_string()],
            resource_names_unsubscribe: vec!["c".to_string()],
            ..Default::default()
        };
        assert!(check_delta(&limits, &request).is_ok());
        request
            .initial_resource_versions
            .insert("d".to_string(), "1".to_string());
        let refusal = check_delta(&limits, &request).expect_err("four names");
        assert_eq!(refusal.limit, Limit::NamesPerRequest);

        let mut request = DeltaDiscoveryRequest::default();
        request
            .initial_resource_versions
            .insert("d".to_string(), "v".repeat(5000));
        let refusal = check_delta(&Limits::DEFAULT, &request).expect_err("long version");
        assert_eq!(refusal.limit, Limit::NameLength);
    }

    #[test]
    fn ads_truncate_keeps_a_prefix_on_a_char_boundary() {
        assert_eq!(truncate("short".to_string(), 10), "short");
        let cut = truncate("é".repeat(10), 5);
        assert!(cut.starts_with("éé"), "{cut}");
        assert!(!cut.starts_with("ééé"), "{cut}");
        assert!(cut.ends_with("(truncated from 20 bytes)"), "{cut}");
    }
}
