//! The Aggregated Discovery Service: state-of-the-world and delta streams.
//!
//! Sits between the cache (what a proxy should hold, behind
//! [`ConfigSource`]) and the proxies. One task per stream: it reads the
//! proxy's requests, wakes on [`ConfigSource::changes`], and writes
//! responses into its own bounded queue, so a slow proxy only ever delays
//! itself. `sotw.rs` and `delta.rs` speak the two protocol variants;
//! [`Registry`] and [`Stats`] are what the debug endpoints read.

mod delta;
pub mod registry;
mod sotw;
pub mod stats;
#[cfg(test)]
mod tests;

pub use registry::{
    ConnectionId, ConnectionStatus, Nack, Registry, Subscription, SyncState, TypeStatus,
};
pub use stats::{Histogram, Stats};

use crate::cache::ProxyView;
use crate::identity::Peer;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Response, Status, Streaming};
use tracing::Instrument as _;
use translator::ResourceType;

/// Why a node cannot be served.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    #[error("{0}")]
    BadNodeId(String),
    #[error(
        "node {node_id:?} names pod {pod} in namespace {namespace}, which is not a workload with a sidecar in the mesh"
    )]
    UnknownWorkload {
        node_id: String,
        namespace: String,
        pod: String,
    },
    #[error(
        "node {node_id:?} claims identity {claimed} but the connection authenticated as {authenticated}"
    )]
    IdentityMismatch {
        node_id: String,
        claimed: String,
        authenticated: String,
    },
    #[error("the control plane has not loaded its configuration yet")]
    NotReady,
    #[error("no certificate can be issued for {0}")]
    CertificateUnavailable(String),
}

/// The contract between the cache (what to send) and the ADS server (how to
/// send it): the current view for a node, and a signal that views may have
/// changed.
pub trait ConfigSource: Send + Sync + 'static {
    /// The current view for the proxy named by `node_id`, as `peer` may see it.
    fn view(&self, node_id: &str, peer: &Peer) -> Result<Arc<ProxyView>, ViewError>;
    /// Ticks (a generation counter) whenever any view may have changed.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// The gRPC status a stream ends with when its node cannot be served; the
/// message is the error text, so the reason shows up in Envoy's log.
pub fn status_of(error: &ViewError) -> Status {
    let message = error.to_string();
    match error {
        ViewError::BadNodeId(_) => Status::invalid_argument(message),
        ViewError::UnknownWorkload { .. } => Status::not_found(message),
        ViewError::IdentityMismatch { .. } => Status::permission_denied(message),
        ViewError::NotReady | ViewError::CertificateUnavailable(_) => Status::unavailable(message),
    }
}

/// Decides what the transport proved about a stream's peer, from the
/// request's metadata and extensions. The mTLS transport will insert what it
/// verified; the ADS server itself never trusts anything the client sends.
pub type PeerResolver = Arc<dyn Fn(&MetadataMap, &Extensions) -> Peer + Send + Sync>;

/// The default [`PeerResolver`]: a [`Peer`] a transport layer put into the
/// request extensions, else [`Peer::Unauthenticated`]. Extensions are
/// server-side only, so a client cannot forge this.
pub fn peer_from_extensions(_metadata: &MetadataMap, extensions: &Extensions) -> Peer {
    extensions
        .get::<Peer>()
        .cloned()
        .unwrap_or(Peer::Unauthenticated)
}

/// Responses queued per stream before the stream's task waits for the
/// proxy to read: bounds memory per slow proxy without affecting others.
pub const RESPONSE_QUEUE: usize = 16;

/// The response stream of one ADS stream.
pub type ResponseStream<R> = ReceiverStream<Result<R, Status>>;

/// What every stream task shares.
struct Shared<S> {
    source: Arc<S>,
    registry: Arc<Registry>,
    stats: Arc<Stats>,
    peer_of: PeerResolver,
}

/// The ADS server: serves both state-of-the-world and delta xDS from one
/// [`ConfigSource`]. Cheap to clone; clones share the registry and stats.
pub struct AdsServer<S: ConfigSource> {
    shared: Arc<Shared<S>>,
}

