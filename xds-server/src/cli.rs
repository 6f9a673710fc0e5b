//! The command line. Every flag can also come from an environment variable
//! (`XDS_...`, shown in `--help`).

use crate::ads::Limits;
use crate::bootstrap::{
    BootstrapParams, HostPort, bootstrap_yaml, write_client_credentials, write_credentials,
};
use crate::ca::CertificateAuthority;
use crate::identity::Identity;
use crate::server::{KubeSource, ServerOptions, XdsSecurity, start};
use crate::snapshots::Settings;
use crate::source::files::FileLoader;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use translator::model::MeshConfig;
use translator::model::build::Addressing;

#[derive(Parser, Debug)]
#[command(
    name = "xds-server",
    version,
    about = "An Envoy xDS control plane that enforces Istio-compatible mutual TLS between workloads, streaming config and certificates over ADS to stock Envoy sidecars."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve ADS (state of the world and delta), SDS certificates and the debug endpoints.
    Serve(ServeArgs),
    /// Print the Envoy bootstrap (YAML) for one workload.
    Bootstrap(BootstrapArgs),
    /// Check YAML files or directories, like `kubectl apply --dry-run`; exit 1 on any invalid object.
    Validate {
        /// Files or directories (read recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Print the CustomResourceDefinitions (PeerAuthentication, DestinationRule, Sidecar).
    Crds,
    /// Run a whole mesh on this machine: the control plane, a stock Envoy per sidecar, an echo app per workload; print the connectivity matrix.
    Up(UpArgs),
    /// Program this network namespace's nat table to capture TCP traffic into the sidecar, like Istio's istio-iptables in REDIRECT mode (needs root or CAP_NET_ADMIN, and iptables).
    Iptables(IptablesArgs),
    /// Print manifests with a stock-Envoy sidecar injected into every pod template that should get one, like `istioctl kube-inject`.
    Inject(InjectArgs),
    /// Explain one request: the client's sidecar, the DestinationRules considered and merged, the TLS sent to each endpoint and why, the server's mode on the target port and its policy, and the predicted outcome.
    Explain(ExplainArgs),
}

/// `xds-server inject`: where the manifests are and what the sidecar runs.
#[derive(Args, Debug, Clone)]
pub struct InjectArgs {
    /// A file or directory of manifests (read recursively, like `kubectl apply -f`); may repeat.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The image with xds-server (and iptables), for the init containers istio-init and xds-bootstrap.
    #[arg(long, env = "XDS_INJECT_IMAGE", default_value_t = crate::inject::template::Settings::default().image)]
    pub image: String,
    /// The Envoy image of the istio-proxy container.
    #[arg(long, env = "XDS_INJECT_PROXY_IMAGE", default_value_t = crate::inject::template::Settings::default().proxy_image)]
    pub proxy_image: String,
    /// The control plane's ADS address, as pods reach it.
    #[arg(long, default_value_t = crate::inject::template::Settings::default().xds_addr)]
    pub xds_addr: String,
    /// The control plane's certificate endpoint, as pods reach it.
    #[arg(long, default_value_t = crate::inject::template::Settings::default().ca_addr)]
    pub ca_addr: String,
    /// Envoy's --log-level in the sidecar.
    #[arg(long, default_value_t = crate::inject::template::Settings::default().proxy_log_level)]
    pub proxy_log_level: String,
    /// Write the result to this file instead of standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

/// `inject`: every document of the files, pod templates injected, as one
/// multi-document YAML; what was injected and why not, on stderr. Any
/// unreadable file or uninjectable object is an error and nothing is
/// printed: half an injected manifest applied would be worse than none.
pub fn inject(args: &InjectArgs) -> anyhow::Result<()> {
    use crate::inject::{Action, inject_documents, namespace_labels, template::Settings};
    let (texts, mut load_errors) =
        crate::source::files::read_texts(&args.files, crate::source::files::DEFAULT_MAX_FILE_BYTES);
    let mut docs = Vec::new();
    for (name, text) in &texts {
        let (read, errors) = crds::read_documents(text, name);
        load_errors.extend(errors);
        docs.extend(read.into_iter().map(|(_, v)| v));
    }
    if !load_errors.is_empty() {
        for e in &load_errors {
            eprintln!("error: {e}");
        }
        bail!(
            "{} problem(s) reading the manifests; nothing printed",
            load_errors.len()
        );
    }
    let settings = Settings {
        image: args.image.clone(),
        proxy_image: args.proxy_image.clone(),
        xds_addr: args.xds_addr.clone(),
        ca_addr: args.ca_addr.clone(),
        proxy_log_level: args.proxy_log_level.clone(),
    };
    let namespaces = namespace_labels(&docs);
    let report = match inject_documents(&mut docs, &namespaces, &settings) {
        Ok(report) => report,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            bail!(
                "{} object(s) cannot be injected; nothing printed",
                errors.len()
            );
        }
    };
    let mut out = String::new();
    for d in &docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d).context("writing YAML")?);
    }
    for d in &report.decisions {
        match &d.action {
            Action::Injected(mode) => eprintln!("injected {} ({mode})", d.object),
            Action::Left(why) => eprintln!("left     {}: {why}", d.object),
        }
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    match &args.output {
        Some(path) => crate::ca::write_atomically(path, out.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display())),
        None => {
            print!("{out}");
            Ok(())
        }
    }
}

