//! Enrollment: TokenReview against a scripted API server (kube-rs's
//! tower-test pattern), and the endpoint and its client over real TLS.

use super::*;
use crate::bootstrap::HostPort;
use crate::ca::CertificateAuthority;
use crate::identity::Identity;
use crate::test_support::TempDir;
use crate::test_support::kube_mock::{self, Handle};
use crate::xds_tls::{self, ServerCert};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(10);
const TRUST_DOMAIN: &str = "cluster.local";

/// Answers the next request with `status` and `body`; returns the request's
/// method, path and JSON body.
async fn answer(handle: &mut Handle, status: StatusCode, body: Value) -> (String, String, Value) {
    let seen = kube_mock::answer(handle, status, &body).await;
    (seen.method, seen.path, seen.body)
}

/// The API server's TokenReview answer with `status`.
fn review_answer(status: Value) -> Value {
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": {},
        "status": status
    })
}

async fn review_with(status: StatusCode, body: Value) -> (Result<Identity, ReviewError>, Value) {
    let (client, mut api) = kube_mock::client();
    let reviewer = KubeTokenReviewer::new(client, vec![DEFAULT_AUDIENCE.to_string()]);
    let review = tokio::spawn(async move { reviewer.review("the-token").await });
    let (method, path, sent) = answer(&mut api, status, body).await;
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews")
    );
    let result = tokio::time::timeout(DEADLINE, review)
        .await
        .expect("an answer in time")
        .expect("the review task");
    (result, sent)
}

#[tokio::test]
async fn an_authenticated_service_account_token_names_its_identity() {
    let (result, sent) = review_with(
        StatusCode::CREATED,
        review_answer(json!({
            "authenticated": true,
            "user": {
                "username": "system:serviceaccount:foo:sleep",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:foo", "system:authenticated"]
            },
            "audiences": ["istio-ca"]
        })),
    )
    .await;
    assert_eq!(
        result,
        Ok(Identity {
            namespace: "foo".into(),
            service_account: "sleep".into()
        })
    );
    // What was asked: this token, for our audience.
    assert_eq!(sent["spec"]["token"], "the-token");
    assert_eq!(sent["spec"]["audiences"], json!(["istio-ca"]));
    assert_eq!(sent["kind"], "TokenReview");
}

