//! Tests of the load generator's sidecar: its bookkeeping on hand-made
//! responses (`machine.rs`), and against the real server (`server.rs`).

mod machine;
mod server;

use super::delta::Delta;
use super::follow;
use super::protocol::{Handled, Protocol};
use super::proxy;
use super::sotw::Sotw;
use crate::ca::CertificateAuthority;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, SdsSecretConfig, Secret, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use translator::ResourceType;

const NODE: &str = "sidecar~10.0.0.1~a-0.foo~foo.svc.cluster.local";

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// An EDS cluster; with `tls`, a TLS transport socket naming the SDS
/// secrets `default` and `ROOTCA`, as Istio's do.
fn cluster(name: &str, tls: bool) -> Any {
    let socket = tls.then(|| TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &UpstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                        name: "default".into(),
                        sds_config: None,
                    }],
                    validation_context_type: Some(
                        common_tls_context::ValidationContextType::CombinedValidationContext(
                            common_tls_context::CombinedCertificateValidationContext {
                                default_validation_context: None,
                                validation_context_sds_secret_config: Some(SdsSecretConfig {
                                    name: "ROOTCA".into(),
                                    sds_config: None,
                                }),
                                ..Default::default()
                            },
                        ),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))),
    });
    any(&Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: None,
            service_name: String::new(),
        }),
        transport_socket: socket,
        ..Default::default()
    })
}

/// A listener whose HTTP connection manager takes route `route` from RDS.
fn listener(name: &str, route: &str) -> Any {
    let hcm = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: None,
            route_config_name: route.into(),
        })),
        ..Default::default()
    };
    any(&Listener {
        name: name.into(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn cla(name: &str) -> Any {
    any(&ClusterLoadAssignment {
        cluster_name: name.into(),
        ..Default::default()
    })
}

fn route(name: &str) -> Any {
    any(&RouteConfiguration {
        name: name.into(),
        ..Default::default()
    })
}

fn secret(name: &str) -> Any {
    any(&Secret {
        name: name.into(),
        ..Default::default()
    })
}

/// What the translator really produces decodes, and references exactly
/// what it produces alongside: the load assignments of its EDS clusters,
/// the routes of its listeners, the two SDS secrets.
#[test]
fn a_translated_proxy_references_only_resources_the_translation_has() {
    use crate::load::meshgen::{self, MeshSpec};
    use crate::source::files::FileLoader;
    use crate::test_support::TempDir;
    let dir = TempDir::new("load-follow");
    let spec = MeshSpec {
        services: 10,
        namespaces: 2,
        workloads: 10,
        legacy_workloads: 1,
        seed: 9,
    };
    meshgen::write(&meshgen::generate(&spec).expect("mesh"), dir.root()).expect("write");
    let snapshot = FileLoader::new(vec![dir.root().to_path_buf()]).load();
    let (mesh, _) = snapshot.build_mesh(
        translator::model::MeshConfig::default(),
        &translator::model::build::Addressing {
            pod_net: std::net::Ipv4Addr::new(127, 16, 0, 0),
            app_net: None,
            service_net: None,
        },
    );
    let translation = translator::translate(&mesh);
    let plan = translation.proxies.values().next().expect("a proxy");
    let resources = plan.resources();
    let mut deps = follow::Deps::default();
    for kind in [ResourceType::Cluster, ResourceType::Listener] {
        let map = resources.of(kind).expect("a translated type");
        for (name, r) in map.iter() {
            let decoded = follow::decode(kind, &r.body).expect("decodes");
            assert_eq!(&decoded.name, name);
            deps.extend(&decoded.deps);
        }
    }
    let keys = |m: &translator::ResourceMap| {
        m.keys()
            .map(|k| crate::load::names::name(k))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(deps.endpoints, keys(&resources.endpoints));
    assert!(!deps.routes.is_empty());
    assert!(deps.routes.is_subset(&keys(&resources.routes)));
    assert_eq!(
        deps.secrets,
        ["ROOTCA", "default"].map(crate::load::names::name).into()
    );
}

#[test]
fn equal_dependencies_share_one_copy() {
    let secrets = || follow::Deps {
        secrets: [crate::load::names::name("default")].into(),
        ..Default::default()
    };
    let (a, b) = (follow::shared(secrets()), follow::shared(secrets()));
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &follow::shared(follow::Deps::default())));
}
