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
