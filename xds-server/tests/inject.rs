//! `xds-server inject` as users run it: the article's base mesh comes out
//! with the sidecars Istio's injector would add (compared with a golden
//! file; `UPDATE_GOLDEN=1` rewrites it), the control plane sees the same
//! sidecars in the injected manifests as it decided for the originals, and
//! a manifest that cannot be injected prints nothing and fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use translator::model::MeshConfig;
use translator::model::build::{Addressing, mesh_from_yaml};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn inject(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xds-server"))
        .arg("inject")
        .args(args)
        .current_dir(root())
        .output()
        .expect("run xds-server");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (namespace, Deployment) of every workload the model gives a sidecar,
/// by Istio's injection rules.
fn model_sidecars(yaml: &str) -> Vec<(String, String)> {
    let mesh = mesh_from_yaml(
        &[("m.yaml".to_string(), yaml.to_string())],
        MeshConfig::default(),
        &Addressing::default(),
    )
    .unwrap_or_else(|e| panic!("the manifests build a mesh: {e:?}"));
    mesh.workloads
        .iter()
        .filter(|w| w.sidecar)
        .map(|w| (w.namespace.clone(), w.display_name().to_string()))
        .collect()
}

/// (namespace, name) of every Deployment whose pod template runs
/// istio-proxy.
fn injected(yaml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).expect("YAML");
        let proxy = v
            .pointer("/spec/template/spec/containers")
            .and_then(|c| c.as_array())
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "istio-proxy"));
        if proxy {
            out.push((
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn the_article_base_is_injected_as_istio_would_and_read_back_the_same() {
    let (ok, out, err) = inject(&["-f", "examples/article/base"]);
    assert!(ok, "{err}");
    let golden = root().join("xds-server/tests/golden/inject-article-base.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().expect("dir")).expect("mkdir");
        std::fs::write(&golden, &out).expect("write golden");
    }
    let want = std::fs::read_to_string(&golden).expect("golden file; UPDATE_GOLDEN=1 writes it");
    if out != want {
        let diff = similar::TextDiff::from_lines(&want, &out);
        panic!(
            "inject output differs from {} (UPDATE_GOLDEN=1 rewrites it):\n{}",
            golden.display(),
            diff.unified_diff().context_radius(3)
        );
    }
    let mut decided: Vec<&str> = err.lines().filter(|l| !l.contains(" INFO ")).collect();
    decided.sort_unstable();
    assert_eq!(
        decided,
        [
            "injected Deployment bar/httpbin (REDIRECT)",
            "injected Deployment bar/sleep (REDIRECT)",
            "injected Deployment foo/httpbin (REDIRECT)",
            "injected Deployment foo/sleep (REDIRECT)",
            "left     Deployment legacy/httpbin: its namespace is not labelled istio-injection=enabled (among the documents given) and the pod does not ask for a sidecar",
            "left     Deployment legacy/sleep: its namespace is not labelled istio-injection=enabled (among the documents given) and the pod does not ask for a sidecar",
        ]
    );
    // The injector decides as the model does for config files.
    let mut original = String::new();
    for entry in std::fs::read_dir(root().join("examples/article/base")).expect("dir") {
        let path = entry.expect("entry").path();
        original.push_str(&std::fs::read_to_string(&path).expect("read"));
        original.push_str("\n---\n");
    }
    let decided = model_sidecars(&original);
    assert_eq!(decided.len(), 4, "{decided:?}");
    assert_eq!(injected(&out), decided);
    // And injecting the output again changes nothing.
    let dir = std::env::temp_dir().join(format!("xds-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("injected.yaml");
    std::fs::write(&file, &out).expect("write");
    let (ok, again, err) = inject(&["-f", file.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{err}");
    assert_eq!(again, out);
}

#[test]
fn an_object_that_cannot_be_injected_fails_and_prints_nothing() {
    let dir = std::env::temp_dir().join(format!("xds-inject-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("tproxy.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: foo
  labels: {sidecar.istio.io/inject: \"true\"}
  annotations: {sidecar.istio.io/interceptionMode: TPROXY}
spec: {containers: [{name: c, image: x}]}
",
    )
    .expect("write");
    let (ok, out, err) = inject(&["-f", file.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert_eq!(out, "", "nothing printed");
    assert!(
        err.contains("Pod foo/p: metadata.annotations.sidecar.istio.io/interceptionMode: INTERCEPTION_MODE TPROXY is not supported"),
        "{err}"
    );
}