/// `xds-server iptables`: what Istio's init container passes to
/// istio-iptables, with Istio's defaults.
#[derive(Args, Debug, Clone)]
pub struct IptablesArgs {
    /// The uid Envoy runs as: its own connections are never captured.
    #[arg(long, default_value_t = crate::capture::rules::DEFAULT_PROXY_ID)]
    pub proxy_uid: u32,
    /// The gid Envoy runs as: its own connections are never captured.
    #[arg(long, default_value_t = crate::capture::rules::DEFAULT_PROXY_ID)]
    pub proxy_gid: u32,
    /// Inbound ports redirected to Envoy's 15006: `*` for all, a comma-separated list, or '' for none.
    #[arg(long, default_value = "*", value_parser = parse_inbound_ports)]
    pub inbound_ports: crate::capture::InboundPorts,
    /// Inbound ports left alone (comma-separated), besides Envoy's own 15090, 15021, 15020 (always excluded) and 15008.
    #[arg(long, default_value = "", value_parser = parse_port_list)]
    pub exclude_inbound_ports: PortList,
    /// Destinations (IPv4 CIDRs or addresses, comma-separated) the application reaches directly, not through Envoy.
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub exclude_outbound_cidrs: Vec<crate::capture::Ipv4Cidr>,
    /// Print the iptables-restore input and change nothing.
    #[arg(long, conflicts_with = "cleanup")]
    pub dry_run: bool,
    /// Remove our chains (ISTIO_INBOUND, ISTIO_REDIRECT, ISTIO_IN_REDIRECT, ISTIO_OUTPUT) and the rules jumping to them; nothing else.
    #[arg(long)]
    pub cleanup: bool,
}

/// A comma-separated list of ports (clap needs one value for a default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

fn parse_inbound_ports(s: &str) -> Result<crate::capture::InboundPorts, String> {
    s.parse()
}

fn parse_port_list(s: &str) -> Result<PortList, String> {
    crate::capture::rules::parse_ports(s).map(PortList)
}

fn parse_cidr(s: &str) -> Result<crate::capture::Ipv4Cidr, String> {
    s.parse()
}

impl IptablesArgs {
    pub fn capture_config(&self) -> crate::capture::CaptureConfig {
        crate::capture::CaptureConfig {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            inbound_ports: self.inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.0.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
        }
    }
}

/// `iptables`: print (`--dry-run`), remove (`--cleanup`) or install the
/// capture rules in the current network namespace.
pub fn iptables(args: &IptablesArgs) -> anyhow::Result<()> {
    use crate::capture::{apply, rules};
    let cfg = args.capture_config();
    if args.dry_run {
        print!("{}", rules::restore_script(&rules::rules(&cfg), &[]));
        return Ok(());
    }
    if args.cleanup {
        apply::cleanup()?;
        return Ok(());
    }
    apply::install(&cfg)?;
    Ok(())
}

/// Settings shared by every command that builds the mesh model.
#[derive(Args, Debug, Clone)]
pub struct MeshArgs {
    /// Namespace of mesh-wide policies (Istio's meshConfig.rootNamespace).
    #[arg(long, env = "XDS_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    /// Trust domain of SPIFFE identities.
    #[arg(long, env = "XDS_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Port of the outbound HTTP listener on each sidecar's IP.
    #[arg(long, env = "XDS_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// A /16 that gives pods without status.podIP (e.g. Deployment replicas) a stable address.
    #[arg(long, env = "XDS_POD_NET", default_value = "127.16.0.0")]
    pub pod_net: Ipv4Addr,
}

