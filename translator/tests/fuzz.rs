//! Fuzzing the translator with proptest: small arbitrary meshes
//! (namespaces with and without injection, services with named and numbered
//! ports, Deployments and pods with and without sidecars or their own IPs,
//! PeerAuthentications at mesh, namespace and workload scope with port-level
//! modes, DestinationRules with TLS modes and port-level settings) written as
//! the YAML a user would apply, parsed, built and translated. Translation
//! must never panic, and for every input:
//!
//! - every proxy is a workload with a sidecar, and every workload has an
//!   address (never 0.0.0.0); two workloads share one only if they were given
//!   it and a diagnostic says so;
//! - every resource decodes as its type and renders as JSON (as the debug
//!   endpoints show it);
//! - every cluster a proxy's listeners and routes send to is among its
//!   clusters, every route configuration a listener names is among its
//!   routes, and every EDS cluster has its load assignment;
//! - the same input translates to the same resources and diagnostics.
//!
//! Each target runs `PROPTEST_CASES` cases (proptest's default, 256); with
//! `XDS_FUZZ_SECONDS=N` it runs batches of new random cases for N seconds
//! (CI). A failing case's seed is kept in `tests/proptest-regressions/` and
//! replayed first on every later run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, VirtualHost, route, route_action,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::Any;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use prost::Message;
use translator::model::build::{Addressing, Input, build_mesh_with_diagnostics};
use translator::model::{Mesh, MeshConfig};
use translator::render::resource_to_json;
use translator::{Diagnostic, ResourceType, Translation, translate};

const NAMESPACES: &[&str] = &["istio-system", "foo", "bar", "legacy"];
const APPS: &[&str] = &["a", "b", "c"];

#[derive(Clone, Debug)]
struct NamespaceSpec {
    name: &'static str,
    /// `istio-injection` value, or `istio.io/rev` when "rev".
    injection: Option<&'static str>,
}

#[derive(Clone, Debug)]
struct PortSpec {
    name: &'static str,
    port: u16,
    /// None: same as `port`; Ok(n): a number; Err(name): a container port name.
    target: Option<Result<u16, &'static str>>,
    app_protocol: Option<&'static str>,
    udp: bool,
}

#[derive(Clone, Debug)]
struct ServiceSpec {
    namespace: &'static str,
    name: &'static str,
    /// `app` label selected; None: no selector.
    selects: Option<&'static str>,
    ports: Vec<PortSpec>,
}

