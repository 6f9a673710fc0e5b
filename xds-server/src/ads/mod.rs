//! The Aggregated Discovery Service: state-of-the-world and delta streams.
//!
//! Sits between the snapshots (what a proxy should hold, behind
//! [`ConfigSource`] in `crate::view`) and the proxies. One task per stream:
//! it reads the proxy's requests, wakes on [`ConfigSource::changes`], and writes
//! responses into its own bounded queue, so a slow proxy only ever delays
//! itself. `stream.rs` runs that loop and holds what both protocol variants
//! share; `sotw.rs` and `delta.rs` speak the two variants;
//! [`Registry`] and [`Stats`] are what the debug endpoints read; [`Limits`]
//! bounds what a client can make the server hold or do.

mod delta;
pub mod frames;
mod grpc;
pub mod limits;
mod queue;
pub mod registry;
mod sotw;
pub mod stats;
mod stream;
#[cfg(test)]
mod tests;
mod versions;
mod wire;

pub use grpc::AdsService;
pub use limits::Limits;
pub use queue::ResponseStream;
pub use registry::{
    ConnectionId, ConnectionStatus, Nack, Registry, Subscription, SyncState, TypeStatus,
};
pub use stats::{Histogram, Stats};
pub use stream::{PeerResolver, RESPONSE_QUEUE, status_of};
pub use wire::{DeltaResponse, Encode, SotwResponse};

use stream::{Shared, drive};
use versions::Versions;

use crate::identity::Peer;
use crate::view::ConfigSource;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures::Stream;
use std::sync::Arc;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Status};
use tracing::Instrument as _;

/// The default [`PeerResolver`]: a [`Peer`] a transport layer put into the
/// request extensions, else [`Peer::Unauthenticated`]. Extensions are
/// server-side only, so a client cannot forge this.
pub fn peer_from_extensions(_metadata: &MetadataMap, extensions: &Extensions) -> Peer {
    extensions
        .get::<Peer>()
        .cloned()
        .unwrap_or(Peer::Unauthenticated)
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
                limits: Limits::default(),
                versions: Versions::default(),
            }),
        }
    }

    /// A server like this one with `change` applied to its shared parts
    /// (before any stream is served).
    fn rebuilt(self, change: impl FnOnce(&mut Shared<S>)) -> Self {
        let mut shared = Shared {
            source: Arc::clone(&self.shared.source),
            registry: Arc::clone(&self.shared.registry),
            stats: Arc::clone(&self.shared.stats),
            peer_of: Arc::clone(&self.shared.peer_of),
            limits: self.shared.limits.clone(),
            versions: Versions::default(),
        };
        change(&mut shared);
        AdsServer {
            shared: Arc::new(shared),
        }
    }

    /// Replaces how the peer of a stream is determined (see [`PeerResolver`]).
    pub fn with_peer_resolver(
        self,
        resolver: impl Fn(&MetadataMap, &Extensions) -> Peer + Send + Sync + 'static,
    ) -> Self {
        self.rebuilt(|shared| shared.peer_of = Arc::new(resolver))
    }

    /// Replaces the [`Limits`] (default: [`Limits::DEFAULT`]).
    pub fn with_limits(self, limits: Limits) -> Self {
        self.rebuilt(|shared| shared.limits = limits)
    }

    /// The bounds this server enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// The open streams, for the debug endpoints.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.shared.registry)
    }

    /// The counters, for `/metrics`.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.shared.stats)
    }

    /// The gRPC service to add to a `tonic::transport::Server`: requests
    /// decoded up to [`Limits::max_request_bytes`], responses framed one
    /// buffer each (see `grpc.rs` for why not tonic's encoder). Our own
    /// check in `Session::send` refuses responses past
    /// [`Limits::max_response_bytes`] with a clear log first; the service
    /// checks again as a backstop.
    pub fn into_service(self) -> AdsService<Self> {
        AdsService::new(self)
    }

    /// Serves one state-of-the-world stream from any request stream: spawns
    /// the stream's task and returns its responses. The gRPC method is a thin
    /// wrapper around this; other transports and tests can call it directly.
    pub fn serve_sotw<In>(&self, requests: In, peer: Peer) -> ResponseStream<SotwResponse>
    where
        In: Stream<Item = Result<DiscoveryRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = queue::response_queue(RESPONSE_QUEUE, self.shared.limits.send_timeout);
        let id = self.shared.registry.next_id();
        let span = tracing::info_span!(
            "ads",
            conn = id,
            node = tracing::field::Empty,
            delta = false
        );
        let task = drive::<S, sotw::Sotw<S>, In>(Arc::clone(&self.shared), id, requests, tx, peer);
        tokio::spawn(task.instrument(span));
        rx
    }

    /// Serves one delta (incremental) stream; see [`AdsServer::serve_sotw`].
    pub fn serve_delta<In>(&self, requests: In, peer: Peer) -> ResponseStream<DeltaResponse>
    where
        In: Stream<Item = Result<DeltaDiscoveryRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = queue::response_queue(RESPONSE_QUEUE, self.shared.limits.send_timeout);
        let id = self.shared.registry.next_id();
        let span =
            tracing::info_span!("ads", conn = id, node = tracing::field::Empty, delta = true);
        let task =
            drive::<S, delta::Delta<S>, In>(Arc::clone(&self.shared), id, requests, tx, peer);
        tokio::spawn(task.instrument(span));
        rx
    }
}

impl<S: ConfigSource> grpc::Streams for AdsServer<S> {
    fn max_request_bytes(&self) -> usize {
        self.shared.limits.max_request_bytes
    }

    fn max_response_bytes(&self) -> usize {
        self.shared.limits.max_response_bytes
    }

    fn max_pending_push_bytes(&self) -> usize {
        self.shared.limits.max_pending_push_bytes
    }

    fn peer(&self, metadata: &MetadataMap, extensions: &Extensions) -> Peer {
        (self.shared.peer_of)(metadata, extensions)
    }

    fn sotw(
        &self,
        requests: grpc::Requests<DiscoveryRequest>,
        peer: Peer,
    ) -> ResponseStream<SotwResponse> {
        self.serve_sotw(requests, peer)
    }

    fn delta(
        &self,
        requests: grpc::Requests<DeltaDiscoveryRequest>,
        peer: Peer,
    ) -> ResponseStream<DeltaResponse> {
        self.serve_delta(requests, peer)
    }
}
