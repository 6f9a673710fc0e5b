//! DestinationRule SIMPLE origination on real Envoy: a client sidecar
//! originates TLS to an upstream that is a real TLS server (tokio-rustls,
//! certificate from a test CA), verified against the rule's
//! `caCertificates` (200) and failing against another CA (503); without
//! `caCertificates`, against the trust bundle `serve --trust-bundle` names;
//! and the rule's `sni` and `subjectAltNames` reach Envoy (the server sees
//! the SNI, a SAN the certificate lacks fails). Istio's behaviour, from
//! cluster_tls.go `constructUpstreamTLS` and `setAutoSniAndAutoSanValidation`.
//!
//! Two TLS servers (one with a certificate of the rules' CA, one of a CA
//! nobody trusts) back six Services, each with its own rule, so one
//! converged config answers every case.
//!
//! No `LocalMesh` here: it runs its own plaintext echo application on every
//! workload's port, where the TLS server must be. This test runs the
//! control plane in-process, one Envoy (the client's sidecar) and the TLS
//! server itself, on a /16 of 127.0.0.0/8 it claims with a marker socket.

use e2e::{ScratchDir, require_envoy};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use translator::model::MeshConfig;
use translator::model::build::Addressing;
use xds_server::bootstrap::{BootstrapParams, bootstrap_yaml, write_client_credentials};
use xds_server::ca::CertificateAuthority;
use xds_server::debug::sync::is_current;
use xds_server::identity::{Identity, NodeId, Peer};
use xds_server::runner::envoy::{Admin, EnvoyProcess, EnvoySpec};
use xds_server::runner::probe::{Outcome, probe};
use xds_server::server::{RunningServer, ServerOptions, XdsSecurity, start};
use xds_server::snapshots::Settings;
use xds_server::view::ConfigSource;
use xds_server::xds_tls::server_identity;

const TEST: &str = "simple_origination_verifies_the_upstream_against_the_rules_ca";
const DEADLINE: Duration = Duration::from_secs(30);
/// The cases: a Service `tls-CASE` in namespace ext each, all backed by the
/// one TLS server.
const CASES: &[&str] = &["good", "wrong", "insecure", "bundle", "sni", "san"];

fn host_of(case: &str) -> String {
    format!("tls-{case}.ext")
}

fn fqdn_of(case: &str) -> String {
    format!("tls-{case}.ext.svc.cluster.local")
}

/// A /16 for this test's addresses, held while the marker socket lives
/// (the scheme `LocalMesh` uses, on /16s it never claims).
fn claim_net() -> (Ipv4Addr, StdListener) {
    for x in (231u8..=253).step_by(2) {
        let marker = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, x, 255, 254)), 15999);
        if let Ok(l) = StdListener::bind(marker) {
            return (Ipv4Addr::new(127, x, 0, 0), l);
        }
    }
    panic!("no free /16 in 127.231.0.0-127.253.0.0 for the test");
}

fn host(net: Ipv4Addr, last: u8) -> Ipv4Addr {
    let [a, b, _, _] = net.octets();
    Ipv4Addr::new(a, b, 0, last)
}

/// The TLS upstream: answers every request with `200` and the SNI the
/// client sent, then closes.
async fn tls_echo(listener: TcpListener, config: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
            let mut buf = vec![0u8; 8192];
            let mut read = 0;
            while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                match tls.read(&mut buf[read..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read += n,
                }
            }
            let body = format!("tls-echo sni={sni}");
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
    }
}

fn server_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate chain");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("private key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    Arc::new(config)
}

fn mesh_yaml(client: Ipv4Addr, upstream: Ipv4Addr, untrusted: Ipv4Addr) -> String {
    let mut yaml = format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: foo, labels: {{istio-injection: enabled}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: ext}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sleep, namespace: foo, labels: {{app: sleep}}}}
spec: {{serviceAccountName: sleep, containers: [{{name: sleep, image: sleep}}]}}
status: {{podIP: {client}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tls-echo, namespace: ext, labels: {{app: tls-echo}}}}
spec: {{containers: [{{name: echo, image: echo, ports: [{{containerPort: 8443}}]}}]}}
status: {{podIP: {upstream}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tls-untrusted, namespace: ext, labels: {{app: tls-untrusted}}}}
spec: {{containers: [{{name: echo, image: echo, ports: [{{containerPort: 8443}}]}}]}}
status: {{podIP: {untrusted}}}
"
    );
    for case in CASES {
        // Only the insecure client talks to the untrusted server.
        let app = if *case == "insecure" {
            "tls-untrusted"
        } else {
            "tls-echo"
        };
        yaml.push_str(&format!(
            "---
apiVersion: v1
kind: Service
metadata: {{name: tls-{case}, namespace: ext}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 443, targetPort: 8443}}]
"
        ));
    }
    yaml
}

