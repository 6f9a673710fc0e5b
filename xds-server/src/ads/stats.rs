//! Counters the ADS server keeps for `/metrics`, in a `prometheus-client`
//! registry. The debug server appends its scrape-time metrics and the
//! OpenMetrics `# EOF` line.

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tracing::warn;
use translator::ResourceType;

/// Upper bounds (seconds) of the push latency buckets, 1 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations over [`LATENCY_BUCKETS`], safe to observe from
/// many tasks. Clones share the same counts.
#[derive(Debug, Clone)]
pub struct Histogram {
    inner: histogram::Histogram,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            inner: histogram::Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        self.inner.observe(d.as_secs_f64());
    }
}

/// The label set of the per-type families: `type="CDS"` and so on.
type TypeLabel = [(&'static str, &'static str); 1];

fn type_label(kind: ResourceType) -> TypeLabel {
    [("type", kind.short())]
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

/// One counter per type in `family`, created up front so every type is
/// rendered (with 0) from the start; the handles share the family's values
/// and let the hot path skip the family's lock.
fn per_type(family: &Family<TypeLabel, Counter>) -> [Counter; 5] {
    let mut out: [Counter; 5] = Default::default();
    for kind in ResourceType::PUSH_ORDER {
        out[slot(kind)] = family.get_or_create(&type_label(kind)).clone();
    }
    out
}

/// Server-wide ADS counters, shared (`Arc`) between the stream tasks and the
/// debug endpoint that serves `/metrics`.
#[derive(Debug)]
pub struct Stats {
    registry: Registry,
    connected: Gauge,
    streams: Counter,
    rejected_streams: Counter,
    pushes: [Counter; 5],
    nacks: [Counter; 5],
    /// Time from what triggered a response (a config change or a request)
    /// until the response was accepted by the stream's send queue.
    pub push_latency: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        let mut registry = Registry::default();
        // prometheus-client appends "." to help texts and "_total" to
        // counter sample names, so neither is spelled here.
        let connected = Gauge::default();
        registry.register(
            "xds_connected_proxies",
            "ADS streams open and identified right now",
            connected.clone(),
        );
        let streams = Counter::default();
        registry.register(
            "xds_streams",
            "ADS streams accepted since start",
            streams.clone(),
        );
        let rejected_streams = Counter::default();
        registry.register(
            "xds_rejected_streams",
            "ADS streams refused because the node could not be served",
            rejected_streams.clone(),
        );
        let pushes = Family::<TypeLabel, Counter>::default();
        registry.register("xds_pushes", "xDS responses sent, by type", pushes.clone());
        let nacks = Family::<TypeLabel, Counter>::default();
        registry.register(
            "xds_nacks",
            "xDS responses rejected by proxies (NACK), by type",
            nacks.clone(),
        );
        let push_latency = Histogram::default();
        registry.register(
            "xds_push_latency_seconds",
            "Time from a config change or request to the response entering the stream's send queue",
            push_latency.inner.clone(),
        );
        Stats {
            registry,
            connected,
            streams,
            rejected_streams,
            pushes: per_type(&pushes),
            nacks: per_type(&nacks),
            push_latency,
        }
    }
}

impl Stats {
    /// Proxies with an open, identified ADS stream right now.
    pub fn connected(&self) -> i64 {
        self.connected.get()
    }

    /// Responses sent for `kind` since start.
    pub fn pushes(&self, kind: ResourceType) -> u64 {
        self.pushes[slot(kind)].get()
    }

    /// NACKs received for `kind` since start.
    pub fn nacks(&self, kind: ResourceType) -> u64 {
        self.nacks[slot(kind)].get()
    }

    /// Streams that were refused because their node could not be served.
    pub fn rejected_streams(&self) -> u64 {
        self.rejected_streams.get()
    }

    pub(crate) fn stream_opened(&self) {
        self.connected.inc();
        self.streams.inc();
    }

    pub(crate) fn stream_closed(&self) {
        self.connected.dec();
    }

    pub(crate) fn stream_rejected(&self) {
        self.rejected_streams.inc();
    }

    pub(crate) fn record_push(&self, kind: ResourceType, latency: Duration) {
        self.pushes[slot(kind)].inc();
        self.push_latency.observe(latency);
    }

    pub(crate) fn record_nack(&self, kind: ResourceType) {
        self.nacks[slot(kind)].inc();
    }

    /// These metrics in the OpenMetrics text format, names prefixed `xds_`,
    /// without the closing `# EOF` so that other sections can follow.
    pub fn render_prometheus(&self) -> String {
        let mut s = String::new();
        // Writing to a String only fails if a metric's encoder does; a
        // partial page is still more useful to a scraper than none.
        if let Err(e) = encode_registry(&mut s, &self.registry) {
            warn!(error = %e, "encoding ADS metrics");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ads_histogram_renders_cumulative_buckets() {
        let s = Stats::default();
        s.push_latency.observe(Duration::from_micros(500));
        s.push_latency.observe(Duration::from_millis(20));
        s.push_latency.observe(Duration::from_secs(60));
        let text = s.render_prometheus();
        let name = "xds_push_latency_seconds";
        assert!(
            text.contains(&format!("# TYPE {name} histogram\n")),
            "{text}"
        );
        // Same bounds as before the move to prometheus-client.
        let bounds: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
            .filter_map(|l| l.split('"').next())
            .map(str::to_string)
            .collect();
        let mut want: Vec<String> = LATENCY_BUCKETS.iter().map(|b| format!("{b:?}")).collect();
        want.push("+Inf".into());
        assert_eq!(bounds, want);
        // Cumulative: each bucket counts every observation at or below it.
        for (le, count) in [("0.001", 1), ("0.025", 2), ("10.0", 2), ("+Inf", 3)] {
            let line = format!("{name}_bucket{{le=\"{le}\"}} {count}\n");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains(&format!("{name}_count 3\n")), "{text}");
        assert!(text.contains(&format!("{name}_sum 60.0205\n")), "{text}");
    }

    #[test]
    fn ads_stats_render_every_type() {
        let s = Stats::default();
        s.stream_opened();
        s.stream_opened();
        s.stream_closed();
        s.stream_rejected();
        s.record_push(ResourceType::Cluster, Duration::from_millis(2));
        s.record_push(ResourceType::Cluster, Duration::from_millis(2));
        s.record_nack(ResourceType::Listener);
        assert_eq!(s.pushes(ResourceType::Cluster), 2);
        assert_eq!(s.nacks(ResourceType::Listener), 1);
        let text = s.render_prometheus();
        for line in [
            "# HELP xds_connected_proxies ADS streams open and identified right now.\n",
            "# TYPE xds_connected_proxies gauge\n",
            "xds_connected_proxies 1\n",
            "# TYPE xds_streams counter\n",
            "xds_streams_total 2\n",
            "xds_rejected_streams_total 1\n",
            "# HELP xds_pushes xDS responses sent, by type.\n",
            "xds_pushes_total{type=\"CDS\"} 2\n",
            "xds_pushes_total{type=\"EDS\"} 0\n",
            "xds_nacks_total{type=\"LDS\"} 1\n",
            "xds_nacks_total{type=\"SDS\"} 0\n",
            "# TYPE xds_push_latency_seconds histogram\n",
            "xds_push_latency_seconds_bucket{le=\"0.0025\"} 2\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Every type is rendered once in each per-type family.
        for family in ["xds_pushes_total{", "xds_nacks_total{"] {
            assert_eq!(text.matches(family).count(), 5, "{family} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "the debug server closes the page");
    }
}
