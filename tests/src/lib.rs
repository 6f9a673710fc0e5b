//! End-to-end test helpers: locating Envoy (strictly under CI), free loopback
//! ports, scratch directories and minimal bootstraps.
//!
//! Tests that need Envoy call [`envoy_or_skip`] first: on a developer machine
//! without Envoy they print how to install it and return, under CI they fail,
//! so a CI image that lost its Envoy cannot turn the suite silently green.

pub mod mesh;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use xds_server::runner::envoy::{EnvoyNotFound, find_envoy};

/// The workspace root (where `.venv/` and `scripts/` live).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Whether we run under CI: `CI` set to anything but empty, `0` or `false`.
pub fn running_in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
        .unwrap_or(false)
}

/// Envoy as the runner finds it (`ENVOY_BIN`, `PATH`, `<root>/.venv`).
pub fn find_test_envoy() -> Result<PathBuf, EnvoyNotFound> {
    find_envoy(Some(&workspace_root()))
}

/// The Envoy binary for `test`, or `None` (after printing a note) when it is
/// not installed and we are not under CI.
///
/// # Panics
/// Under CI when Envoy cannot be found: a missing Envoy there is a broken CI
/// image, not a reason to skip.
pub fn envoy_or_skip(test: &str) -> Option<PathBuf> {
    match find_test_envoy() {
        Ok(path) => Some(path),
        Err(error) if running_in_ci() => panic!("{test}: CI is set and {error}"),
        Err(error) => {
            eprintln!("note: skipping {test}: {error}");
            None
        }
    }
}

/// A loopback address with a port that was free a moment ago (bound to
/// `127.0.0.1:0`, then released for Envoy to bind).
pub fn free_loopback_addr() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.local_addr()
}

/// A scratch directory removed on drop, unless the test is panicking: then
/// it is kept (and its path printed) so Envoy logs can be read.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/xds-e2e-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> io::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("xds-e2e-{tag}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A static bootstrap: admin on `admin`, one HTTP listener on `listener`
/// answering every request with `status` and `body` (a `direct_response`),
/// no clusters and no control plane. The smallest config that proves Envoy
/// runs here.
pub fn direct_response_bootstrap(
    admin: SocketAddr,
    listener: SocketAddr,
    status: u16,
    body: &str,
) -> String {
    // JSON is valid YAML, and serde_json gets the quoting right.
    let body = serde_json::Value::String(body.to_string());
    format!(
        r#"node: {{id: e2e-static, cluster: e2e}}
admin:
  address: {{socket_address: {{address: "{admin_ip}", port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: direct
    address: {{socket_address: {{address: "{ip}", port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: direct
          route_config:
            name: direct
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: {status}, body: {{inline_string: {body}}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        admin_ip = admin.ip(),
        admin_port = admin.port(),
        ip = listener.ip(),
        port = listener.port(),
    )
}
