//! Golden tests: each folder under `tests/golden/` holds an input mesh and
//! the Envoy resources every sidecar gets, rendered as Envoy's config_dump
//! prints them. `UPDATE_GOLDEN=1 cargo test -p translator --test golden`
//! rewrites them (and deletes stale files); a reviewer reads the diff.
//!
//! Input: every `*.yaml` in the folder, plus the files and folders listed in
//! `inputs.txt` (paths relative to the repository root, so the article's
//! stages are the examples users run). A case whose `interception.txt` says
//! `REDIRECT` is rendered in the iptables capture layout.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::{case_dirs, case_docs, case_interception, load_case, render_proxy};
use translator::model::MeshConfig;
use translator::model::build::{Addressing, Input, build_mesh};
use translator::{Interception, ResourceType};

fn expected_files(case: &Path) -> BTreeMap<PathBuf, String> {
    let mesh = load_case(case);
    let t = translator::translate(&mesh);
    let interception = case_interception(case);
    let mut out = BTreeMap::new();
    for ((ns, pod), plan) in &t.proxies {
        out.insert(
            case.join("expected").join(format!("{pod}.{ns}.json")),
            render_proxy(plan, interception),
        );
    }
    let mut diags = String::new();
    for d in &t.diagnostics {
        diags.push_str(&d.to_string());
        diags.push('\n');
    }
    out.insert(case.join("expected").join("diagnostics.txt"), diags);
    let decisions = serde_json::json!({
        "server": t.server_ports,
        "client": t.client_ports(&mesh),
    });
    out.insert(
        case.join("expected").join("decisions.json"),
        translator::render::to_canonical_string(&decisions),
    );
    out
}

#[test]
fn golden_cases_match() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    let cases = case_dirs();
    assert!(!cases.is_empty(), "no golden cases found");
    for case in cases {
        let want = expected_files(&case);
        let dir = case.join("expected");
        if update {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create expected dir");
            for (path, text) in &want {
                std::fs::write(path, text).expect("write golden");
            }
            continue;
        }
        let mut have: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        have.sort();
        for path in &have {
            if !want.contains_key(path) {
                failures.push(format!("stale golden file {}", path.display()));
            }
        }
        for (path, text) in &want {
            match std::fs::read_to_string(path) {
                Err(_) => failures.push(format!("missing golden file {}", path.display())),
                Ok(old) if old != *text => {
                    let diff = similar::TextDiff::from_lines(&old, text);
                    failures.push(format!(
                        "{} differs:\n{}",
                        path.display(),
                        diff.unified_diff().context_radius(3)
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatch(es); run `UPDATE_GOLDEN=1 cargo test -p translator --test golden` and review the diff\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The objects of a case in another order: reversed, except that objects
/// with the same kind, namespace and name keep their relative order (the
/// later one replaces the earlier, as a second `kubectl apply` would).
fn another_order(parsed: &[crds::Parsed]) -> Vec<usize> {
    let key = |p: &crds::Parsed| {
        let meta = p.object.metadata();
        (
            p.object.kind().to_string(),
            meta.and_then(|m| m.namespace.clone()),
            meta.and_then(|m| m.name.clone()),
        )
    };
    let mut first_of_key = BTreeMap::new();
    let mut order: Vec<(usize, usize)> = parsed
        .iter()
        .enumerate()
        .map(|(i, p)| (*first_of_key.entry(key(p)).or_insert(i), i))
        .collect();
    order.sort_by_key(|&(first, i)| (std::cmp::Reverse(first), i));
    order.into_iter().map(|(_, i)| i).collect()
}

/// Translates a case from its objects given in `order`. Each object keeps
/// the "first seen" time of its position in the files, so the orders
/// describe the same cluster.
fn translate_in_order(
    parsed: &[crds::Parsed],
    order: &[usize],
    config: &MeshConfig,
) -> translator::Translation {
    let inputs: Vec<Input<'_>> = order
        .iter()
        .map(|&i| Input {
            object: &parsed[i].object,
            first_seen: i as i64,
        })
        .collect();
    translator::translate(&build_mesh(&inputs, config.clone(), &Addressing::default()))
}

/// What versions are hashed from: every resource's type URL and encoded
/// bytes, per proxy, layout and type in push order, each labelled
/// `pod.namespace LAYOUT TYPE name`.
fn encoded(t: &translator::Translation) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for ((ns, pod), plan) in &t.proxies {
        for interception in [Interception::None, Interception::Redirect] {
            let resources = plan.resources_for(interception);
            for kind in ResourceType::PUSH_ORDER {
                for (name, r) in resources.of(kind).into_iter().flat_map(|m| m.iter()) {
                    out.push((
                        format!("{pod}.{ns} {interception} {kind} {name}"),
                        r.body.type_url.clone(),
                        r.body.value.clone(),
                    ));
                }
            }
        }
    }
    out
}

/// The first difference between two encodings, or `None`.
fn first_difference(
    a: &[(String, String, Vec<u8>)],
    b: &[(String, String, Vec<u8>)],
) -> Option<String> {
    for (x, y) in a.iter().zip(b) {
        if x.0 != y.0 {
            return Some(format!(
                "resource {} in one order, {} in the other",
                x.0, y.0
            ));
        }
        if x.1 != y.1 {
            return Some(format!("{}: type URL {} vs {}", x.0, x.1, y.1));
        }
        if x.2 != y.2 {
            let at = x.2.iter().zip(&y.2).position(|(p, q)| p != q);
            return Some(format!(
                "{}: encoded bytes differ ({} vs {} bytes, first at byte {})",
                x.0,
                x.2.len(),
                y.2.len(),
                at.unwrap_or(x.2.len().min(y.2.len()))
            ));
        }
    }
    let (longer, which) = if a.len() > b.len() {
        (a, "first")
    } else {
        (b, "second")
    };
    longer
        .get(a.len().min(b.len()))
        .map(|extra| format!("{} only in the {which} order", extra.0))
}

#[test]
fn translation_is_deterministic() {
    for case in case_dirs() {
        let config = load_case(&case).config;
        let mut parsed = Vec::new();
        for (name, text) in case_docs(&case) {
            let (objects, errors) = crds::parse_documents(&text, &name);
            assert!(errors.is_empty(), "{}: {errors:?}", case.display());
            parsed.extend(objects);
        }
        let in_file_order: Vec<usize> = (0..parsed.len()).collect();
        let reordered = another_order(&parsed);
        assert_ne!(
            in_file_order,
            reordered,
            "{}: one order only",
            case.display()
        );

        let a = translate_in_order(&parsed, &in_file_order, &config);
        let b = translate_in_order(&parsed, &reordered, &config);
        let (a, b) = (encoded(&a), encoded(&b));
        assert!(!a.is_empty(), "{}: no resources", case.display());
        if let Some(difference) = first_difference(&a, &b) {
            panic!(
                "{}: the objects in another order give other bytes: {difference}",
                case.display()
            );
        }
    }
}
