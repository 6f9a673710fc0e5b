//! The echo app and the probe, each checked against the other: the probe's
//! outcome classes need a real HTTP server, and the echo app's answers are
//! what the probe parses.

use super::echo::{ECHO_NAME_HEADER, EchoServer};
use super::probe::{Outcome, ProbeResult, probe};
use std::net::SocketAddr;
use std::time::Duration;

const SHORT: Duration = Duration::from_secs(5);

/// An echo app named `name` on one loopback port.
async fn echo(name: &str) -> EchoServer {
    EchoServer::start(vec!["127.0.0.1:0".parse().expect("addr")], name)
        .await
        .expect("start echo")
}

/// One probe of a fresh echo app named `name`, stopped afterwards.
async fn probe_echo(name: &str, host: &str, path: &str) -> ProbeResult {
    let server = echo(name).await;
    let got = probe(server.local_addrs()[0], host, path, SHORT).await;
    server.stop().await;
    got
}

#[tokio::test]
async fn serves_every_address_and_names_itself() {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = EchoServer::start(vec![any, any], "multi")
        .await
        .expect("start");
    assert_eq!(server.local_addrs().len(), 2);
    for addr in server.local_addrs() {
        let got = probe(*addr, "h", "/anything/else", SHORT).await;
        assert_eq!(got.outcome, Outcome::Status(200));
        assert_eq!(got.header(ECHO_NAME_HEADER), Some("multi"));
        let json = got.headers_json.expect("json");
        assert_eq!(json["path"], "/anything/else");
    }
    server.stop().await;
}

#[tokio::test]
async fn ip_reports_the_peer_address() {
    let got = probe_echo("ip", "h", "/ip").await;
    assert_eq!(got.outcome, Outcome::Status(200));
    assert_eq!(got.headers_json.expect("json")["origin"], "127.0.0.1");
}

#[tokio::test]
async fn stopping_closes_the_listeners() {
    let server = echo("gone").await;
    let addr = server.local_addrs()[0];
    server.stop().await;
    assert_eq!(probe(addr, "h", "/", SHORT).await.outcome, Outcome::Refused);
}

#[tokio::test]
async fn probe_gets_200_and_the_echoed_headers() {
    let got = probe_echo("echo-a", "echo.test.svc:8080", "/headers").await;
    assert_eq!(got.outcome, Outcome::Status(200));
    let json = got.headers_json.as_ref().expect("json body");
    assert_eq!(json["headers"]["Host"], "echo.test.svc:8080");
    assert_eq!(json["headers"]["Connection"], "close");
    assert_eq!(got.xfcc, None);
    assert_eq!(got.header("x-echo-name"), Some("echo-a"));
}

#[tokio::test]
async fn probe_reports_the_status_the_app_returns() {
    let got = probe_echo("echo-a", "x", "/status/503").await;
    assert_eq!(got.outcome, Outcome::Status(503));
    assert_eq!(got.outcome.to_string(), "503");
}
