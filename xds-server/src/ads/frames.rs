//! Length-prefixed gRPC messages read from an HTTP/2 body, each assembled
//! in a buffer of its own exact size (or sliced from the HTTP/2 data when
//! one frame holds it) and freed once decoded.
//!
//! tonic's `Streaming` keeps one buffer per stream, grown to the largest
//! message it has seen and never shrunk: on the server, the EDS request
//! naming every cluster (about 150 KiB per stream at 1,000 services); in
//! the load generator, the full CDS response (about 1 MiB per simulated
//! sidecar). Both sides of the benchmark read their streams with this.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::Stream;
use hyper::body::Body;
use prost::Message;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tonic::codegen::http::HeaderMap;
use tonic::{Code, Status};

/// The gRPC message prefix: a compression flag and a 4-byte length.
pub const PREFIX: usize = 5;

/// `message` as one length-prefixed gRPC message (uncompressed), for a
/// client's request stream. Messages past 4 GiB cannot be framed; their
/// length is written as `u32::MAX`, which every reader refuses.
pub fn prefixed(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut buf);
    buf.freeze()
}

/// How the body's end is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// A request body: its end is the end of the stream.
    Requests,
    /// A response body: it ends with trailers carrying the call's status.
    Responses,
}

/// The messages `M` of one body `B`.
pub struct Messages<B, M> {
    body: Pin<Box<B>>,
    end: End,
    /// Received data not yet consumed, in order.
    chunks: VecDeque<Bytes>,
    buffered: usize,
    /// The length of the message whose prefix was read.
    next_len: Option<usize>,
    max_message: usize,
    finished: bool,
    message: PhantomData<fn() -> M>,
}

// The body is boxed; nothing else is pinned.
impl<B, M> Unpin for Messages<B, M> {}

impl<B, M> Messages<B, M>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    M: Message + Default,
{
    /// Reads `body`; a message longer than `max_message` ends the stream
    /// with OUT_OF_RANGE (as tonic's decoder does).
    pub fn new(body: B, end: End, max_message: usize) -> Self {
        Messages {
            body: Box::pin(body),
            end,
            chunks: VecDeque::new(),
            buffered: 0,
            next_len: None,
            max_message,
            finished: false,
            message: PhantomData,
        }
    }

    /// The next message and its length on the wire (without the prefix);
    /// `None` once the body ended cleanly.
    pub async fn message(&mut self) -> Result<Option<(M, usize)>, Status> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<(M, usize)>, Status>> {
        if self.finished {
            return Poll::Ready(Ok(None));
        }
        let result = loop {
            match self.next_message() {
                Ok(Some(next)) => return Poll::Ready(Ok(Some(next))),
                Ok(None) => {}
                Err(status) => break Err(status),
            }
            let Some(frame) = ready!(self.body.as_mut().poll_frame(cx)) else {
                break self.ended(None);
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => break Err(Status::from_error(error.into())),
            };
            match frame.into_data() {
                Ok(data) => {
                    self.buffered += data.len();
                    if !data.is_empty() {
                        self.chunks.push_back(data);
                    }
                }
                Err(frame) => break self.ended(frame.trailers_ref()),
            }
        };
        // Nothing is read after the end or an error.
        self.finished = true;
        self.chunks.clear();
        Poll::Ready(result)
    }

    /// The body's end (with its trailers, if any).
    fn ended(&self, trailers: Option<&HeaderMap>) -> Result<Option<(M, usize)>, Status> {
        if self.buffered > 0 || self.next_len.is_some() {
            return Err(Status::internal("the stream ended inside a message"));
        }
        if self.end == End::Requests {
            return Ok(None);
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
                    return Err(Status::out_of_range(format!(
                        "a message of {len} bytes, more than the limit of {} bytes",
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
        let message = M::decode(bytes)
            .map_err(|e| Status::internal(format!("a message does not decode: {e}")))?;
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

/// The messages, as the request stream of an ADS stream's task.
impl<B, M> Stream for Messages<B, M>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    M: Message + Default,
{
    type Item = Result<M, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match ready!(this.poll_message(cx)) {
            Ok(Some((message, _))) => Poll::Ready(Some(Ok(message))),
            Ok(None) => Poll::Ready(None),
            Err(status) => Poll::Ready(Some(Err(status))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use futures::StreamExt;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tonic::codegen::http::HeaderValue;

    type Frames =
        tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>;

    fn messages(
        frames: Vec<Frame<Bytes>>,
        end: End,
    ) -> Messages<StreamBody<Frames>, DiscoveryResponse> {
        let frames: Vec<_> = frames.into_iter().map(Ok).collect();
        Messages::new(StreamBody::new(tokio_stream::iter(frames)), end, 1 << 20)
    }

    fn message(version: &str) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            nonce: "n".repeat(100),
            ..Default::default()
        }
    }

    fn trailers(code: Code) -> Frame<Bytes> {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from(code as i32));
        Frame::trailers(map)
    }

    #[tokio::test]
    async fn messages_split_across_and_packed_into_frames_decode_in_order() {
        let mut wire = BytesMut::new();
        for v in ["1", "2", "3"] {
            wire.extend_from_slice(&prefixed(&message(v)));
        }
        let wire = wire.freeze();
        // Cut so one message spans frames and one frame holds two ends.
        let mut frames = Vec::new();
        let mut at = 0;
        for cut in [3, 40, 41, 200, wire.len()] {
            frames.push(Frame::data(wire.slice(at..cut)));
            at = cut;
        }
        frames.push(trailers(Code::Ok));
        let mut m = messages(frames, End::Responses);
        for v in ["1", "2", "3"] {
            let (got, len) = m.message().await.expect("ok").expect("a message");
            assert_eq!(got.version_info, v);
            assert_eq!(len, message(v).encoded_len());
        }
        assert_eq!(m.message().await.expect("ok"), None);
    }

    #[tokio::test]
    async fn responses_end_with_the_status_of_their_trailers_requests_with_the_body() {
        let mut m = messages(vec![trailers(Code::NotFound)], End::Responses);
        assert_eq!(
            m.message().await.expect_err("an error").code(),
            Code::NotFound
        );
        let mut m = messages(vec![], End::Responses);
        assert_eq!(
            m.message().await.expect_err("no status").code(),
            Code::Internal
        );

        let mut m = messages(vec![Frame::data(prefixed(&message("1")))], End::Requests);
        let first = m.next().await.expect("a message").expect("ok");
        assert_eq!(first.version_info, "1");
        assert!(m.next().await.is_none(), "the body's end ends the stream");
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_message_or_too_long_a_message_is_an_error() {
        let whole = prefixed(&message("1"));
        let mut m = messages(
            vec![Frame::data(whole.slice(..whole.len() - 1))],
            End::Requests,
        );
        assert_eq!(m.message().await.expect_err("cut").code(), Code::Internal);

        let mut long = BytesMut::new();
        long.put_u8(0);
        long.put_u32(2 << 20);
        let mut m = messages(vec![Frame::data(long.freeze())], End::Requests);
        let status = m.message().await.expect_err("too long");
        assert_eq!(status.code(), Code::OutOfRange);
        assert!(
            status.message().contains(&(1 << 20).to_string()),
            "{status}"
        );
        assert_eq!(
            m.message().await.expect("ended"),
            None,
            "nothing after an error"
        );
    }
}
