//! Fixtures shared by the crate's unit tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// `label` names the test in the directory's name, to tell leftovers
    /// apart; the process id and a counter keep concurrent tests apart.
    pub(crate) fn new(label: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xds-server-test-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        // Absolute and free of symlinks, so paths in file events match.
        TempDir(dir.canonicalize().expect("canonical temp dir"))
    }

    /// The directory itself.
    pub(crate) fn root(&self) -> &Path {
        &self.0
    }

    /// `rel` below the directory.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Writes `text` to `rel` below the directory, creating its parents.
    pub(crate) fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(p, text).expect("write file");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `kube::Client` whose API server is the test (kube-rs's tower-test
/// pattern): the test takes each request from the handle and answers it.
pub(crate) mod kube_mock {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::{Request, Response, StatusCode};
    use serde_json::{Value, json};
    use std::time::Duration;

    pub(crate) type Handle =
        tower_test::mock::Handle<Request<kube::client::Body>, Response<kube::client::Body>>;
    pub(crate) type Reply = tower_test::mock::SendResponse<Response<kube::client::Body>>;

    const DEADLINE: Duration = Duration::from_secs(10);

    pub(crate) fn client() -> (kube::Client, Handle) {
        let (service, handle) = tower_test::mock::pair();
        (kube::Client::new(service, "default"), handle)
    }

    /// A JSON answer.
    pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<kube::client::Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(kube::client::Body::from(
                serde_json::to_vec(body).expect("JSON"),
            ))
            .expect("response")
    }

    /// The API server's error object.
    pub(crate) fn status(code: u16, reason: &str) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": reason, "reason": reason, "code": code
        })
    }

    /// What a request the client sent asked.
    pub(crate) struct Seen {
        pub method: String,
        /// Path and query.
        pub uri: String,
        pub path: String,
        pub content_type: String,
        /// The body as JSON (`Null` if none).
        pub body: Value,
    }

    /// The next request, within a deadline, and the way to answer it.
    pub(crate) async fn next(handle: &mut Handle) -> (Seen, Reply) {
        let (request, reply) = tokio::time::timeout(DEADLINE, handle.next_request())
            .await
            .expect("a request in time")
            .expect("a request");
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let path = request.uri().path().to_string();
        let content_type = request
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes: Bytes = request
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let seen = Seen {
            method,
            uri,
            path,
            content_type,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        };
        (seen, reply)
    }

    /// Answers the next request with `status` and `body`; returns what it
    /// asked.
    pub(crate) async fn answer(handle: &mut Handle, status: StatusCode, body: &Value) -> Seen {
        let (seen, reply) = next(handle).await;
        reply.send_response(json_response(status, body));
        seen
    }
}
