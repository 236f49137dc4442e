use std::sync::{Arc, Mutex, PoisonError, atomic::Ordering};

use hub_runtime::{PluginInfo, PluginStats};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use hub_twin::Twin;

use crate::HostTransports;

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
    plugins: Arc<Mutex<Vec<PluginInfo>>>,
    transports: Arc<Mutex<Vec<TransportSnapshot>>>,
}

/// One host transport's counters, read at each scrape.
#[derive(Debug)]
struct TransportSnapshot {
    name: String,
    counters: std::collections::BTreeMap<String, u64>,
}

/// Host transport counters as one family, `hub_transport_events_total{transport="coap",counter="requests_in"}`:
/// each transport names its own counters, so one family with a label keeps the exposition open to new ones.
#[derive(Debug)]
struct TransportCollector(Arc<Mutex<Vec<TransportSnapshot>>>);

impl Collector for TransportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let transports = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut family = encoder.encode_descriptor(
            "transport_events",
            "Host transport counters (datagrams, requests, drops by cause, ...), by transport and counter",
            None,
            MetricType::Counter,
        )?;
        for transport in transports.iter() {
            for (counter, value) in &transport.counters {
                let labels = [("transport", transport.name.as_str()), ("counter", counter.as_str())];
                ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Per-plugin counters, read from the runtime's snapshot at each scrape, labelled `plugin="<id>"`.
#[derive(Debug)]
struct PluginCollector(Arc<Mutex<Vec<PluginInfo>>>);

type StatField = fn(&PluginStats) -> u64;

const PLUGIN_COUNTERS: &[(&str, &str, StatField)] = &[
    ("plugin_messages_in", "Inbound messages handed to the plugin", |s| s.messages_in),
    ("plugin_messages_out", "Outbound messages the plugin sent", |s| s.messages_out),
    ("plugin_updates", "Resource updates accepted from the plugin", |s| s.updates),
    ("plugin_rejects", "Updates, models and messages refused (grant, policy, validation)", |s| s.rejects),
    ("plugin_errors", "Failed calls and starts (trap, deadline, memory, garbage output)", |s| s.errors),
    ("plugin_dropped", "Inbound messages dropped (queue full, plugin stopped)", |s| s.dropped),
    ("plugin_restarts", "Instances created after a failure", |s| s.restarts),
    ("plugin_calls", "Calls made into the plugin", |s| s.calls),
];

const PLUGIN_GAUGES: &[(&str, &str, StatField)] = &[
    ("plugin_call_latency_p50_microseconds", "Median call latency over the recent window", |s| s.latency_p50_us),
    ("plugin_call_latency_p99_microseconds", "99th-percentile call latency over the recent window", |s| {
        s.latency_p99_us
    }),
];

impl Collector for PluginCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let plugins = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, help, field) in PLUGIN_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for plugin in plugins.iter() {
                let labels = [("plugin", plugin.id.as_str())];
                ConstCounter::new(field(&plugin.stats)).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, field) in PLUGIN_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for plugin in plugins.iter() {
                let labels = [("plugin", plugin.id.as_str())];
                ConstGauge::new(field(&plugin.stats) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "plugin_up",
            "1 when the plugin is running, 0 when stopped, failed or quarantined",
            None,
            MetricType::Gauge,
        )?;
        for plugin in plugins.iter() {
            let labels = [("plugin", plugin.id.as_str()), ("state", plugin.state.as_str())];
            let up = i64::from(plugin.state == hub_runtime::PluginState::Running);
            ConstGauge::new(up).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
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
            plugins: Arc::default(),
            transports: Arc::default(),
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
        registry.register_collector(Box::new(PluginCollector(m.plugins.clone())));
        registry.register_collector(Box::new(TransportCollector(m.transports.clone())));
        Metrics { registry, ..m }
    }

    pub(crate) fn observe_status(&self, status: u16) {
        self.responses.get_or_create(&StatusLabel { status }).inc();
    }

    /// Renders the OpenMetrics text exposition, refreshing the gauges read from the twin and the plugin counters
    /// from `plugins` (the runtime's `list()`).
    pub fn render(&self, twin: &Twin, plugins: Vec<PluginInfo>, transports: &HostTransports) -> String {
        *self.plugins.lock().unwrap_or_else(PoisonError::into_inner) = plugins;
        *self.transports.lock().unwrap_or_else(PoisonError::into_inner) = transports
            .iter()
            .map(|t| TransportSnapshot { name: t.name().to_owned(), counters: t.counters() })
            .collect();
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
