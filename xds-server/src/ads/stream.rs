//! One ADS stream, whichever protocol variant it speaks: identify the node
//! from its first request, register it, then serve requests and config
//! changes as they come ([`drive`]). `sotw.rs` and `delta.rs` implement
//! [`Variant`] on top of the [`Session`] kept here.

use super::limits::{Limit, Limits, Refusal};
use super::queue::{Responder, Unsent};
use super::registry::{ConnectionId, ConnectionStatus, Registry, TypeStatus};
use super::stats::Stats;
use super::versions::Versions;
use super::wire::Encode;
use crate::identity::Peer;
use crate::view::{ConfigSource, ProxyView, ViewError, interception_of};
use envoy_types::pb::envoy::config::core::v3::Node;
use futures::{Stream, StreamExt};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Status};
use translator::{Interception, ResourceType};

/// The gRPC status a stream ends with when its node cannot be served; the
/// message is the error text, so the reason shows up in Envoy's log.
pub fn status_of(error: &ViewError) -> Status {
    let message = error.to_string();
    match error {
        ViewError::BadNodeId(_) | ViewError::BadNodeMetadata { .. } => {
            Status::invalid_argument(message)
        }
        ViewError::UnknownWorkload { .. } => Status::not_found(message),
        ViewError::IdentityMismatch { .. } | ViewError::Unauthenticated { .. } => {
            Status::permission_denied(message)
        }
        ViewError::NotReady | ViewError::CertificateUnavailable(_) => Status::unavailable(message),
    }
}

/// Responses queued per stream before the stream's task waits for the
/// proxy to read (at most `Limits::send_timeout`): bounds memory per slow
/// proxy without affecting others.
pub const RESPONSE_QUEUE: usize = 16;

/// How long a stream that arrives before the first config waits for it
/// before it is ended with UNAVAILABLE (Envoy then retries).
pub(super) const NOT_READY_WAIT: Duration = Duration::from_secs(30);

/// Decides what the transport proved about a stream's peer, from the
/// request's metadata and extensions: the one seam where a way of proving
/// identity plugs in (`xds_tls::peer_from_tls` reads the verified client
/// certificate). The ADS server itself never trusts what the client sends.
pub type PeerResolver = Arc<dyn Fn(&MetadataMap, &Extensions) -> Peer + Send + Sync>;

/// What every stream task shares.
pub(super) struct Shared<S> {
    pub(super) source: Arc<S>,
    pub(super) registry: Arc<Registry>,
    pub(super) stats: Arc<Stats>,
    pub(super) peer_of: PeerResolver,
    pub(super) limits: Limits,
    /// Versions of the view maps streams send whole.
    pub(super) versions: Versions,
}

/// One protocol variant (state of the world or delta) of an identified
/// stream; [`drive`] runs the loop common to both.
pub(super) trait Variant<S: ConfigSource>: Sized + Send {
    type Request: Send + 'static;
    type Response: Encode;
    /// Whether this is the delta variant (for the registry).
    const DELTA: bool;

