//! The local config source: directories (recursively) and files of
//! multi-document YAML, the same YAML a user would `kubectl apply`.
//!
//! Last good config stays in force: when a file has an error, the objects it
//! held in the previous load and does not hold validly now are kept, so a
//! typo never blanks a policy that was in effect. The directories are
//! watched (inotify, through `notify-debouncer-full`) and reloads are
//! debounced.

use super::{ConfigSnapshot, SharedSnapshot};
use crds::{Object, ObjectError, Parsed, parse_documents};
use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use walkdir::WalkDir;

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

/// The largest config file read unless configured otherwise. A 4 MiB
/// manifest holds tens of thousands of objects; a larger file under a config
/// directory is more likely a mistake (a log, an archive) and would cost
/// memory in proportion, since a file is parsed whole.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads the paths and remembers what it saw, across reloads.
pub struct FileLoader {
    paths: Vec<PathBuf>,
    /// Files larger than this are load errors, not read.
    max_file_bytes: u64,
    first_seen: HashMap<Key, i64>,
    /// Per file: the valid objects of the last load.
    last_good: BTreeMap<PathBuf, Vec<Parsed>>,
    /// Per file: its text at the last load and what parsing it gave. A
    /// reload reads every file (cheap) but parses only those whose text
    /// changed: parsing is most of a reload's cost, and a change usually
    /// touches one file of thousands of objects.
    parsed: HashMap<PathBuf, ParsedFile>,
}

/// One file's text and the result of parsing it.
struct ParsedFile {
    text: String,
    objects: Vec<Parsed>,
    errors: Vec<ObjectError>,
}

impl Default for FileLoader {
    fn default() -> Self {
        FileLoader {
            paths: Vec::new(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            first_seen: HashMap::new(),
            last_good: BTreeMap::new(),
            parsed: HashMap::new(),
        }
    }
}

impl FileLoader {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        FileLoader {
            paths,
            ..Default::default()
        }
    }

    /// Sets the largest file read (default [`DEFAULT_MAX_FILE_BYTES`]); a
    /// larger one is a load error naming it, and keeps its last good objects.
    pub fn with_max_file_bytes(mut self, bytes: u64) -> Self {
        self.max_file_bytes = bytes;
        self
    }

    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
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
        let mut next_parsed = HashMap::new();
        for file in files {
            let name = file.display().to_string();
            // A path named as a root is read whatever it is (`/dev/stdin`
            // included); below a root only regular files are.
            let named = self.paths.contains(&file);
            let (parsed, errs) = match read_config_file(&file, self.max_file_bytes, named) {
                Ok(text) => {
                    let cached = self
                        .parsed
                        .remove(&file)
                        .filter(|cached| cached.text == text);
                    let cached = cached.unwrap_or_else(|| {
                        snapshot.parsed += 1;
                        let (objects, errors) = parse_documents(&text, &name);
                        ParsedFile {
                            text,
                            objects,
                            errors,
                        }
                    });
                    let result = (cached.objects.clone(), cached.errors.clone());
                    next_parsed.insert(file.clone(), cached);
                    result
                }
                Err(reason) => (Vec::new(), vec![file_error(name.clone(), reason)]),
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
        // Files gone or unreadable are forgotten.
        self.parsed = next_parsed;
        snapshot
    }
}

/// The texts of the config files under `paths` (files or directories,
/// walked as a load walks them: sorted, hidden entries skipped, each file
/// at most `limit` bytes), as (name, text); and an error for each file or
/// directory that could not be read. For tools that read manifests once
/// (`xds-server inject`).
pub fn read_texts(paths: &[PathBuf], limit: u64) -> (Vec<(String, String)>, Vec<ObjectError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        collect_files(p, &mut files, &mut errors);
    }
    files.sort();
    files.dedup();
    let mut texts = Vec::with_capacity(files.len());
    for file in files {
        let name = file.display().to_string();
        match read_config_file(&file, limit, paths.contains(&file)) {
            Ok(text) => texts.push((name, text)),
            Err(reason) => errors.push(file_error(name, reason)),
        }
    }
    (texts, errors)
}

