//! Helpers shared by the integration tests of the translator.
#![allow(dead_code)]

pub mod capture_sim;
pub mod dr;
pub mod sim;

use std::path::{Path, PathBuf};
use translator::model::build::{Addressing, mesh_from_yaml};
use translator::model::{Mesh, MeshConfig};
use translator::render::{resource_to_json, to_canonical_string};
use translator::{Interception, ProxyPlan, ResourceType};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("translator lives in the workspace")
        .to_path_buf()
}

pub fn case_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/golden exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn yaml_files(path: &Path, out: &mut Vec<(String, String)>) {
    if path.is_file() {
        let text = std::fs::read_to_string(path).expect("read input");
        out.push((path.display().to_string(), text));
        return;
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            if e.file_name().is_some_and(|n| n != "expected") {
                yaml_files(&e, out);
            }
        } else if e.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            yaml_files(&e, out);
        }
    }
}

/// YAML of a case: `inputs.txt` entries first, then the folder's own files.
pub fn case_docs(case: &Path) -> Vec<(String, String)> {
    let mut docs = Vec::new();
    if let Ok(list) = std::fs::read_to_string(case.join("inputs.txt")) {
        for line in list
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            yaml_files(&repo_root().join(line), &mut docs);
        }
    }
    yaml_files(case, &mut docs);
    // Names relative to the repository, so goldens do not depend on where
    // the checkout lives.
    let root = format!("{}/", repo_root().display());
    docs.into_iter()
        .map(|(n, t)| (n.replacen(&root, "", 1), t))
        .collect()
}

pub fn load_case(case: &Path) -> Mesh {
    let config = match std::fs::read_to_string(case.join("root-namespace.txt")) {
        Ok(ns) => MeshConfig {
            root_namespace: ns.trim().to_string(),
            ..Default::default()
        },
        Err(_) => MeshConfig::default(),
    };
    mesh_from_yaml(&case_docs(case), config, &Addressing::default()).unwrap_or_else(|errs| {
        panic!(
            "{}: invalid input:\n{}",
            case.display(),
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

pub fn mesh_from(yaml: &str) -> Mesh {
    mesh_from_yaml(
        &[("test.yaml".to_string(), yaml.to_string())],
        MeshConfig::default(),
        &Addressing::default(),
    )
    .unwrap_or_else(|errs| panic!("invalid test input: {errs:?}"))
}

/// The layout a case's sidecars get: `interception.txt` names it
/// (`REDIRECT`), else the explicit-bind layout.
pub fn case_interception(case: &Path) -> Interception {
    match std::fs::read_to_string(case.join("interception.txt")) {
        Ok(text) => Interception::from_metadata(Some(text.trim()))
            .unwrap_or_else(|e| panic!("{}: interception.txt: {e}", case.display())),
        Err(_) => Interception::None,
    }
}

/// One sidecar's resources, by type, as Envoy's config_dump renders them.
pub fn render_json(plan: &ProxyPlan) -> serde_json::Value {
    render_json_for(plan, Interception::None)
}

/// The same in the layout `interception` selects.
pub fn render_json_for(plan: &ProxyPlan, interception: Interception) -> serde_json::Value {
    let res = plan.resources_for(interception);
    let mut obj = serde_json::Map::new();
    for kind in [
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Cluster,
        ResourceType::Endpoint,
    ] {
        let list: Vec<serde_json::Value> = res
            .of(kind)
            .map(|m| {
                m.values()
                    .map(|r| resource_to_json(r).expect("render resource"))
                    .collect()
            })
            .unwrap_or_default();
        let key = match kind {
            ResourceType::Listener => "listeners",
            ResourceType::Route => "routes",
            ResourceType::Cluster => "clusters",
            _ => "endpoints",
        };
        obj.insert(key.to_string(), serde_json::Value::Array(list));
    }
    serde_json::Value::Object(obj)
}

pub fn render_proxy(plan: &ProxyPlan, interception: Interception) -> String {
    to_canonical_string(&render_json_for(plan, interception))
}