    /// The node a request names (Envoy sets it at least on the first).
    fn node(request: &Self::Request) -> Option<&Node>;
    /// Checks a request against the per-request bounds of [`Limits`],
    /// before anything else looks at it.
    fn check(limits: &Limits, request: &Self::Request) -> Result<(), Refusal>;
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
///
/// Requests are taken one at a time, each after the previous one was
/// handled: tonic reads the request body only when asked, so a client
/// sending faster than that is held back by HTTP/2 flow control, not
/// buffered here.
pub(super) async fn drive<S, P, In>(
    shared: Arc<Shared<S>>,
    id: ConnectionId,
    mut requests: In,
    tx: Responder<P::Response>,
    peer: Peer,
) where
    S: ConfigSource,
    P: Variant<S>,
    In: Stream<Item = Result<P::Request, Status>> + Send + Unpin + 'static,
{
    let first = match requests.next().await {
        Some(Ok(first)) => first,
        Some(Err(status)) => {
            request_failed(&shared, &tx, None, status).await;
            return;
        }
        None => return,
    };
    shared.stats.request_received();
    if let Err(refusal) = P::check(&shared.limits, &first) {
        // Not identified yet: the node id may be what is too long.
        refuse(&shared, &tx, None, refusal).await;
        return;
    }
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
                    let session = stream.session();
                    session.stats().request_received();
                    if let Err(refusal) = P::check(&session.shared.limits, &request) {
                        session.refuse(refusal).await;
                        break;
                    }
                    if stream.on_request(request, Instant::now()).await.is_err() {
                        break;
                    }
                    // A client sending requests back to back always has the
                    // next one ready: give other tasks on this worker a turn.
                    tokio::task::coop::consume_budget().await;
                }
                Some(Err(status)) => {
                    let session = stream.session();
                    request_failed(&session.shared, &session.tx, Some(&session.node_id), status).await;
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

/// The request stream failed: a request tonic refused to decode (too
/// large: OUT_OF_RANGE), or the transport broke. Passes the status on, so a
/// client that is still there learns why its stream ends.
async fn request_failed<S, R>(
    shared: &Shared<S>,
    tx: &Responder<R>,
    node: Option<&str>,
    status: Status,
) {
    if status.code() == tonic::Code::OutOfRange {
        tracing::warn!(node = node.unwrap_or_default(), %status, max_request_bytes = shared.limits.max_request_bytes, "ending ADS stream: request too large");
        shared.stats.request_refused(Limit::MessageSize);
    } else {
        tracing::debug!(%status, "request stream ended with an error");
    }
    deliver(shared, tx, node, Err(status)).await.ok();
}

/// Ends a stream whose request went past a limit, saying which. `node` is
/// `None` before the stream is identified.
async fn refuse<S, R>(shared: &Shared<S>, tx: &Responder<R>, node: Option<&str>, refusal: Refusal) {
    let Refusal { limit, status } = refusal;
    tracing::warn!(node = node.unwrap_or_default(), limit = limit.as_str(), reason = %status.message(), "ending ADS stream: request past a limit");
    shared.stats.request_refused(limit);
    deliver(shared, tx, node, Err(status)).await.ok();
}

/// Queues a response or the final status, waiting at most the send timeout
/// while the queue is full. A proxy that reads nothing for that long is
/// dropped: its queue is emptied and the stream ends.
async fn deliver<S, R>(
    shared: &Shared<S>,
    tx: &Responder<R>,
    node: Option<&str>,
    item: Result<R, Status>,
) -> Result<(), Ended> {
    match tx.send(item).await {
        Ok(()) => Ok(()),
        Err(Unsent::Closed) => Err(Ended),
        Err(Unsent::TimedOut) => {
            let timeout = shared.limits.send_timeout;
            tracing::warn!(
                node = node.unwrap_or_default(),
                timeout = %humantime::format_duration(timeout),
                queued = RESPONSE_QUEUE,
                "dropping ADS stream: the proxy has not read a response for the whole send timeout"
            );
            shared.stats.slow_stream_dropped();
            tx.abort(Status::resource_exhausted(format!(
                "the proxy did not read responses for {} while {} were queued \
                 (--send-timeout); dropping the stream",
                humantime::format_duration(timeout),
                RESPONSE_QUEUE
            )));
            Err(Ended)
        }
    }
}

/// The stream is over: the proxy went away, or we ended it with a status.
#[derive(Debug)]
pub(super) struct Ended;

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
pub(super) struct Session<S: ConfigSource, R> {
    pub(super) shared: Arc<Shared<S>>,
    pub(super) id: ConnectionId,
    pub(super) node_id: String,
    /// The layout the node's metadata asked for on the first request.
    pub(super) interception: Interception,
    pub(super) peer: Peer,
    pub(super) view: Arc<ProxyView>,
    pub(super) tx: Responder<R>,
    pub(super) nonce: u64,
    pub(super) warned_types: HashSet<String>,
    _registered: Registered<S>,
}

impl<S: ConfigSource, R: Encode> Session<S, R> {
    /// Identifies the stream from its first request and registers it, or
    /// ends it with a status saying why it cannot be served. Returns the
    /// change signal, already marked seen as of the view it fetched.
    pub(super) async fn accept(
        shared: Arc<Shared<S>>,
        id: ConnectionId,
        node: Option<&Node>,
        peer: Peer,
        delta: bool,
        tx: Responder<R>,
    ) -> Result<(Self, watch::Receiver<u64>), Ended> {
        let node_id = node.map(|n| n.id.clone()).unwrap_or_default();
        if node_id.is_empty() {
            tracing::warn!("refusing ADS stream: the first request carries no node.id");
            shared.stats.stream_rejected();
            let status =
                Status::invalid_argument("the first request on an ADS stream must carry node.id");
            deliver(&shared, &tx, None, Err(status)).await.ok();
            return Err(Ended);
        }
        tracing::Span::current().record("node", node_id.as_str());
        let mut changes = shared.source.changes();
        changes.borrow_and_update();
        // The layout is read once, from the first request's node: Envoy
        // may send its node only then (set_node_on_first_message_only).
        let layout = node.map(interception_of).unwrap_or(Ok(Interception::None));
        let interception = layout.clone().unwrap_or_default();
        let ask = || {
            layout
                .clone()
                .and_then(|i| shared.source.view(&node_id, i, &peer))
        };
        // A proxy that connects before the first config is loaded (a
        // cluster's first lists can take a while) waits for it rather than
        // being turned away, up to NOT_READY_WAIT.
        let mut view = ask();
        let waiting_since = tokio::time::Instant::now();
        while matches!(view, Err(ViewError::NotReady)) && waiting_since.elapsed() < NOT_READY_WAIT {
            let left = NOT_READY_WAIT.saturating_sub(waiting_since.elapsed());
            match tokio::time::timeout(left, changes.changed()).await {
                Ok(Ok(())) => {
                    changes.borrow_and_update();
                    view = ask();
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let view = match view {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(node = %node_id, %error, "refusing ADS stream");
                shared.stats.stream_rejected();
                deliver(&shared, &tx, Some(&node_id), Err(status_of(&error)))
                    .await
                    .ok();
                return Err(Ended);
            }
        };
        shared.registry.insert(ConnectionStatus {
            id,
            node_id: node_id.clone(),
            interception,
            proxy: view.proxy.clone(),
            identity: view.identity.clone(),
            connected_at: SystemTime::now(),
            delta,
            types: BTreeMap::new(),
        });
        shared.stats.stream_opened();
        tracing::info!(proxy = %view.proxy, identity = %view.identity, %interception, "proxy connected");
        let registered = Registered {
            shared: Arc::clone(&shared),
            id,
        };
        let session = Session {
            shared,
            id,
            node_id,
            interception,
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
    pub(super) fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// Queues a response, waiting while the proxy is slow to read (at most
    /// the send timeout, then the stream is dropped). A response larger
    /// than the proxy may be sent ends the stream instead.
    pub(super) async fn send(&self, response: R) -> Result<(), Ended> {
        let size = response.encoded_len();
        let max = self.shared.limits.max_response_bytes;
        if size > max {
            tracing::warn!(node = %self.node_id, size, max, "ending ADS stream: response larger than --max-response-bytes");
            self.shared.stats.response_oversized();
            let status = Status::resource_exhausted(format!(
                "the response is {size} bytes, more than the server's limit of {max} bytes \
                 (--max-response-bytes)"
            ));
            return Err(self.fail(status).await);
        }
        deliver(&self.shared, &self.tx, Some(&self.node_id), Ok(response)).await
    }

    /// Ends the stream with `status`.
    pub(super) async fn fail(&self, status: Status) -> Ended {
        deliver(&self.shared, &self.tx, Some(&self.node_id), Err(status))
            .await
            .ok();
        Ended
    }

    /// Ends the stream because a request went past `refusal`'s limit.
    pub(super) async fn refuse(&self, refusal: Refusal) -> Ended {
        refuse(&self.shared, &self.tx, Some(&self.node_id), refusal).await;
        Ended
    }

    /// Resolves when the proxy stopped reading responses.
    pub(super) async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Fetches the current view after a change. `Ok(true)` if it differs
    /// from the one held. While the source is not ready the last good view
    /// is kept (never an empty config); any other error ends the stream.
    pub(super) fn refresh(&mut self) -> Result<bool, Status> {
        match self
            .shared
            .source
            .view(&self.node_id, self.interception, &self.peer)
        {
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
    pub(super) fn unknown_type(&mut self, type_url: &str) {
        const REMEMBERED: usize = 32;
        if self.warned_types.len() < REMEMBERED && self.warned_types.insert(type_url.to_string()) {
            tracing::warn!(%type_url, "ignoring request for a type this server does not serve");
        }
    }

    /// Mirrors one type's state into the registry.
    pub(super) fn publish(&self, kind: ResourceType, status: &TypeStatus) {
        self.shared.registry.set_type(self.id, kind, status);
    }

    pub(super) fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}
