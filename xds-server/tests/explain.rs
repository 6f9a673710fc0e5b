//! `xds-server explain` offline and against a running server, and how
//! `validate` and `serve` treat a DestinationRule istiod would refuse
//! (MUTUAL without a client certificate).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use translator::model::build::Addressing;
use translator::model::{MeshConfig, ObjectRef};
use xds_server::server::{ServerOptions, XdsSecurity, start};
use xds_server::snapshots::Settings;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xds-server"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run xds-server");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("xds-explain-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stage_1() -> String {
    let article = root().join("examples/article");
    format!(
        "{},{}",
        article.join("base").display(),
        article.join("mesh-strict").display()
    )
}

#[test]
fn explain_offline_predicts_the_reset_of_stage_1_and_names_the_policy() {
    let (out, stdout, stderr) = run(bin().args([
        "explain",
        "--from",
        "sleep.legacy",
        "--to",
        "httpbin.bar:8000",
        "--config-dir",
        &stage_1(),
    ]));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("legacy/sleep-0 (service account sleep): no sidecar"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "bar/httpbin-0 127.16.83.170:80  server STRICT (PeerAuthentication istio-system/default, mesh-wide)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("OUTCOME\n  reset: server STRICT, client sends plaintext"),
        "{stdout}"
    );
}

#[test]
fn explain_names_what_it_cannot_find_and_exits_1() {
    let (out, stdout, stderr) = run(bin().args([
        "explain",
        "--from",
        "nobody.legacy",
        "--to",
        "httpbin.bar:8000",
        "--config-dir",
        &stage_1(),
    ]));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("--from \"nobody.legacy\": no workload nobody in namespace legacy"),
        "{stderr}"
    );
}

const MUTUAL: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext, namespace: foo}
spec:
  host: httpbin.legacy.svc.cluster.local
  trafficPolicy:
    tls: {mode: MUTUAL, clientCertificate: /etc/certs/client.pem, privateKey: /etc/certs/key.pem}
";

fn without_key() -> String {
    MUTUAL.replace(", privateKey: /etc/certs/key.pem", "")
}

// Istio's ValidateTLS: "private key required for mutual tls".
#[test]
fn validate_rejects_mutual_without_a_private_key_naming_object_and_field() {
    let dir = TempDir::new("validate");
    let file = dir.0.join("ext.yaml");
    std::fs::write(&file, without_key()).expect("write");
    let (out, stdout, stderr) = run(bin().arg("validate").arg(&file));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "DestinationRule foo/ext: spec.trafficPolicy.tls.privateKey: private key required for mutual tls"
        ),
        "{stdout}"
    );
    std::fs::write(&file, MUTUAL).expect("write");
    let (out, stdout, _) = run(bin().arg("validate").arg(&file));
    assert!(out.status.success(), "{stdout}");
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serve(config: PathBuf, state: PathBuf) -> xds_server::server::RunningServer {
    start(ServerOptions {
        config_paths: vec![config],
        kube: None,
        xds_addr: "127.0.0.1:0".parse().expect("addr"),
        debug_addr: "127.0.0.1:0".parse().expect("addr"),
        state_dir: state,
        settings: Settings {
            mesh: MeshConfig::default(),
            addressing: Addressing::default(),
            cert_lifetime: Duration::from_secs(3600),
        },
        debounce: Duration::from_millis(20),
        test_hooks: false,
        xds_security: XdsSecurity::Insecure,
        limits: Default::default(),
    })
    .await
    .expect("server starts")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, to.join(name)).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_against_a_running_server_prints_what_offline_prints() {
    let dir = TempDir::new("remote");
    let config = dir.0.join("config");
    copy_dir(&root().join("examples/article/base"), &config);
    copy_dir(&root().join("examples/article/mesh-strict"), &config);
    let server = serve(config.clone(), dir.0.join("state")).await;
    let snapshots = server.snapshots.clone();
    wait_for("the first config", || snapshots.state()).await;
    let args = |extra: &[String]| {
        let mut a: Vec<String> = [
            "explain",
            "--from",
            "sleep.legacy",
            "--to",
            "httpbin.bar:8000",
        ]
        .map(String::from)
        .to_vec();
        a.extend_from_slice(extra);
        a
    };
    let remote = args(&["--debug-addr".into(), server.debug_addr.to_string()]);
    let offline = args(&["--config-dir".into(), config.display().to_string()]);
    let (out, from_server, err) = tokio::task::spawn_blocking(move || run(bin().args(&remote)))
        .await
        .expect("runs");
    assert!(out.status.success(), "{from_server}{err}");
    let (out, from_files, err) = run(bin().args(&offline));
    assert!(out.status.success(), "{from_files}{err}");
    assert_eq!(from_server, from_files);
    assert!(
        from_server.contains("reset: server STRICT"),
        "{from_server}"
    );
    // A service the server does not know is a 404 naming it.
    let addr = server.debug_addr.to_string();
    let (out, _, err) = tokio::task::spawn_blocking(move || {
        run(bin().args([
            "explain",
            "--from",
            "sleep.legacy",
            "--to",
            "nope.bar:80",
            "--debug-addr",
            &addr,
        ]))
    })
    .await
    .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("no service nope in namespace bar"), "{err}");
}

