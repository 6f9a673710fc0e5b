//! The ADS gRPC service on the wire: the two streaming methods of
//! `envoy.service.discovery.v3.AggregatedDiscoveryService`.
//!
//! Requests are read with [`Messages`] (each in a buffer of its own size,
//! up to [`super::Limits::max_request_bytes`]); responses are framed here, each
//! into a buffer of exactly its size, handed to HTTP/2 and freed once
//! written. tonic's generated server encodes every response of a stream
//! into one buffer that grows to the largest response ever sent and keeps
//! that size for the life of the stream: about 1 MiB per sidecar at 1,000
//! services (the CDS response), measured as two thirds of the server's
//! memory with hundreds of sidecars connected (BENCHMARKS.md).
//!
//! Framed responses not yet written to their sockets share one budget of
//! bytes ([`super::Limits::max_pending_push_bytes`]), as istiod throttles
//! concurrent pushes: a stream whose next response does not fit waits (its
//! response stays queued as shared resources, a few KiB) until another's is
//! written. Without it a connect storm of 10,000 sidecars frames 10,000
//! full pushes at once, each held until its slow reader takes it.

use super::frames::{End, Messages};
use super::queue::ResponseStream;
use super::wire::{DeltaResponse, Encode, SotwResponse};
use crate::identity::Peer;
use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures::StreamExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, header};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Code, Extensions, Status};

/// The gRPC service name, for routing.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The length-prefixed message header: a compression flag and a length.
const HEADER_SIZE: usize = super::frames::PREFIX;

/// The requests of one stream, read from its HTTP/2 body.
pub type Requests<M> = Messages<Body, M>;

/// The push budget counts KiB: a semaphore permit per KiB.
const BUDGET_UNIT: usize = 1024;

/// What the wire layer needs of the ADS server (`AdsServer` implements
/// it): its size limits, how a stream's peer is resolved, and how each
/// variant's stream is started.
pub trait Streams: Clone + Send + 'static {
    fn max_request_bytes(&self) -> usize;
    fn max_response_bytes(&self) -> usize;
    /// Bytes of framed responses not yet written, all streams together.
    fn max_pending_push_bytes(&self) -> usize;
    fn peer(&self, metadata: &MetadataMap, extensions: &Extensions) -> Peer;
    fn sotw(
        &self,
        requests: Requests<DiscoveryRequest>,
        peer: Peer,
    ) -> ResponseStream<SotwResponse>;
    fn delta(
        &self,
        requests: Requests<DeltaDiscoveryRequest>,
        peer: Peer,
    ) -> ResponseStream<DeltaResponse>;
}

/// The ADS server as a gRPC service.
#[derive(Clone)]
pub struct AdsService<T: Streams> {
    streams: T,
    budget: PushBudget,
}

impl<T: Streams> AdsService<T> {
    pub fn new(streams: T) -> Self {
        let budget = PushBudget::new(streams.max_pending_push_bytes());
        AdsService { streams, budget }
    }
}

/// The bytes of framed responses not yet written, shared by every stream
/// of a service, in [`BUDGET_UNIT`]s.
#[derive(Clone)]
struct PushBudget {
    permits: Arc<Semaphore>,
    units: u32,
}

