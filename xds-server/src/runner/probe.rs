//! The probe client: one plain HTTP/1.1 `GET`, classified the way a
//! connectivity matrix needs it. It also holds the small hyper-based `GET`
//! shared with the Envoy admin client (`get`).
//!
//! Mesh tests assert *how* a call fails, not only that it failed: a plaintext
//! client hitting a STRICT mTLS port sees its connection reset (curl exit 56),
//! a port nobody listens on refuses, a black-holed route times out. hyper
//! folds these into one error type, so `classify` walks the error's source
//! chain to the `io::Error` underneath and its kind.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{CONNECTION, HOST, HeaderValue};
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout_at};

/// Response bodies larger than this are refused, so a misbehaving peer cannot
/// make a test allocate without bound. A large mesh's `/config_dump` is a few
/// MB.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// How a probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived; this is its status code.
    Status(u16),
    /// The connection was reset, or closed, before a complete response head
    /// (curl exit 56 / 52), or the peer answered with bytes that are not
    /// HTTP (for example a TLS alert).
    Reset,
    /// The connection was refused (nothing listens there).
    Refused,
    /// The overall timeout passed before a response head arrived.
    Timeout,
    /// Any other failure to connect or send, such as an unreachable address.
    /// Kept apart so it is never mistaken for a policy decision.
    Error(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(code) => write!(f, "{code}"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub outcome: Outcome,
    /// The response body parsed as JSON, when it is JSON (for the echo
    /// application's `/headers`, `{"headers": {...}}`).
    pub headers_json: Option<Value>,
    /// The `X-Forwarded-Client-Cert` value the application received, taken
    /// from the echoed `headers` object (key matched case-insensitively).
    pub xfcc: Option<String>,
    /// Response headers in arrival order, names lower-cased (as hyper
    /// normalises them); empty when no response head came.
    pub response_headers: Vec<(String, String)>,
    /// The response body (lossy UTF-8); empty when none arrived completely.
    pub body: String,
}

impl ProbeResult {
    fn bare(outcome: Outcome) -> Self {
        ProbeResult {
            outcome,
            headers_json: None,
            xfcc: None,
            response_headers: Vec::new(),
            body: String::new(),
        }
    }

    /// The first response header with this name (case-insensitive), e.g.
    /// `x-echo-name` to learn which echo workload answered.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The status code, if the outcome is one.
    pub fn status(&self) -> Option<u16> {
        match self.outcome {
            Outcome::Status(code) => Some(code),
            _ => None,
        }
    }
}

/// Sends `GET path` with the given `Host` header to `connect_to` and
/// classifies the result. `timeout` bounds the whole exchange (connect, send,
/// receive). Never fails: every failure is an [`Outcome`].
pub async fn probe(
    connect_to: SocketAddr,
    host_header: &str,
    path: &str,
    timeout: Duration,
) -> ProbeResult {
    let deadline = Instant::now() + timeout;
    let result = match get(connect_to, host_header, path, deadline).await {
        Ok(response) => from_response(connect_to, response),
        Err(error) => ProbeResult::bare(classify(connect_to, &error)),
    };
    tracing::debug!(%connect_to, host = host_header, path, outcome = %result.outcome, "probe");
    result
}

fn from_response(connect_to: SocketAddr, response: Fetched) -> ProbeResult {
    let mut result = ProbeResult::bare(Outcome::Status(response.status));
    result.response_headers = response
        .headers
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), value)
        })
        .collect();
    match response.body {
        Ok(body) => {
            result.headers_json = serde_json::from_slice::<Value>(&body).ok();
            result.xfcc = result.headers_json.as_ref().and_then(echoed_xfcc);
            result.body = String::from_utf8_lossy(&body).into_owned();
        }
        // The status is what the matrix asserts; a body cut short does not
        // change it, so it is only logged.
        Err(error) => {
            tracing::debug!(%connect_to, %error, "probe got a status but no complete body");
        }
    }
    result
}

