//! The certificate endpoint: HTTPS, one path, bounded in connections,
//! handshake time, request size and request time.

use super::review::{ReviewError, TokenReviewer};
use super::wire::{
    CERTIFICATE_PATH, CertificateRequest, CertificateResponse, ErrorResponse, MAX_REQUEST_BYTES,
};
use crate::ca::{CertificateAuthority, CsrPublicKey};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tracing::{debug, info, warn};

/// Connections served at once; more wait in the kernel's backlog. Each
/// sidecar enrolls once, at pod start.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take for its TLS handshake, and for its request
/// headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last in all (a TokenReview included).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Signs bootstrap certificates for callers whose token names an identity.
pub struct Enroller {
    ca: Arc<CertificateAuthority>,
    reviewer: Arc<dyn TokenReviewer>,
    lifetime: Duration,
}

impl Enroller {
    /// `lifetime`: how long the certificates it signs live.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        reviewer: Arc<dyn TokenReviewer>,
        lifetime: Duration,
    ) -> Self {
        Enroller {
            ca,
            reviewer,
            lifetime,
        }
    }

    /// The answer to one `POST /v1/certificate`: its `Authorization`
    /// header and body. `remote` is only for the log.
    pub async fn answer(
        &self,
        authorization: Option<&str>,
        body: &[u8],
        remote: SocketAddr,
    ) -> (StatusCode, Vec<u8>) {
        let Some(token) = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "no bearer token: send the pod's service-account token as \
                 'Authorization: Bearer TOKEN'"
                    .to_string(),
            );
        };
        let request: CertificateRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not a certificate request ({{\"csr\": PEM}}): {e}"),
                );
            }
        };
        let key = match CsrPublicKey::parse(&request.csr) {
            Ok(k) => k,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
        };
        let identity = match self.reviewer.review(token).await {
            Ok(identity) => identity,
            Err(e @ ReviewError::Denied(_)) => {
                warn!(%remote, error = %e, "certificate request refused");
                return refuse(StatusCode::FORBIDDEN, e.to_string());
            }
            Err(e @ ReviewError::Unavailable(_)) => {
                warn!(%remote, error = %e, "certificate request not answered");
                return refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            }
        };
        let signed = match self
            .ca
            .issue_for_csr(&identity, &key, self.lifetime, SystemTime::now())
        {
            Ok(s) => s,
            Err(e) => {
                warn!(%remote, %identity, error = %format!("{e:#}"), "signing a bootstrap certificate failed");
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
            }
        };
        info!(%remote, %identity, serial = %signed.serial_hex, "issued a bootstrap certificate");
        let response = CertificateResponse {
            certificate_chain: signed.cert_chain_pem,
            spiffe_id: signed.spiffe_id,
            not_after: humantime::format_rfc3339_seconds(signed.not_after).to_string(),
        };
        match serde_json::to_vec(&response) {
            Ok(body) => (StatusCode::OK, body),
            Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

fn refuse(status: StatusCode, error: String) -> (StatusCode, Vec<u8>) {
    let body = serde_json::to_vec(&ErrorResponse { error }).unwrap_or_default();
    (status, body)
}

/// Answers a request body with a status and a JSON body.
pub type Handler = Arc<dyn Fn(&[u8]) -> (StatusCode, Vec<u8>) + Send + Sync>;

/// Another path the endpoint's port answers, with its own body limit: the
/// sidecar injection webhook (`inject::webhook`). Kept a plain handler so
/// this module does not depend on what it serves.
#[derive(Clone)]
pub struct Route {
    pub path: &'static str,
    pub max_request_bytes: usize,
    pub handler: Handler,
}

/// Serves the endpoint on `listener` with `tls` until `stop` completes.
pub fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    enroller: Arc<Enroller>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    serve_with(listener, tls, enroller, None, stop)
}

/// [`serve`], answering `extra` too.
pub fn serve_with(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    enroller: Arc<Enroller>,
    extra: Option<Route>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        let mut stop = std::pin::pin!(stop);
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // Out of file descriptors and the like: pause, so
                        // the loop does not spin.
                        warn!(%error, "accepting a certificate request connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let acceptor = acceptor.clone();
            let enroller = Arc::clone(&enroller);
            let extra = extra.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let served = tokio::time::timeout(CONNECTION_TIMEOUT, async {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            debug!(%remote, %error, "certificate endpoint TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%remote, "certificate endpoint TLS handshake timed out");
                            return;
                        }
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let enroller = Arc::clone(&enroller);
                        let extra = extra.clone();
                        async move {
                            let response = match &extra {
                                Some(route) if req.uri().path() == route.path => {
                                    handle_route(route, req).await
                                }
                                _ => handle(&enroller, req, remote).await,
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    if let Err(error) = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HANDSHAKE_TIMEOUT)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(tls), service)
                        .await
                    {
                        debug!(%remote, %error, "certificate endpoint connection failed");
                    }
                })
                .await;
                if served.is_err() {
                    debug!(%remote, "certificate endpoint connection timed out");
                }
            });
        }
    })
}

async fn handle(
    enroller: &Enroller,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Full<Bytes>> {
    if req.uri().path() != CERTIFICATE_PATH {
        return reply(refuse(
            StatusCode::NOT_FOUND,
            format!("no such path: the certificate endpoint is POST {CERTIFICATE_PATH}"),
        ));
    }
    if req.method() != Method::POST {
        return reply(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{CERTIFICATE_PATH} takes POST"),
        ));
    }
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return reply(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request is over {MAX_REQUEST_BYTES} bytes"),
            ));
        }
        Err(e) => {
            return reply(refuse(
                StatusCode::BAD_REQUEST,
                format!("reading the request: {e}"),
            ));
        }
    };
    reply(
        enroller
            .answer(authorization.as_deref(), &body, remote)
            .await,
    )
}

async fn handle_route(route: &Route, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return reply(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} takes POST", route.path),
        ));
    }
    match Limited::new(req.into_body(), route.max_request_bytes)
        .collect()
        .await
    {
        Ok(b) => reply((route.handler)(&b.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => reply(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request is over {} bytes", route.max_request_bytes),
        )),
        Err(e) => reply(refuse(
            StatusCode::BAD_REQUEST,
            format!("reading the request: {e}"),
        )),
    }
}

fn reply((status, body): (StatusCode, Vec<u8>)) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}
