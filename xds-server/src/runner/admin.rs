//! A tiny client for Envoy's admin API, used by the mesh runner and the
//! end-to-end tests to read what Envoy actually holds (config, certificates,
//! stats) and to wait until it is ready.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::probe::{BodyError, GetError, error_chain, get, io_source};

/// Failures talking to an Envoy admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin {addr}: cannot connect: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("admin {addr}{path}: {source}")]
    Io {
        addr: SocketAddr,
        path: String,
        source: io::Error,
    },
    #[error("admin {addr}{path}: no complete response within {after:?}")]
    Timeout {
        addr: SocketAddr,
        path: String,
        after: Duration,
    },
    #[error("admin {addr}{path}: bad response: {reason}")]
    Malformed {
        addr: SocketAddr,
        path: String,
        reason: String,
    },
    #[error("admin {addr}{path}: status {status}: {body}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
        body: String,
    },
    #[error("admin {addr}{path}: invalid JSON: {source}")]
    Json {
        addr: SocketAddr,
        path: String,
        source: serde_json::Error,
    },
    #[error("admin {addr}{path}: {reason}")]
    Field {
        addr: SocketAddr,
        path: String,
        reason: String,
    },
    #[error("admin {addr}: not ready after {waited:?}; last /ready: {last}")]
    NotReady {
        addr: SocketAddr,
        waited: Duration,
        last: String,
    },
}

/// A tiny client for Envoy's admin API: one `Connection: close` HTTP/1.1
/// request per call (hyper, through [`super::probe`]'s `get`), so no pooled
/// connection outlives the Envoy it was opened to.
#[derive(Debug, Clone)]
pub struct Admin {
    addr: SocketAddr,
    request_timeout: Duration,
}

/// How often [`Admin::wait_ready`] polls `/ready`.
const READY_POLL: Duration = Duration::from_millis(50);

