//! The CRDs in `deploy/crds/` (what `kubectl apply -f deploy/crds/` installs)
//! must be byte-identical to what the types generate and to the checked-in
//! `crds/manifests/`, with no file missing or left over, so the three cannot
//! drift. And the control plane's ClusterRole in `deploy/` must let it watch
//! every kind those CRDs define. `UPDATE_GOLDEN=1 cargo test -p crds`
//! rewrites both directories from the types.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::rbac::v1::ClusterRole;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn deploy_crds_dir() -> PathBuf {
    repo_root().join("deploy").join("crds")
}

fn update_requested() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1")
}

/// Every `*.yaml` file directly in `dir`, by file name.
fn yaml_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The differences between `expected` (what should be there) and the files
/// in `dir`, one entry per file: a unified diff, a missing file, a file no
/// CRD generates. Empty when they are identical.
fn differences(dir: &Path, expected: &BTreeMap<String, String>, what: &str) -> Vec<String> {
    let actual = yaml_files(dir);
    let mut out = Vec::new();
    for (name, want) in expected {
        match actual.get(name) {
            None => out.push(format!("{}/{name}: missing", dir.display())),
            Some(got) if got == want => {}
            Some(got) => out.push(
                similar::TextDiff::from_lines(got.as_str(), want.as_str())
                    .unified_diff()
                    .header(
                        &format!("{}/{name}", dir.display()),
                        &format!("{name} ({what})"),
                    )
                    .to_string(),
            ),
        }
    }
    for name in actual.keys() {
        if !expected.contains_key(name) {
            out.push(format!(
                "{}/{name}: stale, not a CRD this project defines",
                dir.display()
            ));
        }
    }
    out
}

#[test]
fn deploy_crds_equal_the_generated_manifests() {
    let dir = deploy_crds_dir();
    let generated: BTreeMap<String, String> = crds::manifest_files().into_iter().collect();
    if update_requested() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, yaml) in &generated {
            std::fs::write(dir.join(name), yaml).unwrap();
        }
        for name in yaml_files(&dir).keys() {
            if !generated.contains_key(name) {
                std::fs::remove_file(dir.join(name)).unwrap();
            }
        }
    }
    let problems = differences(&dir, &generated, "generated from the types");
    assert!(
        problems.is_empty(),
        "deploy/crds/ differs from the CRDs the types generate; regenerate with \
         `UPDATE_GOLDEN=1 cargo test -p crds` and review the diff:\n{}",
        problems.join("\n")
    );
}

#[test]
fn deploy_crds_equal_the_checked_in_manifests() {
    // Independent of the types: even while crds/manifests/ is out of date
    // (the golden test says so), deploy/ must not hold other bytes.
    let checked_in = yaml_files(&repo_root().join("crds").join("manifests"));
    assert!(!checked_in.is_empty(), "crds/manifests/ has no YAML file");
    let problems = differences(&deploy_crds_dir(), &checked_in, "crds/manifests/");
    assert!(
        problems.is_empty(),
        "deploy/crds/ differs from crds/manifests/; copy them \
         (`cp crds/manifests/*.yaml deploy/crds/`) or run \
         `UPDATE_GOLDEN=1 cargo test -p crds`:\n{}",
        problems.join("\n")
    );
}

/// The ClusterRole `xds-server` from deploy/, wherever in deploy/*.yaml it is.
fn deployed_cluster_role() -> ClusterRole {
    let dir = repo_root().join("deploy");
    let mut found = Vec::new();
    for (name, text) in yaml_files(&dir) {
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("deploy/{name}: not YAML: {e}"));
            if value.get("kind").and_then(|k| k.as_str()) == Some("ClusterRole")
                && value["metadata"]["name"].as_str() == Some("xds-server")
            {
                let role: ClusterRole = serde_yaml::from_value(value)
                    .unwrap_or_else(|e| panic!("deploy/{name}: not a ClusterRole: {e}"));
                found.push(role);
            }
        }
    }
    assert_eq!(found.len(), 1, "want one ClusterRole xds-server in deploy/");
    found.pop().unwrap()
}

#[test]
fn the_cluster_role_watches_every_crd_and_writes_none() {
    let role = deployed_cluster_role();
    let rules = role.rules.unwrap_or_default();
    for crd in crds::crds() {
        let group = &crd.spec.group;
        let plural = &crd.spec.names.plural;
        let mut verbs: Vec<&str> = rules
            .iter()
            .filter(|r| r.api_groups.iter().flatten().any(|g| g == group))
            .filter(|r| r.resources.iter().flatten().any(|res| res == plural))
            .flat_map(|r| r.verbs.iter().map(String::as_str))
            .collect();
        verbs.sort_unstable();
        assert_eq!(
            verbs,
            ["get", "list", "watch"],
            "ClusterRole xds-server: {plural}.{group} needs exactly get, list and watch"
        );
    }
}