/// The text of one config file, or why it cannot be had. Never reads more
/// than `limit` + 1 bytes: the size is checked before reading and again by
/// what was read, so a file that grows meanwhile (or a device that never
/// ends) is caught too.
fn read_config_file(path: &Path, limit: u64, named: bool) -> Result<String, String> {
    let too_big = |size: String| {
        format!(
            "file is {size} bytes, more than the limit of {limit} bytes for a config file; not read"
        )
    };
    // Before opening: opening a FIFO blocks until someone writes to it.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read file: {e}"))?;
    if !named && !meta.is_file() {
        return Err("not a regular file; not read".into());
    }
    if meta.is_file() && meta.len() > limit {
        return Err(too_big(meta.len().to_string()));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read file: {e}"))?;
    let expected = if meta.is_file() { meta.len() } else { 0 };
    let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(format!("at least {}", bytes.len())));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text: invalid byte at offset {}; not read",
            e.utf8_error().valid_up_to()
        )
    })
}

fn is_config_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn is_hidden(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.'))
}

/// Files below `root` (or `root` itself), skipping hidden entries. Symlinks
/// are followed; one that leads back to an ancestor is reported, not walked.
fn collect_files(root: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<ObjectError>) {
    let walk = WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
    for entry in walk {
        match entry {
            Ok(e) if e.file_type().is_dir() => {}
            // A file named on the command line is read whatever its name.
            Ok(e) if e.depth() == 0 || is_config_file(e.path()) => out.push(e.into_path()),
            Ok(_) => {}
            Err(e) => errors.extend(walk_error(&e)),
        }
    }
}

/// The load error for a failed step of the walk, if it concerns a path the
/// load would have read.
fn walk_error(e: &walkdir::Error) -> Option<ObjectError> {
    let path = e.path().unwrap_or(Path::new(""));
    let name = path.display().to_string();
    let below_root = e.depth() > 0;
    // Errors bypass `filter_entry`, so hidden entries are skipped here too.
    if below_root && path.file_name().is_some_and(is_hidden) {
        return None;
    }
    if let Some(ancestor) = e.loop_ancestor() {
        return Some(file_error(
            name,
            format!(
                "symlink loop: leads back to {}; not followed",
                ancestor.display()
            ),
        ));
    }
    // A dangling link under a name the load would not read anyway.
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if below_root && is_link && !is_config_file(path) {
        return None;
    }
    let reason = match e.io_error() {
        Some(io) if path.is_dir() => format!("cannot list directory: {io}"),
        Some(io) => format!("cannot read: {io}"),
        None => e.to_string(),
    };
    Some(file_error(name, reason))
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
        parsed = s.parsed,
        objects = s.objects.len(),
        rejected = s.errors.len(),
        "config loaded"
    );
}