/// Maps a failure before any response head to an outcome.
fn classify(connect_to: SocketAddr, error: &GetError) -> Outcome {
    match error {
        GetError::Timeout => Outcome::Timeout,
        GetError::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => Outcome::Refused,
        GetError::Connect(e) if is_reset(e.kind()) => Outcome::Reset,
        GetError::Connect(e) => Outcome::Error(format!("connect: {e}")),
        GetError::Request(reason) => Outcome::Error(format!("request: {reason}")),
        GetError::Http(e) => match io_source(e).map(io::Error::kind) {
            Some(io::ErrorKind::ConnectionRefused) => Outcome::Refused,
            Some(kind) if is_reset(kind) => Outcome::Reset,
            Some(_) => Outcome::Error(format!("receive: {}", error_chain(e))),
            // Closed (FIN) before a complete head, like curl's "empty reply
            // from server". Canceled/closed: the connection ended before our
            // queued request could be sent.
            None if e.is_incomplete_message() || e.is_canceled() || e.is_closed() => Outcome::Reset,
            None if e.is_parse() => {
                tracing::debug!(%connect_to, error = %error_chain(e), "probe got a non-HTTP answer; counting it as reset");
                Outcome::Reset
            }
            None => Outcome::Error(format!("receive: {}", error_chain(e))),
        },
    }
}

fn is_reset(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// A response whose head arrived; see [`get`].
#[derive(Debug)]
pub(crate) struct Fetched {
    pub status: u16,
    pub headers: HeaderMap,
    /// The whole body, or why it did not arrive completely in time.
    pub body: Result<Bytes, BodyError>,
}

/// Why a body did not arrive completely.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("no complete body before the deadline")]
    Timeout,
    /// The connection failed mid-body, or the body exceeded
    /// [`MAX_RESPONSE_BYTES`]; hyper's error is inside.
    #[error("{}", error_chain(.0.as_ref()))]
    Failed(Box<dyn StdError + Send + Sync>),
}

/// Why no response head arrived; see [`get`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum GetError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("no response before the deadline")]
    Timeout,
    /// The path or `Host` value cannot go into a request.
    #[error("cannot build request: {0}")]
    Request(String),
    #[error("{}", error_chain(.0))]
    Http(hyper::Error),
}

/// Aborts the spawned connection task when dropped, so a request given up on
/// (deadline, error) does not leave a connection open behind it.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One `GET path` with `Host: host` and `Connection: close` on a fresh
/// connection to `addr`, over hyper's HTTP/1.1 client; everything (connect,
/// head, body) must happen before `deadline`.
///
/// A fresh connection per call keeps each probe independent: no pooled
/// connection can carry one result (or a reset) into the next.
pub(crate) async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    deadline: Instant,
) -> Result<Fetched, GetError> {
    let request = Request::get(path)
        .header(
            HOST,
            HeaderValue::from_str(host).map_err(|e| GetError::Request(e.to_string()))?,
        )
        .header(CONNECTION, HeaderValue::from_static("close"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| GetError::Request(e.to_string()))?;
    let stream = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| GetError::Timeout)?
        .map_err(GetError::Connect)?;
    let handshake = hyper::client::conn::http1::handshake(TokioIo::new(stream));
    let (mut sender, connection) = timeout_at(deadline, handshake)
        .await
        .map_err(|_| GetError::Timeout)?
        .map_err(GetError::Http)?;
    // Queue the request before the connection task first runs: a peer that
    // closes at once then fails *this request* with the real io error,
    // rather than making the sender report a bare "connection closed".
    let response = sender.send_request(request);
    let task = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::trace!(%addr, error = %error_chain(&error), "http connection ended with an error");
        }
    });
    let _abort = AbortOnDrop(task.abort_handle());

    let response = timeout_at(deadline, response)
        .await
        .map_err(|_| GetError::Timeout)?
        .map_err(GetError::Http)?;
    let (head, body) = response.into_parts();
    let body = match timeout_at(deadline, Limited::new(body, MAX_RESPONSE_BYTES).collect()).await {
        Err(_elapsed) => Err(BodyError::Timeout),
        Ok(Err(error)) => Err(BodyError::Failed(error)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    };
    Ok(Fetched {
        status: head.status.as_u16(),
        headers: head.headers,
        body,
    })
}