#[derive(Clone, Debug)]
struct WorkloadSpec {
    namespace: &'static str,
    app: &'static str,
    version: &'static str,
    /// Some(replicas): a Deployment; None: a bare pod.
    replicas: Option<i32>,
    pod_ip: Option<&'static str>,
    /// `sidecar.istio.io/inject` as label or annotation.
    inject: Option<(&'static str, bool)>,
    container_ports: Vec<(u16, Option<&'static str>)>,
    service_account: Option<&'static str>,
}

#[derive(Clone, Debug)]
struct PeerAuthSpec {
    namespace: &'static str,
    name: &'static str,
    selects: Option<&'static str>,
    mode: Option<&'static str>,
    port_modes: Vec<(u16, &'static str)>,
    created: Option<u32>,
}

#[derive(Clone, Debug)]
struct TlsSpec {
    mode: &'static str,
    sni: bool,
    certs: bool,
    credential: bool,
}

#[derive(Clone, Debug)]
struct DestinationRuleSpec {
    namespace: &'static str,
    name: &'static str,
    host: &'static str,
    export_to: Vec<&'static str>,
    selects: Option<&'static str>,
    tls: Option<TlsSpec>,
    port_tls: Vec<(u16, Option<TlsSpec>)>,
    created: Option<u32>,
}

#[derive(Clone, Debug)]
struct MeshSpec {
    root: &'static str,
    app_net: bool,
    namespaces: Vec<NamespaceSpec>,
    services: Vec<ServiceSpec>,
    workloads: Vec<WorkloadSpec>,
    peer_authentications: Vec<PeerAuthSpec>,
    destination_rules: Vec<DestinationRuleSpec>,
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> BoxedStrategy<T> {
    prop::sample::select(items).boxed()
}

const PORTS: &[u16] = &[80, 8000, 8080, 9000, 15001, 1, 65535];
const MODES: &[&str] = &["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];

/// Each namespace declared or not; injection enabled more often than not, so
/// most meshes have sidecars to translate for.
fn namespaces() -> BoxedStrategy<Vec<NamespaceSpec>> {
    let one = prop::option::weighted(
        0.8,
        prop_oneof![
            3 => Just(Some("enabled")),
            1 => Just(Some("disabled")),
            1 => Just(Some("rev")),
            1 => Just(None),
        ],
    );
    prop::collection::vec(one, NAMESPACES.len())
        .prop_map(|choices| {
            NAMESPACES
                .iter()
                .zip(choices)
                .filter_map(|(name, injection)| {
                    Some(NamespaceSpec {
                        name,
                        injection: injection?,
                    })
                })
                .collect()
        })
        .boxed()
}

fn port() -> BoxedStrategy<PortSpec> {
    (
        pick(&[
            "http", "http-web", "grpc", "http2", "tcp", "tls-x", "redis", "", "web",
        ]),
        pick(PORTS),
        prop::option::of(prop_oneof![
            pick(PORTS).prop_map(Ok),
            pick(&["http", "grpc", "missing"]).prop_map(Err),
        ]),
        prop::option::of(pick(&["http", "tcp", "grpc", "kubernetes.io/h2c"])),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(name, port, target, app_protocol, udp)| PortSpec {
            name,
            port,
            target,
            app_protocol,
            udp,
        })
        .boxed()
}

fn service() -> BoxedStrategy<ServiceSpec> {
    (
        pick(NAMESPACES),
        pick(APPS),
        prop::option::weighted(0.9, pick(APPS)),
        prop::collection::vec(port(), 0..3),
    )
        .prop_map(|(namespace, name, selects, ports)| ServiceSpec {
            namespace,
            name,
            selects,
            ports,
        })
        .boxed()
}

fn workload() -> BoxedStrategy<WorkloadSpec> {
    (
        pick(NAMESPACES),
        pick(APPS),
        pick(&["v1", "v2"]),
        prop::option::weighted(0.6, 0i32..4),
        // Some pods share an address, some have one inside the pod net.
        prop::option::weighted(
            0.3,
            pick(&["10.0.0.1", "10.0.0.2", "127.16.0.5", "0.0.0.0", "::1"]),
        ),
        prop::option::weighted(0.4, (pick(&["label", "annotation"]), any::<bool>())),
        prop::collection::vec(
            (pick(PORTS), prop::option::of(pick(&["http", "grpc"]))),
            0..3,
        ),
        prop::option::of(pick(&["sa1", "sa2"])),
    )
        .prop_map(
            |(
                namespace,
                app,
                version,
                replicas,
                pod_ip,
                inject,
                container_ports,
                service_account,
            )| {
                WorkloadSpec {
                    namespace,
                    app,
                    version,
                    replicas,
                    pod_ip,
                    inject,
                    container_ports,
                    service_account,
                }
            },
        )
        .boxed()
}

fn peer_authentication() -> BoxedStrategy<PeerAuthSpec> {
    (
        pick(NAMESPACES),
        pick(&["default", "p1", "p2"]),
        prop::option::of(pick(APPS)),
        prop::option::weighted(0.8, pick(MODES)),
        prop::collection::vec((pick(PORTS), pick(MODES)), 0..3),
        prop::option::of(0u32..4),
    )
        .prop_map(
            |(namespace, name, selects, mode, port_modes, created)| PeerAuthSpec {
                namespace,
                name,
                selects,
                mode,
                port_modes,
                created,
            },
        )
        .boxed()
}

fn tls() -> BoxedStrategy<TlsSpec> {
    (
        pick(&["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(mode, sni, certs, credential)| TlsSpec {
            mode,
            sni,
            certs,
            credential,
        })
        .boxed()
}

fn destination_rule() -> BoxedStrategy<DestinationRuleSpec> {
    (
        pick(NAMESPACES),
        pick(&["d1", "d2"]),
        pick(&[
            "a",
            "b.foo",
            "a.bar.svc.cluster.local",
            "*.foo.svc.cluster.local",
            "*",
            "c.legacy.svc.cluster.local",
            "nothing.example.com",
        ]),
        prop::collection::vec(pick(&[".", "*", "~", "foo", "bar"]), 0..2),
        prop::option::weighted(0.2, pick(APPS)),
        prop::option::weighted(0.8, tls()),
        prop::collection::vec((pick(PORTS), prop::option::of(tls())), 0..3),
        prop::option::of(0u32..4),
    )
        .prop_map(
            |(namespace, name, host, export_to, selects, tls, port_tls, created)| {
                DestinationRuleSpec {
                    namespace,
                    name,
                    host,
                    export_to,
                    selects,
                    tls,
                    port_tls,
                    created,
                }
            },
        )
        .boxed()
}

fn mesh() -> BoxedStrategy<MeshSpec> {
    (
        prop::sample::select(&["istio-system", "foo"][..]),
        any::<bool>(),
        namespaces(),
        prop::collection::vec(service(), 0..5),
        prop::collection::vec(workload(), 0..8),
        prop::collection::vec(peer_authentication(), 0..5),
        prop::collection::vec(destination_rule(), 0..4),
    )
        .prop_map(
            |(
                root,
                app_net,
                namespaces,
                services,
                workloads,
                peer_authentications,
                destination_rules,
            )| {
                MeshSpec {
                    root,
                    app_net,
                    namespaces,
                    services,
                    workloads,
                    peer_authentications,
                    destination_rules,
                }
            },
        )
        .boxed()
}

fn created(at: Option<u32>) -> String {
    at.map(|d| format!(", creationTimestamp: '2020-01-0{}T00:00:00Z'", d + 1))
        .unwrap_or_default()
}

fn tls_yaml(t: &TlsSpec) -> String {
    let mut out = format!("{{mode: {}", t.mode);
    if t.sni {
        out.push_str(", sni: x.example.com, subjectAltNames: [spiffe://x]");
    }
    if t.certs {
        out.push_str(
            ", caCertificates: /etc/ca.pem, clientCertificate: /etc/c.pem, privateKey: /etc/k.pem",
        );
    }
    if t.credential {
        out.push_str(", credentialName: secret");
    }
    out.push('}');
    out
}

/// The mesh as the YAML a user would apply.
fn to_yaml(m: &MeshSpec) -> String {
    let mut y = String::new();
    for n in &m.namespaces {
        let labels = match n.injection {
            Some("rev") => "{istio.io/rev: canary}".to_string(),
            Some(v) => format!("{{istio-injection: {v}}}"),
            None => "{}".to_string(),
        };
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {}, labels: {labels}}}\n",
            n.name
        );
    }
    for s in &m.services {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {}, namespace: {}}}\nspec:\n",
            s.name, s.namespace
        );
        if let Some(app) = s.selects {
            let _ = writeln!(y, "  selector: {{app: {app}}}");
        }
        y.push_str("  ports:\n");
        for p in &s.ports {
            let _ = write!(y, "  - {{name: '{}', port: {}", p.name, p.port);
            match p.target {
                Some(Ok(n)) => {
                    let _ = write!(y, ", targetPort: {n}");
                }
                Some(Err(name)) => {
                    let _ = write!(y, ", targetPort: {name}");
                }
                None => {}
            }
            if let Some(a) = p.app_protocol {
                let _ = write!(y, ", appProtocol: {a}");
            }
            if p.udp {
                y.push_str(", protocol: UDP");
            }
            y.push_str("}\n");
        }
    }
    for (i, w) in m.workloads.iter().enumerate() {
        let name = format!("{}-w{i}", w.app);
        let mut labels = format!("app: {}, version: {}", w.app, w.version);
        let mut annotations = String::new();
        match w.inject {
            Some(("label", on)) => {
                let _ = write!(labels, ", sidecar.istio.io/inject: '{on}'");
            }
            Some((_, on)) => annotations = format!("sidecar.istio.io/inject: '{on}'"),
            None => {}
        }
        let ports: Vec<String> = w
            .container_ports
            .iter()
            .map(|(port, name)| match name {
                Some(n) => format!("{{containerPort: {port}, name: {n}}}"),
                None => format!("{{containerPort: {port}}}"),
            })
            .collect();
        let sa = w
            .service_account
            .map(|s| format!("serviceAccountName: {s}, "))
            .unwrap_or_default();
        let pod_spec = format!(
            "{{{sa}containers: [{{name: c, image: x, ports: [{}]}}]}}",
            ports.join(", ")
        );
        match w.replicas {
            Some(replicas) => {
                let _ = write!(
                    y,
                    "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {}}}\n\
                     spec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {}}}}}\n  \
                     template:\n    metadata: {{labels: {{{labels}}}, annotations: {{{annotations}}}}}\n    \
                     spec: {pod_spec}\n",
                    w.namespace, w.app
                );
            }
            None => {
                let _ = write!(
                    y,
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {}, \
                     labels: {{{labels}}}, annotations: {{{annotations}}}}}\nspec: {pod_spec}\n",
                    w.namespace
                );
                if let Some(ip) = w.pod_ip {
                    let _ = writeln!(y, "status: {{podIP: '{ip}'}}");
                }
            }
        }
    }
    for p in &m.peer_authentications {
        let _ = write!(
            y,
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: {}, namespace: {}{}}}\nspec:\n",
            p.name,
            p.namespace,
            created(p.created)
        );
        if let Some(app) = p.selects {
            let _ = writeln!(y, "  selector: {{matchLabels: {{app: {app}}}}}");
        }
        if let Some(mode) = p.mode {
            let _ = writeln!(y, "  mtls: {{mode: {mode}}}");
        }
        if !p.port_modes.is_empty() {
            y.push_str("  portLevelMtls:\n");
            for (port, mode) in &p.port_modes {
                let _ = writeln!(y, "    {port}: {{mode: {mode}}}");
            }
        }
    }
    for d in &m.destination_rules {
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: {}, namespace: {}{}}}\nspec:\n  host: '{}'\n",
            d.name,
            d.namespace,
            created(d.created),
            d.host
        );
        if !d.export_to.is_empty() {
            let quoted: Vec<String> = d.export_to.iter().map(|e| format!("'{e}'")).collect();
            let _ = writeln!(y, "  exportTo: [{}]", quoted.join(", "));
        }
        if let Some(app) = d.selects {
            let _ = writeln!(y, "  workloadSelector: {{matchLabels: {{app: {app}}}}}");
        }
        y.push_str("  trafficPolicy:\n");
        if let Some(t) = &d.tls {
            let _ = writeln!(y, "    tls: {}", tls_yaml(t));
        }
        if !d.port_tls.is_empty() {
            y.push_str("    portLevelSettings:\n");
            for (port, t) in &d.port_tls {
                let _ = writeln!(y, "    - port: {{number: {port}}}");
                if let Some(t) = t {
                    let _ = writeln!(y, "      tls: {}", tls_yaml(t));
                }
            }
        }
    }
    y
}

