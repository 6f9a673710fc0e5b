//! Reading `iptables-save -t nat`, and what removing our rules takes.
//!
//! Only two kinds of line are ours: every rule of our chains
//! ([`super::rules::CHAINS`]), and rules of other chains whose target is one
//! of ours. Removing exactly those (delete the jumps, flush our chains,
//! delete them) leaves every other rule and chain where it was.

use super::rules::{CHAINS, Rule};

/// The nat table as `iptables-save` printed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatTable {
    /// Every chain declared, built-in and user-defined, in order.
    pub chains: Vec<String>,
    /// Every rule, in order.
    pub rules: Vec<Rule>,
}

fn is_ours(chain: &str) -> bool {
    CHAINS.contains(&chain)
}

/// Splits a rule into words the way iptables-restore does: whitespace
/// separates, double quotes group (a comment may hold spaces), a backslash
/// escapes the next character.
fn words(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The chain a rule jumps (`-j`) or goes (`-g`) to, if it names one.
pub fn target(spec: &str) -> Option<String> {
    let w = words(spec);
    w.iter()
        .position(|t| t == "-j" || t == "-g" || t == "--jump" || t == "--goto")
        .and_then(|i| w.get(i + 1).cloned())
}

impl NatTable {
    /// Parses the `*nat` section of `iptables-save` output. No section (the
    /// table was never loaded in this namespace) is an empty table.
    pub fn parse(save: &str) -> Result<NatTable, String> {
        let mut table = NatTable::default();
        let mut in_nat = false;
        for (n, line) in save.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                in_nat = name == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if line == "COMMIT" {
                in_nat = false;
            } else if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name.is_empty() {
                    return Err(format!("line {}: a chain without a name: {line:?}", n + 1));
                }
                table.chains.push(name.to_string());
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| format!("line {}: a rule without a target: {line:?}", n + 1))?;
                table.rules.push(Rule {
                    chain: chain.to_string(),
                    spec: spec.trim().to_string(),
                });
            } else {
                return Err(format!(
                    "line {}: not a line iptables-save writes: {line:?}",
                    n + 1
                ));
            }
        }
        Ok(table)
    }

    /// Our chains that exist, in our order.
    pub fn our_chains(&self) -> Vec<&'static str> {
        CHAINS
            .iter()
            .copied()
            .filter(|c| self.chains.iter().any(|d| d == c))
            .collect()
    }

    /// Rules of other chains that jump into ours.
    pub fn jumps_into_ours(&self) -> Vec<Rule> {
        self.rules
            .iter()
            .filter(|r| !is_ours(&r.chain) && target(&r.spec).is_some_and(|t| is_ours(&t)))
            .cloned()
            .collect()
    }

    /// The rules of `chain`, in order.
    pub fn rules_of(&self, chain: &str) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|r| r.chain == chain)
            .map(|r| r.spec.as_str())
            .collect()
    }

    /// Whether any of ours is present.
    pub fn has_ours(&self) -> bool {
        !self.our_chains().is_empty() || !self.jumps_into_ours().is_empty()
    }
}

