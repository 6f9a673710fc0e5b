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
    let state = TempDir::new("bootstrap-state");
    // The CA that signs the bootstrap certificates lives in the state dir.
    let bootstrap = || {
        let mut cmd = bin();
        cmd.env("XDS_STATE_DIR", &state.0);
        cmd
    };
    let (out, text) = run(bootstrap()
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

    let (out, text) = run(bootstrap().args([
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

    let (out, text) = run(bootstrap()
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
fn bootstrap_writes_the_xds_client_certificate_and_points_envoy_at_it() {
    use std::os::unix::fs::PermissionsExt;
    let state = TempDir::new("bootstrap-tls-state");
    let out_dir = state.0.join("out");
    let (out, text) = run(bin()
        .args([
            "bootstrap",
            "--namespace",
            "foo",
            "--pod",
            "sleep-0",
            "--xds-addr",
            "127.0.0.1:15010",
            "--cert-lifetime",
            "48h",
            "--config-dir",
        ])
        .arg(root().join("examples/article/base"))
        .arg("--state-dir")
        .arg(&state.0)
        .arg("--out-dir")
        .arg(&out_dir));
    assert!(out.status.success(), "{text}");
    let yaml: serde_json::Value =
        serde_yaml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    let tls = &yaml["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"];
    let file = |v: &serde_json::Value| PathBuf::from(v["filename"].as_str().expect("filename"));
    let cert = file(&tls["tls_certificates"][0]["certificate_chain"]);
    let key = file(&tls["tls_certificates"][0]["private_key"]);
    let root_cert = file(&tls["validation_context"]["trusted_ca"]);
    for path in [&cert, &key, &root_cert] {
        assert!(
            path.is_absolute() && path.starts_with(&out_dir),
            "{}",
            path.display()
        );
        assert!(path.is_file(), "{} written", path.display());
    }
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key mode {mode:o}");
    assert_eq!(
        tls["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
        "spiffe://cluster.local/ns/istio-system/sa/xds-server"
    );
    let pem = std::fs::read_to_string(&cert).expect("cert");
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    let x509 = parsed.parse_x509().expect("X.509");
    let uris: Vec<String> = x509
        .subject_alternative_name()
        .expect("SAN")
        .expect("has SAN")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, ["spiffe://cluster.local/ns/foo/sa/sleep"]);
    let validity = x509.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    // 48 h, plus the minute the CA back-dates for clock skew.
    assert_eq!(lifetime, 48 * 3600 + 60);
    // The same root as the one the control plane serves from this state dir.
    let served_root = std::fs::read_to_string(state.0.join("ca/root-cert.pem")).expect("root");
    assert_eq!(
        std::fs::read_to_string(&root_cert).expect("root copy"),
        served_root
    );
}

#[test]
fn duration_flags_reject_nonsense_and_huge_values_without_panicking() {
    for (value, why) in [
        ("1000000000h", "longer than the maximum"),
        ("0s", "must be positive"),
        ("soon", "is not a duration"),
        ("18446744073709551615s", "longer than the maximum"),
    ] {
        let (out, text) = run(bin().args([
            "serve",
            "--config-dir",
            "/nonexistent",
            "--cert-lifetime",
            value,
        ]));
        assert_eq!(out.status.code(), Some(2), "{value}: {text}");
        assert!(text.contains(why), "{value}: {text}");
        assert!(!text.contains("panicked"), "{value}: {text}");
    }
}

#[test]
fn kubernetes_flags_need_kube_and_a_namespaced_secret() {
    let state = TempDir::new("kube-flags");
    for (args, why) in [
        (
            vec![
                "--config-dir",
                "/nonexistent",
                "--ca-secret",
                "istio-system/ca",
            ],
            "need --kube",
        ),
        (
            vec![
                "--config-dir",
                "/nonexistent",
                "--kubeconfig",
                "/nonexistent",
            ],
            "need --kube",
        ),
        (
            vec!["--kube", "--ca-secret", "nope"],
            "is not NAMESPACE/NAME",
        ),
        (
            vec!["--kube", "--kubeconfig", "/nonexistent/kubeconfig"],
            "reading the kubeconfig /nonexistent/kubeconfig",
        ),
    ] {
        let (out, text) = run(bin()
            .arg("serve")
            .args(&args)
            .arg("--state-dir")
            .arg(&state.0)
            .args(["--xds-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"]));
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(text.contains(why), "{args:?}: {text}");
    }
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

#[test]
fn bootstrap_sets_the_interception_mode_that_selects_the_layout() {
    let state = TempDir::new("bootstrap-interception");
    let bootstrap = |extra: &[&str]| {
        let mut cmd = bin();
        cmd.args([
            "bootstrap",
            "--namespace",
            "foo",
            "--pod",
            "sleep-0",
            "--ip",
            "10.244.0.7",
            "--xds-addr",
            "10.0.0.1:15010",
            "--insecure-xds",
            "--state-dir",
        ])
        .arg(&state.0)
        .args(extra)
        .env_remove("ISTIO_META_INTERCEPTION_MODE");
        run(&mut cmd)
    };
    let mode = |text: &str| {
        let v: serde_yaml::Value = serde_yaml::from_str(text).expect("YAML");
        v["node"]["metadata"]["INTERCEPTION_MODE"]
            .as_str()
            .map(str::to_string)
    };
    let (out, text) = bootstrap(&[]);
    assert!(out.status.success(), "{text}");
    assert_eq!(mode(&text).as_deref(), Some("NONE"));
    let (out, text) = bootstrap(&["--interception-mode", "REDIRECT"]);
    assert!(out.status.success(), "{text}");
    assert_eq!(mode(&text).as_deref(), Some("REDIRECT"));
    let (out, text) = bootstrap(&["--interception-mode", "TPROXY"]);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("TPROXY is not supported"), "{text}");
}

#[test]
fn the_deployments_arguments_are_ones_serve_accepts() {
    use clap::Parser;
    let text = std::fs::read_to_string(root().join("deploy/30-deployment.yaml"))
        .expect("deploy/30-deployment.yaml");
    let deployment: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string").to_string())
        .collect();
    assert!(args.contains(&"--inject-webhook".to_string()), "{args:?}");
    let cli = xds_server::cli::Cli::try_parse_from(
        std::iter::once("xds-server".to_string()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("deploy/30-deployment.yaml's args: {e}"));
    match cli.command {
        xds_server::cli::Command::Serve(s) => {
            assert!(s.kube && s.inject_webhook);
            assert_eq!(s.inject_proxy_image, "envoyproxy/envoy:v1.40.0");
        }
        other => panic!("not serve: {other:?}"),
    }
}
