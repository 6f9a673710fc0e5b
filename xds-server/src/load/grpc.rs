//! One bidirectional gRPC call whose responses are read with
//! [`Messages`] instead of tonic's `Streaming`: tonic's decoder keeps one
//! buffer per stream grown to the largest message it has seen (a full CDS,
//! about 1 MiB), most of the load generator's memory, which a real Envoy
//! (one stream per process) never multiplies.

use super::protocol::AdsTransport;
use crate::ads::frames::{End, Messages, prefixed};
use http_body_util::StreamBody;
use hyper::body::Frame;
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::{StdError, http};
use tonic::{Code, Status};

/// The responses of one call.
pub type Responses<B, M> = Messages<B, M>;

/// Opens the call `path` on `transport`, sending each of `requests` as a
/// message. Responses longer than `max_message` end the call.
pub async fn call<T, Req, Resp>(
    mut transport: T,
    path: &'static str,
    requests: impl Stream<Item = Req> + Send + 'static,
    max_message: usize,
) -> Result<Responses<T::ResponseBody, Resp>, Status>
where
    T: AdsTransport,
    Req: Message + 'static,
    Resp: Message + Default,
{
    let frames = requests.map(|r| Ok::<_, Status>(Frame::data(prefixed(&r))));
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(StreamBody::new(frames)))
        .map_err(|e| Status::internal(format!("building the request: {e}")))?;
    std::future::poll_fn(|cx| transport.poll_ready(cx))
        .await
        .map_err(transport_error)?;
    let response = transport.call(request).await.map_err(transport_error)?;
    let (head, body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(Status::unknown(format!("HTTP status {}", head.status)));
    }
    // A trailers-only response: the call ended before it began.
    if let Some(status) = Status::from_header_map(&head.headers)
        && status.code() != Code::Ok
    {
        return Err(status);
    }
    Ok(Messages::new(body, End::Responses, max_message))
}

fn transport_error(error: impl Into<StdError>) -> Status {
    let error: StdError = error.into();
    Status::unavailable(error.to_string())
}
