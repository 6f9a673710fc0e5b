//! Stock Envoy runs on this machine under the runner's supervision: it is
//! found, starts from a static bootstrap, reports ready through its admin API
//! and serves a listener the probe can reach. Every later end-to-end test
//! builds on these steps.

use std::time::Duration;

use anyhow::{Context, ensure};
use e2e::{
    ScratchDir, direct_response_bootstrap, envoy_or_skip, find_test_envoy, free_loopback_addr,
    running_in_ci,
};
use tokio::time::Instant;
use xds_server::runner::envoy::{Admin, EnvoyError, EnvoyProcess, EnvoySpec, validate_bootstrap};
use xds_server::runner::probe::{Outcome, probe};

const READY_WITHIN: Duration = Duration::from_secs(20);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn envoy_binary_is_available_under_ci() {
    match find_test_envoy() {
        Ok(path) => eprintln!("envoy: {}", path.display()),
        Err(error) => {
            assert!(!running_in_ci(), "CI is set but {error}");
            eprintln!("note: {error}");
        }
    }
}

#[tokio::test]
async fn static_envoy_becomes_ready_and_serves_a_direct_response() -> anyhow::Result<()> {
    let Some(binary) = envoy_or_skip("static_envoy_becomes_ready_and_serves_a_direct_response")
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
        envoy_or_skip("validate_mode_accepts_the_bootstrap_and_rejects_a_broken_one")
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
    ensure!(matches!(err, EnvoyError::Invalid { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn an_envoy_that_exits_at_startup_fails_fast_with_its_log() -> anyhow::Result<()> {
    let Some(binary) = envoy_or_skip("an_envoy_that_exits_at_startup_fails_fast_with_its_log")
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
    ensure!(matches!(err, EnvoyError::Exited { .. }), "{err}");
    ensure!(
        started.elapsed() < READY_WITHIN / 2,
        "took {:?} to notice the exit",
        started.elapsed()
    );
    Ok(())
}
