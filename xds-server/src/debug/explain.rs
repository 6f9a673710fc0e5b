//! The two ways `xds-server explain` gets one request explained
//! (`translator::explain`): [`offline`] from config directories, and
//! [`remote`], which asks a running server's `/debug/explain`; it prints
//! [`translator::explain::render_text`] of either.

use crate::source::files::FileLoader;
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::header::{CONNECTION, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpStream;
use translator::explain::{Explanation, explain};
use translator::model::MeshConfig;
use translator::model::build::Addressing;

/// Explains a request from the config in `paths`, as `serve` would
/// translate it (invalid objects left out, as there).
pub fn offline(
    paths: Vec<PathBuf>,
    config: MeshConfig,
    addressing: &Addressing,
    from: &str,
    to: &str,
) -> anyhow::Result<Explanation> {
    let snapshot = FileLoader::new(paths).load();
    for e in &snapshot.errors {
        eprintln!("invalid  {e}");
    }
    let (mesh, _) = snapshot.build_mesh(config, addressing);
    let t = translator::translate(&mesh);
    Ok(explain(&mesh, &t, from, to)?)
}

/// Percent-encodes a query value (workload and service names are DNS
/// labels, but a user may type anything).
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Most bytes of an explanation read from a server.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Asks the server whose debug endpoints are on `addr`.
pub async fn remote(addr: SocketAddr, from: &str, to: &str) -> anyhow::Result<Explanation> {
    let path = format!(
        "/debug/explain?from={}&to={}",
        query_value(from),
        query_value(to)
    );
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), get(addr, &path))
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within 10s"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    if status != 200 {
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{addr}: {status}: {reason}");
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("GET http://{addr}{path}: not an explanation"))
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Bytes)> {
    let request = Request::get(path)
        .header(HOST, HeaderValue::from_str(&addr.to_string())?)
        .header(CONNECTION, HeaderValue::from_static("close"))
        .body(Empty::<Bytes>::new())?;
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(connection);
    let response = sender.send_request(request).await;
    let result = async {
        let (head, body) = response?.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
            .to_bytes();
        Ok((head.status.as_u16(), body))
    }
    .await;
    task.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded_except_name_characters() {
        assert_eq!(query_value("httpbin.bar:8000"), "httpbin.bar:8000");
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }
}
