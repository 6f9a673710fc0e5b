//! Stock Envoy runs on this machine under the runner's supervision: the
//! Envoy found is the pinned version, starts from a static bootstrap,
//! reports ready through its admin API and serves a listener the probe can
//! reach; validate mode tells a good bootstrap from a broken one. Every later
//! end-to-end test builds on these steps. Also here: the rule for a missing
//! Envoy (fail; skip and count only with `XDS_SKIP_ENVOY=1`; never under
//! CI), checked on this test binary itself.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use e2e::{ScratchDir, direct_response_bootstrap, free_loopback_addr, require_envoy};
use tokio::time::Instant;
use xds_server::runner::envoy::{Admin, EnvoyError, EnvoyProcess, EnvoySpec, validate_bootstrap};
use xds_server::runner::probe::{Outcome, probe};

const READY_WITHIN: Duration = Duration::from_secs(20);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `major.minor` of the Envoy `scripts/install-envoy.sh` pins, e.g. `1.40`.
fn pinned_minor() -> String {
    let script = e2e::workspace_root().join("scripts/install-envoy.sh");
    let text = std::fs::read_to_string(&script).expect("read scripts/install-envoy.sh");
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENVOY_VERSION=\"${ENVOY_VERSION:-"))
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_else(|| panic!("no ENVOY_VERSION default in {}", script.display()));
    let parts: Vec<&str> = version.split('.').collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "pinned version {version:?} is not x.y.z"
    );
    format!("{}.{}", parts[0], parts[1])
}

#[test]
fn envoy_reports_the_pinned_version() {
    let Some(binary) = require_envoy("envoy_reports_the_pinned_version") else {
        return;
    };
    let out = Command::new(&binary)
        .arg("--version")
        .output()
        .expect("run envoy --version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "envoy --version: {text}");
    // `envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`
    let version = text
        .split_once("version:")
        .and_then(|(_, v)| v.split('/').nth(1))
        .unwrap_or_else(|| panic!("no version in {text:?}"));
    let want = pinned_minor();
    assert!(
        version.starts_with(&format!("{want}.")),
        "{} is Envoy {version}, the project pins {want}.x: {text}",
        binary.display()
    );
}

#[tokio::test]
async fn static_envoy_becomes_ready_and_serves_a_direct_response() -> anyhow::Result<()> {
    let Some(binary) = require_envoy("static_envoy_becomes_ready_and_serves_a_direct_response")
    else {
        return Ok(());
    };
    let dir = ScratchDir::new("static")?;
    let admin_addr = free_loopback_addr()?;
    let listener_addr = free_loopback_addr()?;
    let bootstrap = dir.path().join("bootstrap.yaml");
    std::fs::write(
        &bootstrap,
        direct_response_bootstrap(admin_addr, listener_addr, 200, "hello from envoy\n"),
    )?;

    let spec = EnvoySpec::new(&binary, &bootstrap, dir.path(), "static");
    let mut envoy = EnvoyProcess::spawn(&spec)?;
    let admin = Admin::new(admin_addr);
    // Run the checks, then stop Envoy whatever they returned.
    let checked = check_static_envoy(&mut envoy, &admin, listener_addr).await;
    let status = envoy.stop().await.context("stopping envoy")?;
    checked?;
    // A clean exit shows SIGTERM was honoured, not escalated to SIGKILL.
    ensure!(status.success(), "envoy exited with {status} after SIGTERM");
    ensure!(
        probe(listener_addr, "x", "/", PROBE_TIMEOUT).await.outcome == Outcome::Refused,
        "listener still open after stop (exit status {status})"
    );
    Ok(())
}

async fn check_static_envoy(
    envoy: &mut EnvoyProcess,
    admin: &Admin,
    listener: std::net::SocketAddr,
) -> anyhow::Result<()> {
    ensure!(envoy.pid().is_some(), "no pid for a running envoy");
    envoy
        .wait_ready(admin, Instant::now() + READY_WITHIN)
        .await?;
    let uptime = admin.uptime_secs().await?;
    ensure!(
        uptime < READY_WITHIN.as_secs() + 5,
        "uptime {uptime}s is longer than this test"
    );
    ensure!(admin.server_state().await? == "LIVE", "server not LIVE");
    let active = admin
        .stat("listener_manager.total_listeners_active")
        .await?;
    ensure!(active == Some(1), "total_listeners_active = {active:?}");

    let got = probe(listener, "anything.local", "/", PROBE_TIMEOUT).await;
    ensure!(
        got.outcome == Outcome::Status(200),
        "probe through the static listener: {}",
        got.outcome
    );
    ensure!(got.body == "hello from envoy\n", "body {:?}", got.body);
    ensure!(
        got.header("server") == Some("envoy"),
        "{:?}",
        got.response_headers
    );

    let dump = admin.config_dump().await?;
    ensure!(
        dump.to_string().contains("\"direct\""),
        "config_dump does not mention the static listener"
    );
    Ok(())
}

#[tokio::test]
async fn validate_mode_accepts_the_bootstrap_and_rejects_a_broken_one() -> anyhow::Result<()> {
    let Some(binary) =
        require_envoy("validate_mode_accepts_the_bootstrap_and_rejects_a_broken_one")
    else {
        return Ok(());
    };
    let dir = ScratchDir::new("validate")?;
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        direct_response_bootstrap(free_loopback_addr()?, free_loopback_addr()?, 200, "ok"),
    )?;
    validate_bootstrap(&binary, &good, READY_WITHIN).await?;

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "static_resources: {listeners: [{name: x, no_such_field: 1}]}\n",
    )?;
    let err = validate_bootstrap(&binary, &bad, READY_WITHIN)
        .await
        .err()
        .context("a bootstrap with an unknown field validated")?;
    let EnvoyError::Invalid { output, .. } = &err else {
        anyhow::bail!("not a rejection: {err}");
    };
    // Envoy names the offending field and where it is (protobuf's error
    // text doubles some spaces at random, so compare with single spaces).
    let said = output.split_whitespace().collect::<Vec<_>>().join(" ");
    ensure!(
        said.contains("no such field: 'no_such_field'")
            && said.contains("static_resources.listeners[0]"),
        "Envoy's rejection does not name the problem:\n{output}"
    );
    Ok(())
}

