//! Counters the ADS server keeps for `/metrics`.
//!
//! Plain atomics rather than a metrics crate: the set is small and fixed,
//! every stream task bumps them without locking, and the debug server only
//! needs the Prometheus text format, which [`Stats::render_prometheus`]
//! writes directly.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use translator::ResourceType;

/// Upper bounds (seconds) of the push latency buckets, 1 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations, safe to observe from many tasks.
///
/// Counts are stored per bucket (not cumulative) and summed when rendered,
/// so an observation is a single atomic increment plus the sum and count.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One slot per bound in [`LATENCY_BUCKETS`], plus one for `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of all observations.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Ordering::Relaxed))
    }

    /// Cumulative counts per bucket bound (the last entry is `+Inf`).
    pub fn cumulative(&self) -> Vec<(Option<f64>, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            out.push((LATENCY_BUCKETS.get(i).copied(), total));
        }
        out
    }

    /// Prometheus text for this histogram under `name`.
    pub fn render(&self, name: &str, help: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} histogram");
        for (bound, n) in self.cumulative() {
            match bound {
                Some(b) => {
                    let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {n}");
                }
                None => {
                    let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {n}");
                }
            }
        }
        let _ = writeln!(s, "{name}_sum {}", self.sum().as_secs_f64());
        let _ = writeln!(s, "{name}_count {}", self.count());
        s
    }
}

/// Server-wide ADS counters, shared (`Arc`) between the stream tasks and the
/// debug endpoint that serves `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    connected: AtomicI64,
    streams: AtomicU64,
    rejected_streams: AtomicU64,
    pushes: [AtomicU64; 5],
    nacks: [AtomicU64; 5],
    /// Time from what triggered a response (a config change or a request)
    /// until the response was accepted by the stream's send queue.
    pub push_latency: Histogram,
}

/// Index of a type in the per-type counter arrays.
fn slot(kind: ResourceType) -> usize {
    match kind {
        ResourceType::Cluster => 0,
        ResourceType::Endpoint => 1,
        ResourceType::Listener => 2,
        ResourceType::Route => 3,
        ResourceType::Secret => 4,
    }
}

impl Stats {
    /// Proxies with an open, identified ADS stream right now.
    pub fn connected(&self) -> i64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// Responses sent for `kind` since start.
    pub fn pushes(&self, kind: ResourceType) -> u64 {
        self.pushes[slot(kind)].load(Ordering::Relaxed)
    }

    /// NACKs received for `kind` since start.
    pub fn nacks(&self, kind: ResourceType) -> u64 {
        self.nacks[slot(kind)].load(Ordering::Relaxed)
    }

    /// Streams that were refused because their node could not be served.
    pub fn rejected_streams(&self) -> u64 {
        self.rejected_streams.load(Ordering::Relaxed)
    }

    pub(crate) fn stream_opened(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stream_closed(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn stream_rejected(&self) {
        self.rejected_streams.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_push(&self, kind: ResourceType, latency: Duration) {
        self.pushes[slot(kind)].fetch_add(1, Ordering::Relaxed);
        self.push_latency.observe(latency);
    }

    pub(crate) fn record_nack(&self, kind: ResourceType) {
        self.nacks[slot(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// All counters in the Prometheus text exposition format, names prefixed
    /// `xds_`, ready to be concatenated with other sections of `/metrics`.
    pub fn render_prometheus(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP xds_connected_proxies ADS streams open and identified right now."
        );
        let _ = writeln!(s, "# TYPE xds_connected_proxies gauge");
        let _ = writeln!(s, "xds_connected_proxies {}", self.connected());

        let _ = writeln!(
            s,
            "# HELP xds_streams_total ADS streams accepted since start."
        );
        let _ = writeln!(s, "# TYPE xds_streams_total counter");
        let _ = writeln!(
            s,
            "xds_streams_total {}",
            self.streams.load(Ordering::Relaxed)
        );

        let _ = writeln!(
            s,
            "# HELP xds_rejected_streams_total ADS streams refused because the node could not be served."
        );
        let _ = writeln!(s, "# TYPE xds_rejected_streams_total counter");
        let _ = writeln!(s, "xds_rejected_streams_total {}", self.rejected_streams());

        let _ = writeln!(s, "# HELP xds_pushes_total xDS responses sent, by type.");
        let _ = writeln!(s, "# TYPE xds_pushes_total counter");
        for kind in ResourceType::PUSH_ORDER {
            let _ = writeln!(
                s,
                "xds_pushes_total{{type=\"{kind}\"}} {}",
                self.pushes(kind)
            );
        }

        let _ = writeln!(
            s,
            "# HELP xds_nacks_total xDS responses rejected by proxies (NACK), by type."
        );
        let _ = writeln!(s, "# TYPE xds_nacks_total counter");
        for kind in ResourceType::PUSH_ORDER {
            let _ = writeln!(s, "xds_nacks_total{{type=\"{kind}\"}} {}", self.nacks(kind));
        }

        s.push_str(&self.push_latency.render(
            "xds_push_latency_seconds",
            "Time from a config change or request to the response entering the stream's send queue.",
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ads_histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let text = h.render("xds_t", "help");
        assert!(text.contains("# TYPE xds_t histogram"));
        assert!(text.contains("xds_t_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("xds_t_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("xds_t_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("xds_t_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("xds_t_count 3\n"));
    }

    #[test]
    fn ads_stats_render_every_type() {
        let s = Stats::default();
        s.record_push(ResourceType::Cluster, Duration::from_millis(2));
        s.record_nack(ResourceType::Listener);
        let text = s.render_prometheus();
        assert!(text.contains("xds_pushes_total{type=\"CDS\"} 1\n"));
        assert!(text.contains("xds_nacks_total{type=\"LDS\"} 1\n"));
        assert!(text.contains("xds_nacks_total{type=\"SDS\"} 0\n"));
        assert!(text.contains("# TYPE xds_push_latency_seconds histogram"));
    }
}
