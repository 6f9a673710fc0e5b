//! Building the model from the Kubernetes objects a user would `kubectl
//! apply`. Pure: the caller passes when each object was first seen (used
//! when it has no `creationTimestamp`) and how to address workloads that
//! have no pod IP (the local runner's loopback addresses).

use super::{
    ClientTls, ClientTlsMode, ContainerPort, DestinationRule, EgressListener, Labels, Mesh,
    MeshConfig, Namespace, ObjectRef, PeerAuthentication, PeerMode, PolicyMeta, Protocol, Service,
    ServicePort, Sidecar, SidecarDetection, Subset, TargetPort, TrafficPolicy, Workload,
};
use crate::diag::Diagnostic;
use crds::Object;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

/// Addresses in a pod net: the host parts 1..=0xfffe of its /16 (never .0.0
/// or .255.255).
pub const POD_NET_ADDRESSES: usize = 0xfffe;

/// How workloads without a pod IP get one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressing {
    /// A /16 for pod IPs, e.g. 127.16.0.0: each pod without `status.podIP`
    /// gets a stable address in it, derived from its namespace and name.
    pub pod_net: Ipv4Addr,
    /// A /16 for application addresses: the same host part as the pod IP.
    /// `None`: applications listen on 127.0.0.1, as in a real pod.
    pub app_net: Option<Ipv4Addr>,
    /// A /16 for Services without `spec.clusterIP` (config files): each
    /// gets a stable address in it, as the API server would give one.
    /// `None`: such Services have no cluster IP.
    pub service_net: Option<Ipv4Addr>,
}

impl Default for Addressing {
    fn default() -> Self {
        Addressing {
            pod_net: Ipv4Addr::new(127, 16, 0, 0),
            app_net: None,
            service_net: None,
        }
    }
}

/// Whether a pod was injected: the label `security.istio.io/tlsMode: istio`
/// (Istio's injector sets it), a container named `istio-proxy`, or an
/// `istio-proxy` init container that keeps running (a native sidecar).
fn pod_injected(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    const PROXY: &str = "istio-proxy";
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("security.istio.io/tlsMode"))
        .is_some_and(|v| v == "istio");
    let Some(spec) = pod.spec.as_ref() else {
        return labelled;
    };
    labelled
        || spec.containers.iter().any(|c| c.name == PROXY)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == PROXY && c.restart_policy.as_deref() == Some("Always"))
}

/// Whether a pod is Ready: its `Ready` condition is `True` and it is not
/// being deleted. A pod without conditions (written in a config file, not
/// observed in a cluster) counts as ready.
fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    match conditions.and_then(|cs| cs.iter().find(|c| c.type_ == "Ready")) {
        Some(ready) => ready.status == "True",
        None => true,
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
        ca_crl: t.ca_crl.clone(),
        client_certificate: t.client_certificate.clone(),
        private_key: t.private_key.clone(),
        credential_name: t.credential_name.clone(),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    }
}

/// The scoping part of a Sidecar, and the fields it has that nothing here
/// acts on (named later in diagnostics).
fn sidecar(sc: &crds::Sidecar, meta: PolicyMeta) -> Sidecar {
    let spec = &sc.spec;
    let mut ignored = Vec::new();
    let mut note = |field: String, why: &str| ignored.push((field, why.to_string()));
    if !spec.ingress.is_empty() {
        note(
            "spec.ingress".into(),
            "inbound listeners are not changed by a Sidecar here",
        );
    }
    if spec.inbound_connection_pool.is_some() {
        note("spec.inboundConnectionPool".into(), "is not acted on");
    }
    if spec.outbound_traffic_policy.is_some() {
        note(
            "spec.outboundTrafficPolicy".into(),
            "is not acted on: traffic to services outside the scope has no cluster, whatever the mode",
        );
    }
    let egress = spec
        .egress
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if e.bind.is_some() {
                note(format!("spec.egress[{i}].bind"), "is not acted on: the outbound listener binds the workload IP");
            }
            if e.capture_mode.is_some() {
                note(format!("spec.egress[{i}].captureMode"), "is not acted on");
            }
            let proxy = e
                .port
                .as_ref()
                .and_then(|p| p.protocol.as_deref())
                .is_some_and(|p| p.eq_ignore_ascii_case("HTTP_PROXY"));
            // As Istio's `needsPortMatch`: port 0 and HTTP_PROXY listeners
            // import every port of the services they name.
            let port = e
                .port
                .as_ref()
                .filter(|_| !proxy)
                .and_then(|p| u16::try_from(p.number).ok())
                .filter(|&n| n != 0);
            if let Some(n) = port {
                note(
                    format!("spec.egress[{i}].port"),
                    &format!("imports only service port {n} of its hosts; no listener of its own is built on port {n} (every service is reached through the outbound listener)"),
                );
            }
            EgressListener {
                port,
                hosts: e.hosts.clone(),
            }
        })
        .collect();
    Sidecar {
        meta,
        selector: sc.selector_labels().cloned(),
        egress,
        ignored,
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
    /// The pod spec shows an injected sidecar (see [`pod_injected`]).
    injected: bool,
}

