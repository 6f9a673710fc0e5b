//! What injection adds to a pod template: the containers and volumes of a
//! stock-Envoy sidecar bootstrapped by `xds-server`, as JSON values ready to
//! be merged into the template.
//!
//! - `istio-init` (REDIRECT only): `xds-server iptables`, as root with
//!   NET_ADMIN and NET_RAW and nothing else, like Istio's `istio-init`;
//! - `xds-bootstrap`: `xds-server bootstrap --ca-addr ...`, as uid 1337 so
//!   the key it writes (mode 0600) is Envoy's; it exchanges the pod's
//!   projected token for the bootstrap client certificate and writes the
//!   bootstrap into the emptyDir `istio-envoy`;
//! - `istio-proxy`: stock Envoy on that bootstrap, as uid and gid 1337 (the
//!   ids the iptables rules let through uncaptured);
//! - volumes: `istio-envoy` (emptyDir, in memory), `istio-token` (the
//!   projected token, audience `istio-ca`), `istiod-ca-cert` (the ConfigMap
//!   `istio-ca-root-cert` that `serve --kube` publishes).
//!
//! Two init containers rather than one: the iptables step needs root and
//! network capabilities, the bootstrap step must run as Envoy's user and
//! needs neither; one container would have to hold both.

use crate::capture::rules::{DEFAULT_PROXY_ID, SIDECAR_PORTS};
use serde_json::{Value, json};
use translator::Interception;

pub const INIT_CONTAINER: &str = "istio-init";
pub const BOOTSTRAP_CONTAINER: &str = "xds-bootstrap";
pub const PROXY_CONTAINER: &str = "istio-proxy";
pub const VOLUMES: [&str; 3] = ["istio-envoy", "istio-token", "istiod-ca-cert"];

/// Where the bootstrap and its credentials live in the pod.
const PROXY_DIR: &str = "/etc/istio/proxy";
const BOOTSTRAP: &str = "/etc/istio/proxy/envoy.yaml";

/// The Envoy release `scripts/install-envoy.sh` pins; the default proxy
/// image is its official image (a test keeps the two equal).
pub const PINNED_ENVOY_VERSION: &str = "1.40.0";

/// The settings of an injection, from `xds-server inject`'s flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The image holding `xds-server` (and iptables), for the init containers.
    pub image: String,
    /// The Envoy image of `istio-proxy`.
    pub proxy_image: String,
    /// The control plane's ADS address, as pods reach it.
    pub xds_addr: String,
    /// The control plane's certificate endpoint, as pods reach it.
    pub ca_addr: String,
    /// Envoy's `--log-level`.
    pub proxy_log_level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: format!("ghcr.io/example/xds-server:{}", env!("CARGO_PKG_VERSION")),
            proxy_image: format!("envoyproxy/envoy:v{PINNED_ENVOY_VERSION}"),
            xds_addr: "xds-server.istio-system.svc:15010".into(),
            ca_addr: "xds-server.istio-system.svc:15012".into(),
            proxy_log_level: "warning".into(),
        }
    }
}

/// The iptables settings a pod's annotations ask for (Istio's
/// `traffic.sidecar.istio.io/*`), already checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// `includeInboundPorts`: `*`, a list, or empty.
    pub inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub exclude_outbound_cidrs: String,
}

fn downward(name: &str, field: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}})
}

fn proxy_user() -> Value {
    json!({
        "runAsUser": DEFAULT_PROXY_ID,
        "runAsGroup": DEFAULT_PROXY_ID,
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]}
    })
}

/// `istio-init`: the capture rules, in the pod's network namespace.
pub fn init_container(s: &Settings, c: &Capture) -> Value {
    let mut args = vec![
        "iptables".to_string(),
        "--proxy-uid".into(),
        DEFAULT_PROXY_ID.to_string(),
        "--proxy-gid".into(),
        DEFAULT_PROXY_ID.to_string(),
        "--inbound-ports".into(),
        c.inbound_ports.clone(),
    ];
    for (flag, value) in [
        ("--exclude-inbound-ports", &c.exclude_inbound_ports),
        ("--exclude-outbound-cidrs", &c.exclude_outbound_cidrs),
    ] {
        if !value.is_empty() {
            args.push(flag.into());
            args.push(value.clone());
        }
    }
    json!({
        "name": INIT_CONTAINER,
        "image": s.image,
        "args": args,
        "securityContext": {
            // iptables needs root and exactly these two capabilities.
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
        }
    })
}

/// `xds-bootstrap`: the bootstrap client certificate and the bootstrap.
pub fn bootstrap_container(s: &Settings, mode: Interception) -> Value {
    json!({
        "name": BOOTSTRAP_CONTAINER,
        "image": s.image,
        "args": [
            "bootstrap",
            "--xds-addr", s.xds_addr,
            "--ca-addr", s.ca_addr,
            "--interception-mode", mode.as_str(),
            "--output", BOOTSTRAP
        ],
        "env": [
            downward("POD_NAME", "metadata.name"),
            downward("POD_NAMESPACE", "metadata.namespace"),
            downward("INSTANCE_IP", "status.podIP")
        ],
        "securityContext": proxy_user(),
        "volumeMounts": [
            {"name": "istio-envoy", "mountPath": PROXY_DIR},
            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true}
        ]
    })
}

/// `istio-proxy`: stock Envoy.
pub fn proxy_container(s: &Settings) -> Value {
    json!({
        "name": PROXY_CONTAINER,
        "image": s.proxy_image,
        "args": ["-c", BOOTSTRAP, "--log-level", s.proxy_log_level],
        "securityContext": proxy_user(),
        "volumeMounts": [
            {"name": "istio-envoy", "mountPath": PROXY_DIR, "readOnly": true}
        ]
    })
}

pub fn volumes() -> Vec<Value> {
    vec![
        json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": crate::enroll::DEFAULT_AUDIENCE,
            "expirationSeconds": 43200,
            "path": "istio-token"
        }}]}}),
        json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}),
    ]
}

/// The value of the `sidecar.istio.io/status` annotation Istio's injector
/// leaves on a pod: what it added, so tools (and a second injection) can
/// tell the pod was injected.
pub fn status(mode: Interception) -> String {
    let init: Vec<&str> = match mode {
        Interception::Redirect => vec![INIT_CONTAINER, BOOTSTRAP_CONTAINER],
        Interception::None => vec![BOOTSTRAP_CONTAINER],
    };
    json!({
        "initContainers": init,
        "containers": [PROXY_CONTAINER],
        "volumes": VOLUMES,
        "imagePullSecrets": null,
        "revision": "default"
    })
    .to_string()
}

/// Ports iptables never captures inbound, whatever the annotations say.
pub fn never_captured(port: u16) -> bool {
    SIDECAR_PORTS.contains(&port) || port == crate::capture::rules::TUNNEL_PORT
}
