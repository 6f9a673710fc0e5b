//! Simulated sidecars against the real server: in-process against the ADS
//! server on real snapshots of a generated mesh (the server's own registry
//! says whether every type was ACKed at the version it sent), and a whole
//! run over mutual TLS with the directory watched and rewritten.

use super::*;
use crate::ads::{AdsServer, AdsService, SyncState};
use crate::identity::{Peer, ProxyId};
use crate::load::meshgen::{self, MeshSpec};
use crate::load::proxy::{Backoff, Connect, ProxySpec};
use crate::load::record::Recorder;
use crate::load::run::{self, RunOptions};
use crate::server::{ServerOptions, XdsSecurity, start};
use crate::snapshots::{Settings, Snapshots};
use crate::source::files::FileLoader;
use crate::test_support::TempDir;
use crate::view::ConfigSource;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::watch;
use translator::model::MeshConfig;
use translator::model::build::Addressing;

const DEADLINE: Duration = Duration::from_secs(20);

fn spec() -> MeshSpec {
    MeshSpec {
        services: 12,
        namespaces: 3,
        workloads: 24,
        legacy_workloads: 2,
        seed: 5,
    }
}

fn addressing() -> Addressing {
    Addressing {
        pod_net: Ipv4Addr::new(127, 16, 0, 0),
        app_net: None,
        service_net: None,
    }
}

fn settings() -> Settings {
    Settings {
        mesh: MeshConfig::default(),
        addressing: addressing(),
        cert_lifetime: Duration::from_secs(3600),
    }
}

/// A generated mesh, snapshots of it, and the ADS server on them.
struct Fixture {
    dir: TempDir,
    snapshots: Arc<Snapshots>,
    server: AdsServer<Snapshots>,
    proxies: Vec<ProxySpec>,
}

impl Fixture {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        meshgen::write(&meshgen::generate(&spec()).expect("mesh"), &mesh_dir(&dir)).expect("write");
        let ca =
            CertificateAuthority::load_or_create(&dir.path("state"), "cluster.local").expect("CA");
        let snapshots = Arc::new(Snapshots::new(settings(), Arc::new(ca)));
        let fixture = Fixture {
            server: AdsServer::new(Arc::clone(&snapshots)),
            snapshots,
            proxies: super::super::proxy::proxies_of(
                &mesh_dir(&dir),
                &MeshConfig::default(),
                &addressing(),
            )
            .expect("proxies"),
            dir,
        };
        fixture.reload();
        fixture
    }

    fn mesh(&self) -> PathBuf {
        mesh_dir(&self.dir)
    }

    /// Loads the mesh directory into the snapshots, as the watcher would.
    fn reload(&self) {
        let snapshot = FileLoader::new(vec![self.mesh()]).load();
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        self.snapshots.apply(Arc::new(snapshot));
    }

    /// A proxy of the namespace the benchmark's namespace change toggles,
    /// whose inbound mode that namespace's policy decides (no workload
    /// policy of its own).
    fn decided_by_change_namespace(&self) -> usize {
        let snapshot = FileLoader::new(vec![self.mesh()]).load();
        let (mesh, _) = snapshot.build_mesh(MeshConfig::default(), &addressing());
        let selected: Vec<String> = mesh
            .peer_authentications
            .iter()
            .filter(|p| p.meta.namespace == meshgen::CHANGE_NAMESPACE)
            .filter_map(|p| p.selector.as_ref()?.get("app").cloned())
            .collect();
        self.proxies
            .iter()
            .position(|p| {
                let app = p
                    .pod
                    .rsplit_once('-')
                    .map_or(p.pod.as_str(), |(app, _)| app);
                p.namespace == meshgen::CHANGE_NAMESPACE && !selected.iter().any(|s| s == app)
            })
            .expect("a proxy of the change namespace without a policy of its own")
    }

    /// Runs one proxy in the background until the returned sender says stop.
    fn spawn<P: Protocol>(
        &self,
        index: usize,
        protocol: P,
        recorder: &Arc<Recorder>,
    ) -> watch::Sender<bool> {
        let (stop, stopped) = watch::channel(false);
        let proxy = self.proxies[index].clone();
        let connector = Arc::new(InProcess(self.server.clone()));
        tokio::spawn(proxy::run(
            ProxySpec { index: 0, ..proxy },
            protocol,
            connector,
            Arc::clone(recorder),
            fast_backoff(),
            stopped,
        ));
        stop
    }
}

