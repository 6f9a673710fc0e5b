//! Graceful shutdown of the xDS and debug servers.
//!
//! On [`ShutdownHandle::shutdown`] the servers stop accepting connections
//! (tonic's and axum's graceful shutdown: the listener is no longer polled,
//! HTTP/2 connections get a GOAWAY) and every open ADS stream is ended with
//! a proper gRPC status, `UNAVAILABLE` ("xds-server is shutting down"), in
//! trailers: a clean end of stream, not a reset. ADS streams never end by
//! themselves, so without this tonic would wait on them for ever. Envoy
//! takes `UNAVAILABLE` as "try again" and opens its next stream on the next
//! endpoint of its xDS cluster (another replica, or this one once it is
//! back), keeping its last config meanwhile.
//!
//! The pieces: a [`Shutdown`] (the signal, cloned into each server task,
//! whose clones also tell the handle when the last task has finished), a
//! gRPC service wrapper ([`Drain`]) whose response bodies can be ended on
//! the signal, and the [`ShutdownHandle`] kept by `RunningServer`.

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;

/// The gRPC status message of streams ended by a shutdown (Envoy logs it).
pub const SHUTDOWN_MESSAGE: &str = "xds-server is shutting down";

/// The server side of the shutdown signal: cloned into each server task
/// (ADS, debug), which holds it until it has finished.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown {
    stop: watch::Receiver<bool>,
    /// Never sent on: the handle learns that every task holding a clone
    /// has finished when its receiver sees all senders gone.
    _running: mpsc::Sender<()>,
    ended: Arc<AtomicUsize>,
}

/// What `RunningServer` keeps to shut its servers down.
#[derive(Debug)]
pub(crate) struct ShutdownHandle {
    stop: watch::Sender<bool>,
    running: mpsc::Receiver<()>,
    ended: Arc<AtomicUsize>,
}

/// How a shutdown went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// ADS streams that were open and were ended with `UNAVAILABLE`.
    pub ended_streams: usize,
    /// Every server finished (each stream ended, each connection closed)
    /// within the grace period; `false` means the rest were cut off.
    pub clean: bool,
    pub elapsed: Duration,
}

/// A new signal and its handle.
pub(crate) fn channel() -> (ShutdownHandle, Shutdown) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (running_tx, running_rx) = mpsc::channel(1);
    let ended = Arc::new(AtomicUsize::new(0));
    (
        ShutdownHandle {
            stop: stop_tx,
            running: running_rx,
            ended: ended.clone(),
        },
        Shutdown {
            stop: stop_rx,
            _running: running_tx,
            ended,
        },
    )
}

/// Resolves once shutdown is asked for (or its handle is gone).
async fn requested_from(mut stop: watch::Receiver<bool>) {
    // An error means the handle was dropped: stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

impl Shutdown {
    /// Resolves once shutdown is asked for: the signal to hand to tonic's
    /// and axum's graceful shutdown.
    pub(crate) fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        requested_from(self.stop.clone())
    }

    /// `service`, its open response streams ended on shutdown.
    pub(crate) fn wrap<S>(&self, service: S) -> Drain<S> {
        Drain {
            inner: service,
            stop: self.stop.clone(),
            ended: self.ended.clone(),
        }
    }
}

impl ShutdownHandle {
    /// Asks every server to stop and waits, at most `grace`, until each
    /// has: no new connections, open streams ended with `UNAVAILABLE`,
    /// connections closed.
    pub(crate) async fn shutdown(&mut self, grace: Duration) -> ShutdownReport {
        let started = Instant::now();
        self.stop.send_replace(true);
        // `None` once every task holding a `Shutdown` has finished.
        let clean = tokio::time::timeout(grace, self.running.recv())
            .await
            .is_ok();
        ShutdownReport {
            ended_streams: self.ended.load(Ordering::Relaxed),
            clean,
            elapsed: started.elapsed(),
        }
    }
}

/// A gRPC service whose response bodies end with `UNAVAILABLE` on
/// shutdown; requests that arrive once it has begun get `UNAVAILABLE` at
/// once.
#[derive(Clone, Debug)]
pub(crate) struct Drain<S> {
    inner: S,
    stop: watch::Receiver<bool>,
    ended: Arc<AtomicUsize>,
}