#[tokio::test]
async fn a_token_the_api_server_does_not_authenticate_is_denied_with_its_reason() {
    let (result, _) = review_with(
        StatusCode::CREATED,
        review_answer(json!({
            "authenticated": false,
            "error": "[invalid bearer token, token has been invalidated]"
        })),
    )
    .await;
    assert_eq!(
        result,
        Err(ReviewError::Denied(
            "[invalid bearer token, token has been invalidated]".into()
        ))
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_denied() {
    let (result, _) = review_with(
        StatusCode::CREATED,
        review_answer(json!({
            "authenticated": true,
            "user": {"username": "system:serviceaccount:foo:sleep"},
            "audiences": ["https://kubernetes.default.svc"]
        })),
    )
    .await;
    match result {
        Err(ReviewError::Denied(reason)) => {
            assert!(reason.contains("kubernetes.default.svc"), "{reason}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn a_person_s_token_is_denied_only_workloads_get_certificates() {
    let (result, _) = review_with(
        StatusCode::CREATED,
        review_answer(json!({
            "authenticated": true,
            "user": {"username": "alice@example.com"},
            "audiences": ["istio-ca"]
        })),
    )
    .await;
    match result {
        Err(ReviewError::Denied(reason)) => {
            assert!(reason.contains("not a service account"), "{reason}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn an_api_server_failure_is_unavailable_not_a_denial() {
    let (result, _) = review_with(
        StatusCode::FORBIDDEN,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "tokenreviews.authentication.k8s.io is forbidden",
            "reason": "Forbidden", "code": 403
        }),
    )
    .await;
    match result {
        Err(ReviewError::Unavailable(reason)) => {
            assert!(reason.contains("forbidden"), "{reason}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[test]
fn service_account_user_names_parse_and_others_do_not() {
    assert_eq!(
        identity_of_user("system:serviceaccount:bar:httpbin"),
        Ok(Identity {
            namespace: "bar".into(),
            service_account: "httpbin".into()
        })
    );
    for bad in [
        "system:serviceaccount:bar",
        "system:serviceaccount::httpbin",
        "system:serviceaccount:bar:",
        "system:node:worker-1",
        "system:serviceaccount:a:b:c",
    ] {
        assert!(identity_of_user(bad).is_err(), "{bad}");
    }
}

/// A reviewer that knows a fixed set of tokens, or is unavailable.
struct Tokens {
    known: BTreeMap<&'static str, Identity>,
    unavailable: bool,
}

impl TokenReviewer for Tokens {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, ReviewError>> {
        Box::pin(async move {
            if self.unavailable {
                return Err(ReviewError::Unavailable("the API server is down".into()));
            }
            self.known
                .get(token)
                .cloned()
                .ok_or_else(|| ReviewError::Denied("[invalid bearer token]".into()))
        })
    }
}

/// A CA, the certificate endpoint on a loopback port, and the root a pod
/// would mount.
struct Endpoint {
    _dir: TempDir,
    ca: Arc<CertificateAuthority>,
    addr: SocketAddr,
    _server: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn endpoint(unavailable: bool) -> Endpoint {
    endpoint_with(unavailable, None).await
}

async fn endpoint_with(unavailable: bool, route: Option<Route>) -> Endpoint {
    let dir = TempDir::new("enroll");
    let ca = Arc::new(CertificateAuthority::load_or_create(dir.root(), TRUST_DOMAIN).expect("CA"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let cert = Arc::new(
        ServerCert::new(
            ca.clone(),
            xds_tls::server_identity("istio-system"),
            vec!["xds-server.istio-system.svc".into()],
            vec![addr.ip()],
            Duration::from_secs(3600),
        )
        .expect("server certificate"),
    );
    let tokens = Tokens {
        known: BTreeMap::from([(
            "sleep-token",
            Identity {
                namespace: "foo".into(),
                service_account: "sleep".into(),
            },
        )]),
        unavailable,
    };
    let enroller = Arc::new(Enroller::new(
        ca.clone(),
        Arc::new(tokens),
        Duration::from_secs(3600),
    ));
    let tls = xds_tls::enroll_server_config(cert).expect("TLS config");
    let server = serve_with(listener, tls, enroller, route, futures::future::pending());
    Endpoint {
        _dir: dir,
        ca,
        addr,
        _server: AbortOnDrop(server),
    }
}

#[tokio::test]
async fn a_valid_token_gets_a_certificate_of_its_identity_for_the_key_kept_here() {
    let e = endpoint(false).await;
    let enrolled = enroll(
        &e.addr.into(),
        e.ca.root_pem(),
        "sleep-token",
        TRUST_DOMAIN,
        DEADLINE,
    )
    .await
    .expect("enrolled");
    assert_eq!(enrolled.identity.to_string(), "foo/sleep");
    // The certificate names that identity, chains to the root, and is for
    // the key generated on this side.
    use rcgen::PublicKeyData;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(enrolled.cert_chain_pem.as_bytes()).expect("PEM");
    assert_eq!(
        crate::xds_tls::spiffe_identity(&der, TRUST_DOMAIN),
        Ok(enrolled.identity.clone())
    );
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    let root_der = CertificateDer::from_pem_slice(e.ca.root_pem().as_bytes()).expect("root PEM");
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).expect("root");
    cert.verify_signature(Some(root.public_key()))
        .expect("signed by the root");
    let key = rcgen::KeyPair::from_pem(enrolled.private_key_pem.expose()).expect("key");
    assert_eq!(
        cert.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
}

#[tokio::test]
async fn a_server_certificate_without_the_dialled_name_is_refused() {
    let e = endpoint(false).await;
    // The test certificate carries 127.0.0.1 and the Service name, not
    // "localhost": refused at once, without retrying, as a TLS failure.
    let addr = HostPort {
        host: "localhost".into(),
        port: e.addr.port(),
    };
    let err = enroll(
        &addr,
        e.ca.root_pem(),
        "sleep-token",
        TRUST_DOMAIN,
        DEADLINE,
    )
    .await
    .err()
    .expect("a name the certificate does not carry is refused");
    assert!(format!("{err:#}").contains("TLS with"), "{err:#}");
}

#[tokio::test]
async fn an_unknown_token_is_refused_at_once_with_the_reason() {
    let e = endpoint(false).await;
    let err = enroll(
        &e.addr.into(),
        e.ca.root_pem(),
        "stolen-token",
        TRUST_DOMAIN,
        DEADLINE,
    )
    .await
    .err()
    .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("403 Forbidden"), "{text}");
    assert!(text.contains("invalid bearer token"), "{text}");
}

#[tokio::test]
async fn a_server_of_another_root_is_not_trusted() {
    let e = endpoint(false).await;
    let other_dir = TempDir::new("enroll-other-root");
    let other = CertificateAuthority::load_or_create(other_dir.root(), TRUST_DOMAIN).expect("CA");
    let err = enroll(
        &e.addr.into(),
        other.root_pem(),
        "sleep-token",
        TRUST_DOMAIN,
        DEADLINE,
    )
    .await
    .err()
    .expect("an endpoint our root does not vouch for is refused");
    assert!(format!("{err:#}").contains("TLS with"), "{err:#}");
}

#[tokio::test]
async fn while_tokens_cannot_be_checked_the_client_retries_until_its_timeout() {
    let e = endpoint(true).await;
    let err = enroll(
        &e.addr.into(),
        e.ca.root_pem(),
        "sleep-token",
        TRUST_DOMAIN,
        Duration::from_secs(2),
    )
    .await
    .err()
    .expect("no certificate while the API server is down");
    let text = format!("{err:#}");
    assert!(text.contains("within 2s"), "{text}");
    assert!(text.contains("503 Service Unavailable"), "{text}");
}

/// Requests the client never sends: no token, a body that is not a CSR, a
/// CSR whose signature does not match, another path or method.
#[tokio::test]
async fn malformed_requests_get_a_status_and_a_reason() {
    let e = endpoint(false).await;
    let enroller = Enroller::new(
        e.ca.clone(),
        Arc::new(Tokens {
            known: BTreeMap::new(),
            unavailable: false,
        }),
        Duration::from_secs(60),
    );
    let remote: SocketAddr = "127.0.0.1:1".parse().expect("address");
    let (status, body) = enroller.answer(None, b"{}", remote).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, body) = enroller.answer(Some("Bearer x"), b"not json", remote).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not a certificate request"));
    let garbage = serde_json::to_vec(&json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"})).expect("JSON");
    let (status, body) = enroller.answer(Some("Bearer x"), &garbage, remote).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("certificate signing request is invalid"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// `POST path` with `body` over TLS as the API server calls a webhook:
/// trusting only our root, checking the Service's name.
async fn post(e: &Endpoint, path: &str, body: &[u8]) -> (StatusCode, Value) {
    use hyper_util::rt::TokioIo;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(e.ca.root_pem().as_bytes()) {
        roots.add(cert.expect("root PEM")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(e.addr)
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from("xds-server.istio-system.svc").expect("name"),
            tcp,
        )
        .await
        .expect("TLS with the Service's name");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP");
    let driver = tokio::spawn(conn);
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    driver.abort();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_injection_webhook_answers_admission_reviews_on_the_endpoint_port() {
    use crate::inject::{template::Settings, webhook};
    let namespaces = BTreeMap::from([(
        "foo".to_string(),
        translator::model::Labels::from([("istio-injection".to_string(), "enabled".to_string())]),
    )]);
    let route = Route {
        path: webhook::INJECT_PATH,
        max_request_bytes: 64 * 1024,
        handler: Arc::new(move |body: &[u8]| {
            match webhook::review(body, &namespaces, &Settings::default()) {
                Ok(v) => (StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default()),
                Err(e) => (
                    StatusCode::BAD_REQUEST,
                    serde_json::to_vec(&json!({"error": e})).unwrap_or_default(),
                ),
            }
        }),
    };
    let e = endpoint_with(false, Some(route)).await;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "foo",
            "operation": "CREATE",
            "object": {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"generateName": "sleep-", "labels": {"app": "sleep"}},
                       "spec": {"containers": [{"name": "sleep", "image": "curl"}]}}
        }
    });
    let (status, answer) = post(&e, "/inject", &serde_json::to_vec(&review).expect("JSON")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    // Not an AdmissionReview: 400 with the reason.
    let (status, answer) = post(&e, "/inject", b"{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|m| m.contains("AdmissionReview")),
        "{answer}"
    );
    // The certificate path is still the certificate endpoint's.
    let (status, _) = post(&e, CERTIFICATE_PATH, b"{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