fn addressing(m: &MeshSpec) -> Addressing {
    Addressing {
        app_net: m.app_net.then(|| Ipv4Addr::new(127, 17, 0, 0)),
        ..Addressing::default()
    }
}

/// Parses and builds as the file source does: bad objects are reported and
/// left out, the rest builds.
fn build(yaml: &str, spec: &MeshSpec) -> (Mesh, Vec<Diagnostic>) {
    let (parsed, _errors) = crds::parse_documents(yaml, "mesh.yaml");
    let objects: Vec<crds::Object> = parsed.into_iter().map(|p| p.object).collect();
    build_objects(&objects, spec)
}

/// The objects as they are written, without the parser's validation: what
/// another source (a future Kubernetes watch) might hand the builder.
fn unvalidated(yaml: &str) -> Vec<crds::Object> {
    use crds::Object as O;
    use serde::Deserialize;
    fn typed<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Option<T> {
        serde_yaml::from_value(v).ok()
    }
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .filter_map(|v| {
            Some(match v.get("kind")?.as_str()? {
                "Namespace" => O::Namespace(typed(v)?),
                "Service" => O::Service(Box::new(typed(v)?)),
                "Deployment" => O::Deployment(Box::new(typed(v)?)),
                "Pod" => O::Pod(Box::new(typed(v)?)),
                "PeerAuthentication" => O::PeerAuthentication(typed(v)?),
                "DestinationRule" => O::DestinationRule(Box::new(typed(v)?)),
                _ => return None,
            })
        })
        .collect()
}

