//! The stand-in's HTTP side: hyper's HTTP/1.1 server, the routes of the
//! API server's paths, discovery documents, and one handler per verb. Every
//! error is a `Status` with the code and reason the real server uses.

use super::events::{FieldSelector, Scope};
use super::kind::{Kind, render};
use super::status::{Failure, bad_request, not_found, status};
use super::store::{Gate, Shared, State, Write};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    ServerAddressByClientCIDR,
};
use kube::core::DynamicObject;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Request bodies past this are refused (413), as by the real server
/// (which allows 3 MiB of object).
const MAX_BODY: usize = 4 << 20;
/// A watch without `timeoutSeconds` ends after this (the real server's
/// default request timeout).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";

/// Accepts connections until the task is aborted; each connection is
/// served on a task of `connections`, aborted with this one.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        // A client that goes away mid-request is its own business.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Out of descriptors and the like: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let uri = req.uri().path_and_query().map_or_else(
        || req.uri().path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let n = shared.lock().record(req.method().as_str(), &uri);
    shared.changed();
    let response = match route(&shared, req).await {
        Ok(response) => response,
        Err(s) => status_response(&s),
    };
    shared.lock().answered(n, response.status().as_u16());
    shared.changed();
    Ok(response)
}

fn path_not_found() -> Failure {
    status(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
    let path: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    let get = req.method() == Method::GET;
    let ok = StatusCode::OK;
    match parts.as_slice() {
        ["api"] if get => Ok(json(ok, &api_versions(shared))),
        ["apis"] if get => Ok(json(
            ok,
            &APIGroupList {
                groups: groups(shared),
            },
        )),
        ["apis", group] if get => {
            let found = groups(shared).into_iter().find(|g| g.name == *group);
            Ok(json(ok, &found.ok_or_else(path_not_found)?))
        }
        ["api", "v1"] if get => Ok(json(ok, &resource_list(shared, "", "v1")?)),
        ["apis", group, version] if get => Ok(json(ok, &resource_list(shared, group, version)?)),
        ["apis", AUTHENTICATION_GROUP, "v1", "tokenreviews"] if req.method() == Method::POST => {
            token_review(shared, req).await
        }
        ["api", "v1", rest @ ..] => {
            let t = target(shared, "", "v1", rest)?;
            resource(shared, t, req).await
        }
        ["apis", group, version, rest @ ..] => {
            let t = target(shared, group, version, rest)?;
            resource(shared, t, req).await
        }
        _ => Err(path_not_found()),
    }
}

fn api_versions(shared: &Shared) -> APIVersions {
    APIVersions {
        versions: vec!["v1".to_string()],
        server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
            client_cidr: "0.0.0.0/0".to_string(),
            server_address: shared.lock().addr().to_string(),
        }],
    }
}

/// The groups served: each custom kind's (if any version is), and
/// authentication.k8s.io.
fn groups(shared: &Shared) -> Vec<APIGroup> {
    let state = shared.lock();
    let mut out: Vec<APIGroup> = Vec::new();
    let mut add = |name: &str, versions: Vec<String>| {
        let versions: Vec<GroupVersionForDiscovery> = versions
            .into_iter()
            .map(|v| GroupVersionForDiscovery {
                group_version: format!("{name}/{v}"),
                version: v,
            })
            .collect();
        if versions.is_empty() {
            return;
        }
        out.push(APIGroup {
            name: name.to_string(),
            preferred_version: versions.first().cloned(),
            versions,
            server_address_by_client_cidrs: None,
        });
    };
    for kind in Kind::ALL.into_iter().filter(|k| k.is_custom()) {
        add(kind.group(), state.versions(kind));
    }
    add(AUTHENTICATION_GROUP, vec!["v1".to_string()]);
    out
}

