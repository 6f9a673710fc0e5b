//! End-to-end test helpers: the rule for finding Envoy, free loopback
//! ports, scratch directories and minimal bootstraps.
//!
//! Tests that need Envoy call [`require_envoy`] first. Without Envoy they
//! fail, with a message saying where Envoy was looked for and how to install
//! it, unless the run opts out with `XDS_SKIP_ENVOY=1` (refused under CI):
//! then they return at once and are counted as skipped (see [`envoy_rule`]).

/// A Kubernetes API server stand-in for whole-binary tests of `serve --kube`.
pub mod apiserver;
pub mod envoy_rule;
pub mod external;
pub mod mesh;
pub mod netns;
pub mod root_rule;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use envoy_rule::{require_envoy, running_in_ci, workspace_root};
pub use root_rule::require_root;

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

#[cfg(test)]
mod tests {
    use super::envoy_rule::{EnvoyDecision, append_line, decide};
    use super::*;
    use xds_server::runner::envoy::EnvoyNotFound;

    fn missing() -> Result<PathBuf, EnvoyNotFound> {
        Err(EnvoyNotFound {
            searched: vec!["ENVOY_BIN=/nonexistent (not an executable file)".into()],
        })
    }

    #[test]
    fn a_found_envoy_runs_whatever_the_flags() {
        let envoy = PathBuf::from("/opt/envoy");
        for (opt_out, ci) in [(false, false), (true, false), (false, true), (true, true)] {
            assert_eq!(
                decide(Ok(envoy.clone()), opt_out, ci),
                EnvoyDecision::Run(envoy.clone()),
                "opt_out={opt_out} ci={ci}"
            );
        }
    }

    #[test]
    fn a_missing_envoy_fails_unless_opted_out_outside_ci() {
        for ci in [false, true] {
            let EnvoyDecision::Fail(message) = decide(missing(), false, ci) else {
                panic!("ci={ci}: a missing Envoy without the opt-out must fail");
            };
            assert!(message.contains("ENVOY_BIN=/nonexistent"), "{message}");
            assert!(message.contains("scripts/install-envoy.sh"), "{message}");
            assert!(message.contains("XDS_SKIP_ENVOY=1"), "{message}");
        }
        let EnvoyDecision::Fail(message) = decide(missing(), true, true) else {
            panic!("the opt-out must be refused under CI");
        };
        assert!(
            message.contains("XDS_SKIP_ENVOY is set, but so is CI"),
            "{message}"
        );
        assert!(message.contains("scripts/install-envoy.sh"), "{message}");
        let EnvoyDecision::Skip(note) = decide(missing(), true, false) else {
            panic!("the opt-out outside CI skips");
        };
        assert!(note.contains("ENVOY_BIN=/nonexistent"), "{note}");
    }

    #[test]
    fn skips_are_appended_one_line_each_from_many_threads() {
        let dir = ScratchDir::new("skip-report").expect("scratch dir");
        let report = dir.path().join("skips");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let report = report.clone();
                std::thread::spawn(move || {
                    for j in 0..50 {
                        append_line(&report, &format!("test_{i}_{j}")).expect("append");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("appender thread");
        }
        let text = std::fs::read_to_string(&report).expect("read report");
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 400, "{text}");
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), 400, "every line whole and distinct");
        assert!(lines.iter().all(|l| l.starts_with("test_")), "{text}");
    }
}
