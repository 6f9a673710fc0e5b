//! The parts of Envoy's resources a sidecar's subscriptions follow, as
//! protobuf messages of their own: the same field numbers and wire types
//! as envoy-types' messages, and nothing else. prost skips every other
//! field after checking its framing, so a simulated sidecar decodes each
//! resource (a malformed one is still NACKed) without building the ~100
//! fields of a `Cluster` it would only drop. Building them cost the load
//! generator about half its CPU in malloc, on the same two cores as the
//! server it measures.
//!
//! Field numbers are from envoy-types 0.7's generated code; the tests in
//! `load/tests` check these messages find the same names as the full ones.

use prost::Message;

/// `envoy.config.cluster.v3.Cluster`.
#[derive(Clone, PartialEq, Message)]
pub struct Cluster {
    #[prost(string, tag = "1")]
    pub name: String,
    /// `type` (the `cluster_discovery_type` oneof's enum case).
    #[prost(int32, optional, tag = "2")]
    pub discovery_type: Option<i32>,
    #[prost(message, optional, tag = "3")]
    pub eds_cluster_config: Option<EdsClusterConfig>,
    #[prost(message, optional, tag = "24")]
    pub transport_socket: Option<TransportSocket>,
    #[prost(message, repeated, tag = "43")]
    pub transport_socket_matches: Vec<TransportSocketMatch>,
}

/// `envoy.config.cluster.v3.Cluster.EdsClusterConfig`.
#[derive(Clone, PartialEq, Message)]
pub struct EdsClusterConfig {
    #[prost(string, tag = "2")]
    pub service_name: String,
}

/// `envoy.config.cluster.v3.Cluster.TransportSocketMatch`.
#[derive(Clone, PartialEq, Message)]
pub struct TransportSocketMatch {
    #[prost(message, optional, tag = "3")]
    pub transport_socket: Option<TransportSocket>,
}

/// `envoy.config.core.v3.TransportSocket`.
#[derive(Clone, PartialEq, Message)]
pub struct TransportSocket {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "3")]
    pub typed_config: Option<TypedConfig>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct TypedConfig {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `UpstreamTlsContext` and `DownstreamTlsContext`: both carry the common
/// context as field 1.
#[derive(Clone, PartialEq, Message)]
pub struct TlsContext {
    #[prost(message, optional, tag = "1")]
    pub common_tls_context: Option<CommonTlsContext>,
}

/// `envoy.extensions.transport_sockets.tls.v3.CommonTlsContext`.
#[derive(Clone, PartialEq, Message)]
pub struct CommonTlsContext {
    #[prost(message, repeated, tag = "6")]
    pub tls_certificate_sds_secret_configs: Vec<SdsSecretConfig>,
    /// `validation_context_sds_secret_config` (a case of the
    /// `validation_context_type` oneof).
    #[prost(message, optional, tag = "7")]
    pub validation_context_sds_secret_config: Option<SdsSecretConfig>,
    /// `combined_validation_context` (another case of that oneof).
    #[prost(message, optional, tag = "8")]
    pub combined_validation_context: Option<CombinedValidationContext>,
}

/// `CommonTlsContext.CombinedCertificateValidationContext`.
#[derive(Clone, PartialEq, Message)]
pub struct CombinedValidationContext {
    #[prost(message, optional, tag = "2")]
    pub validation_context_sds_secret_config: Option<SdsSecretConfig>,
}

/// `envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig`.
#[derive(Clone, PartialEq, Message)]
pub struct SdsSecretConfig {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `envoy.config.listener.v3.Listener`.
#[derive(Clone, PartialEq, Message)]
pub struct Listener {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "3")]
    pub filter_chains: Vec<FilterChain>,
    #[prost(message, optional, tag = "25")]
    pub default_filter_chain: Option<FilterChain>,
}

/// `envoy.config.listener.v3.FilterChain`.
#[derive(Clone, PartialEq, Message)]
pub struct FilterChain {
    #[prost(message, repeated, tag = "3")]
    pub filters: Vec<Filter>,
    #[prost(message, optional, tag = "6")]
    pub transport_socket: Option<TransportSocket>,
}

/// `envoy.config.listener.v3.Filter`.
#[derive(Clone, PartialEq, Message)]
pub struct Filter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "4")]
    pub typed_config: Option<TypedConfig>,
}

/// `HttpConnectionManager`: its `rds` case of `route_specifier`.
#[derive(Clone, PartialEq, Message)]
pub struct HttpConnectionManager {
    #[prost(message, optional, tag = "3")]
    pub rds: Option<Rds>,
}

/// `HttpConnectionManager.Rds`.
#[derive(Clone, PartialEq, Message)]
pub struct Rds {
    #[prost(string, tag = "2")]
    pub route_config_name: String,
}

/// A resource's own name: field 1 of `RouteConfiguration` (`name`),
/// `ClusterLoadAssignment` (`cluster_name`) and `Secret` (`name`).
#[derive(Clone, PartialEq, Message)]
pub struct Named {
    #[prost(string, tag = "1")]
    pub name: String,
}
