//! The numbers of a run, computed from the [`ProxyRecord`]s, and the one
//! table the benchmark prints (a column per run: SotW, delta).

use super::record::ProxyRecord;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;
use translator::ResourceType;

/// Nearest-rank percentiles of a set of durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub count: usize,
}

/// Nearest-rank percentiles of `values`; `None` when there are none.
pub fn percentiles(mut values: Vec<Duration>) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort();
    let n = values.len();
    // The smallest value with at least p% of them at or below it.
    let rank = |p: usize| values.get((p * n).div_ceil(100).max(1) - 1).copied();
    Some(Percentiles {
        p50: rank(50)?,
        p99: rank(99)?,
        max: *values.last()?,
        count: values.len(),
    })
}

/// The server's memory and CPU, from /proc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerUsage {
    /// Before any proxy connected.
    pub rss_idle_kib: u64,
    /// Once the proxies were synced.
    pub rss_synced_kib: u64,
    /// Peak RSS over the whole run (VmHWM).
    pub peak_kib: u64,
    /// CPU from the first connect until all were synced.
    pub cpu_sync: Duration,
    /// CPU over the process's whole life.
    pub cpu_total: Duration,
}

/// What one config change caused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeResult {
    /// Proxies that received at least one response after the change.
    pub pushed: usize,
    /// From the change to the last ACK of a response it caused; `None` if
    /// nothing was pushed before the timeout.
    pub last_ack: Option<Duration>,
    /// Per pushed proxy: from the change to its last ACK.
    pub per_proxy: Option<Percentiles>,
    pub responses: usize,
    pub bytes: u64,
    pub nacks: usize,
    /// Server CPU spent from the change until the pushes settled.
    pub server_cpu: Option<Duration>,
}

/// What happened after a change at `t0`, from the records.
pub fn change_result(records: &[ProxyRecord], t0: Duration) -> ChangeResult {
    let mut out = ChangeResult::default();
    let mut per_proxy = Vec::new();
    for r in records {
        let mut last = None;
        for response in r.since(t0) {
            out.responses += 1;
            out.bytes += response.bytes as u64;
            out.nacks += usize::from(response.nack);
            last = last.max(response.acked);
        }
        if let Some(last) = last {
            out.pushed += 1;
            per_proxy.push(last.saturating_sub(t0));
        }
    }
    out.last_ack = per_proxy.iter().max().copied();
    out.per_proxy = percentiles(per_proxy);
    out
}

