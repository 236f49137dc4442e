use std::sync::atomic::Ordering;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use hub_twin::Twin;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

/// The hub's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    responses: Family<StatusLabel, Counter>,
    /// Updates accepted through `/ingest`.
    pub ingested: Counter,
    /// Open SSE and WebSocket streams.
    pub streams_open: Gauge,
    /// Events dropped by lagging streams.
    pub stream_events_dropped: Counter,
    providers: Gauge,
    resources: Gauge,
    bus_published: Gauge,
    bus_dropped: Gauge,
    updates_rejected: Gauge,
    apply_conflicts: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hub");
        let m = Metrics {
            responses: Family::default(),
            ingested: Counter::default(),
            streams_open: Gauge::default(),
            stream_events_dropped: Counter::default(),
            providers: Gauge::default(),
            resources: Gauge::default(),
            bus_published: Gauge::default(),
            bus_dropped: Gauge::default(),
            updates_rejected: Gauge::default(),
            apply_conflicts: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("http_responses", "HTTP responses by status", m.responses.clone());
        registry.register("ingested_updates", "Updates accepted through /ingest", m.ingested.clone());
        registry.register("streams_open", "Open SSE and WebSocket streams", m.streams_open.clone());
        registry.register(
            "stream_events_dropped",
            "Events dropped because a stream fell behind",
            m.stream_events_dropped.clone(),
        );
        registry.register("providers", "Providers in the twin", m.providers.clone());
        registry.register("resources", "Resources in the twin", m.resources.clone());
        registry.register("bus_events_published", "Events published on the bus", m.bus_published.clone());
        registry.register("bus_events_dropped", "Events lost by lagging bus subscribers", m.bus_dropped.clone());
        registry.register("updates_rejected", "Updates refused by model validation", m.updates_rejected.clone());
        registry.register(
            "apply_conflicts",
            "Updates persisted but not applied because of a concurrent re-declaration",
            m.apply_conflicts.clone(),
        );
        Metrics { registry, ..m }
    }

    pub(crate) fn observe_status(&self, status: u16) {
        self.responses.get_or_create(&StatusLabel { status }).inc();
    }

    /// Renders the OpenMetrics text exposition, refreshing the gauges read from the twin.
    pub fn render(&self, twin: &Twin) -> String {
        let (providers, resources) = twin.counts();
        self.providers.set(providers as i64);
        self.resources.set(resources as i64);
        let bus = twin.bus().stats();
        self.bus_published.set(bus.published.load(Ordering::Relaxed) as i64);
        self.bus_dropped.set(bus.dropped.load(Ordering::Relaxed) as i64);
        let stats = twin.stats();
        self.updates_rejected.set(stats.updates_rejected.load(Ordering::Relaxed) as i64);
        self.apply_conflicts.set(stats.apply_conflicts.load(Ordering::Relaxed) as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
