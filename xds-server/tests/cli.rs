//! The command line as users and scripts drive it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xds-server"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("run xds-server");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("xds-cli-{tag}-{}", std::process::id()));
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

#[test]
fn validate_accepts_the_examples() {
    let (out, text) = run(bin().arg("validate").arg(root().join("examples")));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 invalid"), "{text}");
    assert!(
        text.contains("loaded   PeerAuthentication istio-system/default"),
        "{text}"
    );
}

#[test]
fn validate_names_the_broken_file_object_and_field_and_still_loads_the_rest() {
    let dir = TempDir::new("broken");
    let article = root().join("examples/article");
    std::fs::copy(
        article.join("mesh-strict/peer-authentication.yaml"),
        dir.0.join("mesh.yaml"),
    )
    .expect("copy");
    std::fs::copy(
        article.join("workload-strict/policies.yaml"),
        dir.0.join("workload.yaml"),
    )
    .expect("copy");
    std::fs::write(
        dir.0.join("broken-pa.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: broken\n  namespace: foo\nspec:\n  portLevelMtls:\n    80:\n      mode: DISABLE\n",
    )
    .expect("write");
    std::fs::write(
        dir.0.join("syntax.yaml"),
        "kind: Namespace\nmetadata:\n  labels: [oops\n",
    )
    .expect("write");
    let (out, text) = run(bin().arg("validate").arg(&dir.0));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "broken-pa.yaml (document 0): PeerAuthentication foo/broken: spec.portLevelMtls:"
        ),
        "{text}"
    );
    assert!(
        text.contains("syntax.yaml (document 0): invalid YAML"),
        "{text}"
    );
    for loaded in [
        "PeerAuthentication istio-system/default",
        "PeerAuthentication bar/httpbin",
        "DestinationRule bar/httpbin",
    ] {
        assert!(
            text.contains(&format!("loaded   {loaded}")),
            "{loaded} not reported as loaded:\n{text}"
        );
    }
}

#[test]
fn bootstrap_looks_up_the_pod_ip_and_picks_the_api_type() {
    let base = root().join("examples/article/base");
    let (out, text) = run(bin()
        .args([
            "bootstrap",
            "--namespace",
            "bar",
            "--pod",
            "httpbin-0",
            "--xds-addr",
            "127.0.0.1:15010",
            "--config-dir",
        ])
        .arg(&base));
    assert!(out.status.success(), "{text}");
    let yaml: serde_json::Value =
        serde_yaml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    let id = yaml["node"]["id"].as_str().expect("node id");
    assert!(
        id.starts_with("sidecar~127.16.") && id.ends_with("~httpbin-0.bar~bar.svc.cluster.local"),
        "{id}"
    );
    assert_eq!(yaml["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
    assert_eq!(yaml["node"]["metadata"]["SERVICE_ACCOUNT"], "httpbin");

    let (out, text) = run(bin().args([
        "bootstrap",
        "--namespace",
        "bar",
        "--pod",
        "httpbin-0",
        "--ip",
        "10.1.2.3",
        "--xds-addr",
        "127.0.0.1:15010",
        "--delta",
    ]));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("api_type: DELTA_GRPC"), "{text}");
    assert!(
        text.contains("sidecar~10.1.2.3~httpbin-0.bar~bar.svc.cluster.local"),
        "{text}"
    );

    let (out, text) = run(bin()
        .args([
            "bootstrap",
            "--namespace",
            "bar",
            "--pod",
            "nope-0",
            "--xds-addr",
            "127.0.0.1:15010",
            "--config-dir",
        ])
        .arg(&base));
    assert!(!out.status.success());
    assert!(text.contains("pod bar/nope-0 is not in"), "{text}");
}

#[test]
fn crds_prints_the_committed_manifests() {
    let (out, text) = run(bin().arg("crds"));
    assert!(out.status.success(), "{text}");
    for f in [
        "peerauthentications.security.istio.io.yaml",
        "destinationrules.networking.istio.io.yaml",
    ] {
        let committed =
            std::fs::read_to_string(root().join("crds/manifests").join(f)).expect("manifest");
        assert!(
            text.contains(committed.trim()),
            "{f} differs from `xds-server crds`"
        );
    }
}