#[tokio::test]
async fn an_envoy_that_exits_at_startup_fails_fast_with_its_log() -> anyhow::Result<()> {
    let Some(binary) = require_envoy("an_envoy_that_exits_at_startup_fails_fast_with_its_log")
    else {
        return Ok(());
    };
    let dir = ScratchDir::new("exits")?;
    let bootstrap = dir.path().join("bootstrap.yaml");
    std::fs::write(&bootstrap, "this is: [not a bootstrap\n")?;
    let spec = EnvoySpec::new(&binary, &bootstrap, dir.path(), "broken");
    let mut envoy = EnvoyProcess::spawn(&spec)?;
    let started = Instant::now();
    let admin = Admin::new(free_loopback_addr()?);
    let result = envoy
        .wait_ready(&admin, Instant::now() + READY_WITHIN)
        .await;
    envoy.stop().await?;
    let err = result.err().context("a broken envoy became ready")?;
    let EnvoyError::Exited {
        status, log_tail, ..
    } = &err
    else {
        anyhow::bail!("not an exit: {err}");
    };
    ensure!(!status.success(), "exit status {status}");
    // The error quotes the log, where Envoy says what is wrong.
    ensure!(
        log_tail.contains("yaml-cpp") && log_tail.contains("bootstrap.yaml"),
        "the log tail does not show the parse error:\n{log_tail}"
    );
    ensure!(
        started.elapsed() < READY_WITHIN / 2,
        "took {:?} to notice the exit",
        started.elapsed()
    );
    Ok(())
}

/// Runs `envoy_reports_the_pinned_version` of this very binary in a child
/// process with `ENVOY_BIN` pointing nowhere, and the opt-out and CI set as
/// given. Returns whether it passed, its output, and the skip report.
fn run_without_envoy(dir: &Path, opt_out: bool, ci: bool) -> (bool, String, String) {
    let report = dir.join(format!("skips-{opt_out}-{ci}"));
    let mut cmd = Command::new(std::env::current_exe().expect("this test binary"));
    cmd.args([
        "--exact",
        "envoy_reports_the_pinned_version",
        "--test-threads",
        "1",
        "--nocapture",
    ])
    .env("ENVOY_BIN", dir.join("no-such-envoy"))
    .env("XDS_SKIP_REPORT", &report)
    .env_remove("XDS_SKIP_ENVOY")
    .env_remove("CI");
    if opt_out {
        cmd.env("XDS_SKIP_ENVOY", "1");
    }
    if ci {
        cmd.env("CI", "true");
    }
    let out = cmd.output().expect("run this test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 passed") || text.contains("1 failed"),
        "the child ran one test:\n{text}"
    );
    let skips = std::fs::read_to_string(&report).unwrap_or_default();
    (out.status.success(), text, skips)
}

#[test]
fn without_envoy_a_test_fails_unless_opted_out_and_never_under_ci() {
    let dir = ScratchDir::new("envoy-rule").expect("scratch dir");
    let missing = format!("ENVOY_BIN={}", dir.path().join("no-such-envoy").display());

    let (passed, text, skips) = run_without_envoy(dir.path(), false, false);
    assert!(!passed, "no Envoy, no opt-out: must fail\n{text}");
    assert!(text.contains(&missing), "says where it looked:\n{text}");
    assert!(
        text.contains("scripts/install-envoy.sh"),
        "says how to install:\n{text}"
    );
    assert_eq!(skips, "", "a failure is not a skip");

    let (passed, text, skips) = run_without_envoy(dir.path(), true, false);
    assert!(passed, "no Envoy, XDS_SKIP_ENVOY=1: skipped\n{text}");
    assert!(
        text.contains("SKIPPED envoy_reports_the_pinned_version"),
        "{text}"
    );
    assert_eq!(
        skips, "envoy_reports_the_pinned_version\n",
        "one line per skip"
    );

    let (passed, text, skips) = run_without_envoy(dir.path(), true, true);
    assert!(
        !passed,
        "no Envoy, XDS_SKIP_ENVOY=1 under CI: must fail\n{text}"
    );
    assert!(text.contains("but so is CI"), "says why:\n{text}");
    assert_eq!(skips, "", "a refused opt-out is not a skip");
}
