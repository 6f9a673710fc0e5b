//! Authenticated xDS at the protocol level: a real TLS connection to a
//! running control plane, with client certificates minted by its CA. The
//! stream's identity is its certificate's; the node id cannot change it.

use e2e::ScratchDir;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use translator::ResourceType;
use xds_server::ca::CertificateAuthority;
use xds_server::identity::Identity;
use xds_server::server::{RunningServer, ServerOptions, XdsSecurity, start};
use xds_server::snapshots::Settings;

const DEADLINE: Duration = Duration::from_secs(10);
const TRUST_DOMAIN: &str = "cluster.local";

fn identity(ns: &str, sa: &str) -> Identity {
    Identity {
        namespace: ns.to_string(),
        service_account: sa.to_string(),
    }
}

fn node_id(pod: &str, ns: &str) -> String {
    format!("sidecar~127.0.0.1~{pod}.{ns}~{ns}.svc.cluster.local")
}

/// The article's base mesh, served on `xds_addr` with `security`.
fn options(scratch: &ScratchDir, xds_addr: &str, security: XdsSecurity) -> ServerOptions {
    ServerOptions {
        config_paths: vec![e2e::workspace_root().join("examples/article/base")],
        kube: None,
        xds_addr: xds_addr.parse().expect("xDS address"),
        debug_addr: "127.0.0.1:0".parse().expect("debug address"),
        state_dir: scratch.path().join("state"),
        settings: Settings {
            mesh: translator::model::MeshConfig::default(),
            addressing: translator::model::build::Addressing {
                pod_net: "127.16.0.0".parse().expect("pod net"),
                app_net: None,
                service_net: None,
            },
            cert_lifetime: Duration::from_secs(3600),
        },
        debounce: Duration::from_millis(50),
        test_hooks: false,
        xds_security: security,
        limits: Default::default(),
    }
}

async fn serve(scratch: &ScratchDir) -> RunningServer {
    start(options(scratch, "127.0.0.1:0", XdsSecurity::MutualTls))
        .await
        .expect("serve")
}

/// A client TLS configuration trusting `ca`'s root and presenting
/// `client` (certificate and key PEM), if any.
fn client_config(
    ca: &CertificateAuthority,
    client: Option<(String, String)>,
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.root_pem().as_bytes()) {
        roots.add(cert.expect("root PEM")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client chain");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

fn credentials(ca: &CertificateAuthority, who: &Identity) -> (String, String) {
    let cert = ca
        .issue(who, Duration::from_secs(600), SystemTime::now())
        .expect("issue");
    (
        cert.cert_chain_pem.clone(),
        cert.private_key_pem.expose().to_string(),
    )
}

/// A gRPC channel to the server over TLS with `config`, checking the
/// server's certificate for `localhost`.
async fn channel(server: &RunningServer, config: rustls::ClientConfig) -> anyhow::Result<Channel> {
    let addr = server.xds_addr;
    let connector = TlsConnector::from(Arc::new(config));
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(DEADLINE)
        .connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(channel)
}

fn secret_request(node: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node.to_string(),
            ..Default::default()
        }),
        type_url: ResourceType::Secret.type_url().to_string(),
        resource_names: vec!["default".to_string(), "ROOTCA".to_string()],
        ..Default::default()
    }
}

/// Opens a state-of-the-world stream, sends one secret request for `node`,
/// and returns the first response or the status the stream ended with.
async fn ask_for_secrets(channel: Channel, node: &str) -> Result<DiscoveryResponse, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(secret_request(node)).await.expect("queue request");
    let mut responses = tokio::time::timeout(
        DEADLINE,
        client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("stream opened in time")?
    .into_inner();
    let first = tokio::time::timeout(DEADLINE, responses.message())
        .await
        .expect("an answer in time")?;
    drop(tx);
    first.ok_or_else(|| tonic::Status::unknown("stream ended without a response"))
}

/// A TLS connection holding sleep.foo's client certificate.
async fn sleep_foo_channel(server: &RunningServer) -> Channel {
    let sleep_foo = credentials(&server.ca, &identity("foo", "sleep"));
    channel(server, client_config(&server.ca, Some(sleep_foo)))
        .await
        .expect("TLS connection with sleep.foo's certificate")
}

