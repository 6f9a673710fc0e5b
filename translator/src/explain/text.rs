//! [`Explanation`] as text for a terminal: one section per side of the
//! request, the verdict last.

use super::data::{Explanation, server_by_text};
use std::fmt::Write;

fn labels(l: &crate::model::Labels) -> String {
    let pairs: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// The explanation as `xds-server explain` prints it.
pub fn render_text(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} -> {}", e.from, e.to);

    let _ = writeln!(out, "\nCLIENT");
    let c = &e.client;
    if c.sidecar {
        let _ = writeln!(
            out,
            "  {} (service account {}): has a sidecar",
            c.workload, c.service_account
        );
        if let Some(by) = &c.scoped_by {
            let _ = writeln!(out, "  outbound scope: {by}");
        }
    } else {
        let _ = writeln!(
            out,
            "  {} (service account {}): no sidecar, so it sends the application's plaintext and no DestinationRule applies",
            c.workload, c.service_account
        );
    }

    let s = &e.service;
    let _ = writeln!(
        out,
        "\nSERVICE\n  {}:{} (port name {}, protocol {})",
        s.fqdn,
        s.port,
        if s.port_name.is_empty() {
            "unnamed"
        } else {
            &s.port_name
        },
        format!("{:?}", s.protocol).to_lowercase()
    );

    if c.sidecar {
        let _ = writeln!(out, "\nDESTINATION RULES (lookup, as istiod's)");
        for (i, step) in e.lookup.iter().enumerate() {
            match &step.host {
                None => {
                    let _ = writeln!(out, "  {}. {}: no rule for this host", i + 1, step.searched);
                }
                Some(host) => {
                    let _ = writeln!(
                        out,
                        "  {}. {}: host {host}{}",
                        i + 1,
                        step.searched,
                        if step.ended {
                            ""
                        } else {
                            ", none exported here"
                        }
                    );
                    for cand in &step.candidates {
                        let names: Vec<String> =
                            cand.rules.iter().map(ToString::to_string).collect();
                        let sel = cand
                            .selector
                            .as_ref()
                            .map(|l| format!(" [workloadSelector {}]", labels(l)))
                            .unwrap_or_default();
                        let _ =
                            writeln!(out, "       {}{sel}: {}", names.join(" + "), cand.verdict);
                    }
                }
            }
        }
        match &e.destination_rule {
            None => {
                let _ = writeln!(
                    out,
                    "  result: no rule applies, auto mTLS decides per endpoint"
                );
            }
            Some(r) => {
                let names: Vec<String> = r.rules.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    out,
                    "  result: {} (merged for {})",
                    names.join(" + "),
                    r.host
                );
                let policy = r
                    .traffic_policy_from
                    .as_ref()
                    .map_or_else(|| "none".to_string(), ToString::to_string);
                let _ = writeln!(out, "    trafficPolicy from: {policy}");
                let _ = writeln!(
                    out,
                    "    tls: {}{}",
                    r.tls,
                    if r.port_level {
                        " (portLevelSettings for this port)"
                    } else {
                        ""
                    }
                );
                if let Some(v) = &r.verify {
                    let _ = writeln!(out, "    server verified: {v}");
                }
                if let Some(sni) = &r.sni {
                    let _ = writeln!(out, "    sni: {sni}");
                }
                if !r.subject_alt_names.is_empty() {
                    let _ = writeln!(
                        out,
                        "    subjectAltNames: {}",
                        r.subject_alt_names.join(", ")
                    );
                }
                if !r.subsets.is_empty() {
                    let _ = writeln!(out, "    subsets: {}", r.subsets.join(", "));
                }
                if let Some(note) = &r.note {
                    let _ = writeln!(out, "    note: {note}");
                }
            }
        }
    }

    let _ = writeln!(out, "\nENDPOINTS");
    if e.endpoints.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for ep in &e.endpoints {
        let server = match ep.server_mode {
            Some(m) => format!(
                "server {} ({})",
                format!("{m:?}").to_uppercase(),
                server_by_text(ep.server_by.as_ref(), ep.server_scope)
            ),
            None => "no sidecar: nothing enforces mTLS".into(),
        };
        let _ = writeln!(out, "  {} {}:{}  {server}", ep.workload, ep.ip, ep.port);
        let _ = writeln!(
            out,
            "    client sends {}: {}",
            ep.client_sends.as_str(),
            ep.why
        );
        let _ = writeln!(out, "    -> {}", ep.outcome);
    }

    let _ = writeln!(out, "\nOUTCOME\n  {}", e.outcome);
    if let Some(r) = &e.reason {
        let _ = writeln!(out, "  because {r}");
    }
    out
}
