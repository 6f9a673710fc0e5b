//! The ADS gRPC service on the wire: the two streaming methods of
//! `envoy.service.discovery.v3.AggregatedDiscoveryService`.
//!
//! Requests are decoded by tonic (`Streaming`, which enforces
//! [`super::Limits::max_request_bytes`]); responses are framed here, each
//! into a buffer of exactly its size, handed to HTTP/2 and freed once
//! written. tonic's generated server encodes every response of a stream
//! into one buffer that grows to the largest response ever sent and keeps
//! that size for the life of the stream: about 1 MiB per sidecar at 1,000
//! services (the CDS response), measured as two thirds of the server's
//! memory with hundreds of sidecars connected (BENCHMARKS.md).

use super::queue::ResponseStream;
use super::wire::{DeltaResponse, Encode, SotwResponse};
use crate::identity::Peer;
use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::StreamExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::http::{self, HeaderMap, HeaderValue, header};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Code, Extensions, Status};
use tonic_prost::ProstCodec;

/// The gRPC service name, for routing.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The length-prefixed message header: a compression flag and a length.
const HEADER_SIZE: usize = 5;

/// What the wire layer needs of the ADS server (`AdsServer` implements
/// it): its size limits, how a stream's peer is resolved, and how each
/// variant's stream is started.
pub trait Streams: Clone + Send + 'static {
    fn max_request_bytes(&self) -> usize;
    fn max_response_bytes(&self) -> usize;
    fn peer(&self, metadata: &MetadataMap, extensions: &Extensions) -> Peer;
    fn sotw(
        &self,
        requests: Streaming<DiscoveryRequest>,
        peer: Peer,
    ) -> ResponseStream<SotwResponse>;
    fn delta(
        &self,
        requests: Streaming<DeltaDiscoveryRequest>,
        peer: Peer,
    ) -> ResponseStream<DeltaResponse>;
}

/// The ADS server as a gRPC service.
#[derive(Clone)]
pub struct AdsService<T: Streams> {
    streams: T,
}

impl<T: Streams> AdsService<T> {
    pub fn new(streams: T) -> Self {
        AdsService { streams }
    }
}

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
            SOTW_PATH => self.open::<_, DiscoveryResponse, _, _>(request, T::sotw),
            DELTA_PATH => self.open::<_, DeltaDiscoveryResponse, _, _>(request, T::delta),
            path => Status::unimplemented(format!("no method {path}")).into_http(),
        };
        std::future::ready(Ok(response))
    }
}

impl<T: Streams> AdsService<T> {
    /// Decodes the request stream, starts the stream's task with `serve`,
    /// and answers with a body that frames its responses. `Message` is the
    /// protobuf type of the responses (for tonic's codec); `Resp` is how
    /// they are held until written.
    fn open<Req, Message, Resp, B>(
        &self,
        request: http::Request<B>,
        serve: impl FnOnce(&T, Streaming<Req>, Peer) -> ResponseStream<Resp>,
    ) -> http::Response<Body>
    where
        Req: prost::Message + Default + Send + 'static,
        Message: prost::Message + Send + 'static,
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
        let mut codec = ProstCodec::<Message, Req>::default();
        let requests = Streaming::new_request(codec.decoder(), body, None, Some(max_request));
        // tonic's view of the headers and extensions (where the transport
        // put the peer's certificate).
        let (metadata, extensions, ()) =
            tonic::Request::from_http(http::Request::from_parts(parts, ())).into_parts();
        let peer = self.streams.peer(&metadata, &extensions);
        let responses = serve(&self.streams, requests, peer);
        let mut response = http::Response::new(Body::new(ResponseBody {
            responses,
            max_response,
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
    done: bool,
}

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

/// `message` as one length-prefixed gRPC message in a buffer of its own.
fn frame<R: Encode>(message: &R, max: usize) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len)
        .ok()
        .filter(|_| len <= max)
        .ok_or_else(|| {
            Status::resource_exhausted(format!(
                "the response is {len} bytes, more than the server's limit of {max} bytes \
                 (--max-response-bytes)"
            ))
        })?;
    let mut buf = BytesMut::with_capacity(HEADER_SIZE + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    message.encode(&mut buf);
    Ok(buf.freeze())
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
        let next = match this.responses.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        let frame = match next {
            Some(Ok(message)) => match frame(&message, this.max_response) {
                Ok(bytes) => Frame::data(bytes),
                Err(status) => this.trailers(&status),
            },
            Some(Err(status)) => this.trailers(&status),
            None => this.trailers(&Status::new(Code::Ok, "")),
        };
        Poll::Ready(Some(Ok(frame)))
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
    }

    impl Streams for Scripted {
        fn max_request_bytes(&self) -> usize {
            1024
        }

        fn max_response_bytes(&self) -> usize {
            1024
        }

        fn peer(&self, _metadata: &MetadataMap, _extensions: &Extensions) -> Peer {
            Peer::Unauthenticated
        }

        fn sotw(
            &self,
            _requests: Streaming<DiscoveryRequest>,
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
            _requests: Streaming<DeltaDiscoveryRequest>,
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
            let mut expected_bytes = frame(&first, 1024).expect("fits").to_vec();
            expected_bytes.extend_from_slice(&frame(&second, 1024).expect("fits"));
            assert_eq!(collected.to_bytes().to_vec(), expected_bytes);
        }
    }

    #[tokio::test]
    async fn a_response_past_the_limit_ends_the_stream_resource_exhausted() {
        let streams = Scripted {
            responses: vec![response("big", 2048), response("never", 1)],
            end: None,
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
        let bytes = frame(&message, 1024).expect("fits");
        assert_eq!(bytes.len(), HEADER_SIZE + len);
        assert_eq!(bytes[0], 0, "not compressed");
        assert_eq!(bytes[1..5], (len as u32).to_be_bytes());
        let decoded: DiscoveryResponse =
            prost::Message::decode(&bytes[HEADER_SIZE..]).expect("decodes");
        assert_eq!(decoded.version_info, "v1");
        assert_eq!(decoded.resources.len(), 1);
        assert_eq!(decoded.resources[0], message.resources[0].body);

        let status = frame(&message, len - 1).expect_err("over the limit");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("--max-response-bytes"),
            "{status}"
        );
    }
}