/// Whether a change at `path` can change what a load of `roots` reads.
/// Paths are compared as given, so both sides must be absolute.
fn affects_load(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| {
        if path == root {
            return true;
        }
        let Ok(rel) = path.strip_prefix(root) else {
            return false;
        };
        // The load skips hidden entries below a root.
        if rel.iter().any(is_hidden) {
            return false;
        }
        // A path that is gone may have been a directory of config files.
        is_config_file(path) || !path.is_file()
    })
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
    // Event paths are the watched path joined with what changed below it.
    let roots: Vec<PathBuf> = loader
        .paths()
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    // A zero timeout would make the debouncer's timer thread spin.
    let debounce = debounce.max(Duration::from_millis(1));
    let tick = debounce / 4;
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
    let relevant_roots = roots.clone();
    let mut debouncer = new_debouncer(debounce, Some(tick), move |res: DebounceEventResult| {
        match res {
            Ok(events) => {
                // A rescan (the kernel queue overflowed) names no paths.
                let relevant = events.iter().any(|ev| {
                    ev.need_rescan()
                        || !ev.kind.is_access()
                            && ev.paths.iter().any(|p| affects_load(p, &relevant_roots))
                });
                if relevant {
                    // The receiver is gone only when the task ended.
                    let _ = ev_tx.send(());
                }
            }
            Err(errors) => {
                for e in errors {
                    warn!(error = %e, paths = ?e.paths, "file watch error");
                }
            }
        }
    })?;
    for root in &roots {
        // Watch a file's directory: editors replace files by rename.
        match root.parent() {
            Some(dir) if root.is_file() => debouncer.watch(dir, RecursiveMode::NonRecursive)?,
            _ => debouncer.watch(root, RecursiveMode::Recursive)?,
        }
    }
    // The debouncer flushes events once they are `debounce` old, checking
    // every `tick`, so one burst can come out over consecutive ticks: fold
    // those into one reload, which then follows the last write of a burst.
    let fold = tick * 2;
    let task = tokio::spawn(async move {
        let _debouncer = debouncer;
        while ev_rx.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(fold, ev_rx.recv()).await {}
            let snap = loader.load();
            log_snapshot(&snap);
            if tx.send(Arc::new(snap)).is_err() {
                return;
            }
        }
    });
    Ok((rx, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;
    use std::time::Instant;

    fn policy(name: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n\
             metadata:\n  name: {name}\n  namespace: foo\nspec:\n  mtls:\n    mode: STRICT\n"
        )
    }

    /// Names of the loaded objects, sorted.
    fn names(s: &ConfigSnapshot) -> Vec<String> {
        let mut out: Vec<String> = s
            .objects
            .iter()
            .filter_map(|(p, _)| p.object.metadata()?.name.clone())
            .collect();
        out.sort();
        out
    }

    const DEBOUNCE: Duration = Duration::from_millis(100);
    const DEADLINE: Duration = Duration::from_secs(10);

    /// Waits (up to [`DEADLINE`]) for a published snapshot that satisfies
    /// `done`; returns it and how many snapshots were published meanwhile.
    async fn wait_for(
        rx: &mut watch::Receiver<SharedSnapshot>,
        done: impl Fn(&ConfigSnapshot) -> bool,
    ) -> (SharedSnapshot, usize) {
        let deadline = Instant::now() + DEADLINE;
        let mut published = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let changed = tokio::time::timeout(left, rx.changed()).await;
            assert!(
                matches!(changed, Ok(Ok(()))),
                "no matching reload within {DEADLINE:?}; last: {:?}",
                names(&rx.borrow())
            );
            published += 1;
            let snap = rx.borrow_and_update().clone();
            if done(&snap) {
                return (snap, published);
            }
        }
    }

    /// Watches `root` below `dir` with the test's debounce.
    fn watch_dir(
        dir: &TempDir,
        root: &str,
    ) -> (watch::Receiver<SharedSnapshot>, tokio::task::JoinHandle<()>) {
        watch_paths(FileLoader::new(vec![dir.path(root)]), DEBOUNCE).expect("watch")
    }

    /// Asserts that nothing is published for several debounce periods.
    async fn assert_no_reload(rx: &mut watch::Receiver<SharedSnapshot>) {
        let quiet = tokio::time::timeout(DEBOUNCE * 5, rx.changed()).await;
        assert!(
            quiet.is_err(),
            "unexpected reload: {:?}",
            names(&rx.borrow())
        );
    }

    #[test]
    fn load_walks_directories_and_skips_hidden_and_other_files() {
        let dir = TempDir::new("walk");
        dir.write("a.yaml", &policy("a"));
        dir.write("nested/deeper/b.yml", &policy("b"));
        dir.write("notes.txt", &policy("txt"));
        dir.write(".hidden.yaml", &policy("hidden-file"));
        dir.write(".git/c.yaml", &policy("hidden-dir"));
        dir.write("named.conf", &policy("named"));
        let mut loader = FileLoader::new(vec![dir.path(""), dir.path("named.conf")]);
        let snap = loader.load();
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert_eq!(snap.files, 3);
        // A file named as a root is read whatever its extension.
        assert_eq!(names(&snap), ["a", "b", "named"]);
    }

    #[test]
    fn a_reload_parses_only_the_files_whose_text_changed() {
        let dir = TempDir::new("reparse");
        dir.write("a.yaml", &policy("a"));
        dir.write("b.yaml", &policy("b"));
        dir.write("bad.yaml", "kind: [unterminated");
        let mut loader = FileLoader::new(vec![dir.path("")]);
        let first = loader.load();
        assert_eq!((first.files, first.parsed), (3, 3));
        assert_eq!(first.errors.len(), 1, "{:?}", first.errors);

        // Nothing changed: nothing parsed, the same objects and errors.
        let again = loader.load();
        assert_eq!((again.files, again.parsed), (3, 0));
        assert_eq!(names(&again), names(&first));
        assert_eq!(again.errors, first.errors);

        // One file rewritten, one removed: only the rewritten is parsed.
        dir.write("b.yaml", &policy("b2"));
        std::fs::remove_file(dir.path("bad.yaml")).expect("remove");
        let changed = loader.load();
        assert_eq!((changed.files, changed.parsed), (2, 1));
        assert_eq!(names(&changed), ["a", "b2"]);
        assert!(changed.errors.is_empty(), "{:?}", changed.errors);

        // A file that comes back is parsed again.
        dir.write("bad.yaml", "kind: [unterminated");
        let back = loader.load();
        assert_eq!((back.files, back.parsed), (3, 1));
        assert_eq!(back.errors.len(), 1, "{:?}", back.errors);
    }

    #[test]
    fn a_missing_path_is_a_load_error_naming_it() {
        let dir = TempDir::new("missing");
        let gone = dir.path("gone");
        let snap = FileLoader::new(vec![gone.clone()]).load();
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert_eq!(snap.errors[0].file, gone.display().to_string());
        assert!(
            snap.errors[0].reason.starts_with("cannot read:"),
            "{}",
            snap.errors[0]
        );
    }

    #[test]
    fn a_symlink_loop_is_reported_and_the_other_files_still_load() {
        let dir = TempDir::new("loop");
        dir.write("a.yaml", &policy("a"));
        dir.write("sub/b.yaml", &policy("b"));
        let link = dir.path("sub/back");
        std::os::unix::fs::symlink(dir.path(""), &link).expect("symlink");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let root = dir.path("");
        // On its own thread, so a walk that never ends fails the test
        // instead of hanging it.
        std::thread::spawn(move || {
            let _ = done_tx.send(FileLoader::new(vec![root]).load());
        });
        let snap = done_rx.recv_timeout(DEADLINE).expect("load terminates");
        assert_eq!(names(&snap), ["a", "b"], "each file once");
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        let err = &snap.errors[0];
        assert_eq!(err.file, link.display().to_string());
        assert!(err.reason.contains("symlink loop"), "{err}");
    }

    #[test]
    fn a_file_with_an_error_keeps_its_last_good_objects() {
        let dir = TempDir::new("last-good");
        dir.write("a.yaml", &format!("{}---\n{}", policy("a1"), policy("a2")));
        dir.write("b.yaml", &policy("b"));
        let mut loader = FileLoader::new(vec![dir.path("")]);
        assert_eq!(names(&loader.load()), ["a1", "a2", "b"]);

        // a2 is now broken YAML: a1 loads as written, a2 as last seen.
        dir.write("a.yaml", &format!("{}---\nkind: [unclosed\n", policy("a1")));
        let snap = loader.load();
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert_eq!(names(&snap), ["a1", "a2", "b"]);

        // Fixed without a2: it is gone, as the file says.
        dir.write("a.yaml", &policy("a1"));
        let snap = loader.load();
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert_eq!(names(&snap), ["a1", "b"]);

        // A file that is deleted takes its objects with it.
        std::fs::remove_file(dir.path("b.yaml")).expect("remove");
        assert_eq!(names(&loader.load()), ["a1"]);
    }

    fn sidecar(hosts: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\n\
             metadata: {{name: scope, namespace: foo}}\nspec:\n  egress:\n  - hosts: [{hosts}]\n"
        )
    }

    #[test]
    fn a_sidecar_loads_and_an_invalid_one_is_an_error_keeping_the_last_good() {
        let dir = TempDir::new("sidecar");
        dir.write("scope.yaml", &sidecar("\"./*\""));
        let mut loader = FileLoader::new(vec![dir.path("")]);
        let snap = loader.load();
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        let hosts = |s: &ConfigSnapshot| -> Vec<String> {
            s.objects
                .iter()
                .filter_map(|(p, _)| match &p.object {
                    Object::Sidecar(sc) => Some(sc.spec.egress.first()?.hosts.clone()),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        assert_eq!(hosts(&snap), ["./*"]);

        // A host without namespace: an error naming object and field, and
        // the Sidecar as last loaded stays in force.
        dir.write("scope.yaml", &sidecar("\"httpbin.bar.svc.cluster.local\""));
        let snap = loader.load();
        let errors: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("Sidecar foo/scope: spec.egress[0].hosts[0]")
                && errors[0].contains("namespace/dnsName"),
            "{errors:?}"
        );
        assert_eq!(hosts(&snap), ["./*"]);

        dir.write("scope.yaml", &sidecar("\"bar/*\""));
        assert_eq!(hosts(&loader.load()), ["bar/*"]);
    }

    #[test]
    fn a_file_over_the_size_limit_is_an_error_naming_it_and_both_sizes() {
        let dir = TempDir::new("too-big");
        dir.write("a.yaml", &policy("a"));
        let big = format!("{}# {}\n", policy("big"), "x".repeat(2_000));
        dir.write("big.yaml", &big);
        let mut loader = FileLoader::new(vec![dir.path("")]).with_max_file_bytes(1_024);
        let snap = loader.load();
        assert_eq!(names(&snap), ["a"]);
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        let err = &snap.errors[0];
        assert_eq!(err.file, dir.path("big.yaml").display().to_string());
        assert_eq!(
            err.reason,
            format!(
                "file is {} bytes, more than the limit of 1024 bytes for a config file; not read",
                big.len()
            )
        );
    }

    #[test]
    fn the_default_limit_is_4_mib_and_a_file_that_grows_past_it_keeps_its_last_good_objects() {
        let dir = TempDir::new("default-limit");
        let mut loader = FileLoader::new(vec![dir.path("")]);
        assert_eq!(loader.max_file_bytes(), 4 * 1024 * 1024);
        let text = policy("a");
        let pad = DEFAULT_MAX_FILE_BYTES as usize - text.len();
        // Exactly at the limit: read.
        dir.write("a.yaml", &format!("{text}{}", " ".repeat(pad)));
        let snap = loader.load();
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert_eq!(names(&snap), ["a"]);
        // One byte more: not read, and `a` stays in force.
        dir.write("a.yaml", &format!("{text}{}", " ".repeat(pad + 1)));
        let snap = loader.load();
        assert_eq!(names(&snap), ["a"]);
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert_eq!(
            snap.errors[0].reason,
            "file is 4194305 bytes, more than the limit of 4194304 bytes for a config file; not read"
        );
    }

    #[test]
    fn a_named_device_that_never_ends_is_read_only_up_to_the_limit() {
        // /dev/zero reports size 0: only the bounded read catches it, as it
        // would a file that grows between the size check and the read.
        let zero = PathBuf::from("/dev/zero");
        let snap = FileLoader::new(vec![zero.clone()])
            .with_max_file_bytes(64 * 1024)
            .load();
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert_eq!(snap.errors[0].file, "/dev/zero");
        assert_eq!(
            snap.errors[0].reason,
            "file is at least 65537 bytes, more than the limit of 65536 bytes for a config file; not read"
        );
    }

    #[test]
    fn a_fifo_below_a_root_is_reported_not_opened() {
        let dir = TempDir::new("fifo");
        dir.write("a.yaml", &policy("a"));
        let fifo = dir.path("pipe.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo failed");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let root = dir.path("");
        // On its own thread: opening the FIFO would block until a writer came.
        std::thread::spawn(move || {
            let _ = done_tx.send(FileLoader::new(vec![root]).load());
        });
        let snap = done_rx.recv_timeout(DEADLINE).expect("load terminates");
        assert_eq!(names(&snap), ["a"]);
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert_eq!(snap.errors[0].file, fifo.display().to_string());
        assert_eq!(snap.errors[0].reason, "not a regular file; not read");
    }

    #[test]
    fn a_file_that_is_not_utf8_is_an_error_naming_where() {
        let dir = TempDir::new("utf8");
        std::fs::write(dir.path("bin.yaml"), b"kind: \xff\xfe\n").expect("write");
        let snap = FileLoader::new(vec![dir.path("")]).load();
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert_eq!(
            snap.errors[0].reason,
            "not UTF-8 text: invalid byte at offset 6; not read"
        );
    }

    #[test]
    fn ten_thousand_policies_in_one_file_load() {
        let dir = TempDir::new("ten-thousand");
        let text = crds::test_support::many_peer_authentications(10_000);
        assert!(
            text.len() as u64 <= DEFAULT_MAX_FILE_BYTES,
            "{}",
            text.len()
        );
        dir.write("policies.yaml", &text);
        let started = Instant::now();
        let snap = FileLoader::new(vec![dir.path("")]).load();
        assert!(snap.errors.is_empty(), "{:?}", &snap.errors[..1]);
        assert_eq!(snap.objects.len(), 10_000);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn affects_load_ignores_hidden_and_other_files_below_a_root() {
        let dir = TempDir::new("affects");
        dir.write("notes.txt", "x");
        dir.write("a.yaml", "x");
        let file_root = dir.path("a.yaml");
        let roots = [dir.path("sub"), file_root.clone()];
        assert!(affects_load(&file_root, &roots));
        assert!(affects_load(&dir.path("sub/x.yaml"), &roots));
        // Gone: it may have been a directory.
        assert!(affects_load(&dir.path("sub/gone"), &roots));
        assert!(!affects_load(&dir.path("sub/.x.yaml"), &roots));
        assert!(!affects_load(&dir.path("sub/.git/x.yaml"), &roots));
        // A sibling of a file root.
        assert!(!affects_load(&dir.path("notes.txt"), &roots));
        let roots = [dir.path("")];
        assert!(!affects_load(&dir.path("notes.txt"), &roots));
    }

    #[tokio::test]
    async fn a_burst_of_writes_is_one_reload_of_the_last_write() {
        let dir = TempDir::new("burst");
        dir.write("a.yaml", &policy("v0"));
        let (mut rx, task) = watch_dir(&dir, "");
        assert_eq!(names(&rx.borrow_and_update()), ["v0"]);

        for v in 1..=5 {
            dir.write("a.yaml", &policy(&format!("v{v}")));
        }
        dir.write("sub/b.yaml", &policy("b"));
        let (_, published) = wait_for(&mut rx, |s| names(s) == ["b", "v5"]).await;
        assert_eq!(published, 1, "one reload for the burst");
        assert_no_reload(&mut rx).await;
        task.abort();
    }

    #[tokio::test]
    async fn other_files_do_not_reload_and_a_broken_file_keeps_its_objects() {
        let dir = TempDir::new("watch");
        dir.write("a.yaml", &policy("a"));
        let (mut rx, task) = watch_dir(&dir, "");
        rx.borrow_and_update();

        dir.write("notes.txt", "not config");
        dir.write(".a.yaml.swp", "editor state");
        assert_no_reload(&mut rx).await;

        // The watch is alive: a broken edit reloads, and keeps `a`.
        dir.write("a.yaml", "kind: [unclosed\n");
        let (snap, _) = wait_for(&mut rx, |s| !s.errors.is_empty()).await;
        assert_eq!(names(&snap), ["a"]);

        // Replaced by rename, as editors do.
        dir.write("new.tmp", &policy("renamed"));
        std::fs::rename(dir.path("new.tmp"), dir.path("a.yaml")).expect("rename");
        let (snap, _) = wait_for(&mut rx, |s| s.errors.is_empty()).await;
        assert_eq!(names(&snap), ["renamed"]);
        task.abort();
    }

    #[tokio::test]
    async fn a_file_root_is_watched_through_its_directory() {
        let dir = TempDir::new("file-root");
        dir.write("a.yaml", &policy("a"));
        dir.write("other.yaml", &policy("other"));
        let (mut rx, task) = watch_dir(&dir, "a.yaml");
        assert_eq!(names(&rx.borrow_and_update()), ["a"]);

        // A sibling is not part of the config.
        dir.write("other.yaml", &policy("other2"));
        assert_no_reload(&mut rx).await;

        dir.write("a.yaml", &policy("a2"));
        wait_for(&mut rx, |s| names(s) == ["a2"]).await;
        task.abort();
    }
}