/// The `iptables-restore --noflush` input that removes ours from `table`:
/// the jumps into our chains, then our chains' rules, then our chains, in
/// one transaction. `None` when nothing of ours is there.
pub fn cleanup_script(table: &NatTable) -> Option<String> {
    if !table.has_ours() {
        return None;
    }
    let mut s = String::from("*nat\n");
    for r in table.jumps_into_ours() {
        s.push_str(&format!("-D {} {}\n", r.chain, r.spec));
    }
    let ours = table.our_chains();
    // Flush all before deleting any: ours jump to each other.
    for c in &ours {
        s.push_str(&format!("-F {c}\n"));
    }
    for c in &ours {
        s.push_str(&format!("-X {c}\n"));
    }
    s.push_str("COMMIT\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::rules::{CaptureConfig, rules};

    /// What iptables-save (nf_tables) printed on this machine after our
    /// default rules were applied next to somebody else's.
    const SAVED: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 29 02:55:36 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ISTIO_OUTPUT_NOT_NAT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -m comment --comment "kubernetes -j ISTIO_OUTPUT services" -j KUBE-SERVICES
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A OUTPUT -d 10.0.0.0/8 -j RETURN
-A POSTROUTING -s 10.1.0.0/16 -j MASQUERADE
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A KUBE-SERVICES -g ISTIO_REDIRECT
COMMIT
# Completed on Sun Nov 29 02:55:36 2026
"#;

    #[test]
    fn cleanup_removes_the_jumps_into_our_chains_and_our_chains_only() {
        let table = NatTable::parse(SAVED).expect("parses");
        assert_eq!(table.chains.len(), 9);
        let script = cleanup_script(&table).expect("something to remove");
        assert_eq!(
            script,
            "*nat
-D PREROUTING -p tcp -j ISTIO_INBOUND
-D OUTPUT -p tcp -j ISTIO_OUTPUT
-D KUBE-SERVICES -g ISTIO_REDIRECT
-F ISTIO_INBOUND
-F ISTIO_REDIRECT
-F ISTIO_IN_REDIRECT
-F ISTIO_OUTPUT
-X ISTIO_INBOUND
-X ISTIO_REDIRECT
-X ISTIO_IN_REDIRECT
-X ISTIO_OUTPUT
COMMIT
"
        );
    }

    #[test]
    fn a_table_without_ours_needs_no_cleanup() {
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                     -A OUTPUT -d 10.0.0.0/8 -j RETURN\nCOMMIT\n";
        let table = NatTable::parse(clean).expect("parses");
        assert!(!table.has_ours());
        assert_eq!(cleanup_script(&table), None);
        // No nat section at all: the table was never used.
        assert_eq!(NatTable::parse(""), Ok(NatTable::default()));
        assert_eq!(cleanup_script(&NatTable::default()), None);
    }

    #[test]
    fn a_jump_left_behind_without_our_chains_is_still_removed() {
        // Half a cleanup by hand: the chains were deleted, a jump was not
        // (iptables would refuse that, but a table edited by another tool
        // is what we read, not what we wish).
        let table = NatTable::parse(
            "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\nCOMMIT\n",
        )
        .expect("parses");
        assert_eq!(
            cleanup_script(&table).as_deref(),
            Some("*nat\n-D OUTPUT -p tcp -j ISTIO_OUTPUT\nCOMMIT\n")
        );
    }

    #[test]
    fn quoted_words_do_not_hide_or_fake_a_target() {
        assert_eq!(
            target(r#"-m comment --comment "x -j ISTIO_OUTPUT" -j KUBE-SVC"#).as_deref(),
            Some("KUBE-SVC")
        );
        assert_eq!(
            target("-g ISTIO_REDIRECT").as_deref(),
            Some("ISTIO_REDIRECT")
        );
        assert_eq!(target("-p tcp"), None);
    }

    #[test]
    fn what_we_generate_reads_back_chain_by_chain() {
        // The restore script, read as iptables-save output, gives back the
        // rules per chain in the order generated.
        let generated = rules(&CaptureConfig::default());
        let script = crate::capture::rules::restore_script(&generated, &[]);
        let table = NatTable::parse(&script).expect("parses");
        for chain in ["PREROUTING", "OUTPUT"].iter().chain(CHAINS.iter()) {
            let want: Vec<&str> = generated
                .iter()
                .filter(|r| r.chain == *chain)
                .map(|r| r.spec.as_str())
                .collect();
            assert_eq!(table.rules_of(chain), want, "{chain}");
        }
    }

    #[test]
    fn garbage_is_an_error_naming_the_line() {
        let err = NatTable::parse("*nat\n:OUTPUT ACCEPT [0:0]\nhello\nCOMMIT\n").expect_err("bad");
        assert!(err.contains("line 3"), "{err}");
    }
}