impl PushBudget {
    fn new(bytes: usize) -> Self {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        PushBudget {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Units a response of `len` bytes takes: at most the whole budget, so
    /// a response larger than it still goes, alone.
    fn units_for(&self, len: usize) -> u32 {
        u32::try_from(len.div_ceil(BUDGET_UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.units)
    }
}

/// A wait for room in the budget.
type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

impl<T: Streams> NamedService for AdsService<T> {
    const NAME: &'static str = SERVICE;
}

impl<T, B> tower::Service<http::Request<B>> for AdsService<T>
where
    T: Streams,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// Opening a stream only spawns its task: nothing to wait for here.
    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = match request.uri().path() {
            SOTW_PATH => self.open(request, T::sotw),
            DELTA_PATH => self.open(request, T::delta),
            path => Status::unimplemented(format!("no method {path}")).into_http(),
        };
        std::future::ready(Ok(response))
    }
}

impl<T: Streams> AdsService<T> {
    /// Reads the request stream, starts the stream's task with `serve`,
    /// and answers with a body that frames its responses. `Resp` is how
    /// they are held until written.
    fn open<Req, Resp, B>(
        &self,
        request: http::Request<B>,
        serve: impl FnOnce(&T, Requests<Req>, Peer) -> ResponseStream<Resp>,
    ) -> http::Response<Body>
    where
        Req: prost::Message + Default + Send + 'static,
        Resp: Encode,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        // No compression is offered, so none may be used (tonic answers
        // the same).
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding.as_bytes() != b"identity"
        {
            return Status::unimplemented(format!(
                "request compression {encoding:?} is not supported"
            ))
            .into_http();
        }
        let max_request = self.streams.max_request_bytes();
        let max_response = self.streams.max_response_bytes();
        let (parts, body) = request.into_parts();
        let requests = Messages::new(Body::new(body), End::Requests, max_request);
        // tonic's view of the headers and extensions (where the transport
        // put the peer's certificate).
        let (metadata, extensions, ()) =
            tonic::Request::from_http(http::Request::from_parts(parts, ())).into_parts();
        let peer = self.streams.peer(&metadata, &extensions);
        let responses = serve(&self.streams, requests, peer);
        let mut response = http::Response::new(Body::new(ResponseBody {
            responses,
            max_response,
            budget: self.budget.clone(),
            waiting: None,
            done: false,
        }));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

/// A stream's responses as gRPC messages, then the trailers with its
/// status.
struct ResponseBody<R> {
    responses: ResponseStream<R>,
    max_response: usize,
    budget: PushBudget,
    /// The next response and its length, waiting for room in the budget.
    waiting: Option<(R, usize, Acquire)>,
    done: bool,
}

// Nothing of a body is ever pinned in place: the waiting response is moved
// out by value, the wait itself is boxed.
impl<R> Unpin for ResponseBody<R> {}

impl<R> ResponseBody<R> {
    fn trailers(&mut self, status: &Status) -> Frame<Bytes> {
        self.done = true;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // Only a message that cannot be a header value fails: keep the code.
            let _ = Status::new(status.code(), "").add_header(&mut trailers);
        }
        Frame::trailers(trailers)
    }
}

/// The length `message` frames to, or why it may not be sent.
fn checked_len<R: Encode>(message: &R, max: usize) -> Result<usize, Status> {
    let len = message.encoded_len();
    if len > max || u32::try_from(len).is_err() {
        return Err(Status::resource_exhausted(format!(
            "the response is {len} bytes, more than the server's limit of {max} bytes \
             (--max-response-bytes)"
        )));
    }
    Ok(len)
}

/// `message` (`len` bytes, checked) as one length-prefixed gRPC message in
/// a buffer of its own, which gives its share of the push budget back when
/// HTTP/2 has written it and dropped it.
fn frame<R: Encode>(message: &R, len: usize, permit: Option<OwnedSemaphorePermit>) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_SIZE + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode(&mut buf);
    let bytes = buf.freeze();
    match permit {
        Some(permit) => Bytes::from_owner(Framed {
            bytes,
            _permit: permit,
        }),
        None => bytes,
    }
}

