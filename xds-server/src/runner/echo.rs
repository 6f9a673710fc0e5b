//! An httpbin-like echo application, served in-process behind each local
//! sidecar so a mesh needs no external workload binaries.
//!
//! It answers what connectivity tests ask httpbin: `/headers` (to see the
//! `X-Forwarded-Client-Cert` the sidecar injected), `/status/CODE`, `/ip`.
//! Every response carries `x-echo-name` so a probe through a proxy can tell
//! which workload answered.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long [`EchoServer::stop`] lets in-flight requests finish before it
/// aborts the server tasks.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The response header naming the echo instance that answered.
pub const ECHO_NAME_HEADER: &str = "x-echo-name";

/// A running echo application listening on one or more addresses.
///
/// Dropping the handle starts a graceful shutdown of every listener (idle
/// keep-alive connections, such as Envoy's upstream pool, are closed); use
/// [`EchoServer::stop`] to also wait for it.
#[derive(Debug)]
pub struct EchoServer {
    name: String,
    addrs: Vec<SocketAddr>,
    /// Dropping the sender is the shutdown signal.
    shutdown: Option<watch::Sender<()>>,
    tasks: Vec<JoinHandle<io::Result<()>>>,
}

impl EchoServer {
    /// Binds every address (all or nothing) and serves the echo application
    /// on each. `name` identifies the instance in responses and logs. Port 0
    /// picks a free port; see [`EchoServer::local_addrs`].
    pub async fn start(addrs: Vec<SocketAddr>, name: impl Into<String>) -> io::Result<EchoServer> {
        let name = name.into();
        let mut listeners = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("echo server {name}: cannot bind {addr}: {e}"),
                )
            })?;
            listeners.push(listener);
        }
        Self::serve(listeners, name)
    }

    /// Serves the echo application on listeners bound elsewhere (in a
    /// pod's network namespace, by a thread that entered it).
    pub fn serve_std(
        listeners: Vec<std::net::TcpListener>,
        name: impl Into<String>,
    ) -> io::Result<EchoServer> {
        let name = name.into();
        let mut tokio_listeners = Vec::with_capacity(listeners.len());
        for l in listeners {
            l.set_nonblocking(true)?;
            tokio_listeners.push(TcpListener::from_std(l)?);
        }
        Self::serve(tokio_listeners, name)
    }

    fn serve(listeners: Vec<TcpListener>, name: String) -> io::Result<EchoServer> {
        let listeners = listeners
            .into_iter()
            .map(|listener| {
                let local = listener.local_addr().map_err(|e| {
                    io::Error::new(e.kind(), format!("echo server {name}: local address: {e}"))
                })?;
                Ok((listener, local))
            })
            .collect::<io::Result<Vec<_>>>()?;

        let (shutdown, signal) = watch::channel(());
        let app = router(name.clone());
        let mut bound = Vec::with_capacity(listeners.len());
        let mut tasks = Vec::with_capacity(listeners.len());
        for (listener, local) in listeners {
            let mut signal = signal.clone();
            let service = app
                .clone()
                .into_make_service_with_connect_info::<SocketAddr>();
            let task_name = name.clone();
            tasks.push(tokio::spawn(async move {
                tracing::debug!(name = %task_name, addr = %local, "echo server listening");
                let result = axum::serve(listener, service)
                    .with_graceful_shutdown(async move {
                        // Resolves with an error once the sender is dropped.
                        let _ = signal.changed().await;
                    })
                    .await;
                if let Err(error) = &result {
                    tracing::warn!(name = %task_name, addr = %local, %error, "echo server failed");
                }
                result
            }));
            bound.push(local);
        }
        Ok(EchoServer {
            name,
            addrs: bound,
            shutdown: Some(shutdown),
            tasks,
        })
    }

    /// The addresses actually bound, in the order given to `start`.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The instance name echoed in `x-echo-name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops accepting, lets in-flight requests finish for a short grace
    /// period, then aborts whatever is left.
    pub async fn stop(mut self) {
        drop(self.shutdown.take());
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    tracing::warn!(name = %self.name, %error, "echo server ended with an error");
                }
                Ok(Err(join_error)) => {
                    tracing::warn!(name = %self.name, %join_error, "echo server task failed");
                }
                Err(_elapsed) => {
                    tracing::warn!(name = %self.name, "echo server did not stop in time; aborting");
                    abort.abort();
                }
            }
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // Dropping the sender signals graceful shutdown to every listener.
        self.shutdown.take();
    }
}

fn router(name: String) -> Router {
    Router::new()
        .route("/headers", get(headers))
        .route("/ip", get(ip))
        .route("/status/{code}", get(status))
        .fallback(anything)
        .with_state(name)
}

/// Adds the instance name to a response.
fn named(name: &str, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    if let Ok(value) = HeaderValue::from_str(name) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(ECHO_NAME_HEADER), value);
    }
    response
}

/// `GET /headers`: the request headers, httpbin style, with canonical
/// Title-Case names and repeated headers joined by `,`.
async fn headers(State(name): State<String>, request_headers: HeaderMap) -> Response {
    let mut echoed: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &request_headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        echoed
            .entry(title_case(key.as_str()))
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    tracing::debug!(%name, "echo /headers");
    named(&name, Json(json!({ "headers": echoed })))
}

/// `GET /ip`: the peer address as the application sees it.
async fn ip(State(name): State<String>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    named(&name, Json(json!({ "origin": peer.ip().to_string() })))
}

/// `GET /status/CODE`: answers with that status (200..=599), else 400.
async fn status(State(name): State<String>, Path(code): Path<String>) -> Response {
    match code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(code) if (200..600).contains(&code.as_u16()) => named(&name, code),
        _ => named(
            &name,
            (
                StatusCode::BAD_REQUEST,
                format!("invalid status code {code:?}\n"),
            ),
        ),
    }
}

/// Anything else: 200 with a short body naming the instance.
async fn anything(State(name): State<String>, method: Method, uri: Uri) -> Response {
    let body: Value = json!({ "echo": name, "method": method.as_str(), "path": uri.path() });
    named(&name, Json(body))
}

/// `x-forwarded-client-cert` -> `X-Forwarded-Client-Cert`, as httpbin shows it.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_secs(5);

    #[test]
    fn header_names_are_title_cased() {
        assert_eq!(
            title_case("x-forwarded-client-cert"),
            "X-Forwarded-Client-Cert"
        );
        assert_eq!(title_case("host"), "Host");
        assert_eq!(title_case("x-b3-traceid"), "X-B3-Traceid");
    }

    #[tokio::test]
    async fn client_supplied_xfcc_is_echoed() {
        // The probe cannot add headers, so send this request by hand.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = EchoServer::start(vec!["127.0.0.1:0".parse().expect("addr")], "x")
            .await
            .expect("start");
        let mut conn = tokio::net::TcpStream::connect(server.local_addrs()[0])
            .await
            .expect("connect");
        conn.write_all(
            b"GET /headers HTTP/1.1\r\nHost: h\r\nx-forwarded-client-cert: URI=spiffe://a\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .expect("write");
        let mut response = String::new();
        tokio::time::timeout(SHORT, conn.read_to_string(&mut response))
            .await
            .expect("in time")
            .expect("read");
        assert!(
            response.contains(r#""X-Forwarded-Client-Cert":"URI=spiffe://a""#),
            "{response}"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = EchoServer::start(vec![addr], "clash")
            .await
            .expect_err("must fail");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