/// The first `io::Error` in an error's source chain (hyper wraps the one
/// from the socket).
pub(crate) fn io_source<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

/// An error and its sources joined with `: `, since hyper's own message
/// ("connection error") alone says little.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let more = e.to_string();
        // Some wrappers repeat their source's message; do not say it twice.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        current = e.source();
    }
    text
}

/// Finds the XFCC header in an httpbin-style `{"headers": {...}}` body. A
/// header received several times may be echoed as a list; its values are
/// joined with `,` as they would be on the wire.
fn echoed_xfcc(json: &Value) -> Option<String> {
    let headers = json.get("headers")?.as_object()?;
    let (_, value) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-client-cert"))?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

/// The `URI=` value of the XFCC element added by the proxy nearest the
/// application, i.e. the client identity that proxy verified.
///
/// An XFCC header is a `,`-separated list of elements, one per proxy hop, each
/// a `;`-separated list of `Key=Value` pairs whose values may be quoted. Envoy
/// appends its element last, so the last element is the one to trust; earlier
/// ones may have been supplied by the client.
pub fn xfcc_uri(xfcc: &str) -> Option<&str> {
    xfcc_field(xfcc, "URI")
}

/// The `By=` value of the last XFCC element: the identity of the proxy that
/// verified the client certificate (the server side's own SPIFFE ID).
pub fn xfcc_by(xfcc: &str) -> Option<&str> {
    xfcc_field(xfcc, "By")
}

/// A field (key matched case-insensitively) of the last XFCC element, with
/// surrounding quotes removed. Escaped quotes inside a value are left as is.
pub fn xfcc_field<'a>(xfcc: &'a str, key: &str) -> Option<&'a str> {
    let last = split_unquoted(xfcc, ',').into_iter().next_back()?;
    split_unquoted(last, ';').into_iter().find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case(key) {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|inner| inner.strip_suffix('"'))
            .unwrap_or(v);
        Some(v)
    })
}