/// A framed response and the budget it holds.
struct Framed {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Framed {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl<R: Encode> HttpBody for ResponseBody<R> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some((_, _, acquire)) = &mut this.waiting {
            let permit = ready!(acquire.as_mut().poll(cx));
            if let Some((message, len, _)) = this.waiting.take() {
                // The semaphore is never closed; were it, send unthrottled.
                return Poll::Ready(Some(Ok(Frame::data(frame(&message, len, permit.ok())))));
            }
        }
        let next = ready!(this.responses.poll_next_unpin(cx));
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(status)) => return Poll::Ready(Some(Ok(this.trailers(&status)))),
            None => return Poll::Ready(Some(Ok(this.trailers(&Status::new(Code::Ok, ""))))),
        };
        let len = match checked_len(&message, this.max_response) {
            Ok(len) => len,
            Err(status) => return Poll::Ready(Some(Ok(this.trailers(&status)))),
        };
        let units = this.budget.units_for(HEADER_SIZE + len);
        let permits = Arc::clone(&this.budget.permits);
        match permits.try_acquire_many_owned(units) {
            Ok(permit) => Poll::Ready(Some(Ok(Frame::data(frame(&message, len, Some(permit)))))),
            Err(_) => {
                let acquire: Acquire =
                    Box::pin(Arc::clone(&this.budget.permits).acquire_many_owned(units));
                this.waiting = Some((message, len, acquire));
                // Polls the wait once, which registers the wake-up.
                self.as_mut().poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue::response_queue;
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::time::Duration;
    use tower::ServiceExt;
    use translator::{Resource, ResourceType};

    /// Streams whose every SotW stream sends `responses`, then ends with
    /// `end` (or OK); delta streams end at once.
    #[derive(Clone)]
    struct Scripted {
        responses: Vec<SotwResponse>,
        end: Option<Status>,
        budget: usize,
    }

    impl Streams for Scripted {
        fn max_request_bytes(&self) -> usize {
            1024
        }

        fn max_response_bytes(&self) -> usize {
            1024
        }

        fn max_pending_push_bytes(&self) -> usize {
            self.budget
        }

        fn peer(&self, _metadata: &MetadataMap, _extensions: &Extensions) -> Peer {
            Peer::Unauthenticated
        }

        fn sotw(
            &self,
            _requests: Requests<DiscoveryRequest>,
            _peer: Peer,
        ) -> ResponseStream<SotwResponse> {
            let (tx, rx) = response_queue(16, Duration::from_secs(5));
            let (responses, end) = (self.responses.clone(), self.end.clone());
            tokio::spawn(async move {
                for r in responses {
                    let _ = tx.send(Ok(r)).await;
                }
                if let Some(status) = end {
                    let _ = tx.send(Err(status)).await;
                }
            });
            rx
        }

        fn delta(
            &self,
            _requests: Requests<DeltaDiscoveryRequest>,
            _peer: Peer,
        ) -> ResponseStream<DeltaResponse> {
            response_queue(1, Duration::from_secs(5)).1
        }
    }

    fn response(version: &str, size: usize) -> SotwResponse {
        SotwResponse {
            version_info: version.into(),
            kind: ResourceType::Cluster,
            nonce: String::new(),
            resources: vec![Arc::new(Resource::from_encoded::<Cluster>(
                "c",
                ResourceType::Cluster,
                vec![7; size],
            ))],
        }
    }

    async fn call(streams: Scripted, path: &str, encoding: Option<&str>) -> http::Response<Body> {
        let mut request = http::Request::builder()
            .uri(format!("http://localhost{path}"))
            .header(header::CONTENT_TYPE, "application/grpc");
        if let Some(encoding) = encoding {
            request = request.header("grpc-encoding", encoding);
        }
        let request = request.body(Body::empty()).expect("a request");
        match AdsService::new(streams).oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    fn status_in(headers: &HeaderMap) -> (Option<&str>, Option<&str>) {
        let get = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        (get("grpc-status"), get("grpc-message"))
    }

    fn quiet() -> Scripted {
        Scripted {
            responses: Vec::new(),
            end: None,
            budget: 1 << 20,
        }
    }

    #[tokio::test]
    async fn an_unknown_method_is_unimplemented() {
        let response = call(quiet(), &format!("/{SERVICE}/FetchSecrets"), None).await;
        assert_eq!(status_in(response.headers()).0, Some("12"));
    }

    #[tokio::test]
    async fn a_compressed_request_stream_is_refused() {
        let response = call(quiet(), SOTW_PATH, Some("gzip")).await;
        assert_eq!(status_in(response.headers()).0, Some("12"));
        let response = call(quiet(), DELTA_PATH, Some("identity")).await;
        assert_eq!(status_in(response.headers()).0, None, "a stream is opened");
    }

    #[tokio::test]
    async fn responses_are_framed_in_order_and_the_end_is_a_status_in_the_trailers() {
        let (first, second) = (response("v1", 10), response("v2", 20));
        for (end, expected) in [
            (None, (Code::Ok, "")),
            (
                Some(Status::resource_exhausted("too slow")),
                (Code::ResourceExhausted, "too slow"),
            ),
        ] {
            let streams = Scripted {
                responses: vec![first.clone(), second.clone()],
                end,
                ..quiet()
            };
            let response = call(streams, SOTW_PATH, None).await;
            assert_eq!(
                response.headers().get(header::CONTENT_TYPE),
                Some(&HeaderValue::from_static("application/grpc"))
            );
            let collected =
                tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
                    .await
                    .expect("the body ends")
                    .expect("no body error");
            let trailers = collected.trailers().cloned().expect("trailers");
            let status = Status::from_header_map(&trailers).expect("a status");
            assert_eq!((status.code(), status.message()), expected);
            let framed = |m: &SotwResponse| frame(m, checked_len(m, 1024).expect("fits"), None);
            let mut expected_bytes = framed(&first).to_vec();
            expected_bytes.extend_from_slice(&framed(&second));
            assert_eq!(collected.to_bytes().to_vec(), expected_bytes);
        }
    }

    #[tokio::test]
    async fn a_response_past_the_limit_ends_the_stream_resource_exhausted() {
        let streams = Scripted {
            responses: vec![response("big", 2048), response("never", 1)],
            ..quiet()
        };
        let collected = call(streams, SOTW_PATH, None)
            .await
            .into_body()
            .collect()
            .await
            .expect("no body error");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(status_in(&trailers).0, Some("8"));
        assert!(collected.to_bytes().is_empty(), "nothing was sent");
    }

    #[test]
    fn a_response_is_one_length_prefixed_message_in_a_buffer_of_its_size() {
        let message = response("v1", 300);
        let len = message.encoded_len();
        let bytes = frame(&message, checked_len(&message, 1024).expect("fits"), None);
        assert_eq!(bytes.len(), HEADER_SIZE + len);
        assert_eq!(bytes[0], 0, "not compressed");
        assert_eq!(bytes[1..5], (len as u32).to_be_bytes());
        let decoded: envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse =
            prost::Message::decode(&bytes[HEADER_SIZE..]).expect("decodes");
        assert_eq!(decoded.version_info, "v1");
        assert_eq!(decoded.resources.len(), 1);
        assert_eq!(decoded.resources[0], message.resources[0].body);

        let status = checked_len(&message, len - 1).expect_err("over the limit");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("--max-response-bytes"),
            "{status}"
        );
    }

    /// Two streams sharing a budget of one response: the second's response
    /// is framed only once the first's was written (its buffer dropped).
    #[tokio::test]
    async fn a_push_waits_for_room_in_the_shared_budget() {
        let message = response("v1", 3000);
        let len = checked_len(&message, 1 << 20).expect("fits");
        let budget = PushBudget::new(HEADER_SIZE + len);
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = response_queue(4, Duration::from_secs(5));
            tx.send(Ok(message.clone())).await.expect("queued");
            bodies.push(ResponseBody {
                responses: rx,
                max_response: 1 << 20,
                budget: budget.clone(),
                waiting: None,
                done: false,
            });
        }
        let (mut a, mut b) = (bodies.remove(0), bodies.remove(0));
        let first = a
            .frame()
            .await
            .expect("a frame")
            .expect("no error")
            .into_data()
            .expect("data");
        assert_eq!(first.len(), HEADER_SIZE + len);
        let mut second = Box::pin(b.frame());
        assert!(
            futures::poll!(second.as_mut()).is_pending(),
            "framed while the first still holds the whole budget"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("framed once the first is written")
            .expect("a frame")
            .expect("no error")
            .into_data()
            .expect("data");
        assert_eq!(second.len(), HEADER_SIZE + len);
    }

    #[test]
    fn a_response_larger_than_the_budget_takes_all_of_it() {
        let budget = PushBudget::new(10 * BUDGET_UNIT);
        assert_eq!(budget.units_for(1), 1);
        assert_eq!(budget.units_for(BUDGET_UNIT + 1), 2);
        assert_eq!(budget.units_for(100 * BUDGET_UNIT), 10);
    }
}