/// `/api/v1` or `/apis/GROUP/VERSION`: the resources served there.
fn resource_list(shared: &Shared, group: &str, version: &str) -> Result<APIResourceList, Failure> {
    let state = shared.lock();
    let all_verbs = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    let verbs = |vs: &[&str]| vs.iter().map(|v| v.to_string()).collect::<Vec<_>>();
    let mut resources = Vec::new();
    if group == AUTHENTICATION_GROUP && version == "v1" {
        resources.push(APIResource {
            name: "tokenreviews".into(),
            singular_name: "tokenreview".into(),
            kind: "TokenReview".into(),
            namespaced: false,
            verbs: verbs(&["create"]),
            ..APIResource::default()
        });
    }
    for kind in Kind::ALL
        .into_iter()
        .filter(|k| k.group() == group && state.serves(*k, version))
    {
        resources.push(APIResource {
            name: kind.plural().into(),
            singular_name: kind.name().to_lowercase(),
            kind: kind.name().into(),
            namespaced: kind.namespaced(),
            verbs: verbs(&all_verbs),
            short_names: Some(kind.short_names()).filter(|s| !s.is_empty()),
            categories: kind.is_custom().then(|| vec!["istio-io".to_string()]),
            ..APIResource::default()
        });
        if matches!(kind, Kind::Namespace | Kind::Service | Kind::Pod) || kind.is_custom() {
            resources.push(APIResource {
                name: format!("{}/status", kind.plural()),
                kind: kind.name().into(),
                namespaced: kind.namespaced(),
                verbs: verbs(&["get", "patch", "update"]),
                ..APIResource::default()
            });
        }
    }
    if resources.is_empty() {
        return Err(path_not_found());
    }
    let group_version = match group {
        "" => version.to_string(),
        group => format!("{group}/{version}"),
    };
    Ok(APIResourceList {
        group_version,
        resources,
    })
}

/// A resource path, resolved.
struct Target {
    kind: Kind,
    version: String,
    /// From the path (`namespaces/NS/...`).
    namespace: Option<String>,
    name: Option<String>,
}

fn target(shared: &Shared, group: &str, version: &str, rest: &[&str]) -> Result<Target, Failure> {
    let (plural, namespace, name) = match rest {
        [plural] => (*plural, None, None),
        ["namespaces", ns, plural] => (*plural, Some(*ns), None),
        ["namespaces", ns, plural, name] => (*plural, Some(*ns), Some(*name)),
        [plural, name] => (*plural, None, Some(*name)),
        _ => return Err(path_not_found()),
    };
    let kind = shared
        .lock()
        .kind_at(group, version, plural)
        .ok_or_else(path_not_found)?;
    // A namespaced object is named with its namespace; a cluster-scoped
    // kind has none.
    let misplaced = matches!(
        (kind.namespaced(), namespace, name),
        (true, None, Some(_)) | (false, Some(_), _)
    );
    if misplaced {
        return Err(path_not_found());
    }
    Ok(Target {
        kind,
        version: version.to_string(),
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    })
}

/// The decoded query of a request.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(uri: &Uri) -> Query {
        let query = uri.query().unwrap_or_default();
        Query(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str) -> Result<Option<u64>, Failure> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse()
                    .map_err(|_| bad_request(format!("{name}: invalid value {v:?}")))
            })
            .transpose()
    }
}

