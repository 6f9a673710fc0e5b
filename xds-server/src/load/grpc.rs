//! One bidirectional gRPC call with the message framing done here instead
//! of by tonic's `Streaming`. tonic's decoder keeps one buffer per stream,
//! grown to the largest message it has seen (a full CDS, about 1 MiB) and
//! never shrunk: about 1 MiB per simulated sidecar, most of the load
//! generator's memory, which a real Envoy (one stream per process) never
//! multiplies. Here each response is assembled in a buffer of its exact
//! size (or sliced from the HTTP/2 data when it fits one frame) and freed
//! once decoded.

use super::protocol::AdsTransport;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use prost::Message;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::{Body, StdError, http};
use tonic::{Code, Status};

/// The gRPC message prefix: a compression flag and a 4-byte length.
const PREFIX: usize = 5;

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
    let frames = requests.map(|r| Ok::<_, Status>(Frame::data(frame(&r))));
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
    Ok(Responses {
        body: Box::pin(body),
        chunks: VecDeque::new(),
        buffered: 0,
        next_len: None,
        max_message,
        message: PhantomData,
    })
}

/// `message` with its gRPC prefix.
fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    buf.put_u8(0);
    // Requests are small (names of at most a few thousand resources).
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut buf);
    buf.freeze()
}

fn transport_error(error: impl Into<StdError>) -> Status {
    let error: StdError = error.into();
    Status::unavailable(error.to_string())
}

/// The responses of one call.
pub struct Responses<B, M> {
    body: Pin<Box<B>>,
    /// Received data not yet consumed, in order.
    chunks: VecDeque<Bytes>,
    buffered: usize,
    /// The length of the message whose prefix was read.
    next_len: Option<usize>,
    max_message: usize,
    message: PhantomData<fn() -> M>,
}

impl<B, M> Responses<B, M>
where
    B: Body<Data = Bytes, Error: Into<StdError>>,
    M: Message + Default,
{
    /// The next message and its length on the wire (without the prefix);
    /// `None` once the server ended the call with status OK.
    pub async fn message(&mut self) -> Result<Option<(M, usize)>, Status> {
        loop {
            if let Some(next) = self.next_message()? {
                return Ok(Some(next));
            }
            let Some(frame) = self.body.frame().await else {
                return self.ended(None);
            };
            let frame = frame.map_err(transport_error)?;
            match frame.into_data() {
                Ok(data) => {
                    self.buffered += data.len();
                    if !data.is_empty() {
                        self.chunks.push_back(data);
                    }
                }
                Err(frame) => return self.ended(frame.trailers_ref()),
            }
        }
    }

    /// The call's end: the status its trailers carry.
    fn ended(&self, trailers: Option<&http::HeaderMap>) -> Result<Option<(M, usize)>, Status> {
        if self.buffered > 0 || self.next_len.is_some() {
            return Err(Status::internal("the stream ended inside a message"));
        }
        match trailers.and_then(Status::from_header_map) {
            Some(status) if status.code() != Code::Ok => Err(status),
            Some(_) => Ok(None),
            None => Err(Status::internal("the stream ended without a status")),
        }
    }

    /// Decodes the next whole message buffered, if there is one.
    fn next_message(&mut self) -> Result<Option<(M, usize)>, Status> {
        let len = match self.next_len {
            Some(len) => len,
            None => {
                if self.buffered < PREFIX {
                    return Ok(None);
                }
                let mut prefix = self.take(PREFIX);
                if prefix.get_u8() != 0 {
                    return Err(Status::unimplemented("a compressed message"));
                }
                let len = usize::try_from(prefix.get_u32()).unwrap_or(usize::MAX);
                if len > self.max_message {
                    return Err(Status::resource_exhausted(format!(
                        "a message of {len} bytes, more than the {} allowed",
                        self.max_message
                    )));
                }
                self.next_len = Some(len);
                len
            }
        };
        if self.buffered < len {
            return Ok(None);
        }
        self.next_len = None;
        let bytes = self.take(len);
        let message = M::decode(bytes).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Some((message, len)))
    }

    /// The next `n` buffered bytes (`n <= buffered`): a slice of the first
    /// chunk if it holds them, else a copy into a buffer of exactly `n`.
    fn take(&mut self, n: usize) -> Bytes {
        self.buffered -= n;
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= n
        {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let k = (n - out.len()).min(front.len());
            out.extend_from_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use http_body_util::StreamBody;

    type TestBody = StreamBody<
        tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >;

    fn responses(frames: Vec<Frame<Bytes>>) -> Responses<TestBody, DiscoveryResponse> {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            frames.into_iter().map(Ok).collect();
        Responses {
            body: Box::pin(StreamBody::new(tokio_stream::iter(frames))),
            chunks: VecDeque::new(),
            buffered: 0,
            next_len: None,
            max_message: 1 << 20,
            message: PhantomData,
        }
    }

    fn response(version: &str) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            nonce: "n".repeat(100),
            ..Default::default()
        }
    }

    fn trailers(code: Code) -> Frame<Bytes> {
        let mut map = http::HeaderMap::new();
        map.insert("grpc-status", http::HeaderValue::from(code as i32));
        Frame::trailers(map)
    }

    #[tokio::test]
    async fn messages_split_across_and_packed_into_frames_decode_in_order() {
        let mut wire = BytesMut::new();
        for v in ["1", "2", "3"] {
            wire.extend_from_slice(&frame(&response(v)));
        }
        let wire = wire.freeze();
        // Cut so one message spans frames and one frame holds two ends.
        let cuts = [3, 40, 41, 200, wire.len()];
        let mut frames = Vec::new();
        let mut at = 0;
        for cut in cuts {
            frames.push(Frame::data(wire.slice(at..cut)));
            at = cut;
        }
        frames.push(trailers(Code::Ok));
        let mut r = responses(frames);
        for v in ["1", "2", "3"] {
            let (m, len) = r.message().await.expect("ok").expect("a message");
            assert_eq!(m.version_info, v);
            assert_eq!(len, response(v).encoded_len());
        }
        assert_eq!(r.message().await.expect("ok"), None);
    }

    #[tokio::test]
    async fn an_error_status_in_the_trailers_ends_the_call_with_it() {
        let mut r = responses(vec![trailers(Code::NotFound)]);
        let status = r.message().await.expect_err("an error");
        assert_eq!(status.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_message_or_too_long_a_message_is_an_error() {
        let whole = frame(&response("1"));
        let mut r = responses(vec![Frame::data(whole.slice(..whole.len() - 1))]);
        assert_eq!(r.message().await.expect_err("cut").code(), Code::Internal);

        let mut long = BytesMut::new();
        long.put_u8(0);
        long.put_u32(2 << 20);
        let mut r = responses(vec![Frame::data(long.freeze())]);
        assert_eq!(
            r.message().await.expect_err("too long").code(),
            Code::ResourceExhausted
        );
    }
}
