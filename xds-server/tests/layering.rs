//! The daemon (serve: ADS, CA, snapshots, debug, sources) never depends on
//! the local mesh runner, so `serve` carries none of its code paths and the
//! runner can move to its own crate without untangling anything.

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