async fn resource(
    shared: &Arc<Shared>,
    t: Target,
    req: Request<Incoming>,
) -> Result<Response<Body>, Failure> {
    let query = Query::of(req.uri());
    let method = req.method().clone();
    match (method, t.name.clone()) {
        (Method::GET, None) if matches!(query.get("watch"), Some("true" | "1")) => {
            watch(shared, t, &query).await
        }
        (Method::GET, None) => list(shared, t, &query).await,
        (Method::POST, None) => create(shared, t, req).await,
        (Method::GET, Some(name)) => {
            let state = shared.lock();
            let object = state
                .get(t.kind, t.namespace.as_deref().unwrap_or_default(), &name)
                .ok_or_else(|| not_found(t.kind, &name))?;
            Ok(json(StatusCode::OK, &render(t.kind, object, &t.version)))
        }
        (Method::PUT, Some(name)) => replace(shared, t, &name, req).await,
        (Method::PATCH, Some(name)) => apply(shared, t, &name, &query, req).await,
        (Method::DELETE, Some(name)) => {
            let deleted =
                shared
                    .lock()
                    .delete(t.kind, t.namespace.as_deref().unwrap_or_default(), &name)?;
            Ok(json(StatusCode::OK, &render(t.kind, &deleted, &t.version)))
        }
        _ => Err(status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn scope(t: &Target, query: &Query) -> Result<Scope, Failure> {
    if query.get("labelSelector").is_some_and(|s| !s.is_empty()) {
        return Err(bad_request(
            "labelSelector is not supported by this API server stand-in",
        ));
    }
    Ok(Scope {
        kind: t.kind,
        version: t.version.clone(),
        namespace: t.namespace.clone(),
        fields: FieldSelector::parse(t.kind, query.get("fieldSelector").unwrap_or_default())?,
    })
}

/// Waits while a test holds `gate` of `kind` closed.
async fn wait_open(shared: &Shared, kind: Kind, gate: Gate) -> Result<(), Failure> {
    let mut changes = shared.changes.subscribe();
    loop {
        let held = shared.lock().held(kind, gate);
        if !held {
            return Ok(());
        }
        if changes.changed().await.is_err() {
            return Err(status(
                503,
                "ServiceUnavailable",
                "the API server is stopping",
            ));
        }
    }
}

async fn list(shared: &Shared, t: Target, query: &Query) -> Result<Response<Body>, Failure> {
    let scope = scope(&t, query)?;
    let limit = usize::try_from(query.number("limit")?.unwrap_or(0)).unwrap_or(usize::MAX);
    let token = query.get("continue").filter(|c| !c.is_empty());
    wait_open(shared, t.kind, Gate::List).await?;
    let list = shared.lock().list(&scope, limit, token)?;
    Ok(json(StatusCode::OK, &list))
}

async fn watch(shared: &Shared, t: Target, query: &Query) -> Result<Response<Body>, Failure> {
    let scope = scope(&t, query)?;
    if query.get("sendInitialEvents") == Some("true") {
        return Err(bad_request(
            "sendInitialEvents (streaming lists) is not supported by this API server stand-in",
        ));
    }
    let from = match query.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| bad_request(format!("invalid resource version: {rv}")))?,
        ),
    };
    let bookmarks = query.get("allowWatchBookmarks") == Some("true");
    let asked = query
        .number("timeoutSeconds")?
        .filter(|s| *s > 0)
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let timeout = shared.max_watch_timeout.map_or(asked, |max| asked.min(max));
    wait_open(shared, t.kind, Gate::Watch).await?;
    let (first, live) = shared.lock().watch(scope, from, bookmarks);
    Ok(watch_response(first, live, timeout))
}

/// A watch's body: `first`, then the live lines until the watch is ended
/// (by the server, or at `timeout`).
fn watch_response(
    first: Vec<Bytes>,
    live: Option<mpsc::Receiver<Bytes>>,
    timeout: Duration,
) -> Response<Body> {
    let deadline = tokio::time::Instant::now() + timeout;
    let live = futures::stream::unfold(live, move |live| async move {
        let mut rx = live?;
        tokio::select! {
            line = rx.recv() => line.map(|l| (l, Some(rx))),
            () = tokio::time::sleep_until(deadline) => None,
        }
    });
    let frames = futures::stream::iter(first)
        .chain(live)
        .map(|line| Ok::<_, Infallible>(Frame::data(line)));
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Failure> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(status(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than {MAX_BODY} bytes"),
        )),
        Err(e) => Err(bad_request(format!("reading the request body: {e}"))),
    }
}

/// An object from a request body, checked against the path: its kind and
/// apiVersion (if given), namespace and name (if given) must be the
/// path's; the path's are filled in.
fn object_for(t: &Target, name: Option<&str>, body: &[u8]) -> Result<DynamicObject, Failure> {
    let mut object: DynamicObject = serde_yaml::from_slice(body)
        .map_err(|e| bad_request(format!("the request body is not a Kubernetes object: {e}")))?;
    if let Some(types) = &object.types {
        let want = t.kind.api_version(&t.version);
        if types.api_version != want {
            return Err(bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({want})",
                types.api_version
            )));
        }
        if types.kind != t.kind.name() {
            return Err(bad_request(format!(
                "the kind in the data ({}) does not match the expected kind ({})",
                types.kind,
                t.kind.name()
            )));
        }
    }
    if t.kind.namespaced() {
        let Some(ns) = &t.namespace else {
            return Err(path_not_found());
        };
        if object.metadata.namespace.as_ref().is_some_and(|o| o != ns) {
            return Err(bad_request(
                "the namespace of the provided object does not match the namespace sent on the \
                 request",
            ));
        }
        object.metadata.namespace = Some(ns.clone());
    }
    if let Some(name) = name {
        match &object.metadata.name {
            Some(given) if given != name => {
                return Err(bad_request(format!(
                    "the name of the object ({given}) does not match the name on the URL ({name})"
                )));
            }
            _ => object.metadata.name = Some(name.to_string()),
        }
    }
    Ok(object)
}