impl Admin {
    /// A client for the admin API at `addr`, with a 5 s per-request timeout.
    pub fn new(addr: SocketAddr) -> Self {
        Admin {
            addr,
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path` (path includes any query), returning status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), AdminError> {
        self.get_until(path, Instant::now() + self.request_timeout)
            .await
    }

    async fn get_until(&self, path: &str, deadline: Instant) -> Result<(u16, String), AdminError> {
        let addr = self.addr;
        let started = Instant::now();
        let timed_out = || AdminError::Timeout {
            addr,
            path: path.to_string(),
            after: started.elapsed(),
        };
        // A socket error is `Io`; anything else hyper rejects (a close
        // mid-response, which hyper reports as an `UnexpectedEof` io error,
        // bytes that are not HTTP, an oversized body) is `Malformed`.
        let failed = |error: &(dyn std::error::Error + 'static)| match io_source(error) {
            Some(io) if io.kind() != io::ErrorKind::UnexpectedEof => AdminError::Io {
                addr,
                path: path.to_string(),
                source: io::Error::new(io.kind(), error_chain(error)),
            },
            _ => AdminError::Malformed {
                addr,
                path: path.to_string(),
                reason: error_chain(error),
            },
        };
        let response = match get(addr, &addr.to_string(), path, deadline).await {
            Ok(response) => response,
            Err(GetError::Connect(source)) => return Err(AdminError::Connect { addr, source }),
            Err(GetError::Timeout) => return Err(timed_out()),
            Err(GetError::Request(reason)) => {
                return Err(AdminError::Malformed {
                    addr,
                    path: path.to_string(),
                    reason: format!("cannot build request: {reason}"),
                });
            }
            Err(GetError::Http(error)) => return Err(failed(&error)),
        };
        match response.body {
            Ok(body) => Ok((response.status, String::from_utf8_lossy(&body).into_owned())),
            Err(BodyError::Timeout) => Err(timed_out()),
            Err(BodyError::Failed(error)) => Err(failed(error.as_ref())),
        }
    }

    /// `GET path`, requiring status 200.
    pub async fn get_ok(&self, path: &str) -> Result<String, AdminError> {
        match self.get(path).await? {
            (200, body) => Ok(body),
            (status, body) => Err(AdminError::Status {
                addr: self.addr,
                path: path.to_string(),
                status,
                body,
            }),
        }
    }

    /// `GET path` as JSON, requiring status 200.
    pub async fn get_json(&self, path: &str) -> Result<Value, AdminError> {
        let body = self.get_ok(path).await?;
        serde_json::from_str(&body).map_err(|source| AdminError::Json {
            addr: self.addr,
            path: path.to_string(),
            source,
        })
    }

    /// All counters and gauges from `/stats?format=json`. Histograms and
    /// text readouts (no integer value) are left out.
    pub async fn stats(&self) -> Result<BTreeMap<String, u64>, AdminError> {
        let path = "/stats?format=json";
        let json = self.get_json(path).await?;
        let entries = json
            .get("stats")
            .and_then(Value::as_array)
            .ok_or_else(|| self.field_error(path, "no \"stats\" array"))?;
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let name = entry.get("name")?.as_str()?;
                let value = entry.get("value")?.as_u64()?;
                Some((name.to_string(), value))
            })
            .collect())
    }

    /// One counter or gauge by its full name, `None` if Envoy has no such
    /// stat (yet), e.g. `listener_manager.lds.update_rejected`.
    pub async fn stat(&self, name: &str) -> Result<Option<u64>, AdminError> {
        Ok(self.stats().await?.get(name).copied())
    }

    /// `/server_info` as JSON.
    pub async fn server_info(&self) -> Result<Value, AdminError> {
        self.get_json("/server_info").await
    }

    /// Seconds since this Envoy started (`uptime_current_epoch`), to prove a
    /// config change did not restart it.
    pub async fn uptime_secs(&self) -> Result<u64, AdminError> {
        let info = self.server_info().await?;
        let text = info
            .get("uptime_current_epoch")
            .and_then(Value::as_str)
            .ok_or_else(|| self.field_error("/server_info", "no uptime_current_epoch"))?;
        parse_duration_secs(text).ok_or_else(|| {
            self.field_error(
                "/server_info",
                &format!("uptime_current_epoch {text:?} is not a duration"),
            )
        })
    }

    /// The server state from `/server_info`: `LIVE`, `DRAINING`,
    /// `PRE_INITIALIZING` or `INITIALIZING`.
    pub async fn server_state(&self) -> Result<String, AdminError> {
        let info = self.server_info().await?;
        info.get("state")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.field_error("/server_info", "no state"))
    }

    /// `/config_dump`: listeners, clusters, routes and secrets as Envoy
    /// holds them (EDS is left out by Envoy unless `?include_eds` is asked
    /// for through [`Admin::get_json`]).
    pub async fn config_dump(&self) -> Result<Value, AdminError> {
        self.get_json("/config_dump").await
    }

    /// `/certs`: serials, SANs and expiry of the certificates in use.
    pub async fn certs(&self) -> Result<Value, AdminError> {
        self.get_json("/certs").await
    }

    /// Polls `/ready` every 50 ms until it answers 200 `LIVE`, or fails at
    /// `deadline` with the last answer seen.
    pub async fn wait_ready(&self, deadline: Instant) -> Result<(), AdminError> {
        self.wait_ready_unless(deadline, || false).await
    }

    /// [`Admin::wait_ready`], giving up early when `give_up` returns true
    /// (checked before each poll; used to notice that Envoy has exited).
    pub(crate) async fn wait_ready_unless(
        &self,
        deadline: Instant,
        mut give_up: impl FnMut() -> bool,
    ) -> Result<(), AdminError> {
        let started = Instant::now();
        let mut last = "no answer yet".to_string();
        loop {
            if give_up() {
                return Err(AdminError::NotReady {
                    addr: self.addr,
                    waited: started.elapsed(),
                    last: format!("gave up (process gone); before that: {last}"),
                });
            }
            let attempt_deadline = deadline.min(Instant::now() + self.request_timeout);
            match self.get_until("/ready", attempt_deadline).await {
                Ok((200, body)) if body.trim() == "LIVE" => return Ok(()),
                Ok((status, body)) => last = format!("{status} {}", body.trim()),
                Err(error) => last = error.to_string(),
            }
            let now = Instant::now();
            if now < deadline {
                tokio::time::sleep_until(deadline.min(now + READY_POLL)).await;
            }
            // No attempt at (or past) the deadline: it could only time out
            // and would hide the last real answer.
            if Instant::now() >= deadline {
                return Err(AdminError::NotReady {
                    addr: self.addr,
                    waited: started.elapsed(),
                    last,
                });
            }
        }
    }

    fn field_error(&self, path: &str, reason: &str) -> AdminError {
        AdminError::Field {
            addr: self.addr,
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Parses a proto3 JSON duration (`"123s"`, `"1.5s"`) to whole seconds.
fn parse_duration_secs(text: &str) -> Option<u64> {
    let number = text.trim().strip_suffix('s')?;
    let (whole, _fraction) = number.split_once('.').unwrap_or((number, ""));
    whole.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::test_support::SilentServer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn durations_parse_to_whole_seconds() {
        assert_eq!(parse_duration_secs("123s"), Some(123));
        assert_eq!(parse_duration_secs("1.500s"), Some(1));
        assert_eq!(parse_duration_secs("12"), None);
    }

    /// Serves each canned response once per connection, in order.
    async fn fake_admin(responses: Vec<&'static str>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            for response in responses {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 1024];
                let _ = conn.read(&mut buf).await;
                conn.write_all(response.as_bytes()).await.expect("write");
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn admin_reads_chunked_ready_and_json_stats() {
        let (addr, server) = fake_admin(vec![
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 17\r\n\r\nPRE_INITIALIZING\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nLIVE\n\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             3d\r\n{\"stats\":[{\"name\":\"a.b\",\"value\":3},{\"name\":\"t\",\"value\":\"x\"}]}\r\n\
             0\r\n\r\n",
        ])
        .await;
        let admin = Admin::new(addr);
        admin
            .wait_ready(Instant::now() + Duration::from_secs(5))
            .await
            .expect("ready on second poll");
        let stats = admin.stats().await.expect("stats");
        assert_eq!(stats.get("a.b"), Some(&3));
        assert_eq!(stats.len(), 1);
        server.await.expect("server");
    }

    #[tokio::test]
    async fn wait_ready_gives_up_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let started = Instant::now();
        let err = Admin::new(addr)
            .wait_ready(Instant::now() + Duration::from_millis(300))
            .await
            .expect_err("nothing listens");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(matches!(err, AdminError::NotReady { .. }), "{err}");
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }

    #[tokio::test]
    async fn admin_errors_say_what_went_wrong() {
        let (addr, server) = fake_admin(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\ncut short",
            "not http at all\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope",
        ])
        .await;
        let admin = Admin::new(addr);
        let err = admin.get("/a").await.expect_err("truncated");
        assert!(matches!(err, AdminError::Malformed { .. }), "{err}");
        let err = admin.get("/b").await.expect_err("garbage");
        assert!(matches!(err, AdminError::Malformed { .. }), "{err}");
        let err = admin.get_ok("/c").await.expect_err("404");
        assert!(
            matches!(&err, AdminError::Status { status: 404, body, .. } if body == "nope"),
            "{err}"
        );
        server.await.expect("server");
    }

    #[tokio::test]
    async fn admin_requests_are_bounded_by_the_request_timeout() {
        let server = SilentServer::start().await;
        let started = Instant::now();
        let err = Admin::new(server.addr())
            .with_request_timeout(Duration::from_millis(200))
            .get("/ready")
            .await
            .expect_err("silent peer");
        assert!(matches!(err, AdminError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        server.finish().await;
    }
}
