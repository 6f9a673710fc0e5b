//! The local config source: directories (recursively) and files of
//! multi-document YAML, the same YAML a user would `kubectl apply`.
//!
//! Last good config stays in force: when a file has an error, the objects it
//! held in the previous load and does not hold validly now are kept, so a
//! typo never blanks a policy that was in effect. The directories are
//! watched (inotify via `notify`) and reloads are debounced.

use super::{ConfigSnapshot, SharedSnapshot};
use crds::{Object, ObjectError, Parsed, parse_documents};
use notify::{RecursiveMode, Watcher};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// kind, namespace, name.
type Key = (String, String, String);

fn key_of(p: &Parsed) -> Option<Key> {
    let meta = p.object.metadata()?;
    Some((
        p.object.kind().to_string(),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    ))
}

/// An error about a whole file or directory (no object inside it).
fn file_error(file: String, reason: String) -> ObjectError {
    ObjectError {
        file,
        index: 0,
        item: None,
        kind: None,
        namespace: None,
        name: None,
        field: None,
        reason,
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads the paths and remembers what it saw, across reloads.
#[derive(Default)]
pub struct FileLoader {
    paths: Vec<PathBuf>,
    first_seen: HashMap<Key, i64>,
    /// Per file: the valid objects of the last load.
    last_good: BTreeMap<PathBuf, Vec<Parsed>>,
}

impl FileLoader {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        FileLoader {
            paths,
            ..Default::default()
        }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Load everything now.
    pub fn load(&mut self) -> ConfigSnapshot {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for p in &self.paths {
            collect_files(p, &mut files, &mut errors);
        }
        files.sort();
        files.dedup();
        let now = now_secs();
        let mut snapshot = ConfigSnapshot {
            files: files.len(),
            errors,
            ..Default::default()
        };
        let mut next_good = BTreeMap::new();
        for file in files {
            let name = file.display().to_string();
            let (parsed, errs) = match std::fs::read_to_string(&file) {
                Ok(text) => parse_documents(&text, &name),
                Err(e) => (
                    Vec::new(),
                    vec![file_error(name.clone(), format!("cannot read file: {e}"))],
                ),
            };
            let mut valid: Vec<Parsed> = Vec::new();
            for p in parsed {
                if let Object::Skipped(s) = &p.object {
                    snapshot.skipped.push(s.clone());
                } else {
                    valid.push(p);
                }
            }
            if !errs.is_empty() {
                // Keep what this file held before and does not hold validly now.
                let present: Vec<Key> = valid.iter().filter_map(key_of).collect();
                if let Some(prev) = self.last_good.get(&file) {
                    for old in prev {
                        if key_of(old).is_some_and(|k| !present.contains(&k)) {
                            debug!(file = %name, kind = old.object.kind(), "keeping last good object");
                            valid.push(old.clone());
                        }
                    }
                }
            }
            snapshot.errors.extend(errs);
            for p in &valid {
                if let Some(k) = key_of(p) {
                    let seen = *self.first_seen.entry(k).or_insert(now);
                    snapshot.objects.push((p.clone(), seen));
                }
            }
            next_good.insert(file, valid);
        }
        self.last_good = next_good;
        snapshot
    }
}

fn is_config_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Files below `path` (or `path` itself), skipping hidden entries.
fn collect_files(path: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<ObjectError>) {
    let unreadable = |reason: String| file_error(path.display().to_string(), reason);
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(unreadable(format!("cannot read: {e}")));
            return;
        }
    };
    if meta.is_file() {
        out.push(path.to_path_buf());
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) => {
            errors.push(unreadable(format!("cannot list directory: {e}")));
            return;
        }
    };
    let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        let hidden = child
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if child.is_dir() {
            collect_files(&child, out, errors);
        } else if is_config_file(&child) {
            out.push(child);
        }
    }
}

/// Log the outcome of a load: one line per problem, one warning per
/// unknown kind.
pub fn log_snapshot(s: &ConfigSnapshot) {
    for e in &s.errors {
        warn!(error = %e, "rejected config object");
    }
    let mut kinds: Vec<(&str, &str)> = s
        .skipped
        .iter()
        .map(|k| (k.api_version.as_str(), k.kind.as_str()))
        .collect();
    kinds.sort();
    kinds.dedup();
    for (api, kind) in kinds {
        warn!(
            api_version = api,
            kind, "skipping objects of a kind this server does not read"
        );
    }
    info!(
        files = s.files,
        objects = s.objects.len(),
        rejected = s.errors.len(),
        "config loaded"
    );
}

/// Load now, then watch the paths and publish a new snapshot on every
/// change, debounced by `debounce`. The watcher lives as long as the
/// returned task.
pub fn watch_paths(
    mut loader: FileLoader,
    debounce: Duration,
) -> anyhow::Result<(watch::Receiver<SharedSnapshot>, tokio::task::JoinHandle<()>)> {
    let first = loader.load();
    log_snapshot(&first);
    let (tx, rx) = watch::channel(Arc::new(first));
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(ev) if ev.kind.is_access() => {}
            Ok(_) => {
                // The receiver is gone only when the task ended.
                let _ = ev_tx.send(());
            }
            Err(e) => warn!(error = %e, "file watch error"),
        }
    })?;
    for p in loader.paths() {
        // Watch a file's directory: editors replace files by rename.
        let target = if p.is_file() {
            p.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| p.clone())
        } else {
            p.clone()
        };
        watcher.watch(&target, RecursiveMode::Recursive)?;
    }
    let task = tokio::spawn(async move {
        let _watcher = watcher;
        while ev_rx.recv().await.is_some() {
            // Debounce: wait until no event arrived for `debounce`.
            loop {
                match tokio::time::timeout(debounce, ev_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let snap = loader.load();
            log_snapshot(&snap);
            if tx.send(Arc::new(snap)).is_err() {
                return;
            }
        }
    });
    Ok((rx, task))
}