impl<S: ConfigSource> Clone for AdsServer<S> {
    fn clone(&self) -> Self {
        AdsServer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: ConfigSource> AdsServer<S> {
    /// A server with its own (empty) registry and stats.
    pub fn new(source: Arc<S>) -> Self {
        Self::with_parts(source, Arc::default(), Arc::default())
    }

    /// A server that records into a registry and stats the caller already
    /// shares with the debug endpoints.
    pub fn with_parts(source: Arc<S>, registry: Arc<Registry>, stats: Arc<Stats>) -> Self {
        AdsServer {
            shared: Arc::new(Shared {
                source,
                registry,
                stats,
                peer_of: Arc::new(peer_from_extensions),
            }),
        }
    }

    /// Replaces how the peer of a stream is determined (see [`PeerResolver`]).
    pub fn with_peer_resolver(
        self,
        resolver: impl Fn(&MetadataMap, &Extensions) -> Peer + Send + Sync + 'static,
    ) -> Self {
        AdsServer {
            shared: Arc::new(Shared {
                source: Arc::clone(&self.shared.source),
                registry: Arc::clone(&self.shared.registry),
                stats: Arc::clone(&self.shared.stats),
                peer_of: Arc::new(resolver),
            }),
        }
    }

    /// The open streams, for the debug endpoints.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.shared.registry)
    }

    /// The counters, for `/metrics`.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.shared.stats)
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    /// Serves one state-of-the-world stream from any request stream: spawns
    /// the stream's task and returns its responses. The gRPC method is a thin
    /// wrapper around this; other transports and tests can call it directly.
    pub fn serve_sotw<In>(&self, requests: In, peer: Peer) -> ResponseStream<DiscoveryResponse>
    where
        In: Stream<Item = Result<DiscoveryRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let id = self.shared.registry.next_id();
        let span = tracing::info_span!(
            "ads",
            conn = id,
            node = tracing::field::Empty,
            delta = false
        );
        let task = drive::<S, sotw::Sotw<S>, In>(Arc::clone(&self.shared), id, requests, tx, peer);
        tokio::spawn(task.instrument(span));
        ReceiverStream::new(rx)
    }

    /// Serves one delta (incremental) stream; see [`AdsServer::serve_sotw`].
    pub fn serve_delta<In>(
        &self,
        requests: In,
        peer: Peer,
    ) -> ResponseStream<DeltaDiscoveryResponse>
    where
        In: Stream<Item = Result<DeltaDiscoveryRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let id = self.shared.registry.next_id();
        let span =
            tracing::info_span!("ads", conn = id, node = tracing::field::Empty, delta = true);
        let task =
            drive::<S, delta::Delta<S>, In>(Arc::clone(&self.shared), id, requests, tx, peer);
        tokio::spawn(task.instrument(span));
        ReceiverStream::new(rx)
    }
}

#[tonic::async_trait]
impl<S: ConfigSource> AggregatedDiscoveryService for AdsServer<S> {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (metadata, extensions, requests) = request.into_parts();
        let peer = (self.shared.peer_of)(&metadata, &extensions);
        Ok(Response::new(self.serve_sotw(requests, peer)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (metadata, extensions, requests) = request.into_parts();
        let peer = (self.shared.peer_of)(&metadata, &extensions);
        Ok(Response::new(self.serve_delta(requests, peer)))
    }
}

/// One protocol variant (state of the world or delta) of an identified
/// stream; [`drive`] runs the loop common to both.
trait Protocol<S: ConfigSource>: Sized + Send {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// Whether this is the delta variant (for the registry).
    const DELTA: bool;

