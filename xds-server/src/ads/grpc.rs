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

use super::{AdsServer, ResponseStream};
use crate::view::ConfigSource;
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
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

/// The gRPC service name, for routing.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The length-prefixed message header: a compression flag and a length.
const HEADER_SIZE: usize = 5;

/// The ADS server as a gRPC service (see [`AdsServer::into_service`]).
pub struct AdsService<S: ConfigSource> {
    server: AdsServer<S>,
}

impl<S: ConfigSource> AdsService<S> {
    pub(super) fn new(server: AdsServer<S>) -> Self {
        AdsService { server }
    }
}

impl<S: ConfigSource> Clone for AdsService<S> {
    fn clone(&self) -> Self {
        AdsService {
            server: self.server.clone(),
        }
    }
}

impl<S: ConfigSource> NamedService for AdsService<S> {
    const NAME: &'static str = SERVICE;
}

impl<S, B> tower::Service<http::Request<B>> for AdsService<S>
where
    S: ConfigSource,
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
            SOTW_PATH => self.open::<DiscoveryRequest, DiscoveryResponse, B>(
                request,
                |server, requests, peer| server.serve_sotw(requests, peer),
            ),
            DELTA_PATH => self.open::<DeltaDiscoveryRequest, DeltaDiscoveryResponse, B>(
                request,
                |server, requests, peer| server.serve_delta(requests, peer),
            ),
            path => Status::unimplemented(format!("no method {path}")).into_http(),
        };
        std::future::ready(Ok(response))
    }
}

impl<S: ConfigSource> AdsService<S> {
    /// Decodes the request stream, starts the stream's task with `serve`,
    /// and answers with a body that frames its responses.
    fn open<Req, Resp, B>(
        &self,
        request: http::Request<B>,
        serve: impl FnOnce(&AdsServer<S>, Streaming<Req>, crate::identity::Peer) -> ResponseStream<Resp>,
    ) -> http::Response<Body>
    where
        Req: prost::Message + Default + Send + 'static,
        Resp: prost::Message + Send + 'static,
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
        let limits = self.server.limits();
        let (max_request, max_response) = (limits.max_request_bytes, limits.max_response_bytes);
        let (parts, body) = request.into_parts();
        let mut codec = ProstCodec::<Resp, Req>::default();
        let requests = Streaming::new_request(codec.decoder(), body, None, Some(max_request));
        // tonic's view of the headers and extensions (where the transport
        // put the peer's certificate).
        let (metadata, extensions, ()) =
            tonic::Request::from_http(http::Request::from_parts(parts, ())).into_parts();
        let peer = (self.server.shared.peer_of)(&metadata, &extensions);
        let responses = serve(&self.server, requests, peer);
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
fn frame<R: prost::Message>(message: &R, max: usize) -> Result<Bytes, Status> {
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
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("encoding a response: {e}")))?;
    Ok(buf.freeze())
}

impl<R: prost::Message + Send + 'static> HttpBody for ResponseBody<R> {
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
    use super::*;
    use crate::ads::tests::FakeSource;
    use envoy_types::pb::google::protobuf::Any;
    use tower::ServiceExt;

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    async fn call(path: &str, encoding: Option<&str>) -> http::Response<Body> {
        let service = AdsServer::new(FakeSource::new()).into_service();
        let mut request = http::Request::builder()
            .uri(format!("http://localhost{path}"))
            .header(header::CONTENT_TYPE, "application/grpc");
        if let Some(encoding) = encoding {
            request = request.header("grpc-encoding", encoding);
        }
        let request = request.body(Body::empty()).expect("a request");
        match service.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn an_unknown_method_is_unimplemented() {
        let response = call(&format!("/{SERVICE}/FetchSecrets"), None).await;
        assert_eq!(grpc_status(&response), Some("12"));
    }

    #[tokio::test]
    async fn a_compressed_request_stream_is_refused() {
        let response = call(SOTW_PATH, Some("gzip")).await;
        assert_eq!(grpc_status(&response), Some("12"));
        let response = call(DELTA_PATH, Some("identity")).await;
        assert_eq!(grpc_status(&response), None, "a stream is opened");
    }

    #[test]
    fn a_response_is_one_length_prefixed_message_in_a_buffer_of_its_size() {
        let message = DiscoveryResponse {
            version_info: "v1".into(),
            resources: vec![Any {
                type_url: "t".into(),
                value: vec![7; 300],
            }],
            ..Default::default()
        };
        let len = prost::Message::encoded_len(&message);
        let bytes = frame(&message, 1024).expect("fits");
        assert_eq!(bytes.len(), HEADER_SIZE + len);
        assert_eq!(bytes[0], 0, "not compressed");
        assert_eq!(bytes[1..5], (len as u32).to_be_bytes());
        let decoded: DiscoveryResponse =
            prost::Message::decode(&bytes[HEADER_SIZE..]).expect("decodes");
        assert_eq!(decoded, message);

        let status = frame(&message, len - 1).expect_err("over the limit");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("--max-response-bytes"),
            "{status}"
        );
    }
}