impl MeshArgs {
    pub fn mesh_config(&self) -> MeshConfig {
        MeshConfig {
            root_namespace: self.root_namespace.clone(),
            trust_domain: self.trust_domain.clone(),
            outbound_port: self.outbound_port,
            ..MeshConfig::default()
        }
    }

    pub fn addressing(&self) -> Addressing {
        Addressing {
            pod_net: self.pod_net,
            app_net: None,
            service_net: None,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Directory or file of Kubernetes YAML (Namespaces, Services, Deployments, Pods, PeerAuthentications, DestinationRules, Sidecars); may repeat. Watched for changes.
    #[arg(
        long = "config-dir",
        env = "XDS_CONFIG_DIR",
        value_delimiter = ',',
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    pub config_dirs: Vec<PathBuf>,
    /// Watch a Kubernetes API server (in-cluster config, else $KUBECONFIG or ~/.kube/config) instead of --config-dir: Namespaces, Services, Pods, PeerAuthentications, DestinationRules, Sidecars. A pod has a sidecar when its spec shows one (label security.istio.io/tlsMode=istio or an istio-proxy container); only Ready pods are endpoints.
    #[arg(long, env = "XDS_KUBE")]
    pub kube: bool,
    /// The kubeconfig for --kube.
    #[arg(long, env = "XDS_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kube: keep the root CA in this Secret (NAMESPACE/NAME), created if absent (create-only, so replicas starting together share one root), instead of --state-dir.
    #[arg(long, env = "XDS_CA_SECRET", value_parser = parse_namespaced_name)]
    pub ca_secret: Option<(String, String)>,
    /// With --kube: address of the certificate endpoint (HTTPS) where a pod's init step exchanges its service-account token for its bootstrap client certificate (`xds-server bootstrap --ca-addr`).
    #[arg(long, env = "XDS_CA_ADDR", default_value = "127.0.0.1:15012")]
    pub ca_addr: SocketAddr,
    /// With --kube: the audience a pod's token must be issued for (checked with TokenReview); may repeat.
    #[arg(long, env = "XDS_TOKEN_AUDIENCE", value_delimiter = ',', default_value = crate::enroll::DEFAULT_AUDIENCE)]
    pub token_audience: Vec<String>,
    /// With --kube: also serve the sidecar injection webhook (POST /inject, AdmissionReview v1) on --ca-addr, for the MutatingWebhookConfiguration in deploy/: pods are injected at creation as `xds-server inject` rewrites manifests.
    #[arg(long, env = "XDS_INJECT_WEBHOOK")]
    pub inject_webhook: bool,
    /// With --inject-webhook: the image with xds-server (and iptables) for the init containers.
    #[arg(long, env = "XDS_INJECT_IMAGE", default_value_t = crate::inject::template::Settings::default().image)]
    pub inject_image: String,
    /// With --inject-webhook: the Envoy image of the istio-proxy container.
    #[arg(long, env = "XDS_INJECT_PROXY_IMAGE", default_value_t = crate::inject::template::Settings::default().proxy_image)]
    pub inject_proxy_image: String,
    /// With --inject-webhook: the ADS and certificate addresses injected pods use. Default: xds-server.ROOT_NAMESPACE.svc:15010 and :15012.
    #[arg(long, env = "XDS_INJECT_XDS_ADDR")]
    pub inject_xds_addr: Option<String>,
    #[arg(long, env = "XDS_INJECT_CA_ADDR", hide = true)]
    pub inject_ca_addr: Option<String>,
    /// With --kube: lifetime of the bootstrap client certificates the certificate endpoint signs.
    #[arg(long, env = "XDS_BOOTSTRAP_CERT_LIFETIME", default_value = "720h", value_parser = parse_duration)]
    pub bootstrap_cert_lifetime: Duration,
    /// Address of the ADS gRPC server.
    #[arg(long, env = "XDS_ADDR", default_value = "127.0.0.1:15010")]
    pub xds_addr: SocketAddr,
    /// Address of the debug and metrics HTTP server.
    #[arg(long, env = "XDS_DEBUG_ADDR", default_value = "127.0.0.1:15014")]
    pub debug_addr: SocketAddr,
    /// Where the CA root is kept across restarts.
    #[arg(long, env = "XDS_STATE_DIR", default_value = ".xds-state")]
    pub state_dir: PathBuf,
    /// Workload certificate lifetime (e.g. 24h, 30m, 10s); re-issued at half of it.
    #[arg(long, env = "XDS_CERT_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub cert_lifetime: Duration,
    /// Quiet time before a burst of config changes is translated and pushed (e.g. 100ms).
    #[arg(long, env = "XDS_DEBOUNCE", default_value = "100ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Enable POST /debug/test/inject-invalid and /debug/test/clear, which push a listener Envoy must reject (fault injection for tests; never in production).
    #[arg(long, env = "XDS_TEST_HOOKS")]
    pub enable_test_hooks: bool,
    /// Serve plaintext xDS and trust the node id each client sends (anyone who can connect gets any workload's key): refused on any address but loopback. Default: mutual TLS, the stream's identity being its client certificate's.
    #[arg(long, env = "XDS_INSECURE")]
    pub insecure_xds: bool,
    /// CA bundle on the sidecars' filesystem that DestinationRule SIMPLE and MUTUAL origination verify servers against when the rule names no caCertificates (Istio's system trust bundle).
    #[arg(long, env = "XDS_TRUST_BUNDLE", default_value = translator::model::DEFAULT_TRUST_BUNDLE)]
    pub trust_bundle: PathBuf,
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What a client of the xDS port can make the server hold or do; the
/// defaults and why are in `ads::limits`.
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest gRPC request message accepted, in bytes; a larger one ends its stream (OUT_OF_RANGE).
    #[arg(long, env = "XDS_MAX_REQUEST_BYTES", default_value_t = Limits::DEFAULT.max_request_bytes)]
    pub max_request_bytes: usize,
    /// Largest gRPC response message sent, in bytes; a larger one ends its stream with a warning.
    #[arg(long, env = "XDS_MAX_RESPONSE_BYTES", default_value_t = Limits::DEFAULT.max_response_bytes)]
    pub max_response_bytes: usize,
    /// Bytes of framed responses not yet written, all streams together; past it a stream's next push waits.
    #[arg(long, env = "XDS_MAX_PENDING_PUSH_BYTES", default_value_t = Limits::DEFAULT.max_pending_push_bytes)]
    pub max_pending_push_bytes: usize,
    /// Longest resource name (and node id) a request may carry, in bytes.
    #[arg(long, env = "XDS_MAX_NAME_BYTES", default_value_t = Limits::DEFAULT.max_name_bytes)]
    pub max_name_bytes: usize,
    /// Most resource names one request may carry.
    #[arg(long, env = "XDS_MAX_NAMES_PER_REQUEST", default_value_t = Limits::DEFAULT.max_names_per_request)]
    pub max_names_per_request: usize,
    /// Most resource names one delta stream may be subscribed to.
    #[arg(long, env = "XDS_MAX_DELTA_SUBSCRIPTIONS", default_value_t = Limits::DEFAULT.max_delta_subscriptions)]
    pub max_delta_subscriptions: usize,
    /// HTTP/2 streams per xDS connection (an Envoy uses one).
    #[arg(long, env = "XDS_MAX_STREAMS_PER_CONNECTION", default_value_t = Limits::DEFAULT.max_streams_per_connection)]
    pub max_streams_per_connection: u32,
    /// Open xDS connections; more are closed right after accept.
    #[arg(long, env = "XDS_MAX_CONNECTIONS", default_value_t = Limits::DEFAULT.max_connections)]
    pub max_connections: usize,
    /// TLS handshakes on the xDS port in progress at once; more wait.
    #[arg(long, env = "XDS_MAX_TLS_HANDSHAKES", default_value_t = Limits::DEFAULT.max_tls_handshakes)]
    pub max_tls_handshakes: usize,
    /// How long a client may take to finish its TLS handshake.
    #[arg(long, env = "XDS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// How long a proxy may leave its response queue full before its stream is dropped.
    #[arg(long, env = "XDS_SEND_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub send_timeout: Duration,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_request_bytes: self.max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            max_pending_push_bytes: self.max_pending_push_bytes,
            max_name_bytes: self.max_name_bytes,
            max_names_per_request: self.max_names_per_request,
            max_delta_subscriptions: self.max_delta_subscriptions,
            max_streams_per_connection: self.max_streams_per_connection,
            max_connections: self.max_connections,
            max_tls_handshakes: self.max_tls_handshakes,
            handshake_timeout: self.handshake_timeout,
            send_timeout: self.send_timeout,
            ..Limits::DEFAULT
        }
    }
}

