//! The objects of the mesh model: namespaces, services, workloads and the
//! two policy kinds, as plain data.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

pub type Labels = BTreeMap<String, String>;

/// Mesh-wide settings (Istio's meshConfig subset this project honours).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// Where mesh-wide policies live (`meshConfig.rootNamespace`).
    pub root_namespace: String,
    pub trust_domain: String,
    /// The DNS suffix of services: `svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// Port of the outbound HTTP listener each sidecar binds on its own IP.
    pub outbound_port: u16,
    /// How a Pod's sidecar is recognised.
    pub sidecar_detection: SidecarDetection,
    /// The CA bundle, on the sidecar's filesystem, that SIMPLE and MUTUAL
    /// origination verify the server against when a DestinationRule names
    /// no `caCertificates`: istio-agent's `file-root:system` (the OS bundle;
    /// `VERIFY_CERTIFICATE_AT_CLIENT` is on by default). Stock Envoy has no
    /// agent to find it, so the path is configuration (`serve --trust-bundle`).
    pub trust_bundle: String,
}

/// Where Debian, Ubuntu and most container images keep the OS trust bundle:
/// the first path Istio's `GetOSRootFilePath` tries.
pub const DEFAULT_TRUST_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            outbound_port: 15001,
            sidecar_detection: SidecarDetection::Injection,
            trust_bundle: DEFAULT_TRUST_BUNDLE.into(),
        }
    }
}

/// How the model decides that a Pod has a sidecar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SidecarDetection {
    /// Config files describe pods before injection: Istio's injection rules
    /// decide (namespace label, `sidecar.istio.io/inject`), and a pod that
    /// was already injected (see [`SidecarDetection::PodSpec`]) counts too.
    #[default]
    Injection,
    /// Pods read from a cluster were injected (or not) when they were
    /// created, so only the pod itself says: the label
    /// `security.istio.io/tlsMode: istio`, a container named `istio-proxy`,
    /// or an `istio-proxy` init container with `restartPolicy: Always` (a
    /// native sidecar). A namespace labelled after the pod was created does
    /// not give it a sidecar.
    PodSpec,
}

/// A reference to a user object, as diagnostics and decisions name it.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// How the traffic on a service port is handled by the sidecars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (also the choice for undeclared protocols, see `Protocol::infer`).
    Http,
    /// HTTP/2 or gRPC: the upstream speaks h2.
    Http2,
    /// Opaque TCP: no HTTP connection manager, so no XFCC.
    Tcp,
}

impl Protocol {
    /// Istio's protocol selection: `appProtocol` first, then the port name's
    /// prefix before `-`. Undeclared ports are treated as HTTP; Istio would
    /// sniff them, which the explicit-bind layout does not do yet.
    pub fn infer(port_name: &str, app_protocol: Option<&str>) -> Protocol {
        let word = app_protocol
            .unwrap_or_else(|| port_name.split('-').next().unwrap_or(""))
            .to_ascii_lowercase();
        match word.as_str() {
            "http2" | "grpc" | "grpc-web" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "kubernetes.io/wss" => {
                Protocol::Tcp
            }
            _ => Protocol::Http,
        }
    }

    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per workload.
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: TargetPort,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// The Service object's own labels (what `--to` selects on).
    pub labels: Labels,
    /// `None`: a Service without selector has no endpoints we manage.
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
    /// `spec.clusterIP` (`None` for a headless Service, or one without an
    /// address and no `Addressing::service_net` to take one from). Sidecars
    /// with iptables capture match TCP service ports by it.
    pub cluster_ip: Option<IpAddr>,
}

impl Service {
    pub fn fqdn(&self, cluster_domain: &str) -> String {
        format!("{}.{}.svc.{cluster_domain}", self.name, self.namespace)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    /// The pod name (for a Deployment's replicas, `DEPLOYMENT-N`).
    pub name: String,
    pub labels: Labels,
    pub service_account: String,
    pub ip: IpAddr,
    /// Where the application listens; `None` means 127.0.0.1, as in a pod
    /// whose app binds localhost. The local runner gives each workload its
    /// own address because all of them share one host.
    pub app_ip: Option<IpAddr>,
    pub ports: Vec<ContainerPort>,
    pub sidecar: bool,
    /// Whether the pod is Ready (its `Ready` condition is `True` and it is
    /// not being deleted). Only ready workloads are endpoints of services;
    /// a pod that is not ready still gets its own sidecar config, since its
    /// readiness may wait on it. Pods without conditions (config files)
    /// count as ready.
    pub ready: bool,
    /// The Deployment this pod belongs to, if any.
    pub owner: Option<String>,
}

impl Workload {
    /// Resolve a Service's target port against this workload's container ports.
    pub fn resolve_target(&self, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => self
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.port),
        }
    }

    /// The name users see for this workload: its Deployment, else the pod.
    pub fn display_name(&self) -> &str {
        self.owner.as_deref().unwrap_or(&self.name)
    }
}

