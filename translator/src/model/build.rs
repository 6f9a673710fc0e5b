//! Building the model from the Kubernetes objects a user would `kubectl
//! apply`. Pure: the caller passes when each object was first seen (used
//! when it has no `creationTimestamp`) and how to address workloads that
//! have no pod IP (the local runner's loopback addresses).

use super::{
    ClientTls, ClientTlsMode, ContainerPort, DestinationRule, Labels, Mesh, MeshConfig, Namespace,
    PeerAuthentication, PeerMode, PolicyMeta, Protocol, Service, ServicePort, TargetPort, Workload,
};
use crds::Object;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};

/// How workloads without a pod IP get one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressing {
    /// A /16 for pod IPs, e.g. 127.16.0.0: each pod without `status.podIP`
    /// gets a stable address in it, derived from its namespace and name.
    pub pod_net: Ipv4Addr,
    /// A /16 for application addresses: the same host part as the pod IP.
    /// `None`: applications listen on 127.0.0.1, as in a real pod.
    pub app_net: Option<Ipv4Addr>,
}

impl Default for Addressing {
    fn default() -> Self {
        Addressing {
            pod_net: Ipv4Addr::new(127, 16, 0, 0),
            app_net: None,
        }
    }
}

/// One input object and when it was first seen (seconds since the epoch).
pub struct Input<'a> {
    pub object: &'a Object,
    pub first_seen: i64,
}

/// Istio's injection decision, as the injector webhook makes it: the pod's
/// `sidecar.istio.io/inject` (label or annotation) wins; `"false"` opts out
/// of an enabled namespace. Otherwise the namespace label
/// `istio-injection=enabled` (or a revision label), or a pod already
/// labelled `security.istio.io/tlsMode: istio`.
pub fn has_sidecar(ns_labels: &Labels, pod_labels: &Labels, pod_annotations: &Labels) -> bool {
    const INJECT: &str = "sidecar.istio.io/inject";
    if ns_labels.get("istio-injection").map(String::as_str) == Some("disabled") {
        return false;
    }
    let pod_says = pod_labels
        .get(INJECT)
        .or_else(|| pod_annotations.get(INJECT));
    match pod_says.map(String::as_str) {
        Some("false") => return false,
        Some("true") => return true,
        _ => {}
    }
    ns_labels.get("istio-injection").map(String::as_str) == Some("enabled")
        || ns_labels.contains_key("istio.io/rev")
        || pod_labels
            .get("security.istio.io/tlsMode")
            .map(String::as_str)
            == Some("istio")
}

fn labels(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

fn created(meta: &ObjectMeta, first_seen: i64) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(first_seen)
}

fn policy_meta(meta: &ObjectMeta, first_seen: i64) -> PolicyMeta {
    PolicyMeta {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name: meta.name.clone().unwrap_or_default(),
        created: created(meta, first_seen),
    }
}

fn peer_mode(m: crds::MtlsMode) -> PeerMode {
    match m {
        crds::MtlsMode::Unset => PeerMode::Unset,
        crds::MtlsMode::Disable => PeerMode::Disable,
        crds::MtlsMode::Permissive => PeerMode::Permissive,
        crds::MtlsMode::Strict => PeerMode::Strict,
    }
}

fn client_tls(t: &crds::ClientTlsSettings) -> ClientTls {
    ClientTls {
        mode: Some(match t.mode {
            crds::ClientTlsMode::Disable => ClientTlsMode::Disable,
            crds::ClientTlsMode::Simple => ClientTlsMode::Simple,
            crds::ClientTlsMode::Mutual => ClientTlsMode::Mutual,
            crds::ClientTlsMode::IstioMutual => ClientTlsMode::IstioMutual,
        }),
        sni: t.sni.clone(),
        subject_alt_names: t.subject_alt_names.clone(),
        ca_certificates: t.ca_certificates.clone(),
        client_certificate: t.client_certificate.clone(),
        private_key: t.private_key.clone(),
        credential_name: t.credential_name.clone(),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    }
}