fn mesh_dir(dir: &TempDir) -> PathBuf {
    dir.path("mesh")
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(5),
    }
}

/// The ADS server called in-process, no socket.
struct InProcess(AdsServer<Snapshots>);

impl Connect for InProcess {
    type Transport = AdsService<AdsServer<Snapshots>>;

    async fn connect(&self, _proxy: &ProxySpec) -> anyhow::Result<Self::Transport> {
        Ok(self.0.clone().into_service())
    }
}

/// Waits (up to [`DEADLINE`]) for `check` to hold of the recorder, waking
/// on each of its updates.
async fn until(recorder: &Recorder, what: &str, check: impl Fn(&Recorder) -> bool) {
    let mut events = recorder.events();
    let wait = async {
        while !check(recorder) {
            if events.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// Waits until the server's registry says `proxy` ACKed every type at the
/// version it was sent (the server reads ACKs asynchronously).
async fn server_sees_all_acked(
    server: &AdsServer<Snapshots>,
    proxy: &ProxyId,
) -> BTreeMap<ResourceType, SyncState> {
    let registry = server.registry();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let states = registry.sync_state(proxy).unwrap_or_default();
        if states.len() == 5 && states.values().all(|s| *s == SyncState::Synced) {
            return states;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never saw every type ACKed: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The EDS names the server's view of `spec` references: its clusters'
/// (decoded independently of the client, straight from the view).
fn endpoint_names_of_view(snapshots: &Snapshots, spec: &ProxySpec) -> Vec<String> {
    let view = snapshots
        .view(
            &spec.node_id,
            translator::Interception::None,
            &Peer::Unauthenticated,
        )
        .expect("a view");
    view.resources.endpoints.keys().cloned().collect()
}

/// One proxy syncs with the real server, the server sees every type ACKed,
/// it subscribed to exactly the load assignments of its clusters, and a
/// mesh-wide change reaches it and is ACKed too.
async fn sidecar_syncs_and_follows_a_change<P: Protocol>(label: &str, make: fn(&str) -> P) {
    let fixture = Fixture::new(label);
    let index = fixture.decided_by_change_namespace();
    let spec = fixture.proxies[index].clone();
    let proxy_id = ProxyId {
        namespace: spec.namespace.clone(),
        pod: spec.pod.clone(),
    };
    let recorder = Arc::new(Recorder::new(1));
    let stop = fixture.spawn(index, make(&spec.node_id), &recorder);
    until(&recorder, "the proxy is synced", |r| r.synced() == 1).await;
    server_sees_all_acked(&fixture.server, &proxy_id).await;

    let connection = fixture
        .server
        .registry()
        .snapshot()
        .into_iter()
        .next()
        .expect("one connection");
    let eds = connection.types[&ResourceType::Endpoint]
        .subscription
        .clone()
        .expect("subscribed to EDS");
    assert!(!eds.wildcard);
    assert_eq!(
        eds.names.iter().cloned().collect::<Vec<_>>(),
        endpoint_names_of_view(&fixture.snapshots, &spec)
    );
    let lds_before = connection.types[&ResourceType::Listener]
        .sent_version
        .clone();

    let t0 = recorder.now();
    meshgen::replace_file(
        &fixture
            .mesh()
            .join(meshgen::namespace_policy_file(meshgen::CHANGE_NAMESPACE)),
        &meshgen::namespace_policy_yaml(
            meshgen::CHANGE_NAMESPACE,
            meshgen::CHANGE_NAMESPACE_MODE.toggled(),
        ),
    )
    .expect("change");
    fixture.reload();
    until(&recorder, "the change is pushed and ACKed", |r| {
        r.read(|all| all[0].since(t0).any(|x| x.acked.is_some()))
    })
    .await;
    let states = server_sees_all_acked(&fixture.server, &proxy_id).await;
    assert!(states.values().all(|s| *s == SyncState::Synced));
    let connection = fixture
        .server
        .registry()
        .snapshot()
        .into_iter()
        .next()
        .expect("one connection");
    assert_ne!(
        connection.types[&ResourceType::Listener].sent_version,
        lds_before,
        "the inbound listener changed"
    );
    let record = recorder.snapshot().remove(0);
    assert_eq!((record.resets, record.streams_opened), (0, 1));
    assert!(
        record
            .responses
            .iter()
            .all(|r| !r.nack && r.acked.is_some())
    );
    let _ = stop.send(true);
}

#[tokio::test]
async fn a_sotw_sidecar_syncs_with_the_real_server_and_acks_a_change() {
    sidecar_syncs_and_follows_a_change("load-sotw", Sotw::new).await;
}

#[tokio::test]
async fn a_delta_sidecar_syncs_with_the_real_server_and_acks_a_change() {
    sidecar_syncs_and_follows_a_change("load-delta", Delta::new).await;
}

/// Fails the first `fails` connects, then connects in-process.
struct FlakyConnect {
    fails: AtomicU32,
    inner: InProcess,
}

impl Connect for FlakyConnect {
    type Transport = AdsService<AdsServer<Snapshots>>;

    async fn connect(&self, proxy: &ProxySpec) -> anyhow::Result<Self::Transport> {
        let left = self.fails.load(Ordering::SeqCst);
        if left > 0 {
            self.fails.store(left - 1, Ordering::SeqCst);
            anyhow::bail!("connection refused (test)");
        }
        self.inner.connect(proxy).await
    }
}

#[tokio::test]
async fn failed_connects_are_counted_as_resets_and_retried_until_synced() {
    let fixture = Fixture::new("load-flaky");
    let spec = ProxySpec {
        index: 0,
        ..fixture.proxies[0].clone()
    };
    let recorder = Arc::new(Recorder::new(1));
    let (stop, stopped) = watch::channel(false);
    let connector = Arc::new(FlakyConnect {
        fails: AtomicU32::new(3),
        inner: InProcess(fixture.server.clone()),
    });
    let task = tokio::spawn(proxy::run(
        spec.clone(),
        Sotw::new(&spec.node_id),
        connector,
        Arc::clone(&recorder),
        fast_backoff(),
        stopped,
    ));
    until(&recorder, "synced after the failures", |r| r.synced() == 1).await;
    let record = recorder.snapshot().remove(0);
    assert_eq!((record.resets, record.streams_opened), (3, 1));
    assert!(
        record
            .last_reset
            .as_deref()
            .is_some_and(|r| r.contains("connection refused")),
        "{record:?}"
    );
    let _ = stop.send(true);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the proxy stops when told")
        .expect("the proxy task");
}

#[tokio::test]
async fn a_stream_the_server_refuses_is_a_reset_and_is_retried() {
    let fixture = Fixture::new("load-refused");
    // A pod the mesh does not have: the server ends each stream NOT_FOUND.
    let ghost = ProxySpec {
        index: 0,
        node_id: "sidecar~10.9.9.9~ghost-0.ns-000~ns-000.svc.cluster.local".to_string(),
        pod: "ghost-0".to_string(),
        ..fixture.proxies[0].clone()
    };
    let recorder = Arc::new(Recorder::new(1));
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(proxy::run(
        ghost.clone(),
        Delta::new(&ghost.node_id),
        Arc::new(InProcess(fixture.server.clone())),
        Arc::clone(&recorder),
        fast_backoff(),
        stopped,
    ));
    until(&recorder, "two resets", |r| {
        r.read(|all| all[0].resets >= 2)
    })
    .await;
    let record = recorder.snapshot().remove(0);
    assert!(
        record
            .last_reset
            .as_deref()
            .is_some_and(|r| r.contains("not a workload with a sidecar")),
        "{record:?}"
    );
    assert_eq!(record.first_synced, None);
    let _ = stop.send(true);
}

/// The whole run over mutual TLS: the server watches a generated mesh,
/// every sidecar connects with its own certificate, the run rewrites the
/// policies and measures each change.
#[tokio::test]
async fn a_run_over_mutual_tls_syncs_every_sidecar_and_measures_each_change() {
    let dir = TempDir::new("load-run");
    let mesh = dir.path("mesh");
    meshgen::write(&meshgen::generate(&spec()).expect("mesh"), &mesh).expect("write");
    let state = dir.path("state");
    let server = start(ServerOptions {
        config_paths: vec![mesh.clone()],
        kube: None,
        xds_addr: "127.0.0.1:0".parse().expect("addr"),
        debug_addr: "127.0.0.1:0".parse().expect("addr"),
        state_dir: state.clone(),
        settings: settings(),
        debounce: Duration::from_millis(50),
        test_hooks: false,
        xds_security: XdsSecurity::MutualTls,
        limits: Default::default(),
    })
    .await
    .expect("serve");
    let opts = RunOptions {
        config_dir: mesh.clone(),
        xds_addr: server.xds_addr,
        server_name: "localhost".to_string(),
        state_dir: state,
        mesh: MeshConfig::default(),
        addressing: addressing(),
        delta: false,
        proxies: None,
        sync_timeout: DEADLINE,
        mesh_changes: 2,
        namespace_changes: 2,
        quiet: Duration::from_millis(500),
        change_timeout: DEADLINE,
        server_pid: None,
        backoff: fast_backoff(),
        connect_timeout: crate::load::tls::CONNECT_TIMEOUT,
    };
    let report = tokio::time::timeout(DEADLINE * 3, run::run(&opts))
        .await
        .expect("the run ends")
        .expect("the run");
    let proxies = spec().workloads;
    assert_eq!((report.proxies, report.synced), (proxies, proxies));
    assert_eq!(report.nacks, 0);
    assert!(report.full_push_bytes > 0);
    assert_eq!(report.mesh_changes.len(), 2);
    let in_change_namespace =
        super::super::proxy::proxies_of(&mesh, &MeshConfig::default(), &addressing())
            .expect("proxies")
            .iter()
            .filter(|p| p.namespace == meshgen::CHANGE_NAMESPACE)
            .count();
    for change in &report.mesh_changes {
        assert!(change.pushed > 0 && change.last_ack.is_some(), "{change:?}");
    }
    // Both ways, the same proxies are affected.
    assert_eq!(report.mesh_changes[0].pushed, report.mesh_changes[1].pushed);
    for change in &report.namespace_changes {
        assert!(
            change.pushed > 0 && change.pushed <= in_change_namespace,
            "a namespace change reaches only that namespace's proxies: {change:?} of {in_change_namespace}"
        );
    }
    server.shutdown(Duration::from_secs(5)).await;
}

/// A mesh directory that is not a gen-mesh one cannot be changed.
#[tokio::test]
async fn changes_need_a_generated_mesh() {
    let dir = TempDir::new("load-no-changes");
    dir.write("a.yaml", "");
    let opts = RunOptions {
        config_dir: dir.root().to_path_buf(),
        xds_addr: "127.0.0.1:1".parse().expect("addr"),
        server_name: "localhost".into(),
        state_dir: dir.path("state"),
        mesh: MeshConfig::default(),
        addressing: addressing(),
        delta: false,
        proxies: None,
        sync_timeout: DEADLINE,
        mesh_changes: 1,
        namespace_changes: 0,
        quiet: Duration::from_millis(10),
        change_timeout: DEADLINE,
        server_pid: None,
        backoff: fast_backoff(),
        connect_timeout: crate::load::tls::CONNECT_TIMEOUT,
    };
    let err = run::run(&opts).await.expect_err("no mesh policy file");
    assert!(err.to_string().contains("gen-mesh"), "{err}");
}
