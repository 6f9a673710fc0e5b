//! `xds-server up` as a user runs it: the article's stages as JSON, and no
//! Envoy left behind when the runner is told to stop. Needs Envoy: without
//! it these tests fail, unless the run opts out with `XDS_SKIP_ENVOY=1`.
//!
//! These tests stay in this package because they run the built binary
//! (`CARGO_BIN_EXE_xds-server` exists only here); the rule for finding
//! Envoy is the e2e crate's, a dev-dependency.

use e2e::{require_envoy, workspace_root};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn up(envoy: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xds-server"));
    c.current_dir(workspace_root())
        .env("ENVOY_BIN", envoy)
        .env("RUST_LOG", "warn")
        .arg("up");
    c
}

/// Expected outcome of sleep.FROM -> httpbin.TO at a stage: (outcome, mTLS).
fn expected(stage: &str, from: &str, to: &str) -> (&'static str, bool) {
    let strict_to = match stage {
        "mesh-strict" => &["foo", "bar"][..],
        "namespace-strict" => &["foo"][..],
        "workload-strict" => &["bar"][..],
        _ => &[][..],
    };
    match (from, to) {
        ("legacy", t) if strict_to.contains(&t) => ("reset", false),
        ("legacy", _) | (_, "legacy") => ("200", false),
        _ => ("200", true),
    }
}