/// The xDS security a flag asks for.
pub fn xds_security(insecure: bool) -> XdsSecurity {
    if insecure {
        XdsSecurity::Insecure
    } else {
        XdsSecurity::MutualTls
    }
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Directories or files of Kubernetes YAML; their union is the config (watched).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Print one matrix after convergence and exit (non-zero if it does not converge in --timeout).
    #[arg(long)]
    pub once: bool,
    /// Print results as JSON: {"results":[{"from","to","outcome","mtls"}]}.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the mesh to converge.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Label selector on client workloads, kubectl syntax (app=sleep, app in (a,b), !canary).
    #[arg(long)]
    pub from: Option<String>,
    /// Label selector on services, kubectl syntax (e.g. app=httpbin).
    #[arg(long)]
    pub to: Option<String>,
    /// Sidecars use delta xDS instead of state of the world.
    #[arg(long)]
    pub delta: bool,
    /// `iptables`: run every workload as a pod in its own network namespace, sidecars with iptables capture (INTERCEPTION_MODE REDIRECT), probes with curl inside the client's pod. Needs root. Default: the explicit-bind layout on loopback addresses, no root needed.
    #[arg(long, value_enum)]
    pub capture: Option<CaptureMode>,
    /// Where bootstraps, Envoy logs and the CA of this run go (default: a new temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Envoy's --log-level.
    #[arg(long, default_value = "warn")]
    pub envoy_log_level: String,
    /// Show the control plane's logs on stderr instead of writing them to WORK_DIR/xds-server.log (so does setting RUST_LOG).
    #[arg(short, long)]
    pub verbose: bool,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// How `up` runs its sidecars.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// Network namespaces and Istio's iptables rules.
    Iptables,
}