impl<S: NamedService> NamedService for Drain<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for Drain<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<DrainBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if *self.stop.borrow() {
            let response = Status::unavailable(SHUTDOWN_MESSAGE)
                .into_http::<Body>()
                .map(DrainBody::finished);
            return Box::pin(async move { Ok(response) });
        }
        let stop = self.stop.clone();
        let ended = self.ended.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| DrainBody {
                inner,
                stop: Some(Box::pin(requested_from(stop))),
                finished: false,
                ended,
            }))
        })
    }
}

/// A response body that ends, on shutdown, with trailers carrying
/// `grpc-status: UNAVAILABLE`, unless it has ended by itself first.
pub(crate) struct DrainBody {
    inner: Body,
    /// `None` once the inner body has sent its own trailers.
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    finished: bool,
    ended: Arc<AtomicUsize>,
}

impl DrainBody {
    /// A body that is already complete (a trailers-only response).
    fn finished(inner: Body) -> DrainBody {
        DrainBody {
            inner,
            stop: None,
            finished: false,
            ended: Arc::default(),
        }
    }
}

impl HttpBody for DrainBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(stop) = this.stop.as_mut()
            && stop.as_mut().poll(cx).is_ready()
        {
            this.finished = true;
            this.ended.fetch_add(1, Ordering::Relaxed);
            let mut trailers = tonic::codegen::http::HeaderMap::new();
            // Only fails for a message that cannot be a header value.
            let _ = Status::unavailable(SHUTDOWN_MESSAGE).add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                // The stream ended by itself: nothing left to cut short.
                this.stop = None;
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || (self.stop.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // A body that may be cut short promises nothing about its length.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::convert::Infallible;

    /// A gRPC service whose responses never end (like ADS streams).
    #[derive(Clone)]
    struct Endless;

    impl Service<Request<Body>> for Endless {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<Body>) -> Self::Future {
            std::future::ready(Ok(Response::new(endless())))
        }
    }

    /// A body that never ends (like an ADS response stream).
    fn endless() -> Body {
        let frames = futures::stream::pending::<Result<Frame<Bytes>, Status>>();
        Body::new(http_body_util::StreamBody::new(frames))
    }

    #[tokio::test]
    async fn an_open_stream_ends_with_unavailable_trailers_on_shutdown() {
        let (mut handle, shutdown) = channel();
        let mut svc = shutdown.wrap(Endless);
        let response = svc
            .call(Request::new(Body::empty()))
            .await
            .expect("a response");
        let mut body = response.into_body();
        let collected = tokio::spawn(async move { body.frame().await });
        drop(shutdown);
        let report = handle.shutdown(Duration::from_secs(1)).await;
        let frame = collected
            .await
            .expect("body task")
            .expect("a frame")
            .expect("not an error");
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"14"[..])
        );
        assert!(report.clean, "no task held the signal: {report:?}");
        // Counted once the body has ended (here after the report: no
        // server task waited for the body).
        assert_eq!(handle.ended.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_request_after_shutdown_gets_unavailable_at_once() {
        let (mut handle, shutdown) = channel();
        let mut svc = shutdown.wrap(Endless);
        drop(shutdown);
        handle.shutdown(Duration::from_secs(1)).await;
        let response = svc
            .call(Request::new(Body::empty()))
            .await
            .expect("a response");
        assert_eq!(
            response.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"14"[..])
        );
        let mut body = response.into_body();
        assert!(body.frame().await.is_none(), "nothing after the status");
    }

    #[tokio::test]
    async fn a_task_holding_the_signal_is_waited_for_up_to_the_grace() {
        let (mut handle, shutdown) = channel();
        let held = shutdown.clone();
        drop(shutdown);
        let task = tokio::spawn(async move {
            held.requested().await;
            drop(held);
        });
        let report = handle.shutdown(Duration::from_secs(5)).await;
        assert!(report.clean, "{report:?}");
        task.await.expect("task");

        let (mut handle, stuck) = channel();
        let report = handle.shutdown(Duration::from_millis(100)).await;
        assert!(!report.clean, "a task that never finishes is cut off");
        drop(stuck);
    }
}