fn build_objects(objects: &[crds::Object], spec: &MeshSpec) -> (Mesh, Vec<Diagnostic>) {
    let inputs: Vec<Input<'_>> = objects
        .iter()
        .enumerate()
        .map(|(i, object)| Input {
            object,
            first_seen: i as i64,
        })
        .collect();
    let config = MeshConfig {
        root_namespace: spec.root.to_string(),
        ..MeshConfig::default()
    };
    build_mesh_with_diagnostics(&inputs, config, &addressing(spec))
}

fn decode<M: Message + Default>(any: &Any, what: &str) -> Result<M, TestCaseError> {
    M::decode(any.value.as_slice())
        .map_err(|e| TestCaseError::fail(format!("{what} does not decode: {e}")))
}

/// Clusters named by the routes of `hosts`.
fn route_clusters(hosts: &[VirtualHost], out: &mut BTreeSet<String>) {
    for r in hosts.iter().flat_map(|h| &h.routes) {
        if let Some(route::Action::Route(action)) = &r.action
            && let Some(route_action::ClusterSpecifier::Cluster(c)) = &action.cluster_specifier
        {
            out.insert(c.clone());
        }
    }
}

/// The structural invariants of one translation (see the module docs).
fn check_translation(
    mesh: &Mesh,
    diags: &[Diagnostic],
    t: &Translation,
) -> Result<(), TestCaseError> {
    let mut by_ip: HashMap<_, Vec<String>> = HashMap::new();
    for w in &mesh.workloads {
        prop_assert!(
            !w.ip.is_unspecified(),
            "{}/{} has no address",
            w.namespace,
            w.name
        );
        by_ip
            .entry(w.ip)
            .or_default()
            .push(format!("{}/{}", w.namespace, w.name));
    }
    for (ip, pods) in by_ip.iter().filter(|(_, pods)| pods.len() > 1) {
        let reported = diags.iter().any(|d| {
            d.field.as_deref() == Some("status.podIP") && d.message.contains(&ip.to_string())
        });
        prop_assert!(reported, "{pods:?} share {ip} and no diagnostic says so");
    }
    for ((ns, pod), plan) in &t.proxies {
        let has_sidecar = mesh.workload(ns, pod).is_some_and(|(_, w)| w.sidecar);
        prop_assert!(
            has_sidecar,
            "proxy {ns}/{pod} is not a workload with a sidecar"
        );
        let res = plan.resources();
        let names = |kind: ResourceType| -> BTreeSet<String> {
            res.of(kind)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        let clusters = names(ResourceType::Cluster);
        let routes = names(ResourceType::Route);
        let endpoints = names(ResourceType::Endpoint);
        let mut wanted_clusters = BTreeSet::new();
        let mut wanted_routes = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for kind in [
            ResourceType::Listener,
            ResourceType::Route,
            ResourceType::Cluster,
            ResourceType::Endpoint,
        ] {
            for r in res.of(kind).iter().flat_map(|m| m.values()) {
                prop_assert_eq!(&r.body.type_url, kind.type_url());
                if let Err(e) = resource_to_json(r) {
                    return Err(TestCaseError::fail(format!(
                        "{} does not render: {e}",
                        r.name
                    )));
                }
                match kind {
                    ResourceType::Listener => {
                        let l: Listener = decode(&r.body, &r.name)?;
                        // Envoy refuses two listeners on one address.
                        let address = format!("{:?}", l.address);
                        prop_assert!(
                            addresses.insert(address.clone()),
                            "{ns}/{pod}: two listeners on {address}"
                        );
                        let mut matches = BTreeSet::new();
                        for c in &l.filter_chains {
                            let m = format!("{:?}", c.filter_chain_match);
                            prop_assert!(
                                matches.insert(m.clone()),
                                "{ns}/{pod}: listener {} has two filter chains matching {m}",
                                r.name
                            );
                        }
                        for f in l.filter_chains.iter().flat_map(|c| &c.filters) {
                            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                                continue;
                            };
                            if any.type_url.ends_with(".HttpConnectionManager") {
                                let hcm: HttpConnectionManager = decode(any, &r.name)?;
                                match hcm.route_specifier {
                                    Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                                        wanted_routes.insert(rds.route_config_name);
                                    }
                                    Some(http_connection_manager::RouteSpecifier::RouteConfig(
                                        rc,
                                    )) => {
                                        route_clusters(&rc.virtual_hosts, &mut wanted_clusters);
                                    }
                                    _ => {}
                                }
                            } else if any.type_url.ends_with(".TcpProxy") {
                                let tcp: TcpProxy = decode(any, &r.name)?;
                                if let Some(tcp_proxy::ClusterSpecifier::Cluster(c)) =
                                    tcp.cluster_specifier
                                {
                                    wanted_clusters.insert(c);
                                }
                            }
                        }
                    }
                    ResourceType::Route => {
                        let rc: RouteConfiguration = decode(&r.body, &r.name)?;
                        prop_assert_eq!(&rc.name, &r.name);
                        // Envoy refuses a configuration with a virtual host
                        // name or a domain twice.
                        let mut hosts = BTreeSet::new();
                        let mut domains = BTreeSet::new();
                        for h in &rc.virtual_hosts {
                            prop_assert!(
                                hosts.insert(&h.name),
                                "{ns}/{pod}: route {} has virtual host {} twice",
                                r.name,
                                h.name
                            );
                            for d in &h.domains {
                                prop_assert!(
                                    domains.insert(d),
                                    "{ns}/{pod}: route {} has domain {d} twice",
                                    r.name
                                );
                            }
                        }
                        route_clusters(&rc.virtual_hosts, &mut wanted_clusters);
                    }
                    ResourceType::Cluster => {
                        let c: Cluster = decode(&r.body, &r.name)?;
                        prop_assert_eq!(&c.name, &r.name);
                        let eds = matches!(
                            c.cluster_discovery_type,
                            Some(cluster::ClusterDiscoveryType::Type(t))
                                if t == cluster::DiscoveryType::Eds as i32
                        );
                        if eds {
                            let service = c
                                .eds_cluster_config
                                .map(|e| e.service_name)
                                .filter(|s| !s.is_empty())
                                .unwrap_or(c.name);
                            prop_assert!(
                                endpoints.contains(&service),
                                "{ns}/{pod}: EDS cluster {service} has no load assignment"
                            );
                        }
                    }
                    _ => {
                        let cla: ClusterLoadAssignment = decode(&r.body, &r.name)?;
                        prop_assert_eq!(&cla.cluster_name, &r.name);
                    }
                }
            }
        }
        let missing: Vec<&String> = wanted_clusters.difference(&clusters).collect();
        prop_assert!(
            missing.is_empty(),
            "{ns}/{pod}: clusters {missing:?} are sent to but missing"
        );
        let missing: Vec<&String> = wanted_routes.difference(&routes).collect();
        prop_assert!(
            missing.is_empty(),
            "{ns}/{pod}: routes {missing:?} are named but missing"
        );
    }
    // The reports the debug endpoints show.
    let _ = t.client_ports(mesh);
    Ok(())
}

