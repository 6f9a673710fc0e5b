//! Applying and removing the capture rules in the current network
//! namespace, with `iptables-save -t nat` and `iptables-restore --noflush`
//! (whichever backend, nf_tables or legacy, the `iptables-restore` found
//! speaks). Each change is one restore transaction: a failure leaves the
//! table as it was.

use super::rules::{CHAINS, CaptureConfig, Rule, restore_script, rules};
use super::save::{NatTable, cleanup_script};
use anyhow::{Context, bail};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use tracing::info;

/// Where iptables lives when `PATH` lacks the sbin directories (a non-login
/// shell, a minimal image).
const SBIN: [&str; 2] = ["/usr/sbin", "/sbin"];

/// The path of an iptables tool: `PATH` first, then the sbin directories.
pub fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} not found on PATH or in /usr/sbin, /sbin: install iptables \
                 (Debian and Ubuntu: apt-get install -y iptables)"
            )
        })
}

/// Reads the nat table of the current network namespace.
pub fn read_nat() -> anyhow::Result<NatTable> {
    let tool = find_tool("iptables-save")?;
    let out = Command::new(&tool)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "{} -t nat failed ({}): {} (changing the nat table needs root or CAP_NET_ADMIN)",
            tool.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout)
        .with_context(|| format!("{} printed something that is not UTF-8", tool.display()))?;
    NatTable::parse(&text).map_err(|e| anyhow::anyhow!("reading iptables-save -t nat: {e}"))
}

/// Feeds `script` to `iptables-restore --noflush`: one transaction.
fn restore(script: &str) -> anyhow::Result<()> {
    let tool = find_tool("iptables-restore")?;
    let mut child = Command::new(&tool)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", tool.display()))?;
    // Written before waiting, and the handle dropped so the tool sees EOF;
    // the script is a few KiB, far below a pipe's buffer.
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .with_context(|| format!("writing the rules to {}", tool.display()))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "{} --noflush refused the rules ({}): {}\nthe input was:\n{script}",
            tool.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Checks that every chain of ours (and the built-in chains' jumps into
/// them) holds exactly the rules generated, in order.
pub fn verify(table: &NatTable, generated: &[Rule]) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for chain in CHAINS {
        let want: Vec<&str> = generated
            .iter()
            .filter(|r| r.chain == chain)
            .map(|r| r.spec.as_str())
            .collect();
        let got = table.rules_of(chain);
        if got != want {
            problems.push(format!(
                "chain {chain} holds\n  {}\nbut should hold\n  {}",
                got.join("\n  "),
                want.join("\n  ")
            ));
        }
    }
    let mut want_jumps: Vec<Rule> = generated
        .iter()
        .filter(|r| !CHAINS.contains(&r.chain.as_str()))
        .cloned()
        .collect();
    let mut got_jumps = table.jumps_into_ours();
    want_jumps.sort();
    got_jumps.sort();
    if want_jumps != got_jumps {
        problems.push(format!(
            "the jumps into our chains are {got_jumps:?}, not {want_jumps:?}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "the nat table does not read back as applied: {}",
            problems.join("; ")
        )
    }
}

/// Installs the rules of `cfg`, replacing any previous copy of ours, and
/// checks the table reads back as generated. Returns the rules.
pub fn install(cfg: &CaptureConfig) -> anyhow::Result<Vec<Rule>> {
    let before = read_nat()?;
    let stale = before.jumps_into_ours();
    let generated = rules(cfg);
    restore(&restore_script(&generated, &stale))?;
    let after = read_nat()?;
    verify(&after, &generated)?;
    info!(
        rules = generated.len(),
        replaced_previous = before.has_ours(),
        "programmed the nat table: outbound TCP to 15001, inbound TCP to 15006"
    );
    Ok(generated)
}

/// Removes ours from the nat table; `false` when there was nothing to remove.
pub fn cleanup() -> anyhow::Result<bool> {
    let table = read_nat()?;
    let Some(script) = cleanup_script(&table) else {
        info!("no capture rules of ours in the nat table; nothing to remove");
        return Ok(false);
    };
    restore(&script)?;
    let after = read_nat()?;
    if after.has_ours() {
        bail!(
            "after cleanup the nat table still holds chains {:?} or jumps {:?}",
            after.our_chains(),
            after.jumps_into_ours()
        );
    }
    info!(
        chains = table.our_chains().len(),
        jumps = table.jumps_into_ours().len(),
        "removed the capture rules from the nat table"
    );
    Ok(true)
}