#[derive(Args, Debug, Clone)]
pub struct ExplainArgs {
    /// The client: WORKLOAD.NAMESPACE, a pod or a Deployment's name (as `up` names clients).
    #[arg(long)]
    pub from: String,
    /// The service port: SERVICE.NAMESPACE:PORT.
    #[arg(long)]
    pub to: String,
    /// Explain offline from these directories or files of Kubernetes YAML.
    #[arg(
        long = "config-dir",
        value_delimiter = ',',
        required_unless_present = "debug_addr",
        conflicts_with = "debug_addr"
    )]
    pub config_dirs: Vec<PathBuf>,
    /// Ask a running server instead: the address of its debug endpoints (serve's --debug-addr).
    #[arg(long)]
    pub debug_addr: Option<SocketAddr>,
    /// Print the JSON that /debug/explain returns.
    #[arg(long)]
    pub json: bool,
    /// Offline: the trust bundle `serve --trust-bundle` would use.
    #[arg(long, env = "XDS_TRUST_BUNDLE", default_value = translator::model::DEFAULT_TRUST_BUNDLE)]
    pub trust_bundle: PathBuf,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

#[derive(Args, Debug, Clone)]
pub struct BootstrapArgs {
    /// The pod's namespace (in a pod: from the downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Pod name (for a Deployment's replicas in --config-dir: DEPLOYMENT-0, DEPLOYMENT-1, ...).
    #[arg(long, env = "POD_NAME")]
    pub pod: String,
    /// The pod's IP; looked up in --config-dir when left out.
    #[arg(long, env = "INSTANCE_IP")]
    pub ip: Option<IpAddr>,
    /// Where the control plane's ADS server listens (IP:PORT or NAME:PORT, e.g. the Service xds-server.istio-system.svc:15010): one address per replica (repeat the flag or separate with commas); Envoy fails over between them.
    #[arg(long, env = "XDS_ADDR", value_delimiter = ',', required = true)]
    pub xds_addr: Vec<HostPort>,
    /// In a cluster: get the bootstrap client certificate from the control plane's certificate endpoint (HOST:PORT, e.g. xds-server.istio-system.svc:15012) with the pod's service-account token, instead of signing it with the CA in --state-dir. The identity is the token's service account.
    #[arg(long, env = "XDS_CA_ADDR")]
    pub ca_addr: Option<HostPort>,
    /// With --ca-addr: the projected service-account token (audience istio-ca by default).
    #[arg(long, env = "XDS_TOKEN_FILE", default_value = crate::enroll::DEFAULT_TOKEN_PATH)]
    pub token_file: PathBuf,
    /// With --ca-addr: the root certificate that the certificate endpoint's and the xDS server's certificates must chain to (the ConfigMap istio-ca-root-cert, mounted).
    #[arg(long, env = "XDS_ROOT_CERT", default_value = crate::enroll::DEFAULT_ROOT_PATH)]
    pub root_cert: PathBuf,
    /// With --ca-addr: how long to keep trying while the endpoint is unreachable or cannot check tokens yet.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub enroll_timeout: Duration,
    /// Write the bootstrap to this file instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Use delta (incremental) xDS instead of state of the world.
    #[arg(long)]
    pub delta: bool,
    /// The control plane's state directory: its CA signs the bootstrap client certificate (without --ca-addr).
    #[arg(long, env = "XDS_STATE_DIR", default_value = ".xds-state")]
    pub state_dir: PathBuf,
    /// Config to look the pod up in (IP, service account, labels).
    #[arg(long = "config-dir", env = "XDS_CONFIG_DIR", value_delimiter = ',')]
    pub config_dirs: Vec<PathBuf>,
    /// Where the files the bootstrap references go (client certificate, key with mode 0600, root). Default: STATE_DIR/bootstrap/NAMESPACE/POD, or with --ca-addr the directory of --output.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Lifetime of the bootstrap client certificate (the workload's proof of identity to the control plane); with --ca-addr the control plane's --bootstrap-cert-lifetime decides.
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    pub cert_lifetime: Duration,
    /// For a control plane run with --insecure-xds: plaintext xDS, no certificate.
    #[arg(long)]
    pub insecure_xds: bool,
    /// The node metadata INTERCEPTION_MODE, which selects the Envoy layout: NONE (no iptables; inbound listeners bind the pod IP, the app calls POD_IP:15001 explicitly) or REDIRECT (the pod's TCP traffic is captured by `xds-server iptables`: virtualOutbound on 15001, virtualInbound on 15006).
    #[arg(long, env = "ISTIO_META_INTERCEPTION_MODE", default_value = "NONE", value_parser = parse_interception)]
    pub interception_mode: translator::Interception,
    /// Envoy's admin API. Default: 127.0.0.1:15000 as in an Istio pod, or
    /// POD_IP:15000 when the pod IP is a loopback address (local meshes run
    /// many sidecars on one host).
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

fn parse_interception(s: &str) -> Result<translator::Interception, String> {
    translator::Interception::from_metadata(Some(s))
}

/// `NAMESPACE/NAME`, both non-empty.
pub fn parse_namespaced_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

/// The longest duration a flag accepts (10 years): certificate lifetimes and
/// timeouts are added to the current time, and this keeps that sum far from
/// overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration flag in humantime's syntax (`24h`, `30m`, `10s`, `500ms`,
/// `1h 30m`): positive and at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 24h, 30m, 10s or 500ms: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?} must be positive"));
    }
    if d > MAX_DURATION {
        return Err(format!(
            "{s:?} is longer than the maximum of {}h (10 years)",
            MAX_DURATION.as_secs() / 3600
        ));
    }
    Ok(d)
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    /// How long open xDS streams and connections get to close after
    /// SIGTERM or SIGINT before the rest is cut off.
    const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
    // Handlers first: a signal during start-up is then acted on once the
    // servers are up, instead of killing the process half-way.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // clap counts the `--kube` flag's default as present, so `requires`
    // cannot say this.
    if !args.kube && (args.kubeconfig.is_some() || args.ca_secret.is_some() || args.inject_webhook)
    {
        bail!("--kubeconfig, --ca-secret and --inject-webhook need --kube");
    }
    let root_ns = &args.mesh.root_namespace;
    let inject = args
        .inject_webhook
        .then(|| crate::inject::template::Settings {
            image: args.inject_image.clone(),
            proxy_image: args.inject_proxy_image.clone(),
            xds_addr: args
                .inject_xds_addr
                .clone()
                .unwrap_or_else(|| format!("xds-server.{root_ns}.svc:15010")),
            ca_addr: args
                .inject_ca_addr
                .clone()
                .unwrap_or_else(|| format!("xds-server.{root_ns}.svc:15012")),
            ..crate::inject::template::Settings::default()
        });
    let mut mesh = args.mesh.mesh_config();
    mesh.trust_bundle = args.trust_bundle.display().to_string();
    if args.kube {
        // Pods in a cluster were injected (or not) when they were created.
        mesh.sidecar_detection = translator::model::SidecarDetection::PodSpec;
    }
    let mut server = start(ServerOptions {
        config_paths: args.config_dirs,
        kube: args.kube.then(|| KubeSource {
            kubeconfig: args.kubeconfig.clone(),
            ca_secret: args.ca_secret.clone(),
            ca_addr: args.ca_addr,
            token_audiences: args.token_audience.clone(),
            bootstrap_cert_lifetime: args.bootstrap_cert_lifetime,
            inject: inject.clone(),
        }),
        xds_addr: args.xds_addr,
        debug_addr: args.debug_addr,
        state_dir: args.state_dir,
        settings: Settings {
            mesh,
            addressing: args.mesh.addressing(),
            cert_lifetime: args.cert_lifetime,
        },
        debounce: args.debounce,
        test_hooks: args.enable_test_hooks,
        xds_security: xds_security(args.insecure_xds),
        limits: args.limits.limits(),
    })
    .await?;
    let received = tokio::select! {
        _ = server.wait() => bail!("a server task stopped"),
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = received,
        grace_s = SHUTDOWN_GRACE.as_secs(),
        "shutting down: accepting no new xDS connections, ending open streams"
    );
    // `shutdown` logs how it went; a second signal stops at once.
    tokio::select! {
        _ = server.shutdown(SHUTDOWN_GRACE) => {}
        _ = term.recv() => tracing::warn!("SIGTERM again: stopping now"),
        _ = int.recv() => tracing::warn!("SIGINT again: stopping now"),
    }
    Ok(())
}

