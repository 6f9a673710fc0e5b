//! Model + decisions -> Envoy resources, in two layouts chosen per proxy
//! ([`crate::Interception`]): the explicit-bind layout Istio calls
//! `captureMode: NONE` (no iptables, every listener binds the workload's
//! own IP; `listener.rs`), and the iptables capture layout
//! (`virtualOutbound`/`virtualInbound`; `capture.rs`). Clusters, routes and
//! TLS are shared by both. Each file builds one kind of resource.

pub mod capture;
pub mod cluster;
pub mod listener;
pub mod names;
pub mod route;
pub mod tls;

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};
use std::net::IpAddr;

pub(crate) fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// `{ads: {}, resource_api_version: V3}`. Secrets wait for ever
/// (`initial_fetch_timeout: 0s`), as Istio configures `default`/`ROOTCA`:
/// a listener without its certificate must not serve.
pub(crate) fn ads_config_source(wait_forever: bool) -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        initial_fetch_timeout: wait_forever.then_some(Duration {
            seconds: 0,
            nanos: 0,
        }),
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub(crate) fn socket_address(ip: IpAddr, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

pub(crate) fn seconds(s: i64) -> Duration {
    Duration {
        seconds: s,
        nanos: 0,
    }
}
