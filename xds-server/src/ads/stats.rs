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

use super::limits::Limit;
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

/// Index of a limit in [`Limit::ALL`].
fn limit_slot(limit: Limit) -> usize {
    Limit::ALL
        .iter()
        .position(|l| *l == limit)
        .unwrap_or_default()
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

/// The label set of `xds_refused_requests`: `limit="name_length"` and so on.
type LimitLabel = [(&'static str, &'static str); 1];

/// One counter per [`Limit`], created up front like [`per_type`].
fn per_limit(family: &Family<LimitLabel, Counter>) -> [Counter; Limit::ALL.len()] {
    let mut out: [Counter; Limit::ALL.len()] = Default::default();
    for (i, limit) in Limit::ALL.into_iter().enumerate() {
        out[i] = family.get_or_create(&[("limit", limit.as_str())]).clone();
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
    requests: Counter,
    refused_requests: [Counter; Limit::ALL.len()],
    oversized_responses: Counter,
    slow_streams_dropped: Counter,
    open_connections: Gauge,
    refused_connections: Counter,
    tls_handshakes: Gauge,
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
        let requests = Counter::default();
        registry.register(
            "xds_requests",
            "ADS requests received on all streams",
            requests.clone(),
        );
        let refused_requests = Family::<LimitLabel, Counter>::default();
        registry.register(
            "xds_refused_requests",
            "ADS streams ended because a request went past a limit, by limit",
            refused_requests.clone(),
        );
        let oversized_responses = Counter::default();
        registry.register(
            "xds_oversized_responses",
            "ADS streams ended because a response was larger than the maximum response size",
            oversized_responses.clone(),
        );
        let slow_streams_dropped = Counter::default();
        registry.register(
            "xds_slow_streams_dropped",
            "ADS streams dropped because the proxy did not read responses within the send timeout",
            slow_streams_dropped.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "xds_open_connections",
            "xDS connections open right now, including those in their TLS handshake",
            open_connections.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "xds_refused_connections",
            "xDS connections closed right after accept because the connection limit was reached",
            refused_connections.clone(),
        );
        let tls_handshakes = Gauge::default();
        registry.register(
            "xds_tls_handshakes_in_progress",
            "TLS handshakes on the xDS port in progress right now",
            tls_handshakes.clone(),
        );
        Stats {
            registry,
            connected,
            streams,
            rejected_streams,
            pushes: per_type(&pushes),
            nacks: per_type(&nacks),
            requests,
            refused_requests: per_limit(&refused_requests),
            oversized_responses,
            slow_streams_dropped,
            open_connections,
            refused_connections,
            tls_handshakes,
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

    /// Requests received on all ADS streams since start.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// Streams ended because a request went past `limit`.
    pub fn refused_requests(&self, limit: Limit) -> u64 {
        self.refused_requests[limit_slot(limit)].get()
    }

    /// Streams ended because a response was too large to send.
    pub fn oversized_responses(&self) -> u64 {
        self.oversized_responses.get()
    }

    /// Streams dropped because their proxy stopped reading.
    pub fn slow_streams_dropped(&self) -> u64 {
        self.slow_streams_dropped.get()
    }

    /// xDS connections open right now.
    pub fn open_connections(&self) -> i64 {
        self.open_connections.get()
    }

    /// xDS connections closed at accept because of the connection limit.
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections.get()
    }

    /// TLS handshakes in progress right now.
    pub fn tls_handshakes(&self) -> i64 {
        self.tls_handshakes.get()
    }

    pub(crate) fn request_received(&self) {
        self.requests.inc();
    }

    pub(crate) fn request_refused(&self, limit: Limit) {
        self.refused_requests[limit_slot(limit)].inc();
    }

    pub(crate) fn response_oversized(&self) {
        self.oversized_responses.inc();
    }

    pub(crate) fn slow_stream_dropped(&self) {
        self.slow_streams_dropped.inc();
    }

    pub(crate) fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.open_connections.dec();
    }

    pub(crate) fn connection_refused(&self) {
        self.refused_connections.inc();
    }

    pub(crate) fn handshake_started(&self) {
        self.tls_handshakes.inc();
    }

    pub(crate) fn handshake_finished(&self) {
        self.tls_handshakes.dec();
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
            "xds_requests_total 0\n",
            "xds_refused_requests_total{limit=\"name_length\"} 0\n",
            "xds_slow_streams_dropped_total 0\n",
            "xds_open_connections 0\n",
            "xds_refused_connections_total 0\n",
            "xds_tls_handshakes_in_progress 0\n",
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