/// `bootstrap`: the YAML to standard output, or to `--output`.
pub async fn bootstrap_command(args: BootstrapArgs) -> anyhow::Result<()> {
    let output = args.output.clone();
    let yaml = bootstrap(args).await?;
    match output {
        Some(path) => crate::ca::write_atomically(&path, yaml.as_bytes(), 0o644)
            .with_context(|| format!("writing the bootstrap to {}", path.display())),
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}

pub async fn bootstrap(args: BootstrapArgs) -> anyhow::Result<String> {
    let snap = FileLoader::new(args.config_dirs.clone()).load();
    let (mesh, _) = snap.build_mesh(args.mesh.mesh_config(), &args.mesh.addressing());
    let found = mesh.workload(&args.namespace, &args.pod).map(|(_, w)| w);
    let ip = match (args.ip, found) {
        (Some(ip), _) => ip,
        (None, Some(w)) => w.ip,
        (None, None) if args.config_dirs.is_empty() => {
            bail!("--ip is required without --config-dir")
        }
        (None, None) => bail!(
            "pod {}/{} is not in {}: pass --ip, or check the name (Deployment replicas are DEPLOYMENT-0, DEPLOYMENT-1, ...)",
            args.namespace,
            args.pod,
            args.config_dirs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let empty = Default::default();
    let server_identity = crate::xds_tls::server_identity(&args.mesh.root_namespace);
    let mut sa = found
        .map(|w| w.service_account.clone())
        .unwrap_or_else(|| "default".to_string());
    let tls = match (&args.ca_addr, args.insecure_xds) {
        (_, true) => None,
        (Some(ca_addr), false) => {
            let dir = args
                .out_dir
                .clone()
                .or_else(|| {
                    args.output.as_deref().and_then(|o| o.parent()).map(|p| {
                        if p.as_os_str().is_empty() {
                            ".".into()
                        } else {
                            p.to_path_buf()
                        }
                    })
                })
                .context("--ca-addr needs --out-dir or --output: where to write the certificate")?;
            let token = std::fs::read_to_string(&args.token_file).with_context(|| {
                format!(
                    "reading the service-account token {} (mount a projected token with audience {}, see the README)",
                    args.token_file.display(),
                    crate::enroll::DEFAULT_AUDIENCE
                )
            })?;
            let root_pem = std::fs::read_to_string(&args.root_cert).with_context(|| {
                format!(
                    "reading the root certificate {} (the ConfigMap istio-ca-root-cert, mounted)",
                    args.root_cert.display()
                )
            })?;
            let enrolled = crate::enroll::enroll(
                ca_addr,
                &root_pem,
                token.trim(),
                &args.mesh.trust_domain,
                args.enroll_timeout,
            )
            .await?;
            if enrolled.identity.namespace != args.namespace {
                bail!(
                    "the token is a service account's of namespace {:?}, but the pod is in {:?}",
                    enrolled.identity.namespace,
                    args.namespace
                );
            }
            sa = enrolled.identity.service_account.clone();
            Some(write_credentials(
                &dir,
                &enrolled.cert_chain_pem,
                &enrolled.private_key_pem,
                &root_pem,
                server_identity.spiffe_id(&args.mesh.trust_domain),
            )?)
        }
        (None, false) => {
            let ca = CertificateAuthority::load_or_create(&args.state_dir, &args.mesh.trust_domain)
                .with_context(|| format!("loading the CA from {}", args.state_dir.display()))?;
            let dir = args.out_dir.clone().unwrap_or_else(|| {
                args.state_dir
                    .join("bootstrap")
                    .join(&args.namespace)
                    .join(&args.pod)
            });
            let identity = Identity {
                namespace: args.namespace.clone(),
                service_account: sa.clone(),
            };
            Some(write_client_credentials(
                &ca,
                &identity,
                &server_identity,
                &dir,
                args.cert_lifetime,
            )?)
        }
    };
    // Each replica once, in the order given.
    let mut xds_addrs: Vec<HostPort> = Vec::with_capacity(args.xds_addr.len());
    for a in &args.xds_addr {
        if !xds_addrs.contains(a) {
            xds_addrs.push(a.clone());
        }
    }
    bootstrap_yaml(&BootstrapParams {
        namespace: &args.namespace,
        pod: &args.pod,
        ip,
        service_account: &sa,
        labels: found.map(|w| &w.labels).unwrap_or(&empty),
        workload_name: found.map(|w| w.display_name()).unwrap_or(&args.pod),
        xds_addrs: &xds_addrs,
        delta: args.delta,
        admin: args.admin_addr.unwrap_or_else(|| {
            let host = if ip.is_loopback() {
                ip
            } else {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            };
            SocketAddr::new(host, 15000)
        }),
        cluster_domain: "cluster.local",
        tls: tls.as_ref(),
        interception: args.interception_mode,
    })
}

/// `explain`: one request, offline from config directories or from a
/// running server's `/debug/explain`, as text (or JSON).
pub async fn explain(args: ExplainArgs) -> anyhow::Result<String> {
    use crate::debug::explain::{offline, remote};
    let e = match args.debug_addr {
        Some(addr) => remote(addr, &args.from, &args.to).await?,
        None => {
            let mut config = args.mesh.mesh_config();
            config.trust_bundle = args.trust_bundle.display().to_string();
            offline(
                args.config_dirs,
                config,
                &args.mesh.addressing(),
                &args.from,
                &args.to,
            )?
        }
    };
    if args.json {
        Ok(format!("{}\n", serde_json::to_string_pretty(&e)?))
    } else {
        Ok(translator::explain::render_text(&e))
    }
}

/// `validate`: one line per problem, one per loaded object; false when any
/// object is invalid.
pub fn validate(paths: Vec<PathBuf>, mesh: &MeshArgs) -> bool {
    let snap = FileLoader::new(paths).load();
    for (p, _) in &snap.objects {
        let meta = p.object.metadata();
        let ns = meta.and_then(|m| m.namespace.as_deref());
        let name = meta.and_then(|m| m.name.as_deref()).unwrap_or("");
        let id = match ns {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        println!(
            "loaded   {} {id} ({} document {})",
            p.object.kind(),
            p.file,
            p.index
        );
    }
    for s in &snap.skipped {
        println!(
            "skipped  {} {} ({} document {}): not a kind this project reads",
            s.api_version, s.kind, s.file, s.index
        );
    }
    for e in &snap.errors {
        println!("invalid  {e}");
    }
    let (built, build_diagnostics) = snap.build_mesh(mesh.mesh_config(), &mesh.addressing());
    for d in build_diagnostics {
        println!("{d}");
    }
    for d in translator::translate(&built).diagnostics {
        println!("{d}");
    }
    println!(
        "{} object(s) loaded from {} file(s), {} invalid",
        snap.objects.len(),
        snap.files,
        snap.errors.len()
    );
    snap.errors.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xds_address_flag_repeats_or_takes_a_comma_separated_list() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let mut argv = vec!["xds-server", "bootstrap", "--namespace", "foo"];
            argv.extend_from_slice(&["--pod", "sleep-0", "--ip", "10.0.0.1"]);
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Bootstrap(b)) => Ok(b.xds_addr),
                Ok(other) => panic!("not bootstrap: {other:?}"),
                Err(e) => Err(e),
            }
        };
        let two: Vec<HostPort> = vec![
            "127.0.0.1:15010".parse().expect("address"),
            "127.0.0.1:15011".parse().expect("address"),
        ];
        let repeated = parse(&[
            "--xds-addr",
            "127.0.0.1:15010",
            "--xds-addr",
            "127.0.0.1:15011",
        ]);
        assert_eq!(repeated.expect("repeated flag"), two);
        let listed = parse(&["--xds-addr", "127.0.0.1:15010,127.0.0.1:15011"]);
        assert_eq!(listed.expect("comma-separated"), two);
        assert!(parse(&["--xds-addr", "127.0.0.1:15010,nope"]).is_err());
    }
}
