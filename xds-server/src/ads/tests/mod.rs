//! Protocol tests for the ADS server, driven in-process through the
//! generated gRPC client wired straight to the generated server (real gRPC
//! framing and the real trait methods, no socket). A fake [`ConfigSource`]
//! holds one view per node and ticks its change signal on every update.
//!
//! "Nothing was sent" is checked without sleeping: a stream is one task
//! handling its inputs in order, so after an input that must not produce a
//! response we send a probe that must, and assert the probe's answer is the
//! next message.

mod delta;
mod limits;
mod sotw;
mod streams;

use super::*;
use crate::identity::{Identity, Peer, ProxyId};
use crate::view::{ProxyView, ViewError};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Streaming};
use translator::ResourceType;
use translator::{Interception, ProxyResources, Resource, ResourceMap};

pub(super) const NODE: &str = "sidecar~10.0.0.5~httpbin-0.foo~foo.svc.cluster.local";

/// A config source whose views the test sets by hand.
pub(super) struct FakeSource {
    views: Mutex<HashMap<String, Arc<ProxyView>>>,
    changes: watch::Sender<u64>,
    /// The peer each `view` call was made for, in order.
    peers: Mutex<Vec<Peer>>,
    /// The layout each `view` call asked for, in order.
    interceptions: Mutex<Vec<Interception>>,
    /// While set, every view is `NotReady` (no config loaded yet).
    not_ready: std::sync::atomic::AtomicBool,
}