/// A Deployment as the last input declaring it says, not yet expanded into
/// its replicas: expansion waits until the pod net's room is known, so a
/// config can never make the build allocate more workloads than the pod net
/// has addresses.
struct DeploymentEntry {
    /// Input position: a replica replaces a bare pod of the same name
    /// declared before the Deployment, and is replaced by one declared after.
    seq: usize,
    replicas: usize,
    /// One replica, named and addressed when expanded.
    template: Workload,
    annotations: Labels,
}

/// Build the mesh. Objects of unknown kinds are ignored (the parser already
/// reported them); later duplicates of the same kind/namespace/name replace
/// earlier ones, as a second `kubectl apply` would. What could not be used is
/// dropped silently here; [`build_mesh_with_diagnostics`] says what and why.
pub fn build_mesh(inputs: &[Input<'_>], config: MeshConfig, addressing: &Addressing) -> Mesh {
    build_mesh_with_diagnostics(inputs, config, addressing).0
}

/// [`build_mesh`], and a diagnostic for each thing it left out: a Deployment
/// whose `spec.replicas` is negative or more than
/// [`crds::validate::MAX_REPLICAS`], a Service port number given twice (the
/// parser rejects both, but objects may come from elsewhere), a Deployment
/// whose replicas do not fit in what is left of the pod net, a pod that finds
/// no free address; and for a pod whose `status.podIP` another pod has too
/// (kept, but reported). Sorted, as `Translation::diagnostics` is.
pub fn build_mesh_with_diagnostics(
    inputs: &[Input<'_>],
    config: MeshConfig,
    addressing: &Addressing,
) -> (Mesh, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
    let mut services: BTreeMap<(String, String), Service> = BTreeMap::new();
    // Services with `clusterIP: None`: they never get an address.
    let mut headless: BTreeSet<(String, String)> = BTreeSet::new();
    let mut deployments: BTreeMap<(String, String), DeploymentEntry> = BTreeMap::new();
    let mut pods: BTreeMap<(String, String), (usize, PendingWorkload)> = BTreeMap::new();
    let mut pas: BTreeMap<(String, String), PeerAuthentication> = BTreeMap::new();
    let mut drs: BTreeMap<(String, String), DestinationRule> = BTreeMap::new();
    let mut sidecars: BTreeMap<(String, String), Sidecar> = BTreeMap::new();
    let ns_of = |m: &ObjectMeta| m.namespace.clone().unwrap_or_else(|| "default".into());

    for (seq, input) in inputs.iter().enumerate() {
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
                // One port number twice would give sidecars two virtual hosts
                // and clusters of one name, which Envoy rejects whole: the
                // parser refuses such a Service; from elsewhere, the first wins.
                let mut seen = BTreeSet::new();
                let ports = spec
                    .ports
                    .iter()
                    .flatten()
                    .enumerate()
                    .filter(|(_, p)| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                    .filter(|(i, p)| {
                        let first = seen.insert(p.port);
                        if !first {
                            diags.push(Diagnostic::warning(
                                ObjectRef::new("Service", &ns, &name),
                                Some(format!("spec.ports[{i}].port")),
                                format!("duplicate port {}/TCP: only the first is used", p.port),
                            ));
                        }
                        first
                    })
                    .filter_map(|(_, p)| {
                        let port = u16::try_from(p.port).ok().filter(|&n| n != 0)?;
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
                if spec.cluster_ip.as_deref() == Some("None") {
                    headless.insert((ns.clone(), name.clone()));
                } else {
                    headless.remove(&(ns.clone(), name.clone()));
                }
                services.insert(
                    (ns.clone(), name.clone()),
                    Service {
                        namespace: ns,
                        name,
                        labels: labels(&s.metadata),
                        selector: spec.selector.clone(),
                        ports,
                        // "None" is a headless Service.
                        cluster_ip: spec
                            .cluster_ip
                            .as_deref()
                            .and_then(|ip| ip.parse::<IpAddr>().ok()),
                    },
                );
            }
            Object::Deployment(d) => {
                let ns = ns_of(&d.metadata);
                let name = d.metadata.name.clone().unwrap_or_default();
                let Some(spec) = &d.spec else { continue };
                let replicas = spec.replicas.unwrap_or(1);
                if let Some(problem) = crds::validate::replicas_problem(replicas) {
                    diags.push(Diagnostic::warning(
                        ObjectRef::new("Deployment", &ns, &name),
                        Some("spec.replicas".into()),
                        format!("{problem}; the Deployment is left out"),
                    ));
                    continue;
                }
                let tmpl = &spec.template;
                let tmeta = tmpl.metadata.clone().unwrap_or_default();
                deployments.insert(
                    (ns.clone(), name.clone()),
                    DeploymentEntry {
                        seq,
                        replicas: usize::try_from(replicas).unwrap_or(0),
                        template: Workload {
                            namespace: ns,
                            name: String::new(),
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
                            ready: true,
                            owner: Some(name),
                        },
                        annotations: tmeta.annotations.clone().unwrap_or_default(),
                    },
                );
            }
            Object::Pod(p) => {
                let ns = ns_of(&p.metadata);
                let name = p.metadata.name.clone().unwrap_or_default();
                // 0.0.0.0 is no pod's address: treated as none given.
                let ip = p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .filter(|ip| !ip.is_unspecified());
                pods.insert(
                    (ns.clone(), name.clone()),
                    (
                        seq,
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
                                ready: pod_ready(p),
                                owner: None,
                            },
                            needs_ip: ip.is_none(),
                            annotations: p.metadata.annotations.clone().unwrap_or_default(),
                            injected: pod_injected(p),
                        },
                    ),
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
                        traffic_policy: tp.map(|t| TrafficPolicy {
                            tls: t.tls.as_ref().map(client_tls),
                            // The first entry for a port applies, as in Istio.
                            port_tls: t.port_level_settings.iter().rev().fold(
                                BTreeMap::new(),
                                |mut ports, p| {
                                    if let Some(n) =
                                        p.port.as_ref().and_then(|s| u16::try_from(s.number).ok())
                                    {
                                        ports.insert(n, p.tls.as_ref().map(client_tls));
                                    }
                                    ports
                                },
                            ),
                        }),
                        subsets: spec
                            .subsets
                            .iter()
                            .map(|s| Subset {
                                name: s.name.clone(),
                                labels: s.labels.clone(),
                            })
                            .collect(),
                        meta,
                    },
                );
            }
            Object::Sidecar(sc) => {
                let meta = policy_meta(&sc.metadata, input.first_seen);
                sidecars.insert(
                    (meta.namespace.clone(), meta.name.clone()),
                    sidecar(sc, meta),
                );
            }
            Object::ServiceAccount(_) | Object::Skipped(_) => {}
        }
    }

    let pending = expand_deployments(deployments, pods, addressing, &mut diags);

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

    let workloads = address(pending, &namespaces, &config, addressing, &mut diags);
    let services = service_addresses(services, &headless, addressing);
    let mesh = Mesh::new(
        config,
        namespaces.into_values().collect(),
        services,
        workloads,
        pas.into_values().collect(),
        drs.into_values().collect(),
    )
    .with_sidecars(sidecars.into_values().collect());
    diags.sort();
    (mesh, diags)
}