/// Connects with `config` and asks for sleep-0.foo's secrets: the
/// response, or why the connection or the stream failed.
async fn connect_and_ask(
    server: &RunningServer,
    config: rustls::ClientConfig,
) -> Result<DiscoveryResponse, String> {
    let channel = channel(server, config).await.map_err(|e| e.to_string())?;
    ask_for_secrets(channel, &node_id("sleep-0", "foo"))
        .await
        .map_err(|s| s.to_string())
}

fn spiffe_ids_in(response: &DiscoveryResponse) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut out = Vec::new();
    for any in &response.resources {
        let secret = Secret::decode(any.value.as_slice()).expect("a Secret");
        let Some(envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type::TlsCertificate(tls)) = secret.r#type else {
            continue;
        };
        let pem = match tls.certificate_chain.and_then(|d| d.specifier) {
            Some(
                envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(b),
            ) => b,
            Some(
                envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(s),
            ) => s.into_bytes(),
            other => panic!("certificate chain is not inline: {other:?}"),
        };
        let der = CertificateDer::from_pem_slice(&pem).expect("PEM certificate");
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
        let san = cert
            .subject_alternative_name()
            .expect("SAN")
            .expect("has SAN");
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                out.push(uri.to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn a_stream_claiming_another_workload_is_refused_and_gets_no_secret() {
    let scratch = ScratchDir::new("xds-auth-claim").expect("scratch");
    let server = serve(&scratch).await;
    let channel = sleep_foo_channel(&server).await;
    let status = ask_for_secrets(channel, &node_id("httpbin-0", "foo"))
        .await
        .expect_err("sleep.foo's certificate must not get httpbin.foo's config");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    for both in ["foo/httpbin", "foo/sleep"] {
        assert!(status.message().contains(both), "{status:?} names {both}");
    }
    let metrics = server.stats.render_prometheus();
    assert!(
        metrics.contains("xds_rejected_streams_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stream_gets_the_secrets_of_its_own_identity() {
    let scratch = ScratchDir::new("xds-auth-own").expect("scratch");
    let server = serve(&scratch).await;
    let channel = sleep_foo_channel(&server).await;
    let response = ask_for_secrets(channel, &node_id("sleep-0", "foo"))
        .await
        .expect("sleep.foo's own config");
    assert_eq!(
        spiffe_ids_in(&response),
        vec![identity("foo", "sleep").spiffe_id(TRUST_DOMAIN)]
    );
}

#[tokio::test]
async fn clients_without_a_certificate_of_our_ca_cannot_open_a_stream() {
    let scratch = ScratchDir::new("xds-auth-nocert").expect("scratch");
    let server = serve(&scratch).await;
    let other_state: PathBuf = scratch.path().join("other-ca");
    let other = CertificateAuthority::load_or_create(&other_state, TRUST_DOMAIN).expect("other CA");
    let forged = credentials(&other, &identity("foo", "sleep"));
    for (who, client) in [
        ("a client without a certificate", None),
        ("sleep.foo's identity signed by another CA", Some(forged)),
    ] {
        let outcome = connect_and_ask(&server, client_config(&server.ca, client)).await;
        assert!(outcome.is_err(), "{who} got {outcome:?}");
    }
}

#[tokio::test]
async fn after_shutdown_the_xds_port_is_free_again() {
    let scratch = ScratchDir::new("xds-auth-shutdown").expect("scratch");
    let server = serve(&scratch).await;
    let addr = server.xds_addr;
    server.shutdown(Duration::from_secs(5)).await;
    // The listener goes with the server, not at the next connection.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => break,
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "{addr} still bound after shutdown: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plaintext_xds_is_refused_off_loopback() {
    let scratch = ScratchDir::new("xds-auth-insecure").expect("scratch");
    let error = start(options(&scratch, "0.0.0.0:0", XdsSecurity::Insecure))
        .await
        .err()
        .expect("plaintext xDS on 0.0.0.0 must be refused");
    assert!(error.to_string().contains("loopback"), "{error:#}");
}
