//! The checked-in CRD manifests under `crds/manifests/` must equal what the types
//! generate, and the generated schemas must be structural (the API server refuses
//! anything else). Regenerate with `UPDATE_GOLDEN=1 cargo test -p crds`.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

fn update_requested() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1")
}

#[test]
fn checked_in_crd_manifests_match_the_types() {
    let dir = manifests_dir();
    let generated = crds::manifest_files();
    let update = update_requested();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut failures = Vec::new();
    for (name, yaml) in &generated {
        let path = dir.join(name);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == *yaml {
            continue;
        }
        if update {
            std::fs::write(&path, yaml).unwrap();
            continue;
        }
        let diff = similar::TextDiff::from_lines(&current, yaml)
            .unified_diff()
            .header(
                &format!("{name} (checked in)"),
                &format!("{name} (generated)"),
            )
            .to_string();
        failures.push(diff);
    }
    // Stale files: a manifest no type generates any more.
    let expected: BTreeSet<&str> = generated.iter().map(|(n, _)| n.as_str()).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !expected.contains(name.as_str()) {
            if update {
                std::fs::remove_file(dir.join(&name)).unwrap();
            } else {
                failures.push(format!("{name}: stale, no type generates it"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "CRD manifests in crds/manifests/ are out of date; regenerate with \
         `UPDATE_GOLDEN=1 cargo test -p crds` and review the diff:\n{}",
        failures.join("\n")
    );
}

#[test]
fn generated_crd_schemas_are_structural() {
    for crd in crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert!(!crd.spec.versions.is_empty(), "{name}: no versions");
        for version in &crd.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap_or_else(|| panic!("{name} {}: no schema", version.name));
            let problems = crds::schema::structural_problems(schema);
            assert!(
                problems.is_empty(),
                "{name} {}: schema is not structural:\n{}",
                version.name,
                problems.join("\n")
            );
        }
    }
}

#[test]
fn structural_check_catches_untyped_and_any_of_schemas() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    let untyped = JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some([("x".to_string(), JSONSchemaProps::default())].into()),
        ..Default::default()
    };
    assert_eq!(
        crds::schema::structural_problems(&untyped),
        [".x: no type (untyped schema)"]
    );
    let any_of = JSONSchemaProps {
        any_of: Some(vec![JSONSchemaProps::default()]),
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..Default::default()
    };
    assert_eq!(
        crds::schema::structural_problems(&any_of),
        ["<root>: uses anyOf/oneOf/allOf/not"]
    );
}

#[test]
fn manifests_are_one_multi_document_yaml_with_every_crd() {
    let text = crds::manifests();
    assert_eq!(text, crds::manifests(), "not deterministic");
    let names: Vec<String> = text
        .split("---\n")
        .map(|doc| {
            let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
                serde_yaml::from_str(doc).unwrap();
            crd.metadata.name.unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "destinationrules.networking.istio.io",
            "peerauthentications.security.istio.io",
            "sidecars.networking.istio.io"
        ]
    );
    assert!(text.starts_with("apiVersion: apiextensions.k8s.io/v1\n"));
}