fn rule(case: &str, tls: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tls-{case}, namespace: foo}}
spec:
  host: {}
  trafficPolicy:
    tls: {tls}
",
        fqdn_of(case)
    )
}

/// Whether the sidecar holds the current config and nothing is warming.
async fn converged(server: &RunningServer, node: &str, admin: &Admin) -> Result<(), String> {
    let view = server
        .snapshots
        .view(node, translator::Interception::None, &Peer::Unauthenticated)
        .map_err(|e| format!("no view: {e}"))?;
    let conns = server.registry.snapshot();
    let conn = conns
        .iter()
        .find(|c| c.node_id == node)
        .ok_or("not connected")?;
    if !is_current(conn, &view) {
        return Err("has not acknowledged the current config".into());
    }
    for stat in [
        "listener_manager.total_listeners_warming",
        "cluster_manager.warming_clusters",
    ] {
        match admin.stat(stat).await {
            Ok(Some(0) | None) => {}
            other => return Err(format!("{stat}: {other:?}")),
        }
    }
    Ok(())
}

/// Waits until the sidecar holds the current config with nothing warming.
async fn wait_converged(server: &RunningServer, node: &str, admin: &Admin) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let state = converged(server, node, admin).await;
        if state.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar did not converge: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Probes `case` through the sidecar until the wanted outcome (Envoy
/// applies an acknowledged cluster a moment later) or the deadline, and
/// returns the last answer.
async fn call(outbound: SocketAddr, case: &str, want: Outcome) -> (Outcome, String) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = probe(
            outbound,
            &format!("{}:443", host_of(case)),
            "/",
            Duration::from_secs(5),
        )
        .await;
        if r.outcome == want || Instant::now() >= deadline {
            return (r.outcome, r.body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_origination_verifies_the_upstream_against_the_rules_ca() {
    let Some(envoy_bin) = require_envoy(TEST) else {
        return;
    };
    let scratch = ScratchDir::new("dr-tls").expect("scratch dir");
    let dir = scratch.path();
    let (net, _claim) = claim_net();
    let (client_ip, upstream_ip, untrusted_ip) = (host(net, 2), host(net, 3), host(net, 4));

    // Two test CAs: the upstream's, and another that did not sign it.
    let good = CertificateAuthority::load_or_create(&dir.join("ca-good"), "example.test")
        .expect("good CA");
    let wrong = CertificateAuthority::load_or_create(&dir.join("ca-wrong"), "example.test")
        .expect("wrong CA");
    let good_pem = dir.join("good-ca.pem");
    let wrong_pem = dir.join("wrong-ca.pem");
    std::fs::write(&good_pem, good.root_pem()).expect("write CA");
    std::fs::write(&wrong_pem, wrong.root_pem()).expect("write CA");
    // The names clients send as SNI: `tls-CASE.ext` from the Host header
    // (auto_sni), the FQDN where the rule sets `sni`.
    let mut names: Vec<String> = CASES.iter().map(|c| host_of(c)).collect();
    names.push(fqdn_of("sni"));
    names.push(fqdn_of("san"));
    let cert = good
        .issue_with_names(
            &Identity {
                namespace: "ext".into(),
                service_account: "tls-echo".into(),
            },
            &names,
            &[],
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .expect("upstream certificate");
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(upstream_ip), 8443))
        .await
        .expect("bind the TLS upstream");
    let echo = tokio::spawn(tls_echo(
        listener,
        server_config(&cert.cert_chain_pem, cert.private_key_pem.expose()),
    ));
    // The same names, signed by a CA no rule and no bundle names.
    let nobody = CertificateAuthority::load_or_create(&dir.join("ca-nobody"), "example.test")
        .expect("untrusted CA");
    let untrusted_cert = nobody
        .issue_with_names(
            &Identity {
                namespace: "ext".into(),
                service_account: "tls-untrusted".into(),
            },
            &names,
            &[],
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .expect("untrusted certificate");
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(untrusted_ip), 8443))
        .await
        .expect("bind the untrusted TLS upstream");
    let untrusted = tokio::spawn(tls_echo(
        listener,
        server_config(
            &untrusted_cert.cert_chain_pem,
            untrusted_cert.private_key_pem.expose(),
        ),
    ));

    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(
        config_dir.join("mesh.yaml"),
        mesh_yaml(client_ip, upstream_ip, untrusted_ip),
    )
    .expect("write mesh");
    let pem = |p: &Path| p.display().to_string();
    let rules = [
        rule(
            "good",
            &format!("{{mode: SIMPLE, caCertificates: {}}}", pem(&good_pem)),
        ),
        rule(
            "wrong",
            &format!("{{mode: SIMPLE, caCertificates: {}}}", pem(&wrong_pem)),
        ),
        rule("insecure", "{mode: SIMPLE, insecureSkipVerify: true}"),
        rule("bundle", "{mode: SIMPLE}"),
        rule(
            "sni",
            &format!(
                "{{mode: SIMPLE, sni: {0}, subjectAltNames: [{0}]}}",
                fqdn_of("sni")
            ),
        ),
        rule(
            "san",
            &format!(
                "{{mode: SIMPLE, sni: {}, subjectAltNames: [other.example.test]}}",
                fqdn_of("san")
            ),
        ),
    ]
    .concat();
    std::fs::write(config_dir.join("rules.yaml"), rules).expect("write rules");
    let server = start(ServerOptions {
        config_paths: vec![config_dir.clone()],
        kube: None,
        xds_addr: "127.0.0.1:0".parse().expect("addr"),
        debug_addr: "127.0.0.1:0".parse().expect("addr"),
        state_dir: dir.join("state"),
        settings: Settings {
            mesh: MeshConfig {
                // What `serve --trust-bundle` sets: the good CA stands in
                // for the system bundle.
                trust_bundle: good_pem.display().to_string(),
                ..MeshConfig::default()
            },
            addressing: Addressing {
                pod_net: net,
                app_net: None,
                service_net: None,
            },
            cert_lifetime: Duration::from_secs(3600),
        },
        debounce: Duration::from_millis(50),
        test_hooks: false,
        xds_security: XdsSecurity::MutualTls,
        limits: Default::default(),
    })
    .await
    .expect("control plane starts");

    // The client's sidecar, as `LocalMesh` starts one.
    let envoy_dir = dir.join("envoy");
    let creds = write_client_credentials(
        &server.ca,
        &Identity {
            namespace: "foo".into(),
            service_account: "sleep".into(),
        },
        &server_identity(&MeshConfig::default().root_namespace),
        &envoy_dir.join("sleep"),
        Duration::from_secs(3600),
    )
    .expect("bootstrap credentials");
    let admin_addr = SocketAddr::new(IpAddr::V4(client_ip), 15000);
    let labels = [("app".to_string(), "sleep".to_string())].into();
    let yaml = bootstrap_yaml(&BootstrapParams {
        namespace: "foo",
        pod: "sleep",
        ip: IpAddr::V4(client_ip),
        service_account: "sleep",
        labels: &labels,
        workload_name: "sleep",
        xds_addrs: &[server.xds_addr.into()],
        delta: false,
        admin: admin_addr,
        cluster_domain: "cluster.local",
        tls: Some(&creds),
        interception: translator::Interception::None,
    })
    .expect("bootstrap");
    let bootstrap = envoy_dir.join("sleep.yaml");
    std::fs::write(&bootstrap, yaml).expect("write bootstrap");
    let mut envoy = EnvoyProcess::spawn(&EnvoySpec::new(
        &envoy_bin,
        &bootstrap,
        &envoy_dir,
        "sleep.foo",
    ))
    .expect("Envoy starts");
    let node = NodeId::format(&client_ip.to_string(), "sleep", "foo", "cluster.local");
    let admin = Admin::new(admin_addr);
    let outbound = SocketAddr::new(IpAddr::V4(client_ip), 15001);
    wait_converged(&server, &node, &admin).await;

    // Verified against the rule's CA: 200, and the upstream saw the SNI
    // Envoy took from the Host header (auto_sni).
    let (outcome, body) = call(outbound, "good", Outcome::Status(200)).await;
    assert_eq!(outcome, Outcome::Status(200), "{body}");
    assert_eq!(body, format!("tls-echo sni={}", host_of("good")));
    // Another CA: the handshake fails, the sidecar answers 503.
    let (outcome, body) = call(outbound, "wrong", Outcome::Status(503)).await;
    assert_eq!(outcome, Outcome::Status(503), "{body}");
    // insecureSkipVerify: a server no CA vouches for is accepted.
    let (outcome, body) = call(outbound, "insecure", Outcome::Status(200)).await;
    assert_eq!(outcome, Outcome::Status(200), "{body}");
    // No caCertificates: the trust bundle (here the good CA) verifies.
    let (outcome, body) = call(outbound, "bundle", Outcome::Status(200)).await;
    assert_eq!(outcome, Outcome::Status(200), "{body}");
    // The rule's sni is sent and its subjectAltNames checked...
    let (outcome, body) = call(outbound, "sni", Outcome::Status(200)).await;
    assert_eq!(outcome, Outcome::Status(200), "{body}");
    assert_eq!(body, format!("tls-echo sni={}", fqdn_of("sni")));
    // ... so a SAN the certificate lacks fails.
    let (outcome, body) = call(outbound, "san", Outcome::Status(503)).await;
    assert_eq!(outcome, Outcome::Status(503), "{body}");

    if let Err(e) = envoy.check_running().await {
        panic!("Envoy exited: {e}");
    }
    let _ = envoy.stop().await;
    echo.abort();
    untrusted.abort();
}