/// Metadata every policy carries: who it is and how old it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyMeta {
    pub namespace: String,
    pub name: String,
    /// Seconds since the epoch: `metadata.creationTimestamp`, or when the
    /// object was first seen. Decides which of two conflicting policies wins.
    pub created: i64,
}

impl PolicyMeta {
    /// Istio's order: oldest first, then name, then namespace.
    pub fn age_key(&self) -> (i64, &str, &str) {
        (self.created, &self.name, &self.namespace)
    }
}

/// PeerAuthentication mTLS mode (Istio's enum, by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeerMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthentication {
    pub meta: PolicyMeta,
    /// `None` when absent or with empty matchLabels (Istio treats both alike).
    pub selector: Option<Labels>,
    pub mode: PeerMode,
    /// Keyed by workload (target/container) port.
    pub port_modes: BTreeMap<u16, PeerMode>,
}

impl PeerAuthentication {
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new("PeerAuthentication", &self.meta.namespace, &self.meta.name)
    }
}

/// DestinationRule `tls.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

impl ClientTlsMode {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "DISABLE",
            ClientTlsMode::Simple => "SIMPLE",
            ClientTlsMode::Mutual => "MUTUAL",
            ClientTlsMode::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

/// A DestinationRule's `ClientTLSSettings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientTls {
    pub mode: Option<ClientTlsMode>,
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub credential_name: Option<String>,
    pub insecure_skip_verify: bool,
}

impl ClientTls {
    pub fn mode(&self) -> ClientTlsMode {
        self.mode.unwrap_or(ClientTlsMode::Disable)
    }
}

/// The part of a DestinationRule's `trafficPolicy` that decides client TLS.
/// Present or not matters on its own: merging rules for one host adopts a
/// newer rule's policy only when the older one has none at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficPolicy {
    /// `tls`; `None` leaves auto mTLS in charge.
    pub tls: Option<ClientTls>,
    /// `portLevelSettings` by service port. An entry replaces the top-level
    /// settings wholesale, so `Some(None)` means "auto" for that port.
    pub port_tls: BTreeMap<u16, Option<ClientTls>>,
}

/// A named subset of a host's endpoints. Nothing routes to subsets yet (no
/// VirtualService); they are kept for merging and for what the debug
/// endpoints show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subset {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationRule {
    pub meta: PolicyMeta,
    /// As written; short names are resolved against the rule's namespace.
    pub host: String,
    pub export_to: Vec<String>,
    pub workload_selector: Option<Labels>,
    /// `trafficPolicy`, if the rule has one.
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
}

impl DestinationRule {
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new("DestinationRule", &self.meta.namespace, &self.meta.name)
    }
}

/// One `egress` listener of a Sidecar, as far as scoping goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressListener {
    /// `port.number` when it restricts the imported service ports: Istio
    /// ignores port 0 (a Unix socket) and `HTTP_PROXY` listeners for this.
    pub port: Option<u16>,
    /// `namespace/dnsName` entries as written.
    pub hosts: Vec<String>,
}

/// A Sidecar: which outbound services the workloads it applies to get
/// configuration for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sidecar {
    pub meta: PolicyMeta,
    /// `None` without `workloadSelector`; `Some` (even empty) with one, as
    /// Istio tests presence.
    pub selector: Option<Labels>,
    /// Empty means Istio's default, one listener importing `*/*`.
    pub egress: Vec<EgressListener>,
    /// Fields present but not acted on here, with why, for diagnostics.
    pub ignored: Vec<(String, String)>,
}

impl Sidecar {
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new("Sidecar", &self.meta.namespace, &self.meta.name)
    }
}
