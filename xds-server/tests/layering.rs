//! How the modules may depend on each other:
//! - the daemon (serve: ADS, CA, snapshots, debug, sources) never depends on
//!   the local mesh runner, so `serve` carries none of its code paths and the
//!   runner can move to its own crate without untangling anything;
//! - no module imports one that imports it back, in any crate of the
//!   workspace: two modules that need each other share a third that holds
//!   their contract (`view.rs` between `snapshots` and `ads`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_daemon_never_imports_the_runner() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // The runner itself, and the two entry points that dispatch to it.
    let allowed = ["runner", "main.rs", "cli.rs", "lib.rs"];
    let mut offenders = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a path").as_os_str();
        if allowed.iter().any(|a| first == *a) {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            if line.contains("runner::") && !line.trim_start().starts_with("//") {
                offenders.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} daemon files found under {}",
        src.display()
    );
    assert!(
        offenders.is_empty(),
        "daemon code imports the runner:\n{}",
        offenders.join("\n")
    );
}

/// A module path (`["ads", "stream"]`) for each source file of `src`.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let rel = file
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut path: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                path.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                path.pop();
            }
            (path, file)
        })
        .collect()
}

/// The longest prefix of `path` that is a module with a file of its own.
fn resolve(modules: &BTreeMap<Vec<String>, PathBuf>, path: &[String]) -> Option<Vec<String>> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains_key(p))
}

/// Which modules each module refers to: `crate::`, `super::` and `self::`
/// paths (braced lists included) and `child::` paths of the modules it
/// declares. Comment lines do not count; inside an inline `mod x { .. }`
/// (tests), `super` is the file's own module.
fn edges(modules: &BTreeMap<Vec<String>, PathBuf>) -> BTreeSet<(Vec<String>, Vec<String>)> {
    let mut out = BTreeSet::new();
    for (module, file) in modules {
        let text = std::fs::read_to_string(file).expect("readable source");
        let mut inline = false;
        for line in text.lines().map(str::trim_start) {
            if line.starts_with("//") {
                continue;
            }
            if line.starts_with("mod ") && line.ends_with('{')
                || line.starts_with("pub mod ") && line.ends_with('{')
            {
                inline = true;
            }
            if let Some(child) = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))
                .and_then(|rest| rest.strip_suffix(';'))
            {
                let mut target = module.clone();
                target.push(child.to_string());
                if modules.contains_key(&target) && text.contains(&format!("{child}::")) {
                    out.insert((module.clone(), target));
                }
            }
            for (i, _) in line.match_indices("::") {
                let head_start = line[..i]
                    .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map_or(0, |p| p + 1);
                if head_start > 0 && line[..head_start].ends_with("::") {
                    continue; // the middle of a longer path
                }
                let base: Vec<String> = match &line[head_start..i] {
                    "crate" => Vec::new(),
                    "self" => module.clone(),
                    "super" if inline => module.clone(),
                    "super" => module[..module.len().saturating_sub(1)].to_vec(),
                    _ => continue,
                };
                let rest = &line[i + 2..];
                let targets: Vec<Vec<String>> = match rest.find('{') {
                    Some(brace)
                        if rest[..brace]
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == ':') =>
                    {
                        let prefix: Vec<String> = rest[..brace]
                            .split("::")
                            .filter(|p| !p.is_empty())
                            .map(str::to_string)
                            .collect();
                        rest[brace + 1..]
                            .split('}')
                            .next()
                            .unwrap_or("")
                            .split(',')
                            .map(|item| {
                                let mut t = base.clone();
                                t.extend(prefix.iter().cloned());
                                t.extend(item.trim().split("::").map(str::to_string));
                                t
                            })
                            .collect()
                    }
                    _ => {
                        let mut t = base.clone();
                        t.extend(
                            rest.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                                .next()
                                .unwrap_or("")
                                .split("::")
                                .filter(|p| !p.is_empty())
                                .map(str::to_string),
                        );
                        vec![t]
                    }
                };
                for target in targets {
                    if let Some(found) = resolve(modules, &target)
                        && &found != module
                    {
                        out.insert((module.clone(), found));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut circles = Vec::new();
    let mut checked = 0;
    for krate in ["crds", "translator", "xds-server", "tests"] {
        let modules = modules(&root.join(krate).join("src"));
        checked += modules.len();
        let edges = edges(&modules);
        // Any cycle, not only pairs: follow edges from each module.
        for start in modules.keys() {
            let mut seen = BTreeSet::new();
            let mut todo: Vec<Vec<Vec<String>>> = vec![vec![start.clone()]];
            while let Some(path) = todo.pop() {
                let last = path.last().expect("non-empty").clone();
                for (_, next) in edges.iter().filter(|(from, _)| *from == last) {
                    if next == start {
                        let names: Vec<String> = path
                            .iter()
                            .chain([next])
                            .map(|m| {
                                if m.is_empty() {
                                    "crate".to_string()
                                } else {
                                    m.join("::")
                                }
                            })
                            .collect();
                        circles.push(format!("{krate}: {}", names.join(" -> ")));
                    } else if seen.insert(next.clone()) {
                        let mut longer = path.clone();
                        longer.push(next.clone());
                        todo.push(longer);
                    }
                }
            }
        }
    }
    assert!(checked > 60, "only {checked} modules found");
    circles.sort();
    circles.dedup();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}
