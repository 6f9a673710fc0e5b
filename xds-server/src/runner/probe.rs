//! The probe client: one plain HTTP/1.1 request over a raw TCP connection,
//! classified the way a connectivity matrix needs it.
//!
//! Mesh tests assert *how* a call fails, not only that it failed: a plaintext
//! client hitting a STRICT mTLS port sees its connection reset (curl exit 56),
//! a port nobody listens on refuses, a black-holed route times out. A real
//! HTTP client folds these into one error type, so the request is written by
//! hand and the response read by [`super::http1`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::http1::{End, read_response};

/// How a probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A status line arrived; this is its code.
    Status(u16),
    /// The connection was reset, or closed, before a complete status line
    /// (curl exit 56 / 52), or the peer answered with bytes that are not
    /// HTTP (for example a TLS alert).
    Reset,
    /// The connection was refused (nothing listens there).
    Refused,
    /// The overall timeout passed before a status line arrived.
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
    /// Response headers as received, in order; empty when no full head came.
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
    let result = probe_until(connect_to, host_header, path, deadline).await;
    tracing::debug!(%connect_to, host = host_header, path, outcome = %result.outcome, "probe");
    result
}

async fn probe_until(
    connect_to: SocketAddr,
    host_header: &str,
    path: &str,
    deadline: Instant,
) -> ProbeResult {
    let mut stream = match timeout_at(deadline, TcpStream::connect(connect_to)).await {
        Err(_elapsed) => return ProbeResult::bare(Outcome::Timeout),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return ProbeResult::bare(Outcome::Refused);
        }
        Ok(Err(e)) if is_reset(&e) => return ProbeResult::bare(Outcome::Reset),
        Ok(Err(e)) => return ProbeResult::bare(Outcome::Error(format!("connect: {e}"))),
        Ok(Ok(stream)) => stream,
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n");
    match timeout_at(deadline, stream.write_all(request.as_bytes())).await {
        Err(_elapsed) => return ProbeResult::bare(Outcome::Timeout),
        // A peer that closes at once may reset us while we write; what it
        // sent before closing (if anything) is still worth reading.
        Ok(Err(e)) if is_reset(&e) => {}
        Ok(Err(e)) => return ProbeResult::bare(Outcome::Error(format!("send: {e}"))),
        Ok(Ok(())) => {}
    }

    let received = read_response(&mut stream, deadline).await;
    let Some(status) = received.status else {
        let outcome = match received.end {
            End::Deadline => Outcome::Timeout,
            End::Eof | End::Complete => Outcome::Reset,
            End::Io(e) if is_reset(&e) => Outcome::Reset,
            End::Io(e) => Outcome::Error(format!("receive: {e}")),
            End::Malformed(reason) => {
                tracing::debug!(%connect_to, %reason, "probe got a non-HTTP answer; counting it as reset");
                Outcome::Reset
            }
        };
        return ProbeResult::bare(outcome);
    };

    let mut result = ProbeResult::bare(Outcome::Status(status));
    if let Some(head) = received.head {
        result.response_headers = head.headers;
    }
    if let Some(body) = received.body {
        result.headers_json = serde_json::from_slice::<Value>(&body).ok();
        result.xfcc = result.headers_json.as_ref().and_then(echoed_xfcc);
        result.body = String::from_utf8_lossy(&body).into_owned();
    }
    result
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
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
    use crate::runner::echo::EchoServer;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const SHORT: Duration = Duration::from_secs(5);

    async fn echo() -> EchoServer {
        EchoServer::start(vec!["127.0.0.1:0".parse().expect("addr")], "echo-a")
            .await
            .expect("start echo")
    }

    #[tokio::test]
    async fn probe_gets_200_and_the_echoed_headers() {
        let server = echo().await;
        let addr = server.local_addrs()[0];
        let got = probe(addr, "echo.test.svc:8080", "/headers", SHORT).await;
        assert_eq!(got.outcome, Outcome::Status(200));
        let json = got.headers_json.as_ref().expect("json body");
        assert_eq!(json["headers"]["Host"], "echo.test.svc:8080");
        assert_eq!(json["headers"]["Connection"], "close");
        assert_eq!(got.xfcc, None);
        assert_eq!(got.header("x-echo-name"), Some("echo-a"));
        server.stop().await;
    }

    #[tokio::test]
    async fn probe_reports_the_status_the_app_returns() {
        let server = echo().await;
        let got = probe(server.local_addrs()[0], "x", "/status/503", SHORT).await;
        assert_eq!(got.outcome, Outcome::Status(503));
        assert_eq!(got.outcome.to_string(), "503");
        server.stop().await;
    }

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

    #[tokio::test]
    async fn probe_to_a_server_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.expect("accept");
            // Hold the connection open, silent, until the test is done.
            let _ = done_rx.await;
            drop(conn);
        });
        let started = Instant::now();
        let got = probe(addr, "x", "/", Duration::from_millis(200)).await;
        assert_eq!(got.outcome, Outcome::Timeout);
        assert_eq!(got.outcome.to_string(), "timeout");
        assert!(started.elapsed() < Duration::from_secs(3));
        let _ = done_tx.send(());
        server.await.expect("server task");
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