#[test]
fn up_once_json_gives_the_article_outcomes_at_every_stage() {
    let Some(envoy) = require_envoy("up_once_json_gives_the_article_outcomes_at_every_stage")
    else {
        return;
    };
    for stage in ["", "mesh-strict", "namespace-strict", "workload-strict"] {
        let mut cmd = up(&envoy);
        cmd.arg("examples/article/base");
        if !stage.is_empty() {
            cmd.arg(format!("examples/article/{stage}"));
        }
        let out = cmd
            .args([
                "--once",
                "--json",
                "--from",
                "app=sleep",
                "--to",
                "app in (httpbin)",
            ])
            .output()
            .expect("run up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stage}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        let results = v["results"].as_array().expect("results");
        assert_eq!(results.len(), 9, "{stage}: {v}");
        for r in results {
            let from = r["from"].as_str().unwrap_or_default();
            let to = r["to"].as_str().unwrap_or_default();
            let f = from.strip_prefix("sleep.").unwrap_or(from);
            let t = to
                .strip_prefix("httpbin.")
                .and_then(|t| t.strip_suffix(":8000"))
                .unwrap_or(to);
            let (outcome, mtls) = expected(stage, f, t);
            assert_eq!(r["outcome"], outcome, "{stage}: {from} -> {to}: {r}");
            assert_eq!(r["mtls"], mtls, "{stage}: {from} -> {to}: {r}");
        }
    }
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn sigterm_stops_every_envoy_the_runner_started() {
    let Some(envoy) = require_envoy("sigterm_stops_every_envoy_the_runner_started") else {
        return;
    };
    let work = std::env::temp_dir().join(format!("xds-up-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let mut child = up(&envoy)
        .args([
            "examples/article/base",
            "--from",
            "app=sleep",
            "--to",
            "app=httpbin",
            "--work-dir",
        ])
        .arg(&work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start up");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut converged = false;
    // Bounded: each line read is followed by a deadline check, and the
    // runner ends its stderr when it exits.
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) if l.contains("watching") => {
                converged = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let needle = work.display().to_string();
    let envoys = processes_mentioning(&format!("{needle}/envoy/"));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().expect("wait");
    assert!(converged, "the runner did not converge");
    assert_eq!(envoys.len(), 4, "four Envoys were running: {envoys:?}");
    assert!(status.success(), "runner exit: {status:?}");
    let left = processes_mentioning(&format!("{needle}/envoy/"));
    assert!(left.is_empty(), "Envoys left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&work);
}

/// `up --capture iptables` without root: one line saying so, exit 2. Run
/// as the proxy user (through setpriv) when the test runs as root.
#[test]
fn up_capture_without_root_says_so_in_one_line_and_exits_2() {
    let bin = env!("CARGO_BIN_EXE_xds-server");
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=1337", "--regid=1337", "--clear-groups", "--", bin]);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .current_dir(workspace_root())
        .args([
            "up",
            "--capture",
            "iptables",
            "examples/article/base",
            "--once",
        ])
        .output()
        .expect("run xds-server");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs root"), "{err}");
    assert!(out.stdout.is_empty());
}

/// Network namespaces of run `pid` (`xds-PID-...`).
fn namespaces_of(pid: u32) -> Vec<String> {
    let prefix = format!("xds-{pid}-");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// A run cleans up what a killed run left (its namespaces, their
/// `/etc/netns` files and a process inside one), then leaves nothing of
/// its own behind.
#[test]
fn up_capture_removes_a_killed_runs_leftovers_and_leaves_nothing_behind() {
    let test = "up_capture_removes_a_killed_runs_leftovers_and_leaves_nothing_behind";
    if !e2e::require_root(test) {
        return;
    }
    let Some(envoy) = require_envoy(test) else {
        return;
    };
    // A run that no longer exists: pid_max is at most 2^22.
    let dead = 4_194_304 + 11;
    let stale =
        e2e::netns::Netns::create_named(&format!("xds-{dead}-n0")).expect("a stale namespace");
    std::fs::create_dir_all(format!("/etc/netns/{}", stale.name())).expect("etc dir");
    std::fs::write(
        format!("/etc/netns/{}/hosts", stale.name()),
        "127.0.0.1 x\n",
    )
    .expect("hosts");
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", stale.name(), "sleep", "600"])
        .spawn()
        .expect("a process in the stale namespace");
    let out = up(&envoy)
        .args([
            "examples/article/base",
            "--capture",
            "iptables",
            "--once",
            "--from",
            "app=sleep",
            "--to",
            "app=httpbin",
        ])
        .output()
        .expect("run xds-server up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("removed 1 network namespace(s) a killed earlier run left behind"),
        "{err}"
    );
    assert!(
        namespaces_of(dead).is_empty(),
        "the stale namespace is gone"
    );
    assert!(!Path::new(&format!("/etc/netns/{}", stale.name())).exists());
    // The process inside it was killed (reaped here).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sleeper.try_wait().expect("wait") {
            Some(_) => break,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => panic!("the process in the stale namespace is still running"),
        }
    }
    // The run's own namespaces are gone too; it was a child of this test,
    // so its pid is known.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sleep.legacy"), "{stdout}");
    let leftovers: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| {
                    n.strip_prefix("xds-")
                        .and_then(|r| r.split_once('-'))
                        .and_then(|(pid, _)| pid.parse::<u32>().ok())
                        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "namespaces of finished runs: {leftovers:?}"
    );
}

/// Ctrl-C (SIGINT) in watch mode stops every Envoy and removes every
/// namespace the capture run made.
#[test]
fn ctrl_c_ends_a_capture_run_leaving_no_namespace_or_envoy() {
    let test = "ctrl_c_ends_a_capture_run_leaving_no_namespace_or_envoy";
    if !e2e::require_root(test) {
        return;
    }
    let Some(envoy) = require_envoy(test) else {
        return;
    };
    let work = std::env::temp_dir().join(format!("xds-up-sigint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let mut child = up(&envoy)
        .args([
            "examples/article/base",
            "--capture",
            "iptables",
            "--from",
            "app=sleep",
            "--to",
            "app=httpbin",
            "--work-dir",
        ])
        .arg(&work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start up");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut converged = false;
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) if l.contains("watching") => {
                converged = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let needle = format!("{}/envoy/", work.display());
    let envoys = processes_mentioning(&needle);
    let namespaces = namespaces_of(child.id());
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().expect("wait");
    assert!(converged, "the runner did not converge");
    assert_eq!(envoys.len(), 4, "four Envoys were running: {envoys:?}");
    // The node and six pods.
    assert_eq!(namespaces.len(), 7, "{namespaces:?}");
    assert!(status.success(), "runner exit: {status:?}");
    assert!(
        processes_mentioning(&needle).is_empty(),
        "Envoys left behind"
    );
    assert!(
        namespaces_of(child.id()).is_empty(),
        "namespaces left behind"
    );
    for ns in &namespaces {
        assert!(
            !Path::new("/etc/netns").join(ns).exists(),
            "/etc/netns/{ns} left"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
