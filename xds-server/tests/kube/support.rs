//! The harness of `kube.rs`: object builders, `serve --kube` and Envoy
//! processes, a reader of Envoy's config dump, and the small mesh most
//! tests start from.

use crds::destination_rule::{
    ClientTlsMode, ClientTlsSettings, DestinationRule, DestinationRuleSpec, TrafficPolicy,
};
use crds::peer_authentication::{MtlsMode, MutualTls, PeerAuthentication, PeerAuthenticationSpec};
use crds::workload_selector::WorkloadSelector;
use e2e::apiserver::{ApiServer, ApiServerOptions};
use e2e::{ScratchDir, free_loopback_addr, require_envoy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodCondition, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use xds_server::runner::envoy::{Admin, EnvoyProcess, EnvoySpec};

/// How long any one expectation may take to come true.
pub const DEADLINE: Duration = Duration::from_secs(30);
pub const POLL: Duration = Duration::from_millis(100);
pub const XDS_SERVER: &str = env!("CARGO_BIN_EXE_xds-server");

// ---------------------------------------------------------------- objects

pub fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        ..ObjectMeta::default()
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: meta(None, name),
        ..Namespace::default()
    }
}

pub fn service(ns: &str, name: &str, app: &str, port: i32, target_port: i32) -> Service {
    Service {
        metadata: ObjectMeta {
            labels: Some(labels(&[("app", app)])),
            ..meta(Some(ns), name)
        },
        spec: Some(ServiceSpec {
            selector: Some(labels(&[("app", app)])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                target_port: Some(IntOrString::Int(target_port)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A running pod with a sidecar (the injector's tlsMode label), its app
/// container listening on `port`.
pub fn pod(ns: &str, name: &str, app: &str, ip: IpAddr, port: i32, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            labels: Some(labels(&[
                ("app", app),
                ("security.istio.io/tlsMode", "istio"),
            ])),
            ..meta(Some(ns), name)
        },
        spec: Some(PodSpec {
            service_account_name: Some(app.into()),
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![ContainerPort {
                    container_port: port,
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.to_string()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

pub fn peer_authentication(ns: &str, name: &str, app: &str, mode: MtlsMode) -> PeerAuthentication {
    PeerAuthentication {
        metadata: meta(Some(ns), name),
        spec: PeerAuthenticationSpec {
            selector: Some(WorkloadSelector {
                match_labels: labels(&[("app", app)]),
            }),
            mtls: Some(MutualTls { mode }),
            ..PeerAuthenticationSpec::default()
        },
    }
}

pub fn destination_rule(ns: &str, name: &str, host: &str, mode: ClientTlsMode) -> DestinationRule {
    DestinationRule {
        metadata: meta(Some(ns), name),
        spec: DestinationRuleSpec {
            host: host.into(),
            traffic_policy: Some(TrafficPolicy {
                tls: Some(ClientTlsSettings {
                    mode,
                    ..ClientTlsSettings::default()
                }),
                ..TrafficPolicy::default()
            }),
            ..DestinationRuleSpec::default()
        },
    }
}

pub fn outbound(port: u16, name: &str, ns: &str) -> String {
    format!("outbound|{port}||{name}.{ns}.svc.cluster.local")
}

// -------------------------------------------------------------- processes

/// Claims a free /16 of 127.0.0.0/8 for pod IPs (see
/// [`e2e::external::claim_pod_net`]).
pub fn claim_pod_net() -> (Ipv4Addr, StdListener) {
    e2e::external::claim_pod_net().unwrap_or_else(|e| panic!("{e:#}"))
}

/// One `xds-server serve --kube` process.
pub struct Serve {
    child: Child,
    pub xds_addr: SocketAddr,
    /// The certificate endpoint (token exchange).
    pub ca_addr: SocketAddr,
    debug: Admin,
    log: PathBuf,
}

impl Serve {
    /// Starts `serve --kube` against `api` with its state in `state_dir`;
    /// does not wait for it to be ready.
    pub fn spawn(
        api: &ApiServer,
        dir: &Path,
        name: &str,
        state_dir: &Path,
        extra: &[&str],
    ) -> Serve {
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let free = || free_loopback_addr().expect("a free port");
        let (xds_addr, ca_addr, debug_addr) = (free(), free(), free());
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("serve log");
        let err = out.try_clone().expect("serve log");
        let child = Command::new(XDS_SERVER)
            .arg("serve")
            .arg("--kube")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--xds-addr")
            .arg(xds_addr.to_string())
            .arg("--ca-addr")
            .arg(ca_addr.to_string())
            .arg("--debug-addr")
            .arg(debug_addr.to_string())
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("xds-server serve starts");
        Serve {
            child,
            xds_addr,
            ca_addr,
            debug: Admin::new(debug_addr).with_request_timeout(Duration::from_secs(2)),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A JSON debug endpoint (`/debug/configz`).
    pub async fn debug_json(&self, path: &str) -> Result<Value, String> {
        self.debug
            .get_json(path)
            .await
            .map_err(|e| format!("{path}: {e}"))
    }

    fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("serve exited with {status}:\n{}", self.log());
        }
    }

    /// `/readyz`'s status code, once the debug port answers at all.
    pub async fn readyz(&mut self) -> u16 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.check_running();
            match self.debug.get("/readyz").await {
                Ok((status, _)) => return status,
                Err(e) if Instant::now() >= deadline => {
                    panic!("the debug port never answered: {e}\n{}", self.log())
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.readyz().await == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "serve was not ready within {DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// `NAMESPACE`, `NAME` and pod IP of a pod.
fn pod_address(pod: &Pod) -> (String, String, IpAddr) {
    let ns = pod.metadata.namespace.clone().expect("a namespace");
    let name = pod.metadata.name.clone().expect("a name");
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .expect("a pod IP")
        .parse()
        .expect("an IP");
    (ns, name, ip)
}

/// Runs `xds-server bootstrap --namespace NS --pod NAME --ip IP --xds-addr
/// ADDR` with `args`; the bootstrap YAML, or what it printed on failure.
async fn bootstrap(serve: &Serve, pod: &Pod, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, String> {
    let (ns, name, ip) = pod_address(pod);
    let run = Command::new(XDS_SERVER)
        .arg("bootstrap")
        .args(["--namespace", &ns, "--pod", &name, "--ip", &ip.to_string()])
        .arg("--xds-addr")
        .arg(serve.xds_addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, run)
        .await
        .map_err(|_| format!("bootstrap took over {DEADLINE:?}"))?
        .map_err(|e| format!("running bootstrap: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "bootstrap exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A stock Envoy bootstrapped for one pod.
pub struct Sidecar {
    pub name: String,
    envoy: EnvoyProcess,
    pub admin: Admin,
}

impl Sidecar {
    /// `xds-server bootstrap` for `pod` with the CA in `state_dir` (the
    /// pod looked up in a config directory holding just the pod, as the
    /// API server returns it), then Envoy.
    pub async fn start(
        envoy: &Path,
        serve: &Serve,
        state_dir: &Path,
        work: &Path,
        pod: &Pod,
        extra: &[&str],
    ) -> Sidecar {
        let (ns, name, _) = pod_address(pod);
        let id = format!("{name}.{ns}");
        let config_dir = work.join("pods").join(&id);
        std::fs::create_dir_all(&config_dir).expect("config dir");
        // JSON is YAML.
        let json = serde_json::to_string_pretty(pod).expect("the pod encodes");
        std::fs::write(config_dir.join("pod.yaml"), json).expect("pod file");
        let out_dir = work.join("envoy").join(&id);
        let yaml = bootstrap(
            serve,
            pod,
            &[
                "--state-dir".as_ref(),
                state_dir.as_os_str(),
                "--config-dir".as_ref(),
                config_dir.as_os_str(),
                "--out-dir".as_ref(),
                out_dir.as_os_str(),
            ]
            .into_iter()
            .chain(extra.iter().map(|a| a.as_ref()))
            .collect::<Vec<_>>(),
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
        Sidecar::run(envoy, work, pod, &yaml).await
    }

    /// `xds-server bootstrap --ca-addr` for `pod`: its token (a file)
    /// exchanged at the certificate endpoint, trusting `root` (a file);
    /// then Envoy. What bootstrap printed if it failed.
    pub async fn enroll(
        envoy: &Path,
        serve: &Serve,
        work: &Path,
        pod: &Pod,
        token: &Path,
        root: &Path,
    ) -> Result<Sidecar, String> {
        let (ns, name, _) = pod_address(pod);
        let out_dir = work.join("envoy").join(format!("{name}.{ns}"));
        let ca_addr = serve.ca_addr.to_string();
        let yaml = bootstrap(
            serve,
            pod,
            &[
                "--ca-addr".as_ref(),
                ca_addr.as_ref(),
                "--token-file".as_ref(),
                token.as_os_str(),
                "--root-cert".as_ref(),
                root.as_os_str(),
                "--enroll-timeout".as_ref(),
                "10s".as_ref(),
                "--out-dir".as_ref(),
                out_dir.as_os_str(),
            ],
        )
        .await?;
        Ok(Sidecar::run(envoy, work, pod, &yaml).await)
    }

    /// Envoy with `yaml`, once live.
    async fn run(envoy: &Path, work: &Path, pod: &Pod, yaml: &[u8]) -> Sidecar {
        let (ns, name, ip) = pod_address(pod);
        let id = format!("{name}.{ns}");
        let envoy_dir = work.join("envoy");
        let path = envoy_dir.join(format!("{id}.yaml"));
        std::fs::write(&path, yaml).expect("bootstrap file");
        let spec = EnvoySpec::new(envoy, &path, &envoy_dir, &id);
        let mut process = EnvoyProcess::spawn(&spec).expect("Envoy starts");
        let admin =
            Admin::new(SocketAddr::new(ip, 15000)).with_request_timeout(Duration::from_secs(3));
        process
            .wait_ready(&admin, Instant::now() + DEADLINE)
            .await
            .expect("Envoy is live");
        Sidecar {
            name: id,
            envoy: process,
            admin,
        }
    }

    /// Polls this Envoy's config dump (endpoints included) until `check`
    /// accepts it; fails at the deadline with its last complaint.
    pub async fn wait_for(&mut self, what: &str, check: impl Fn(&Dump) -> Result<(), String>) {
        self.wait_for_within(DEADLINE, what, check).await;
    }

    /// [`Sidecar::wait_for`] with a deadline of `timeout`.
    pub async fn wait_for_within(
        &mut self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&Dump) -> Result<(), String>,
    ) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        eventually(timeout, &format!("{name}: {what}"), || {
            let admin = admin.clone();
            let check = &check;
            async move {
                let dump = admin
                    .get_json("/config_dump?include_eds")
                    .await
                    .map_err(|e| format!("config_dump: {e}"))?;
                check(&Dump(dump))
            }
        })
        .await;
        if let Err(e) = self.envoy.check_running().await {
            panic!("{name}: {e}");
        }
    }

    pub async fn stop(self) {
        let _ = self.envoy.stop().await;
    }
}

/// Polls `probe` until it succeeds; panics with its last error at the
/// deadline.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(()) => return,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; last: {last}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ----------------------------------------------------------- config dumps

/// An Envoy config dump.
pub struct Dump(Value);

impl Dump {
    pub fn section(&self, type_suffix: &str) -> Option<&Value> {
        self.0["configs"].as_array()?.iter().find(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with(type_suffix))
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Value> {
        self.section("ClustersConfigDump")?["dynamic_active_clusters"]
            .as_array()?
            .iter()
            .map(|c| &c["cluster"])
            .find(|c| c["name"] == name)
    }

    pub fn cluster_names(&self) -> Vec<String> {
        self.section("ClustersConfigDump")
            .and_then(|s| s["dynamic_active_clusters"].as_array())
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn listener(&self, name: &str) -> Option<&Value> {
        self.section("ListenersConfigDump")?["dynamic_listeners"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)
            .map(|l| &l["active_state"]["listener"])
    }

    /// The filter chain names of a listener.
    pub fn chains(&self, listener: &str) -> Option<Vec<String>> {
        let chains = self.listener(listener)?["filter_chains"].as_array()?;
        Some(
            chains
                .iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect(),
        )
    }

    /// The `IP:PORT` endpoints EDS gave a cluster.
    pub fn endpoints(&self, cluster: &str) -> Vec<String> {
        let Some(configs) = self
            .section("EndpointsConfigDump")
            .and_then(|s| s["dynamic_endpoint_configs"].as_array())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for c in configs
            .iter()
            .map(|c| &c["endpoint_config"])
            .filter(|c| c["cluster_name"] == cluster)
        {
            for locality in c["endpoints"].as_array().into_iter().flatten() {
                for lb in locality["lb_endpoints"].as_array().into_iter().flatten() {
                    let a = &lb["endpoint"]["address"]["socket_address"];
                    if let (Some(ip), Some(port)) =
                        (a["address"].as_str(), a["port_value"].as_u64())
                    {
                        out.push(format!("{ip}:{port}"));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

pub fn has_cluster(name: &str) -> impl Fn(&Dump) -> Result<(), String> + '_ {
    move |d| match d.cluster(name) {
        Some(_) => Ok(()),
        None => Err(format!("no cluster {name} in {:?}", d.cluster_names())),
    }
}

pub fn no_cluster(name: &str) -> impl Fn(&Dump) -> Result<(), String> + '_ {
    move |d| match d.cluster(name) {
        None if !d.cluster_names().is_empty() => Ok(()),
        None => Err("no clusters at all yet".to_string()),
        Some(_) => Err(format!("cluster {name} is still there")),
    }
}

pub fn endpoints_are<'a>(
    cluster: &'a str,
    want: &'a [String],
) -> impl Fn(&Dump) -> Result<(), String> + 'a {
    move |d| {
        if d.cluster(cluster).is_none() {
            return Err(format!("no cluster {cluster}"));
        }
        let got = d.endpoints(cluster);
        if got == want {
            Ok(())
        } else {
            Err(format!("endpoints of {cluster}: {got:?}, want {want:?}"))
        }
    }
}

pub fn chains_are<'a>(
    listener: &'a str,
    want: &'a [&'a str],
) -> impl Fn(&Dump) -> Result<(), String> + 'a {
    move |d| match d.chains(listener) {
        Some(got) if got == want => Ok(()),
        got => Err(format!(
            "filter chains of {listener}: {got:?}, want {want:?}"
        )),
    }
}

/// How a cluster's upstream TLS is set: `tls` (one transport socket),
/// `auto` (auto mTLS: per-endpoint transport socket matches), `plaintext`.
pub fn upstream_tls(cluster: &Value) -> &'static str {
    if cluster.get("transport_socket").is_some() {
        "tls"
    } else if cluster
        .get("transport_socket_matches")
        .and_then(Value::as_array)
        .is_some_and(|m| !m.is_empty())
    {
        "auto"
    } else {
        "plaintext"
    }
}

pub fn upstream_is<'a>(
    cluster: &'a str,
    want: &'a str,
) -> impl Fn(&Dump) -> Result<(), String> + 'a {
    move |d| match d.cluster(cluster).map(upstream_tls) {
        Some(got) if got == want => Ok(()),
        got => Err(format!("upstream TLS of {cluster}: {got:?}, want {want}")),
    }
}

// ---------------------------------------------------------------- fixture

/// The stand-in holding a small mesh (namespace foo: httpbin-0 behind
/// Service httpbin:8000 -> 8080, sleep-0), `serve --kube` on it, and
/// Envoys for the sidecars a test asks for.
pub struct Mesh {
    pub envoy: PathBuf,
    pub api: ApiServer,
    pub serve: Serve,
    /// Work directory: logs, bootstraps.
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pod_net: Ipv4Addr,
    pub sidecars: Vec<Sidecar>,
    _claim: StdListener,
    _scratch: ScratchDir,
}

pub const HTTPBIN: &str = "httpbin-0.foo";
pub const SLEEP: &str = "sleep-0.foo";

impl Mesh {
    /// `None` when the test is skipped for want of Envoy.
    pub async fn start(test: &str, opts: ApiServerOptions, sidecars: &[&str]) -> Option<Mesh> {
        Mesh::start_with(test, opts, sidecars, &[]).await
    }

    /// [`Mesh::start`] with more `bootstrap` flags for every sidecar (say,
    /// `--delta`).
    pub async fn start_with(
        test: &str,
        opts: ApiServerOptions,
        sidecars: &[&str],
        bootstrap_flags: &[&str],
    ) -> Option<Mesh> {
        let envoy = require_envoy(test)?;
        let scratch = ScratchDir::new(test).expect("scratch dir");
        let dir = scratch.path().to_path_buf();
        let state_dir = dir.join("state");
        let (pod_net, claim) = claim_pod_net();
        let api = ApiServer::start(opts).await.expect("the stand-in starts");
        let mut mesh = Mesh {
            serve: Serve::spawn(&api, &dir, "serve", &state_dir, &[]),
            envoy,
            api,
            dir,
            state_dir,
            pod_net,
            sidecars: Vec::new(),
            _claim: claim,
            _scratch: scratch,
        };
        mesh.api.apply(&namespace("foo")).expect("apply");
        mesh.api
            .apply(&service("foo", "httpbin", "httpbin", 8000, 8080))
            .expect("apply");
        for p in [mesh.httpbin(), mesh.sleep()] {
            mesh.api.apply(&p).expect("apply");
        }
        mesh.serve.wait_ready().await;
        for name in sidecars {
            let p = match *name {
                HTTPBIN => mesh.httpbin(),
                SLEEP => mesh.sleep(),
                other => panic!("no pod {other} in the mesh"),
            };
            let s = Sidecar::start(
                &mesh.envoy,
                &mesh.serve,
                &mesh.state_dir,
                &mesh.dir,
                &p,
                bootstrap_flags,
            )
            .await;
            mesh.sidecars.push(s);
        }
        Some(mesh)
    }

    /// The pod IP `127.X.0.n` of the claimed net.
    pub fn ip(&self, n: u8) -> IpAddr {
        let [a, b, _, _] = self.pod_net.octets();
        IpAddr::V4(Ipv4Addr::new(a, b, 0, n))
    }

    pub fn httpbin(&self) -> Pod {
        pod("foo", "httpbin-0", "httpbin", self.ip(1), 8080, true)
    }

    pub fn sleep(&self) -> Pod {
        pod("foo", "sleep-0", "sleep", self.ip(2), 8080, true)
    }

    pub fn sidecar(&mut self, name: &str) -> &mut Sidecar {
        self.sidecars
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no sidecar {name}"))
    }

    /// httpbin-0's inbound listener.
    pub fn httpbin_inbound(&self) -> String {
        format!("{}_8080", self.ip(1))
    }

    pub async fn stop(self) {
        for s in self.sidecars {
            s.stop().await;
        }
        self.serve.stop().await;
    }
}