    /// The node a request names (Envoy sets it at least on the first).
    fn node(request: &Self::Request) -> Option<&Node>;
    fn new(session: Session<S, Self::Response>) -> Self;
    fn session(&self) -> &Session<S, Self::Response>;
    /// Handles one request that arrived at `at`.
    fn on_request(
        &mut self,
        request: Self::Request,
        at: Instant,
    ) -> impl Future<Output = Result<(), Ended>> + Send;
    /// Handles a tick of [`ConfigSource::changes`].
    fn on_change(&mut self) -> impl Future<Output = Result<(), Ended>> + Send;
}

/// Runs one stream until the proxy goes away or the stream is ended with a
/// status: identify the node from the first request, then serve requests
/// and config changes as they come, whichever is first.
async fn drive<S, P, In>(
    shared: Arc<Shared<S>>,
    id: ConnectionId,
    mut requests: In,
    tx: mpsc::Sender<Result<P::Response, Status>>,
    peer: Peer,
) where
    S: ConfigSource,
    P: Protocol<S>,
    In: Stream<Item = Result<P::Request, Status>> + Send + Unpin + 'static,
{
    let first = match requests.next().await {
        Some(Ok(first)) => first,
        Some(Err(status)) => {
            tracing::debug!(%status, "stream failed before its first request");
            return;
        }
        None => return,
    };
    let accepted = Session::accept(shared, id, P::node(&first), peer, P::DELTA, tx).await;
    let Ok((session, mut changes)) = accepted else {
        return;
    };
    let mut stream = P::new(session);
    if stream.on_request(first, Instant::now()).await.is_err() {
        return;
    }
    let mut watching = true;
    loop {
        tokio::select! {
            request = requests.next() => match request {
                Some(Ok(request)) => {
                    if stream.on_request(request, Instant::now()).await.is_err() {
                        break;
                    }
                }
                Some(Err(status)) => {
                    tracing::debug!(%status, "request stream ended with an error");
                    break;
                }
                None => break,
            },
            changed = changes.changed(), if watching => match changed {
                Ok(()) => {
                    changes.borrow_and_update();
                    if stream.on_change().await.is_err() {
                        break;
                    }
                }
                Err(_) => {
                    tracing::debug!("config source dropped its change signal");
                    watching = false;
                }
            },
            () = stream.session().closed() => break,
        }
    }
}

/// The stream is over: the proxy went away, or we ended it with a status.
#[derive(Debug)]
struct Ended;

/// Removes a connection from the registry and the gauge however its task
/// ends (return, error or cancellation).
struct Registered<S> {
    shared: Arc<Shared<S>>,
    id: ConnectionId,
}

impl<S> Drop for Registered<S> {
    fn drop(&mut self) {
        self.shared.registry.remove(self.id);
        self.shared.stats.stream_closed();
        tracing::info!("proxy disconnected");
    }
}

/// What both protocol variants need of an identified stream: who it is, its
/// current view, its response queue and nonce counter.
struct Session<S: ConfigSource, R> {
    shared: Arc<Shared<S>>,
    id: ConnectionId,
    node_id: String,
    peer: Peer,
    view: Arc<ProxyView>,
    tx: mpsc::Sender<Result<R, Status>>,
    nonce: u64,
    warned_types: HashSet<String>,
    _registered: Registered<S>,
}

impl<S: ConfigSource, R> Session<S, R> {
    /// Identifies the stream from its first request and registers it, or
    /// ends it with a status saying why it cannot be served. Returns the
    /// change signal, already marked seen as of the view it fetched.
    async fn accept(
        shared: Arc<Shared<S>>,
        id: ConnectionId,
        node: Option<&Node>,
        peer: Peer,
        delta: bool,
        tx: mpsc::Sender<Result<R, Status>>,
    ) -> Result<(Self, watch::Receiver<u64>), Ended> {
        let node_id = node.map(|n| n.id.clone()).unwrap_or_default();
        if node_id.is_empty() {
            tracing::warn!("refusing ADS stream: the first request carries no node.id");
            shared.stats.stream_rejected();
            let status =
                Status::invalid_argument("the first request on an ADS stream must carry node.id");
            let _ = tx.send(Err(status)).await;
            return Err(Ended);
        }
        tracing::Span::current().record("node", node_id.as_str());
        let mut changes = shared.source.changes();
        changes.borrow_and_update();
        let view = match shared.source.view(&node_id, &peer) {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(node = %node_id, %error, "refusing ADS stream");
                shared.stats.stream_rejected();
                let _ = tx.send(Err(status_of(&error))).await;
                return Err(Ended);
            }
        };
        shared.registry.insert(ConnectionStatus {
            id,
            node_id: node_id.clone(),
            proxy: view.proxy.clone(),
            identity: view.identity.clone(),
            connected_at: SystemTime::now(),
            delta,
            types: BTreeMap::new(),
        });
        shared.stats.stream_opened();
        tracing::info!(proxy = %view.proxy, identity = %view.identity, "proxy connected");
        let registered = Registered {
            shared: Arc::clone(&shared),
            id,
        };
        let session = Session {
            shared,
            id,
            node_id,
            peer,
            view,
            tx,
            nonce: 0,
            warned_types: HashSet::new(),
            _registered: registered,
        };
        Ok((session, changes))
    }

    /// A nonce unique within this stream.
    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// Queues a response, waiting while the proxy is slow to read.
    async fn send(&self, response: R) -> Result<(), Ended> {
        self.tx.send(Ok(response)).await.map_err(|_| Ended)
    }

    /// Ends the stream with `status`.
    async fn fail(&self, status: Status) -> Ended {
        let _ = self.tx.send(Err(status)).await;
        Ended
    }

    /// Resolves when the proxy stopped reading responses.
    async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Fetches the current view after a change. `Ok(true)` if it differs
    /// from the one held. While the source is not ready the last good view
    /// is kept (never an empty config); any other error ends the stream.
    fn refresh(&mut self) -> Result<bool, Status> {
        match self.shared.source.view(&self.node_id, &self.peer) {
            Ok(view) => {
                if Arc::ptr_eq(&view, &self.view) {
                    return Ok(false);
                }
                if view.proxy != self.view.proxy || view.identity != self.view.identity {
                    self.shared
                        .registry
                        .set_proxy(self.id, &view.proxy, &view.identity);
                }
                self.view = view;
                Ok(true)
            }
            Err(ViewError::NotReady) => {
                tracing::warn!("config source not ready; keeping the last view");
                Ok(false)
            }
            Err(error) => {
                tracing::warn!(node = %self.node_id, %error, "ending ADS stream: node can no longer be served");
                Err(status_of(&error))
            }
        }
    }

    /// Logs an unknown type URL once per stream; the request is ignored.
    /// Remembers a bounded number of URLs, so a misbehaving client cannot
    /// grow the stream's memory (past the bound it is simply not logged).
    fn unknown_type(&mut self, type_url: &str) {
        const REMEMBERED: usize = 32;
        if self.warned_types.len() < REMEMBERED && self.warned_types.insert(type_url.to_string()) {
            tracing::warn!(%type_url, "ignoring request for a type this server does not serve");
        }
    }

    /// Mirrors one type's state into the registry.
    fn publish(&self, kind: ResourceType, status: &TypeStatus) {
        self.shared.registry.set_type(self.id, kind, status);
    }

    fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}