/// Splits on `sep` outside double quotes (a backslash escapes a quote).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            c if c == sep && !in_quotes => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::test_support::SilentServer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const SHORT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn probe_to_a_closed_port_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let got = probe(addr, "x", "/", SHORT).await;
        assert_eq!(got.outcome, Outcome::Refused);
        assert_eq!(got.outcome.to_string(), "refused");
    }

    #[tokio::test]
    async fn probe_to_a_server_that_closes_without_answering_is_reset() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            // Read the request first so the close is a clean FIN, then a
            // second connection is closed with the request unread (RST).
            for read_first in [true, false] {
                let (mut conn, _) = listener.accept().await.expect("accept");
                if read_first {
                    let mut buf = [0u8; 256];
                    let _ = conn.read(&mut buf).await;
                }
                drop(conn);
            }
        });
        let first = probe(addr, "x", "/", SHORT).await;
        let second = probe(addr, "x", "/", SHORT).await;
        assert_eq!(first.outcome, Outcome::Reset);
        assert_eq!(second.outcome, Outcome::Reset);
        assert_eq!(first.outcome.to_string(), "reset");
        server.await.expect("server task");
    }

    /// Probes a server that answers each connection with the next canned
    /// byte string (after reading the request) and then closes it: one probe
    /// per response, in order, and what each one got.
    async fn probe_canned<const N: usize>(responses: [&'static [u8]; N]) -> [ProbeResult; N] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            for response in responses {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(response).await;
            }
        });
        let mut got = Vec::with_capacity(N);
        for _ in 0..N {
            got.push(probe(addr, "x", "/", SHORT).await);
        }
        server.await.expect("server task");
        got.try_into().expect("one result per response")
    }

    #[tokio::test]
    async fn probe_counts_a_non_http_answer_as_reset() {
        // A TLS alert, as a STRICT mTLS port may send to a plaintext client.
        let [got] = probe_canned([b"\x15\x03\x01\x00\x02\x02\x46"]).await;
        assert_eq!(got.outcome, Outcome::Reset);
    }

    #[tokio::test]
    async fn probe_keeps_the_status_when_the_body_is_cut_short() {
        let [got] =
            probe_canned([b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\nabc"])
                .await;
        assert_eq!(got.outcome, Outcome::Status(503));
        assert_eq!(got.body, "");
        assert_eq!(got.header("content-length"), Some("10"));
    }

    #[tokio::test]
    async fn probe_reads_chunked_and_eof_delimited_bodies() {
        let [chunked, until_eof] = probe_canned([
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nServer: envoy\r\n\r\n\
              4;ext=1\r\nLIVE\r\n1\r\n\n\r\n0\r\nx-trailer: y\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n{\"headers\":{\"X-Forwarded-Client-Cert\":\"URI=spiffe://a\"}}",
        ])
        .await;
        assert_eq!(chunked.outcome, Outcome::Status(200));
        assert_eq!(chunked.body, "LIVE\n");
        assert_eq!(chunked.header("Server"), Some("envoy"));
        assert_eq!(until_eof.outcome, Outcome::Status(200));
        assert_eq!(until_eof.xfcc.as_deref(), Some("URI=spiffe://a"));
    }

    #[tokio::test]
    async fn a_path_that_cannot_be_sent_is_an_error_not_a_policy_outcome() {
        let got = probe("127.0.0.1:9".parse().expect("addr"), "x", "no slash", SHORT).await;
        assert!(
            matches!(got.outcome, Outcome::Error(_)),
            "{:?}",
            got.outcome
        );
    }

    #[tokio::test]
    async fn probe_to_a_server_that_never_answers_times_out() {
        let server = SilentServer::start().await;
        let started = Instant::now();
        let got = probe(server.addr(), "x", "/", Duration::from_millis(200)).await;
        assert_eq!(got.outcome, Outcome::Timeout);
        assert_eq!(got.outcome.to_string(), "timeout");
        assert!(started.elapsed() < Duration::from_secs(3));
        server.finish().await;
    }

    #[test]
    fn xfcc_uri_and_by_come_from_envoys_element() {
        let xfcc = "By=spiffe://cluster.local/ns/b/sa/httpbin;\
                    Hash=4f3c;Subject=\"\";URI=spiffe://cluster.local/ns/a/sa/sleep";
        assert_eq!(xfcc_uri(xfcc), Some("spiffe://cluster.local/ns/a/sa/sleep"));
        assert_eq!(
            xfcc_by(xfcc),
            Some("spiffe://cluster.local/ns/b/sa/httpbin")
        );
    }

    #[test]
    fn xfcc_uses_the_last_element_and_respects_quotes() {
        let xfcc = "URI=spiffe://spoofed/by/client,\
                    By=\"spiffe://td/ns/b/sa/x\";Subject=\"CN=a,O=b;c\";uri=\"spiffe://td/ns/a/sa/y\"";
        assert_eq!(xfcc_uri(xfcc), Some("spiffe://td/ns/a/sa/y"));
        assert_eq!(xfcc_by(xfcc), Some("spiffe://td/ns/b/sa/x"));
        assert_eq!(xfcc_field(xfcc, "Subject"), Some("CN=a,O=b;c"));
        assert_eq!(xfcc_uri("By=spiffe://td/ns/b/sa/x;Hash=00"), None);
        assert_eq!(xfcc_uri(""), None);
    }

    #[test]
    fn echoed_xfcc_is_found_case_insensitively() {
        let json = serde_json::json!({"headers": {"x-forwarded-client-cert": "URI=spiffe://a"}});
        assert_eq!(echoed_xfcc(&json).as_deref(), Some("URI=spiffe://a"));
        let json = serde_json::json!({"headers": {"X-Forwarded-Client-Cert": ["a", "b"]}});
        assert_eq!(echoed_xfcc(&json).as_deref(), Some("a,b"));
    }
}