impl FakeSource {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(FakeSource {
            views: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
            peers: Mutex::new(Vec::new()),
            interceptions: Mutex::new(Vec::new()),
            not_ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Makes every view `NotReady` until the next [`FakeSource::set`].
    pub(super) fn unload(&self) {
        self.not_ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sets the view of `node` and ticks the change signal.
    pub(super) fn set(&self, node: &str, resources: &[Arc<Resource>]) {
        self.views
            .lock()
            .expect("views lock")
            .insert(node.to_string(), Arc::new(view(resources)));
        self.not_ready
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// The view `node` is served now.
    pub(super) fn current(&self, node: &str) -> Arc<ProxyView> {
        self.views
            .lock()
            .expect("views lock")
            .get(node)
            .cloned()
            .expect("a view for the node")
    }

    pub(super) fn peers(&self) -> Vec<Peer> {
        self.peers.lock().expect("peers lock").clone()
    }

    pub(super) fn interceptions(&self) -> Vec<Interception> {
        self.interceptions
            .lock()
            .expect("interceptions lock")
            .clone()
    }
}

impl ConfigSource for FakeSource {
    fn view(
        &self,
        node_id: &str,
        interception: Interception,
        peer: &Peer,
    ) -> Result<Arc<ProxyView>, ViewError> {
        self.peers.lock().expect("peers lock").push(peer.clone());
        self.interceptions
            .lock()
            .expect("interceptions lock")
            .push(interception);
        if self.not_ready.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ViewError::NotReady);
        }
        self.views
            .lock()
            .expect("views lock")
            .get(node_id)
            .cloned()
            .ok_or_else(|| ViewError::UnknownWorkload {
                node_id: node_id.to_string(),
                namespace: "foo".to_string(),
                pod: "ghost-0".to_string(),
            })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn view(resources: &[Arc<Resource>]) -> ProxyView {
    let mut maps: BTreeMap<ResourceType, ResourceMap> = BTreeMap::new();
    for r in resources {
        maps.entry(r.kind)
            .or_default()
            .insert(r.name.clone(), Arc::clone(r));
    }
    let mut take = |kind| Arc::new(maps.remove(&kind).unwrap_or_default());
    ProxyView {
        interception: Interception::None,
        proxy: ProxyId {
            namespace: "foo".to_string(),
            pod: "httpbin-0".to_string(),
        },
        identity: Identity {
            namespace: "foo".to_string(),
            service_account: "httpbin".to_string(),
        },
        resources: ProxyResources {
            clusters: take(ResourceType::Cluster),
            endpoints: take(ResourceType::Endpoint),
            listeners: take(ResourceType::Listener),
            routes: take(ResourceType::Route),
        },
        secrets: take(ResourceType::Secret),
    }
}

/// A resource of `kind` named `name`; a different `rev` changes its content.
pub(super) fn res(kind: ResourceType, name: &str, rev: u32) -> Arc<Resource> {
    let n = name.to_string();
    Arc::new(match kind {
        ResourceType::Cluster => Resource::new(
            name,
            kind,
            &Cluster {
                name: n,
                alt_stat_name: format!("rev{rev}"),
                ..Default::default()
            },
        ),
        ResourceType::Endpoint => Resource::new(
            name,
            kind,
            &ClusterLoadAssignment {
                cluster_name: n,
                endpoints: vec![LocalityLbEndpoints {
                    priority: rev,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
        ResourceType::Listener => Resource::new(
            name,
            kind,
            &Listener {
                name: n,
                stat_prefix: format!("rev{rev}"),
                ..Default::default()
            },
        ),
        ResourceType::Route => Resource::new(
            name,
            kind,
            &RouteConfiguration {
                name: n,
                internal_only_headers: vec![format!("x-rev-{rev}")],
                ..Default::default()
            },
        ),
        ResourceType::Secret => Resource::new(
            name,
            kind,
            &Secret {
                name: n,
                ..Default::default()
            },
        ),
    })
}

/// The name inside an encoded resource, whatever its type.
pub(super) fn name_of(any: &Any) -> String {
    let bytes = any.value.as_slice();
    let kind = ResourceType::from_type_url(&any.type_url).expect("a known type");
    match kind {
        ResourceType::Cluster => Cluster::decode(bytes).expect("cluster").name,
        ResourceType::Endpoint => {
            ClusterLoadAssignment::decode(bytes)
                .expect("endpoints")
                .cluster_name
        }
        ResourceType::Listener => Listener::decode(bytes).expect("listener").name,
        ResourceType::Route => RouteConfiguration::decode(bytes).expect("route").name,
        ResourceType::Secret => Secret::decode(bytes).expect("secret").name,
    }
}

/// Runs a test body, failing it if it takes more than a few seconds.
pub(super) async fn within<F: Future>(body: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), body)
        .await
        .expect("test timed out")
}

/// Waits until `check` holds (the server applies requests asynchronously).
/// The stream's subscription to `kind` is the view map's keys (no copy of
/// the names) and the very allocation the registry holds.
pub(super) fn assert_subscription_shares_the_view(
    server: &AdsServer<FakeSource>,
    source: &FakeSource,
    kind: ResourceType,
) {
    let subscription = server
        .registry()
        .snapshot()
        .first()
        .and_then(|c| c.types.get(&kind).cloned())
        .and_then(|s| s.subscription)
        .expect("subscribed");
    let view = source.current(NODE);
    assert!(
        subscription.names.are_keys_of(view.of(kind)),
        "the names are the view map's keys, not a copy: {subscription:?}"
    );
    // The registry's, the stream's and this one: one allocation.
    assert_eq!(
        Arc::strong_count(&subscription),
        3,
        "the registry shares the stream's subscription"
    );
}

pub(super) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let wait = async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .is_err()
    {
        panic!("timed out waiting until {what}");
    }
}

pub(super) type Service = AdsService<AdsServer<FakeSource>>;

/// A gRPC client calling the server's service directly, in-process.
pub(super) fn client(server: &AdsServer<FakeSource>) -> AggregatedDiscoveryServiceClient<Service> {
    AggregatedDiscoveryServiceClient::new(server.clone().into_service())
}

/// The resources every test starts from.
pub(super) fn base() -> Vec<Arc<Resource>> {
    vec![
        res(
            ResourceType::Cluster,
            "outbound|80||a.foo.svc.cluster.local",
            1,
        ),
        res(
            ResourceType::Cluster,
            "outbound|80||b.foo.svc.cluster.local",
            1,
        ),
        res(
            ResourceType::Endpoint,
            "outbound|80||a.foo.svc.cluster.local",
            1,
        ),
        res(
            ResourceType::Endpoint,
            "outbound|80||b.foo.svc.cluster.local",
            1,
        ),
        res(ResourceType::Listener, "virtualInbound", 1),
        res(ResourceType::Listener, "virtualOutbound", 1),
        res(ResourceType::Route, "80", 1),
        res(ResourceType::Secret, "default", 1),
        res(ResourceType::Secret, "ROOTCA", 1),
    ]
}

pub(super) const EDS_A: &str = "outbound|80||a.foo.svc.cluster.local";
pub(super) const EDS_B: &str = "outbound|80||b.foo.svc.cluster.local";

/// A source serving [`base`] to [`NODE`], and a server on it.
pub(super) fn setup() -> (Arc<FakeSource>, AdsServer<FakeSource>) {
    let source = FakeSource::new();
    source.set(NODE, &base());
    let server = AdsServer::new(Arc::clone(&source));
    (source, server)
}

/// Like [`setup`], with `limits` instead of the defaults.
pub(super) fn setup_with(limits: Limits) -> (Arc<FakeSource>, AdsServer<FakeSource>) {
    let (source, server) = setup();
    (source, server.with_limits(limits))
}

/// [`base`] with `replaced` swapped in (by kind and name) and `removed` gone.
pub(super) fn base_with(
    replaced: &[Arc<Resource>],
    removed: &[(ResourceType, &str)],
) -> Vec<Arc<Resource>> {
    let mut all: BTreeMap<(ResourceType, String), Arc<Resource>> = base()
        .into_iter()
        .map(|r| ((r.kind, r.name.clone()), r))
        .collect();
    for r in replaced {
        all.insert((r.kind, r.name.clone()), Arc::clone(r));
    }
    for (kind, name) in removed {
        all.remove(&(*kind, name.to_string()));
    }
    all.into_values().collect()
}

#[test]
fn ads_view_errors_map_to_grpc_codes() {
    use tonic::Code;
    let cases = [
        (ViewError::BadNodeId("x".to_string()), Code::InvalidArgument),
        (
            ViewError::UnknownWorkload {
                node_id: NODE.to_string(),
                namespace: "foo".to_string(),
                pod: "p".to_string(),
            },
            Code::NotFound,
        ),
        (
            ViewError::IdentityMismatch {
                node_id: NODE.to_string(),
                claimed: "foo/a".to_string(),
                authenticated: "foo/b".to_string(),
            },
            Code::PermissionDenied,
        ),
        (ViewError::NotReady, Code::Unavailable),
    ];
    for (error, code) in cases {
        let status = status_of(&error);
        assert_eq!(status.code(), code, "{error}");
        assert_eq!(status.message(), error.to_string());
    }
}

/// One client-side ADS stream of either protocol (each protocol's module
/// names its own as `Stream`): what the tests do the same way on both.
pub(in crate::ads) struct ClientStream<Req, Resp> {
    tx: mpsc::Sender<Req>,
    rx: Streaming<Resp>,
}

impl<Req, Resp> ClientStream<Req, Resp> {
    pub(in crate::ads) async fn send(&self, request: Req) {
        self.tx.send(request).await.expect("server reads requests");
    }

    /// The next response; fails the test on an error or end of stream.
    pub(in crate::ads) async fn recv(&mut self) -> Resp {
        self.rx
            .message()
            .await
            .expect("no stream error")
            .expect("a response before the end of the stream")
    }

    /// The status the stream ends with, skipping responses still queued
    /// before it; fails the test if the stream ends without an error.
    pub(in crate::ads) async fn status(&mut self) -> Status {
        loop {
            match self.rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an error status"),
                Err(status) => return status,
            }
        }
    }
}