/// A namespaced object can only be written into an existing namespace.
fn require_namespace(state: &State, t: &Target) -> Result<(), Failure> {
    match &t.namespace {
        Some(ns) if t.kind.namespaced() && !state.namespace_exists(ns) => {
            Err(not_found(Kind::Namespace, ns))
        }
        _ => Ok(()),
    }
}

async fn create(
    shared: &Shared,
    t: Target,
    req: Request<Incoming>,
) -> Result<Response<Body>, Failure> {
    let body = read_body(req).await?;
    let object = object_for(&t, None, &body)?;
    let mut state = shared.lock();
    require_namespace(&state, &t)?;
    let (written, _) = state.write(t.kind, object, Write::Create)?;
    Ok(json(
        StatusCode::CREATED,
        &render(t.kind, &written, &t.version),
    ))
}

async fn replace(
    shared: &Shared,
    t: Target,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Failure> {
    let body = read_body(req).await?;
    let object = object_for(&t, Some(name), &body)?;
    let (written, _) = shared.lock().write(t.kind, object, Write::Replace)?;
    Ok(json(StatusCode::OK, &render(t.kind, &written, &t.version)))
}

/// Server-side apply (`application/apply-patch+yaml`): creates the object,
/// or merges the applied configuration into it.
async fn apply(
    shared: &Shared,
    t: Target,
    name: &str,
    query: &Query,
    req: Request<Incoming>,
) -> Result<Response<Body>, Failure> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !content_type.starts_with("application/apply-patch+yaml") {
        return Err(status(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted \
                 media types by this stand-in include: application/apply-patch+yaml"
            ),
        ));
    }
    if query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(bad_request("fieldManager is required for apply requests"));
    }
    let body = read_body(req).await?;
    let object = object_for(&t, Some(name), &body)?;
    if object.types.is_none() {
        return Err(bad_request(
            "apiVersion and kind must be set in an applied configuration",
        ));
    }
    let mut state = shared.lock();
    require_namespace(&state, &t)?;
    let ns = t.namespace.as_deref().unwrap_or_default();
    let merged = match state.get(t.kind, ns, name) {
        None => object,
        Some(existing) => {
            let asked = object.metadata.resource_version.as_deref();
            if asked.is_some_and(|rv| Some(rv) != existing.metadata.resource_version.as_deref()) {
                return Err(status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                         modified; please apply your changes to the latest version and try again",
                        t.kind.resource()
                    ),
                ));
            }
            let encode = |o: &DynamicObject| {
                serde_json::to_value(o)
                    .map_err(|e| status(500, "InternalError", format!("encoding an object: {e}")))
            };
            let mut base = encode(existing)?;
            merge(&mut base, encode(&object)?);
            serde_json::from_value(base)
                .map_err(|e| status(500, "InternalError", format!("merging: {e}")))?
        }
    };
    let (written, created) = state.write(
        t.kind,
        merged,
        Write::Upsert {
            keep_created: false,
        },
    )?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(code, &render(t.kind, &written, &t.version)))
}

/// Merges `patch` into `base`: maps key by key, anything else replaced.
fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(base), serde_json::Value::Object(patch)) => {
            for (k, v) in patch {
                match base.get_mut(&k) {
                    Some(b) => merge(b, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, patch) => *base = patch,
    }
}

async fn token_review(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
    let body = read_body(req).await?;
    let review: TokenReview = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("the request body is not a TokenReview: {e}")))?;
    let answered = shared.lock().review(review);
    Ok(json(StatusCode::CREATED, &answered))
}

fn json<T: Serialize + ?Sized>(code: StatusCode, value: &T) -> Response<Body> {
    let (code, bytes) = match serde_json::to_vec(value) {
        Ok(bytes) => (code, bytes),
        Err(e) => {
            let s = status(500, "InternalError", format!("encoding the response: {e}"));
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::to_vec(&s).unwrap_or_default(),
            )
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn status_response(s: &Failure) -> Response<Body> {
    let code = s
        .code
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(code, s)
}