/// The pod net as people write it, e.g. `127.16.0.0/16`.
fn pod_net_name(addressing: &Addressing) -> String {
    let base = u32::from(addressing.pod_net) & 0xffff_0000;
    format!("{}/16", Ipv4Addr::from(base))
}

/// The workloads of the bare pods and of the Deployments' replicas. Bare
/// pods that need an address are counted first; then Deployments, in
/// namespace/name order, while their replicas fit in the rest of the pod net.
/// One that does not fit is left out whole, with a diagnostic: half a
/// Deployment would be harder to notice, and expanding it anyway could make
/// millions of workloads (many Deployments of many replicas) that would all
/// fail to get an address.
fn expand_deployments(
    deployments: BTreeMap<(String, String), DeploymentEntry>,
    pods: BTreeMap<(String, String), (usize, PendingWorkload)>,
    addressing: &Addressing,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<(String, String), PendingWorkload> {
    let mut claimed = pods.values().filter(|(_, p)| p.needs_ip).count();
    let mut pending = pods;
    for ((ns, name), d) in deployments {
        let free = POD_NET_ADDRESSES.saturating_sub(claimed);
        if d.replicas > free {
            diags.push(Diagnostic::warning(
                ObjectRef::new("Deployment", &ns, &name),
                Some("spec.replicas".into()),
                format!(
                    "{} replicas do not fit in the pod net {}: {free} of its {POD_NET_ADDRESSES} addresses are left after the pods and the Deployments before this one (by namespace and name); the Deployment is left out",
                    d.replicas,
                    pod_net_name(addressing)
                ),
            ));
            continue;
        }
        claimed += d.replicas;
        for i in 0..d.replicas {
            let pod = format!("{name}-{i}");
            let replica = PendingWorkload {
                w: Workload {
                    name: pod.clone(),
                    ..d.template.clone()
                },
                needs_ip: true,
                annotations: d.annotations.clone(),
                injected: false,
            };
            match pending.entry((ns.clone(), pod)) {
                // A bare pod of the same name declared after the Deployment.
                Entry::Occupied(e) if e.get().0 > d.seq => {}
                Entry::Occupied(mut e) => {
                    e.insert((d.seq, replica));
                }
                Entry::Vacant(e) => {
                    e.insert((d.seq, replica));
                }
            }
        }
    }
    pending.into_iter().map(|(k, (_, p))| (k, p)).collect()
}

/// The free addresses of a pod net, handed out as linear probing would (the
/// first free host part at or after a start, wrapping), but with every run
/// of taken addresses skipped in one step: `next` links a taken slot to a
/// later candidate and is shortened on every lookup (union-find), so filling
/// the whole /16 costs about as much as filling an empty one. Plain probing
/// could take 65,534 steps per pod once the net is nearly full.
struct Pool {
    /// Slot `s` is host part `s + 1`; `next[s] == s` when free. The last
    /// entry is a sentinel past the end.
    next: Vec<u32>,
}

impl Pool {
    fn new() -> Self {
        Pool {
            next: (0..=POD_NET_ADDRESSES as u32).collect(),
        }
    }

    /// The first free slot at or after `slot`, or the sentinel.
    fn find(&mut self, slot: usize) -> usize {
        let mut root = slot;
        while let Some(&n) = self.next.get(root)
            && n as usize != root
        {
            root = n as usize;
        }
        let mut at = slot;
        while at != root {
            let Some(n) = self.next.get_mut(at) else {
                break;
            };
            let following = *n as usize;
            *n = root as u32;
            at = following;
        }
        root
    }

    fn take(&mut self, slot: usize) {
        if slot < POD_NET_ADDRESSES
            && let Some(n) = self.next.get_mut(slot)
        {
            *n = slot as u32 + 1;
        }
    }

    /// Takes host part `host` out of the pool, if it is in it.
    fn reserve(&mut self, host: u32) {
        let slot = host as usize;
        if (1..=POD_NET_ADDRESSES).contains(&slot) {
            self.take(slot - 1);
        }
    }

    /// The first free host part at or after `host`, wrapping; `None` when
    /// the pool is exhausted.
    fn allocate(&mut self, host: u32) -> Option<u32> {
        let start = (host as usize).clamp(1, POD_NET_ADDRESSES) - 1;
        let mut slot = self.find(start);
        if slot >= POD_NET_ADDRESSES {
            slot = self.find(0);
        }
        if slot >= POD_NET_ADDRESSES {
            return None;
        }
        self.take(slot);
        Some(slot as u32 + 1)
    }
}

/// Decide sidecars and give every workload its addresses. Explicit pod IPs
/// are reserved first; the others get `pod_net` + a host part hashed from
/// `namespace/name`, probing on collision, in sorted order: the same mesh
/// always gets the same addresses, and adding a workload rarely moves one.
/// A pod that finds the pod net full gets no address and is left out, with a
/// diagnostic (one per Deployment, naming its pods): never 0.0.0.0, never an
/// address another pod has.
fn address(
    pending: BTreeMap<(String, String), PendingWorkload>,
    namespaces: &BTreeMap<String, Namespace>,
    config: &MeshConfig,
    addressing: &Addressing,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Workload> {
    let base = u32::from(addressing.pod_net) & 0xffff_0000;
    let mut pool = Pool::new();
    // Explicit addresses, each with the first pod (in name order) that has it.
    let mut owners: HashMap<IpAddr, (&str, &str)> = HashMap::new();
    for ((ns, name), p) in pending.iter().filter(|(_, p)| !p.needs_ip) {
        match owners.get(&p.w.ip) {
            Some((other_ns, other)) => diags.push(Diagnostic::warning(
                ObjectRef::new("Pod", ns, name),
                Some("status.podIP".into()),
                format!(
                    "{} is also the address of pod {other_ns}/{other}; both are kept, and traffic for that address reaches one of them",
                    p.w.ip
                ),
            )),
            None => {
                owners.insert(p.w.ip, (ns, name));
            }
        }
        if let IpAddr::V4(v4) = p.w.ip
            && u32::from(v4) & 0xffff_0000 == base
        {
            pool.reserve(u32::from(v4) & 0xffff);
        }
    }
    let empty = Labels::new();
    let mut out = Vec::with_capacity(pending.len());
    // Per Deployment, or per bare pod: the pods left without an address.
    let mut unaddressed: BTreeMap<(String, Option<String>, Option<String>), Vec<String>> =
        BTreeMap::new();
    for ((ns, name), mut p) in pending {
        let ns_labels = namespaces.get(&ns).map(|n| &n.labels).unwrap_or(&empty);
        p.w.sidecar = p.injected
            || (config.sidecar_detection == SidecarDetection::Injection
                && has_sidecar(ns_labels, &p.w.labels, &p.annotations));
        if p.needs_ip {
            match pool.allocate(host_part(&format!("{ns}/{name}"))) {
                Some(host) => p.w.ip = IpAddr::V4(Ipv4Addr::from(base | host)),
                None => {
                    let bare = p.w.owner.is_none().then(|| name.clone());
                    unaddressed
                        .entry((ns, p.w.owner.clone(), bare))
                        .or_default()
                        .push(name);
                    continue;
                }
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
    let net = pod_net_name(addressing);
    for ((ns, owner, _), pods) in unaddressed {
        let diag = match owner {
            Some(deployment) => {
                const SHOWN: usize = 3;
                let mut names = pods
                    .iter()
                    .take(SHOWN)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if pods.len() > SHOWN {
                    names.push_str(&format!(" and {} more", pods.len() - SHOWN));
                }
                Diagnostic::warning(
                    ObjectRef::new("Deployment", &ns, &deployment),
                    Some("spec.replicas".into()),
                    format!(
                        "pod net {net} has no free address left ({POD_NET_ADDRESSES} in all): pods {names} get no address and are left out"
                    ),
                )
            }
            None => Diagnostic::warning(
                ObjectRef::new("Pod", &ns, pods.first().map(String::as_str).unwrap_or("")),
                Some("status.podIP".into()),
                format!(
                    "no status.podIP, and pod net {net} has no free address left ({POD_NET_ADDRESSES} in all): the pod gets no address and is left out"
                ),
            ),
        };
        diags.push(diag);
    }
    out
}

/// Gives the Services without `spec.clusterIP` (not headless ones: those
/// said "None") a stable address in `service_net`, hashed from
/// `namespace/name` and probing on collision, after the explicit ones.
fn service_addresses(
    services: BTreeMap<(String, String), Service>,
    headless: &BTreeSet<(String, String)>,
    addressing: &Addressing,
) -> Vec<Service> {
    let Some(net) = addressing.service_net else {
        return services.into_values().collect();
    };
    let base = u32::from(net) & 0xffff_0000;
    let mut pool = Pool::new();
    for s in services.values() {
        if let Some(IpAddr::V4(v4)) = s.cluster_ip
            && u32::from(v4) & 0xffff_0000 == base
        {
            pool.reserve(u32::from(v4) & 0xffff);
        }
    }
    services
        .into_iter()
        .map(|((ns, name), mut s)| {
            if s.cluster_ip.is_none() && !headless.contains(&(ns, name)) {
                s.cluster_ip = pool
                    .allocate(host_part(&format!("{}/{}", s.namespace, s.name)))
                    .map(|host| IpAddr::V4(Ipv4Addr::from(base | host)));
            }
            s
        })
        .collect()
}

/// A host part in 1..=0xfffe (never .0.0 or .255.255), stable for a name.
fn host_part(key: &str) -> u32 {
    let h = crate::xds::fnv1a(key.as_bytes());
    (h % 0xfffe) as u32 + 1
}

/// Parse YAML texts (name, text) and build the mesh; objects are "first
/// seen" in document order. For tests, benchmarks and tools that start from
/// text; errors are returned, not skipped, and so is anything the build
/// would leave out (as an error on the object it is about).
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
    let (mesh, diags) = build_mesh_with_diagnostics(&inputs, config, addressing);
    if diags.is_empty() {
        return Ok(mesh);
    }
    Err(diags
        .into_iter()
        .map(|d| object_error(&parsed, d))
        .collect())
}

/// A build diagnostic as an error on the (last) parsed object it names.
fn object_error(parsed: &[crds::Parsed], d: Diagnostic) -> crds::ObjectError {
    let source = parsed.iter().rev().find(|p| {
        p.object.kind() == d.object.kind
            && p.object.metadata().is_some_and(|m| {
                m.namespace.as_deref().unwrap_or("default") == d.object.namespace
                    && m.name.as_deref() == Some(d.object.name.as_str())
            })
    });
    crds::ObjectError {
        file: source.map(|p| p.file.clone()).unwrap_or_default(),
        index: source.map(|p| p.index).unwrap_or(0),
        item: source.and_then(|p| p.item),
        kind: Some(d.object.kind),
        namespace: Some(d.object.namespace),
        name: Some(d.object.name),
        field: d.field,
        reason: d.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::validate::MAX_REPLICAS;
    use std::collections::HashSet;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Pods as a cluster reports them: foo is labelled for injection,
    /// `plain` was created before that (no sidecar in its spec), `injected`
    /// has the istio-proxy container, `native` a native-sidecar init
    /// container, `labelled` only the tlsMode label; `starting` is injected
    /// but not Ready yet and `leaving` is being deleted.
    const CLUSTER_PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: foo}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: foo, labels: {app: web}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: injected, namespace: foo, labels: {app: web}}
spec: {containers: [{name: app, image: app}, {name: istio-proxy, image: envoy}]}
status: {podIP: 10.0.0.2, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: native, namespace: foo, labels: {app: web}}
spec:
  initContainers: [{name: istio-proxy, image: envoy, restartPolicy: Always}]
  containers: [{name: app, image: app}]
status: {podIP: 10.0.0.3, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: labelled, namespace: foo, labels: {app: web, security.istio.io/tlsMode: istio}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.0.0.4, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: foo, labels: {app: web}}
spec: {containers: [{name: app, image: app}, {name: istio-proxy, image: envoy}]}
status: {podIP: 10.0.0.5, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: leaving, namespace: foo, labels: {app: web}, deletionTimestamp: "2026-01-01T00:00:00Z"}
spec: {containers: [{name: app, image: app}, {name: istio-proxy, image: envoy}]}
status: {podIP: 10.0.0.6, conditions: [{type: Ready, status: "True"}]}
"#;

    fn cluster_mesh(detection: SidecarDetection) -> Mesh {
        let config = MeshConfig {
            sidecar_detection: detection,
            ..MeshConfig::default()
        };
        let addressing = Addressing {
            pod_net: Ipv4Addr::new(127, 16, 0, 0),
            app_net: None,
            service_net: None,
        };
        mesh_from_yaml(
            &[("pods.yaml".into(), CLUSTER_PODS.into())],
            config,
            &addressing,
        )
        .expect("valid pods")
    }

    fn sidecars(mesh: &Mesh) -> Vec<&str> {
        mesh.workloads
            .iter()
            .filter(|w| w.sidecar)
            .map(|w| w.name.as_str())
            .collect()
    }

    #[test]
    fn cluster_pods_have_a_sidecar_only_if_their_spec_shows_one() {
        let mesh = cluster_mesh(SidecarDetection::PodSpec);
        assert_eq!(
            sidecars(&mesh),
            ["injected", "labelled", "leaving", "native", "starting"]
        );
        // From files, the namespace label still injects the plain pod.
        let mesh = cluster_mesh(SidecarDetection::Injection);
        assert_eq!(sidecars(&mesh).len(), 6);
    }

    #[test]
    fn only_ready_pods_are_endpoints_but_every_pod_keeps_its_own_config() {
        let mesh = cluster_mesh(SidecarDetection::PodSpec);
        let endpoints: Vec<&str> = mesh.index.service_endpoints[0]
            .iter()
            .map(|&w| mesh.workloads[w].name.as_str())
            .collect();
        assert_eq!(endpoints, ["injected", "labelled", "native", "plain"]);
        for name in ["starting", "leaving"] {
            let (wi, w) = mesh.workload("foo", name).expect("still a workload");
            assert!(!w.ready, "{name}");
            assert_eq!(
                mesh.index.workload_services[wi],
                [0],
                "{name} keeps its inbound ports"
            );
        }
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
            service_net: None,
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

    fn deployment(ns: &str, name: &str, replicas: i32) -> Object {
        use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
        use k8s_openapi::api::core::v1::PodTemplateSpec;
        Object::Deployment(Box::new(Deployment {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(l(&[("app", name)])),
                        ..Default::default()
                    }),
                    spec: None,
                },
                ..Default::default()
            }),
            status: None,
        }))
    }

    fn pod(ns: &str, name: &str, ip: Option<&str>) -> Object {
        use k8s_openapi::api::core::v1::{Pod, PodStatus};
        Object::Pod(Box::new(Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: ip.map(|ip| PodStatus {
                pod_ip: Some(ip.into()),
                ..Default::default()
            }),
        }))
    }

    fn build(objects: &[Object]) -> (Mesh, Vec<Diagnostic>) {
        let inputs: Vec<Input<'_>> = objects
            .iter()
            .map(|object| Input {
                object,
                first_seen: 0,
            })
            .collect();
        build_mesh_with_diagnostics(&inputs, MeshConfig::default(), &Addressing::default())
    }

    /// Every workload has an address of its own, and never 0.0.0.0.
    fn assert_addresses_unique(mesh: &Mesh) {
        let mut seen = HashMap::new();
        for w in &mesh.workloads {
            assert!(
                !w.ip.is_unspecified(),
                "{}/{} has no address",
                w.namespace,
                w.name
            );
            if let Some(other) = seen.insert(w.ip, &w.name) {
                panic!("{} and {other} share {}", w.name, w.ip);
            }
        }
    }

    #[test]
    fn huge_replicas_are_a_diagnostic_naming_the_deployment_not_millions_of_workloads() {
        let objects = [
            deployment("shop", "web", 2),
            // A later, broken version: the earlier one stays in force.
            deployment("shop", "web", i32::MAX),
            deployment("shop", "api", MAX_REPLICAS + 1),
            deployment("shop", "db", -1),
            deployment("shop", "cache", 1),
        ];
        let started = std::time::Instant::now();
        let (mesh, diags) = build(&objects);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let names: Vec<&str> = mesh.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["cache-0", "web-0", "web-1"]);
        let about: Vec<(String, Option<&str>)> = diags
            .iter()
            .map(|d| (d.object.to_string(), d.field.as_deref()))
            .collect();
        assert_eq!(
            about,
            [
                ("Deployment shop/api".to_string(), Some("spec.replicas")),
                ("Deployment shop/db".to_string(), Some("spec.replicas")),
                ("Deployment shop/web".to_string(), Some("spec.replicas")),
            ]
        );
        assert_eq!(
            diags[2].to_string(),
            "warning: Deployment shop/web: spec.replicas: replicas 2147483647 is more than 1000, the most \
             this control plane runs for one Deployment (each replica is a workload with its own address, \
             certificate and sidecar config); the Deployment is left out"
        );
    }

    #[test]
    fn deployments_that_do_not_fit_in_the_pod_net_are_left_out_whole() {
        // 70 Deployments of 1,000 replicas: 65 fit in 65,534 addresses.
        let objects: Vec<Object> = (0..70)
            .map(|i| deployment("big", &format!("d{i:02}"), MAX_REPLICAS))
            .collect();
        let (mesh, diags) = build(&objects);
        assert_eq!(mesh.workloads.len(), 65 * 1000);
        assert_addresses_unique(&mesh);
        let left_out: Vec<String> = diags.iter().map(|d| d.object.name.clone()).collect();
        assert_eq!(left_out, ["d65", "d66", "d67", "d68", "d69"]);
        assert_eq!(diags[0].field.as_deref(), Some("spec.replicas"));
        assert_eq!(
            diags[0].message,
            "1000 replicas do not fit in the pod net 127.16.0.0/16: 534 of its 65534 addresses are left \
             after the pods and the Deployments before this one (by namespace and name); the Deployment is left out"
        );
    }

    #[test]
    fn a_full_pod_net_leaves_pods_out_with_a_diagnostic_never_0_0_0_0_or_a_shared_address() {
        // Pods with their own addresses take host parts 1..=65533 of the pod
        // net; one address is left for the 3 replicas and a bare pod.
        let mut objects: Vec<Object> = (1..POD_NET_ADDRESSES as u32)
            .map(|host| {
                let ip = Ipv4Addr::from(0x7f10_0000 | host).to_string();
                pod("full", &format!("p{host:05}"), Some(&ip))
            })
            .collect();
        objects.push(deployment("shop", "web", 3));
        objects.push(pod("shop", "zz-bare", None));
        let (mesh, diags) = build(&objects);
        assert_addresses_unique(&mesh);
        let (_, web0) = mesh
            .workload("shop", "web-0")
            .expect("web-0 got the last address");
        assert_eq!(web0.ip.to_string(), "127.16.255.254");
        assert!(mesh.workload("shop", "web-1").is_none());
        assert!(mesh.workload("shop", "zz-bare").is_none());
        let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "warning: Deployment shop/web: spec.replicas: pod net 127.16.0.0/16 has no free address left \
                 (65534 in all): pods web-1, web-2 get no address and are left out",
                "warning: Pod shop/zz-bare: status.podIP: no status.podIP, and pod net 127.16.0.0/16 has no \
                 free address left (65534 in all): the pod gets no address and is left out",
            ]
        );
    }

    #[test]
    fn a_shared_pod_ip_is_reported_and_0_0_0_0_counts_as_no_ip() {
        let objects = [
            pod("a", "one", Some("10.0.0.9")),
            pod("b", "two", Some("10.0.0.9")),
            pod("a", "zero", Some("0.0.0.0")),
        ];
        let (mesh, diags) = build(&objects);
        assert_eq!(mesh.workloads.len(), 3);
        let (_, zero) = mesh.workload("a", "zero").expect("zero");
        assert_eq!(zero.ip.to_string()[..7], *"127.16.");
        let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "warning: Pod b/two: status.podIP: 10.0.0.9 is also the address of pod a/one; both are kept, \
              and traffic for that address reaches one of them"
            ]
        );
    }

    #[test]
    fn a_bare_pod_declared_after_a_deployment_replaces_its_replica_and_before_it_does_not() {
        let before = [
            pod("shop", "web-0", Some("10.0.0.1")),
            deployment("shop", "web", 1),
        ];
        let (mesh, _) = build(&before);
        let (_, w) = mesh.workload("shop", "web-0").expect("web-0");
        assert_eq!(w.owner.as_deref(), Some("web"));
        let after = [
            deployment("shop", "web", 1),
            pod("shop", "web-0", Some("10.0.0.1")),
        ];
        let (mesh, _) = build(&after);
        let (_, w) = mesh.workload("shop", "web-0").expect("web-0");
        assert_eq!(
            (w.owner.as_deref(), w.ip.to_string()),
            (None, "10.0.0.1".into())
        );
    }

    #[test]
    fn a_service_port_given_twice_is_used_once_with_a_diagnostic() {
        use k8s_openapi::api::core::v1::{Service as K8sService, ServicePort, ServiceSpec};
        let port = |name: &str, port: i32| ServicePort {
            name: Some(name.into()),
            port,
            ..Default::default()
        };
        let svc = Object::Service(Box::new(K8sService {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(l(&[("app", "web")])),
                ports: Some(vec![port("http", 80), port("web", 80), port("zero", 0)]),
                ..Default::default()
            }),
            status: None,
        }));
        let (mesh, diags) = build(&[svc]);
        let ports: Vec<(&str, u16)> = mesh.services[0]
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect();
        assert_eq!(ports, [("http", 80)]);
        let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "warning: Service shop/web: spec.ports[1].port: duplicate port 80/TCP: only the first is used"
            ]
        );
    }

    /// Linear probing as the pool replaces it: first free at or after
    /// `start`, wrapping.
    fn probe(taken: &mut [bool], start: usize) -> Option<usize> {
        let n = taken.len();
        let slot = (0..n).map(|k| (start + k) % n).find(|&s| !taken[s])?;
        taken[slot] = true;
        Some(slot)
    }

    #[test]
    fn the_pool_hands_out_what_linear_probing_would_and_says_when_it_is_full() {
        let mut pool = Pool::new();
        let mut taken = vec![false; POD_NET_ADDRESSES];
        // Reserved addresses (pods' own IPs) are skipped.
        for host in [5u32, 6, 7, POD_NET_ADDRESSES as u32] {
            pool.reserve(host);
            taken[host as usize - 1] = true;
        }
        // A deterministic spread of starts, bunched so runs form and wrap
        // (compared for the first few thousand: plain probing is slow).
        let mut x: u64 = 12345;
        for _ in 0..3_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let host = if x.is_multiple_of(4) {
                POD_NET_ADDRESSES as u32 - 1
            } else {
                (x >> 33) as u32 % 64 + 1
            };
            let want = probe(&mut taken, host as usize - 1).map(|s| s as u32 + 1);
            assert_eq!(pool.allocate(host), want);
        }
        // The rest of the net fills up, each address once.
        let mut seen = HashSet::new();
        for host in 1..=POD_NET_ADDRESSES as u32 {
            if let Some(got) = pool.allocate(host) {
                assert!(!taken[got as usize - 1] && seen.insert(got), "{got} twice");
            }
        }
        assert_eq!(seen.len(), POD_NET_ADDRESSES - 3_004);
        assert_eq!(pool.allocate(1), None, "every address is taken");
        assert_eq!(pool.allocate(POD_NET_ADDRESSES as u32), None);
    }
}