fn container_ports(containers: &[Container]) -> Vec<ContainerPort> {
    containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(ContainerPort {
                name: p.name.clone(),
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect()
}

fn service_account(spec: Option<&PodSpec>) -> String {
    spec.and_then(|s| {
        #[allow(deprecated)]
        s.service_account_name
            .clone()
            .or_else(|| s.service_account.clone())
    })
    .filter(|s| !s.is_empty())
    .unwrap_or_else(|| "default".into())
}

struct PendingWorkload {
    w: Workload,
    /// Needs an address from `Addressing`.
    needs_ip: bool,
    annotations: Labels,
}

/// Build the mesh. Objects of unknown kinds are ignored (the parser already
/// reported them); later duplicates of the same kind/namespace/name replace
/// earlier ones, as a second `kubectl apply` would.
pub fn build_mesh(inputs: &[Input<'_>], config: MeshConfig, addressing: &Addressing) -> Mesh {
    let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
    let mut services: BTreeMap<(String, String), Service> = BTreeMap::new();
    let mut pending: BTreeMap<(String, String), PendingWorkload> = BTreeMap::new();
    let mut pas: BTreeMap<(String, String), PeerAuthentication> = BTreeMap::new();
    let mut drs: BTreeMap<(String, String), DestinationRule> = BTreeMap::new();
    let ns_of = |m: &ObjectMeta| m.namespace.clone().unwrap_or_else(|| "default".into());

    for input in inputs {
        match input.object {
            Object::Namespace(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                namespaces.insert(
                    name.clone(),
                    Namespace {
                        name,
                        labels: labels(&n.metadata),
                    },
                );
            }
            Object::Service(s) => {
                let ns = ns_of(&s.metadata);
                let name = s.metadata.name.clone().unwrap_or_default();
                let spec = s.spec.clone().unwrap_or_default();
                let ports = spec
                    .ports
                    .iter()
                    .flatten()
                    .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                    .filter_map(|p| {
                        let port = u16::try_from(p.port).ok()?;
                        let target_port = match &p.target_port {
                            None => TargetPort::Number(port),
                            Some(IntOrString::Int(i)) => {
                                TargetPort::Number(u16::try_from(*i).ok()?)
                            }
                            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                                Ok(n) => TargetPort::Number(n),
                                Err(_) => TargetPort::Name(s.clone()),
                            },
                        };
                        let pname = p.name.clone().unwrap_or_default();
                        Some(ServicePort {
                            protocol: Protocol::infer(&pname, p.app_protocol.as_deref()),
                            name: pname,
                            port,
                            target_port,
                        })
                    })
                    .collect();
                services.insert(
                    (ns.clone(), name.clone()),
                    Service {
                        namespace: ns,
                        name,
                        labels: labels(&s.metadata),
                        selector: spec.selector.clone(),
                        ports,
                    },
                );
            }
            Object::Deployment(d) => {
                let ns = ns_of(&d.metadata);
                let name = d.metadata.name.clone().unwrap_or_default();
                let Some(spec) = &d.spec else { continue };
                let tmpl = &spec.template;
                let tmeta = tmpl.metadata.clone().unwrap_or_default();
                let replicas = spec.replicas.unwrap_or(1).max(0);
                // Replace earlier replicas of the same Deployment.
                pending.retain(|_, p| {
                    !(p.w.namespace == ns && p.w.owner.as_deref() == Some(name.as_str()))
                });
                for i in 0..replicas {
                    let pod = format!("{name}-{i}");
                    pending.insert(
                        (ns.clone(), pod.clone()),
                        PendingWorkload {
                            w: Workload {
                                namespace: ns.clone(),
                                name: pod,
                                labels: labels(&tmeta),
                                service_account: service_account(tmpl.spec.as_ref()),
                                ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                                app_ip: None,
                                ports: container_ports(
                                    tmpl.spec
                                        .as_ref()
                                        .map(|s| s.containers.as_slice())
                                        .unwrap_or(&[]),
                                ),
                                sidecar: false,
                                owner: Some(name.clone()),
                            },
                            needs_ip: true,
                            annotations: tmeta.annotations.clone().unwrap_or_default(),
                        },
                    );
                }
            }
            Object::Pod(p) => {
                let ns = ns_of(&p.metadata);
                let name = p.metadata.name.clone().unwrap_or_default();
                let ip = p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|s| s.parse::<IpAddr>().ok());
                pending.insert(
                    (ns.clone(), name.clone()),
                    PendingWorkload {
                        w: Workload {
                            namespace: ns,
                            name,
                            labels: labels(&p.metadata),
                            service_account: service_account(p.spec.as_ref()),
                            ip: ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                            app_ip: None,
                            ports: container_ports(
                                p.spec
                                    .as_ref()
                                    .map(|s| s.containers.as_slice())
                                    .unwrap_or(&[]),
                            ),
                            sidecar: false,
                            owner: None,
                        },
                        needs_ip: ip.is_none(),
                        annotations: p.metadata.annotations.clone().unwrap_or_default(),
                    },
                );
            }
            Object::PeerAuthentication(pa) => {
                let meta = policy_meta(&pa.metadata, input.first_seen);
                pas.insert(
                    (meta.namespace.clone(), meta.name.clone()),
                    PeerAuthentication {
                        selector: pa.selector_labels().cloned(),
                        mode: peer_mode(pa.mode()),
                        port_modes: pa
                            .port_modes()
                            .into_iter()
                            .filter_map(|(p, m)| Some((u16::try_from(p).ok()?, peer_mode(m))))
                            .collect(),
                        meta,
                    },
                );
            }
            Object::DestinationRule(dr) => {
                let meta = policy_meta(&dr.metadata, input.first_seen);
                let spec = &dr.spec;
                let tp = spec.traffic_policy.as_ref();
                drs.insert(
                    (meta.namespace.clone(), meta.name.clone()),
                    DestinationRule {
                        host: spec.host.clone(),
                        export_to: spec.export_to.clone(),
                        workload_selector: spec
                            .workload_selector
                            .as_ref()
                            .filter(|s| !s.is_empty())
                            .map(|s| s.match_labels.clone()),
                        tls: tp.and_then(|t| t.tls.as_ref()).map(client_tls),
                        port_tls: tp
                            .map(|t| {
                                t.port_level_settings
                                    .iter()
                                    .filter_map(|p| {
                                        let n = u16::try_from(p.port.as_ref()?.number).ok()?;
                                        Some((n, p.tls.as_ref().map(client_tls)))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        meta,
                    },
                );
            }
            Object::ServiceAccount(_) | Object::Skipped(_) => {}
        }
    }

    // Namespaces used but not declared exist with no labels, as `default`
    // and `istio-system` do in any cluster.
    let used: BTreeSet<String> = pending
        .keys()
        .map(|k| k.0.clone())
        .chain(services.keys().map(|k| k.0.clone()))
        .collect();
    for ns in used {
        namespaces.entry(ns.clone()).or_insert(Namespace {
            name: ns,
            labels: Labels::new(),
        });
    }

    let workloads = address(pending, &namespaces, addressing);
    Mesh::new(
        config,
        namespaces.into_values().collect(),
        services.into_values().collect(),
        workloads,
        pas.into_values().collect(),
        drs.into_values().collect(),
    )
}

/// Decide sidecars and give every workload its addresses. Explicit pod IPs
/// are reserved first; the others get `pod_net` + a host part hashed from
/// `namespace/name`, probing on collision, in sorted order: the same mesh
/// always gets the same addresses, and adding a workload rarely moves one.
fn address(
    pending: BTreeMap<(String, String), PendingWorkload>,
    namespaces: &BTreeMap<String, Namespace>,
    addressing: &Addressing,
) -> Vec<Workload> {
    let mut used: HashSet<IpAddr> = pending
        .values()
        .filter(|p| !p.needs_ip)
        .map(|p| p.w.ip)
        .collect();
    let base = u32::from(addressing.pod_net) & 0xffff_0000;
    let empty = Labels::new();
    let mut out = Vec::with_capacity(pending.len());
    for ((ns, name), mut p) in pending {
        let ns_labels = namespaces.get(&ns).map(|n| &n.labels).unwrap_or(&empty);
        p.w.sidecar = has_sidecar(ns_labels, &p.w.labels, &p.annotations);
        if p.needs_ip {
            let mut host = host_part(&format!("{ns}/{name}"));
            // At most 65534 probes: the /16 is finite; a full net keeps the
            // last candidate rather than looping.
            for _ in 0..0xfffe {
                let ip = IpAddr::V4(Ipv4Addr::from(base | host));
                if used.insert(ip) {
                    p.w.ip = ip;
                    break;
                }
                host = if host >= 0xfffe { 1 } else { host + 1 };
            }
        }
        if let (Some(app), IpAddr::V4(v4)) = (addressing.app_net, p.w.ip) {
            let app_base = u32::from(app) & 0xffff_0000;
            p.w.app_ip = Some(IpAddr::V4(Ipv4Addr::from(
                app_base | (u32::from(v4) & 0xffff),
            )));
        }
        out.push(p.w);
    }
    out
}

/// A host part in 1..=0xfffe (never .0.0 or .255.255), stable for a name.
fn host_part(key: &str) -> u32 {
    let h = crate::xds::fnv1a(key.as_bytes());
    (h % 0xfffe) as u32 + 1
}

/// Parse YAML texts (name, text) and build the mesh; objects are "first
/// seen" in document order. For tests, benchmarks and tools that start from
/// text; errors are returned, not skipped.
pub fn mesh_from_yaml(
    docs: &[(String, String)],
    config: MeshConfig,
    addressing: &Addressing,
) -> Result<Mesh, Vec<crds::ObjectError>> {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in docs {
        let (p, e) = crds::parse_documents(text, name);
        parsed.extend(p);
        errors.extend(e);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let inputs: Vec<Input<'_>> = parsed
        .iter()
        .enumerate()
        .map(|(i, p)| Input {
            object: &p.object,
            first_seen: i as i64,
        })
        .collect();
    Ok(build_mesh(&inputs, config, addressing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn injection_follows_the_istio_injector() {
        let enabled = l(&[("istio-injection", "enabled")]);
        let disabled = l(&[("istio-injection", "disabled")]);
        let none = Labels::new();
        let inject_true = l(&[("sidecar.istio.io/inject", "true")]);
        let inject_false = l(&[("sidecar.istio.io/inject", "false")]);
        let tls_mode = l(&[("security.istio.io/tlsMode", "istio")]);
        // (namespace, pod labels, pod annotations, expected)
        let table = [
            (&enabled, &none, &none, true),
            (&none, &none, &none, false),
            (&enabled, &inject_false, &none, false),
            (&enabled, &none, &inject_false, false),
            (&none, &inject_true, &none, true),
            (&none, &none, &inject_true, true),
            (&none, &tls_mode, &none, true),
            (&disabled, &inject_true, &none, false),
            (&l(&[("istio.io/rev", "canary")]), &none, &none, true),
        ];
        for (i, (ns, labels, ann, want)) in table.iter().enumerate() {
            assert_eq!(has_sidecar(ns, labels, ann), *want, "row {i}");
        }
    }

    #[test]
    fn replicas_get_stable_addresses_in_the_pod_net_and_app_net() {
        let yaml = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: x}]}
";
        let addressing = Addressing {
            pod_net: Ipv4Addr::new(127, 40, 0, 0),
            app_net: Some(Ipv4Addr::new(127, 41, 0, 0)),
        };
        let docs = [("a.yaml".to_string(), yaml.to_string())];
        let mesh = mesh_from_yaml(&docs, MeshConfig::default(), &addressing).expect("valid");
        let ips: Vec<IpAddr> = mesh.workloads.iter().map(|w| w.ip).collect();
        assert_eq!(mesh.workloads.len(), 3);
        let unique: BTreeSet<IpAddr> = ips.iter().copied().collect();
        assert_eq!(unique.len(), 3, "{ips:?}");
        for w in &mesh.workloads {
            let (IpAddr::V4(ip), Some(IpAddr::V4(app))) = (w.ip, w.app_ip) else {
                panic!("IPv4 addresses expected: {w:?}");
            };
            assert_eq!(ip.octets()[..2], [127, 40]);
            assert_eq!(app.octets()[..2], [127, 41]);
            assert_eq!(ip.octets()[2..], app.octets()[2..]);
        }
        let again = mesh_from_yaml(&docs, MeshConfig::default(), &addressing).expect("valid");
        assert_eq!(
            ips,
            again.workloads.iter().map(|w| w.ip).collect::<Vec<_>>()
        );
        assert_eq!(mesh.workloads[0].name, "web-0");
        assert_eq!(mesh.workloads[0].owner.as_deref(), Some("web"));
    }

    #[test]
    fn objects_without_namespace_land_in_default_and_policies_keep_their_age() {
        let yaml = "
apiVersion: v1
kind: Pod
metadata: {name: p, labels: {app: p}}
status: {podIP: 10.0.0.9}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: old, creationTimestamp: '2020-01-01T00:00:00Z'}
spec: {mtls: {mode: STRICT}}
";
        let docs = [("a.yaml".to_string(), yaml.to_string())];
        let mesh =
            mesh_from_yaml(&docs, MeshConfig::default(), &Addressing::default()).expect("valid");
        let (_, p) = mesh.workload("default", "p").expect("pod in default");
        assert_eq!(p.ip.to_string(), "10.0.0.9");
        assert_eq!(mesh.peer_authentications[0].meta.namespace, "default");
        assert_eq!(mesh.peer_authentications[0].meta.created, 1_577_836_800);
    }
}