/// Per proxy, per type: resource name and content hash.
type Fingerprint = BTreeMap<(String, String), Vec<(ResourceType, String, u64)>>;

fn fingerprint(t: &Translation) -> Fingerprint {
    t.proxies
        .iter()
        .map(|(key, plan)| {
            let res = plan.resources();
            let mut all = Vec::new();
            for kind in [
                ResourceType::Listener,
                ResourceType::Route,
                ResourceType::Cluster,
                ResourceType::Endpoint,
            ] {
                for r in res.of(kind).iter().flat_map(|m| m.values()) {
                    all.push((kind, r.name.clone(), r.hash));
                }
            }
            (key.clone(), all)
        })
        .collect()
}

fn check_mesh(spec: MeshSpec) -> Result<(), TestCaseError> {
    let yaml = to_yaml(&spec);
    let (mesh, diags) = build(&yaml, &spec);
    let t = translate(&mesh);
    check_translation(&mesh, &diags, &t)?;
    // Determinism: a second build and translation of the same text.
    let (mesh2, diags2) = build(&yaml, &spec);
    prop_assert_eq!(&diags, &diags2);
    let t2 = translate(&mesh2);
    prop_assert_eq!(&t.diagnostics, &t2.diagnostics);
    prop_assert!(
        fingerprint(&t) == fingerprint(&t2),
        "translation differs on the same input:\n{}",
        yaml
    );
    // The same objects unvalidated: the builder must cope on its own.
    let (mesh3, diags3) = build_objects(&unvalidated(&yaml), &spec);
    check_translation(&mesh3, &diags3, &translate(&mesh3))?;
    Ok(())
}

#[test]
fn fuzz_translate_small_meshes() {
    let config = Config::with_failure_persistence(FileFailurePersistence::Direct(
        "tests/proptest-regressions/fuzz_translate_small_meshes.txt",
    ));
    // A fresh runner each batch draws a fresh random seed: new input.
    crds::test_support::run_batches("fuzz_translate_small_meshes", || {
        TestRunner::new(config.clone())
            .run(&mesh(), check_mesh)
            .map(|()| config.cases)
            .map_err(|e| e.to_string())
    });
}