/// Everything a run measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    pub delta: bool,
    pub proxies: usize,
    pub synced: usize,
    pub connected: usize,
    /// Per proxy: from the start of the run (all connect at once) to the
    /// ACK that completed its first full sync.
    pub sync: Option<Percentiles>,
    /// Resets before every proxy was synced (or the sync timeout), and how
    /// many proxies had one.
    pub connect_resets: u32,
    pub proxies_reset: usize,
    /// Connections the kernel dropped from a full accept queue while the
    /// proxies connected (machine-wide; nothing else on a benchmark
    /// machine connects in bursts).
    pub listen_overflows: Option<u64>,
    /// Why the proxies reset during connect last were, and how many.
    pub reset_reasons: BTreeMap<String, usize>,
    /// Median over proxies of the bytes received until synced, in total
    /// and per type.
    pub full_push_bytes: u64,
    pub full_push_by_type: BTreeMap<ResourceType, u64>,
    /// Resources per type a proxy holds (median).
    pub resources_by_type: BTreeMap<ResourceType, u64>,
    pub nacks: usize,
    pub server: Option<ServerUsage>,
    pub mesh_changes: Vec<ChangeResult>,
    pub namespace_changes: Vec<ChangeResult>,
    /// CPU the load generator itself used (it shares the machine).
    pub load_cpu: Duration,
    /// The load generator's resident memory once all proxies synced (it
    /// shares the machine's memory too).
    pub load_rss_kib: Option<u64>,
    /// The floor for a full push to as many proxies (`floor.rs`), when
    /// measured.
    pub floor: Option<super::floor::Floor>,
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// The initial-sync numbers of `records`, where `until` is when the sync
/// phase ended.
pub fn sync_numbers(records: &[ProxyRecord], until: Duration, report: &mut RunReport) {
    report.proxies = records.len();
    report.synced = records.iter().filter(|r| r.first_synced.is_some()).count();
    report.connected = records.iter().filter(|r| r.connected).count();
    report.sync = percentiles(records.iter().filter_map(|r| r.first_synced).collect());
    for r in records {
        let resets = r.reset_times.iter().filter(|t| **t <= until).count();
        report.connect_resets += u32::try_from(resets).unwrap_or(u32::MAX);
        report.proxies_reset += usize::from(resets > 0);
        if let Some(why) = r.last_reset.as_ref().filter(|_| resets > 0) {
            *report.reset_reasons.entry(why.clone()).or_default() += 1;
        }
    }
    let mut totals = Vec::new();
    let mut by_type: BTreeMap<ResourceType, Vec<u64>> = BTreeMap::new();
    let mut counts: BTreeMap<ResourceType, Vec<u64>> = BTreeMap::new();
    for r in records {
        let Some(synced) = r.first_synced else {
            continue;
        };
        let mut total = 0;
        let mut per: BTreeMap<ResourceType, u64> = BTreeMap::new();
        let mut held: BTreeMap<ResourceType, u64> = BTreeMap::new();
        for response in r.responses.iter().filter(|x| x.received <= synced) {
            total += response.bytes as u64;
            *per.entry(response.kind).or_default() += response.bytes as u64;
            // State of the world: the last response is all there is; delta:
            // the sum of what arrived (nothing is removed during a sync).
            let n = response.resources as u64;
            let slot = held.entry(response.kind).or_default();
            *slot = if report.delta { *slot + n } else { n };
        }
        totals.push(total);
        for (kind, bytes) in per {
            by_type.entry(kind).or_default().push(bytes);
        }
        for (kind, n) in held {
            counts.entry(kind).or_default().push(n);
        }
    }
    report.full_push_bytes = median(totals);
    report.full_push_by_type = by_type.into_iter().map(|(k, v)| (k, median(v))).collect();
    report.resources_by_type = counts.into_iter().map(|(k, v)| (k, median(v))).collect();
    report.nacks = records
        .iter()
        .flat_map(|r| &r.responses)
        .filter(|x| x.nack)
        .count();
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn triple(p: Option<Percentiles>) -> String {
    match p {
        Some(p) => format!("{} / {} / {} s", secs(p.p50), secs(p.p99), secs(p.max)),
        None => "-".to_string(),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn bytes(b: u64) -> String {
    if b >= 1024 * 1024 {
        format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// The last-ACK times of a series of changes (p50/p99/max over changes),
/// with the proxies pushed per change.
fn change_rows(changes: &[ChangeResult]) -> (String, String, String, String) {
    let times = percentiles(changes.iter().filter_map(|c| c.last_ack).collect());
    let missed = changes.iter().filter(|c| c.last_ack.is_none()).count();
    let mut last = triple(times);
    if missed > 0 {
        let _ = write!(last, " ({missed} of {} not pushed)", changes.len());
    }
    let mut pushed: Vec<usize> = changes.iter().map(|c| c.pushed).collect();
    pushed.sort_unstable();
    pushed.dedup();
    let pushed = pushed
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let pooled = percentiles(
        changes
            .iter()
            .filter_map(|c| c.per_proxy)
            .map(|p| p.p99)
            .collect(),
    )
    .map(|p| format!("{} s", secs(p.max)))
    .unwrap_or_else(|| "-".into());
    let cpu = percentiles(changes.iter().filter_map(|c| c.server_cpu).collect())
        .map(|p| format!("{} s (max {})", secs(p.p50), secs(p.max)))
        .unwrap_or_else(|| "-".into());
    (last, pushed, pooled, cpu)
}

/// The benchmark's table: one row per measure, one column per run.
pub fn table(runs: &[RunReport]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, cell: &dyn Fn(&RunReport) -> String| {
        rows.push((label.to_string(), runs.iter().map(cell).collect()));
    };
    row("protocol", &|r| {
        if r.delta { "delta" } else { "SotW" }.to_string()
    });
    row("proxies connected / synced / asked", &|r| {
        format!("{} / {} / {}", r.connected, r.synced, r.proxies)
    });
    row("initial sync, all at once (p50/p99/max)", &|r| {
        triple(r.sync)
    });
    row("resets during connect (proxies)", &|r| {
        format!("{} ({})", r.connect_resets, r.proxies_reset)
    });
    row("kernel accept-queue overflows during connect", &|r| {
        r.listen_overflows
            .map_or_else(|| "-".to_string(), |n| n.to_string())
    });
    row("bytes per full push (per proxy)", &|r| {
        bytes(r.full_push_bytes)
    });
    row("  of which CDS / EDS / LDS / RDS / SDS", &|r| {
        ResourceType::PUSH_ORDER
            .map(|k| bytes(r.full_push_by_type.get(&k).copied().unwrap_or(0)))
            .join(" / ")
    });
    row("clusters / endpoints per proxy", &|r| {
        let of = |k| r.resources_by_type.get(&k).copied().unwrap_or(0);
        format!(
            "{} / {}",
            of(ResourceType::Cluster),
            of(ResourceType::Endpoint)
        )
    });
    row("server RSS idle / synced / peak", &|r| match r.server {
        Some(s) => format!(
            "{} / {} / {}",
            mib(s.rss_idle_kib),
            mib(s.rss_synced_kib),
            mib(s.peak_kib)
        ),
        None => "-".into(),
    });
    row(
        "server RSS per proxy (synced - idle)",
        &|r| match r.server {
            Some(s) if r.synced > 0 => format!(
                "{:.2} MiB",
                s.rss_synced_kib.saturating_sub(s.rss_idle_kib) as f64 / 1024.0 / r.synced as f64
            ),
            _ => "-".into(),
        },
    );
    row(
        "server CPU: connect+sync / whole run",
        &|r| match r.server {
            Some(s) => format!("{} / {} s", secs(s.cpu_sync), secs(s.cpu_total)),
            None => "-".into(),
        },
    );
    for (label, pick) in [
        (
            "mesh-wide PA change",
            (|r: &RunReport| &r.mesh_changes) as fn(&RunReport) -> &Vec<ChangeResult>,
        ),
        ("one-namespace PA change", |r: &RunReport| {
            &r.namespace_changes
        }),
    ] {
        let rows_of = |r: &RunReport| change_rows(pick(r));
        row(
            &format!("{label} -> last ACK (p50/p99/max over changes)"),
            &|r| {
                let n = pick(r).len();
                format!("{} [{n} changes]", rows_of(r).0)
            },
        );
        row("  proxies pushed per change", &|r| rows_of(r).1);
        row("  worst per-proxy p99 of a change", &|r| rows_of(r).2);
        row("  server CPU per change (p50)", &|r| rows_of(r).3);
    }
    row(
        "floor: encode one full push once, write it to N sockets",
        &|r| {
            r.floor.map_or_else(
                || "-".into(),
                |f| {
                    format!(
                        "{} s (encode {} s, {})",
                        secs(f.total()),
                        secs(f.encode),
                        bytes(f.bytes)
                    )
                },
            )
        },
    );
    row("  initial sync max / floor", &|r| match (r.floor, r.sync) {
        (Some(f), Some(sync)) if !f.total().is_zero() => {
            format!("{:.1}x", sync.max.as_secs_f64() / f.total().as_secs_f64())
        }
        _ => "-".into(),
    });
    row("NACKs", &|r| r.nacks.to_string());
    row("load generator CPU (same machine)", &|r| {
        format!("{} s", secs(r.load_cpu))
    });
    row(
        "load generator RSS when synced",
        &|r| match r.load_rss_kib {
            Some(kib) => format!("{} MiB", kib / 1024),
            None => "-".into(),
        },
    );

    let label_width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..runs.len())
        .map(|i| {
            rows.iter()
                .filter_map(|(_, cells)| cells.get(i))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (label, cells) in &rows {
        let _ = write!(out, "{label:<label_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(out, "  | {cell:<width$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::record::ResponseRecord;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        let p = percentiles(values).expect("some");
        assert_eq!(
            (p.p50, p.p99, p.max, p.count),
            (ms(50), ms(99), ms(100), 100)
        );
        let one = percentiles(vec![ms(7)]).expect("one");
        assert_eq!((one.p50, one.p99, one.max), (ms(7), ms(7), ms(7)));
        assert_eq!(percentiles(Vec::new()), None);
    }

    fn response(received: u64, acked: u64) -> ResponseRecord {
        ResponseRecord {
            kind: ResourceType::Listener,
            version: "v".into(),
            bytes: 100,
            resources: 2,
            received: ms(received),
            acked: Some(ms(acked)),
            nack: false,
        }
    }

    #[test]
    fn a_change_counts_the_proxies_pushed_after_it_and_their_last_ack() {
        let pushed_twice = ProxyRecord {
            responses: vec![response(5, 6), response(110, 120), response(130, 150)],
            ..Default::default()
        };
        let untouched = ProxyRecord {
            responses: vec![response(5, 6)],
            ..Default::default()
        };
        let pushed_once = ProxyRecord {
            responses: vec![response(105, 111)],
            ..Default::default()
        };
        let out = change_result(&[pushed_twice, untouched, pushed_once], ms(100));
        assert_eq!(out.pushed, 2);
        assert_eq!(out.responses, 3);
        assert_eq!(out.last_ack, Some(ms(50)));
        assert_eq!(out.per_proxy.map(|p| p.p50), Some(ms(11)));

        let nothing = change_result(&[ProxyRecord::default()], ms(100));
        assert_eq!((nothing.pushed, nothing.last_ack), (0, None));
    }
}
