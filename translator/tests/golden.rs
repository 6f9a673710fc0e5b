//! Golden tests: each folder under `tests/golden/` holds an input mesh and
//! the Envoy resources every sidecar gets, rendered as Envoy's config_dump
//! prints them. `UPDATE_GOLDEN=1 cargo test -p translator --test golden`
//! rewrites them (and deletes stale files); a reviewer reads the diff.
//!
//! Input: every `*.yaml` in the folder, plus the files and folders listed in
//! `inputs.txt` (paths relative to the repository root, so the article's
//! stages are the examples users run).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::{case_dirs, load_case, render_proxy};

fn expected_files(case: &Path) -> BTreeMap<PathBuf, String> {
    let mesh = load_case(case);
    let t = translator::translate(&mesh);
    let mut out = BTreeMap::new();
    for ((ns, pod), plan) in &t.proxies {
        out.insert(
            case.join("expected").join(format!("{pod}.{ns}.json")),
            render_proxy(plan),
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

#[test]
fn translation_is_deterministic() {
    for case in case_dirs() {
        let a = expected_files(&case);
        let b = expected_files(&case);
        assert_eq!(a, b, "{}", case.display());
    }
}