// In serve, a rule istiod would refuse is reported and its last good
// version stays in force (the directory source's rule for invalid objects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_the_last_good_version_of_a_mutual_rule_that_loses_its_key() {
    let dir = TempDir::new("last-good");
    let config = dir.0.join("config");
    copy_dir(&root().join("examples/article/base"), &config);
    std::fs::write(config.join("ext.yaml"), MUTUAL).expect("write");
    let server = serve(config.clone(), dir.0.join("state")).await;
    let snapshots = Arc::clone(&server.snapshots);
    let first = wait_for("the first config", || snapshots.state()).await;
    let tls_of = |state: &xds_server::snapshots::State| {
        state
            .translation
            .client_port(&state.mesh, "foo", service(&state.mesh), 8000)
            .map(|p| (p.tls, p.by))
    };
    let rule = Some(ObjectRef::new("DestinationRule", "foo", "ext"));
    assert_eq!(tls_of(&first), Some(("MUTUAL".to_string(), rule.clone())));
    let generation = snapshots.generation();
    std::fs::write(config.join("ext.yaml"), without_key()).expect("write");
    let after = wait_for("the broken rule to be loaded", || {
        snapshots
            .state()
            .filter(|_| snapshots.generation() > generation)
            .filter(|s| !s.snapshot.errors.is_empty())
    })
    .await;
    let errors: Vec<String> = after
        .snapshot
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("DestinationRule foo/ext")
            && e.contains("spec.trafficPolicy.tls.privateKey")),
        "{errors:?}"
    );
    assert_eq!(tls_of(&after), Some(("MUTUAL".to_string(), rule)));
}

fn service(mesh: &translator::model::Mesh) -> usize {
    mesh.services
        .iter()
        .position(|s| s.namespace == "legacy" && s.name == "httpbin")
        .expect("httpbin.legacy exists")
}

#[test]
fn explain_says_a_service_outside_the_clients_sidecar_scope_has_no_route() {
    let dir = TempDir::new("sidecar");
    std::fs::write(
        dir.0.join("sidecar.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\n\
         metadata: {name: own-only, namespace: foo}\nspec: {egress: [{hosts: [\"./*\"]}]}\n",
    )
    .expect("write Sidecar");
    let dirs = format!(
        "{},{}",
        root().join("examples/article/base").display(),
        dir.0.display()
    );
    let explain = |to: &str| {
        run(bin().args([
            "explain",
            "--from",
            "sleep.foo",
            "--to",
            to,
            "--config-dir",
            &dirs,
        ]))
    };
    let (out, stdout, stderr) = explain("httpbin.bar:8000");
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("outbound scope: Sidecar foo/own-only"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no route: out of the client's Sidecar scope"),
        "{stdout}"
    );
    // In scope: the usual prediction.
    let (_, stdout, _) = explain("httpbin.foo:8000");
    assert!(!stdout.contains("no route"), "{stdout}");
}
