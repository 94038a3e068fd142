//! The contract's metrics (names fixed by the contract), one registry per
//! process, plus what operators alert on: readiness, the connection cap and
//! the standard process metrics ([`crate::process`]). Hot paths hold
//! pre-resolved handles ([`TransportMetrics`]) so an event costs a few
//! atomic adds, not a label lookup.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::process::ProcessCollector;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Transport {
    sse,
    ws,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum ResumeOutcome {
    replayed,
    reset,
}

/// `auction_bids_total{outcome}`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum BidOutcome {
    accepted,
    too_low,
    closed,
    invalid,
    duplicate,
    /// Answered with a 5xx (Redis unavailable, or an internal error): the
    /// bid was not placed through no fault of the client's.
    server_error,
}

impl BidOutcome {
    pub const ALL: [BidOutcome; 6] = [
        BidOutcome::accepted,
        BidOutcome::too_low,
        BidOutcome::closed,
        BidOutcome::invalid,
        BidOutcome::duplicate,
        BidOutcome::server_error,
    ];
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: Transport,
}

/// `auction_connections_refused_total{transport,reason}`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum RefusalReason {
    /// The replica holds `AUCTION_MAX_CONNECTIONS`.
    replica_full,
    /// The client's address holds `AUCTION_MAX_CONNECTIONS_PER_ADDRESS`.
    per_address,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    transport: Transport,
    reason: RefusalReason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResumeLabels {
    transport: Transport,
    outcome: ResumeOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BidLabels {
    source: &'static str,
    outcome: BidOutcome,
}

/// Delivery latency buckets, seconds: 0.25 ms to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0,
    2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    connections: Family<TransportLabels, Gauge>,
    max_connections: Family<TransportLabels, Gauge>,
    connections_refused: Family<RefusalLabels, Counter>,
    events_delivered: Family<TransportLabels, Counter>,
    delivery_latency: Family<TransportLabels, Histogram, fn() -> Histogram>,
    resumes: Family<ResumeLabels, Counter>,
    replay_reads_shared: Family<TransportLabels, Counter>,
    live_resubscribes: Family<TransportLabels, Counter>,
    slow_consumer_disconnects: Family<TransportLabels, Counter>,
    direct_clients: Family<TransportLabels, Gauge>,
    bids: Family<BidLabels, Counter>,
    redis_reconnects: Counter,
    redis_out_of_memory: Counter,
    ready: Gauge,
    pub(crate) ops: crate::ops_metrics::OpsMetrics,
}

/// Pre-resolved handles for one transport's hot path.
#[derive(Clone)]
pub struct TransportMetrics {
    pub connections: Gauge,
    /// The replica's `AUCTION_MAX_CONNECTIONS`, so that alerts and
    /// dashboards can tell how near the cap `connections` is.
    pub max_connections: Gauge,
    /// Connections refused because the replica was full.
    pub refused_full: Counter,
    /// Connections refused because their client address held its cap.
    pub refused_per_address: Counter,
    pub events_delivered: Counter,
    pub delivery_latency: Histogram,
    pub resumes_replayed: Counter,
    pub resumes_reset: Counter,
    /// Replay reads a resuming client took from another client's read of
    /// the same auction and id, in flight, instead of reading itself.
    pub replay_reads_shared: Counter,
    /// Watched auctions subscribed again after their live connection (in
    /// a cluster, their primary's) was lost or their slot moved.
    pub live_resubscribes: Counter,
    pub slow_consumer_disconnects: Counter,
    /// Clients whose events the hub writes itself (parked: caught up, on
    /// a feed small enough).
    pub direct_clients: Gauge,
    /// New subscriptions refused because Redis is out of memory (the
    /// process's `auction_redis_out_of_memory_refusals_total`).
    pub redis_out_of_memory: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connections = Family::<TransportLabels, Gauge>::default();
        let max_connections = Family::<TransportLabels, Gauge>::default();
        let connections_refused = Family::<RefusalLabels, Counter>::default();
        let events_delivered = Family::<TransportLabels, Counter>::default();
        let delivery_latency =
            Family::<TransportLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let resumes = Family::<ResumeLabels, Counter>::default();
        let replay_reads_shared = Family::<TransportLabels, Counter>::default();
        let live_resubscribes = Family::<TransportLabels, Counter>::default();
        let slow_consumer_disconnects = Family::<TransportLabels, Counter>::default();
        let direct_clients = Family::<TransportLabels, Gauge>::default();
        let bids = Family::<BidLabels, Counter>::default();
        let redis_reconnects = Counter::default();
        let redis_out_of_memory = Counter::default();
        let ready = Gauge::default();
        registry.register(
            "auction_connections",
            "Open client connections on this replica",
            connections.clone(),
        );
        registry.register(
            "auction_max_connections",
            "Connections this replica admits (AUCTION_MAX_CONNECTIONS); beyond it answers 503",
            max_connections.clone(),
        );
        registry.register(
            "auction_connections_refused",
            "Client connections refused: the replica full (503) or the client's address at its cap (429)",
            connections_refused.clone(),
        );
        registry.register(
            "auction_events_delivered",
            "Events written to client sockets",
            events_delivered.clone(),
        );
        registry.register(
            "auction_delivery_latency_seconds",
            "Time from a bid's placed_at to its write on a client socket",
            delivery_latency.clone(),
        );
        registry.register(
            "auction_resumes",
            "Resume attempts by outcome",
            resumes.clone(),
        );
        registry.register(
            "auction_replay_reads_shared",
            "Replay reads taken from another client's read of the same auction and id in flight",
            replay_reads_shared.clone(),
        );
        registry.register(
            "auction_live_resubscribes",
            "Watched auctions subscribed again after their live connection (in a cluster, their primary's) was lost or their slot moved",
            live_resubscribes.clone(),
        );
        registry.register(
            "auction_slow_consumer_disconnects",
            "Connections closed because their queue overflowed",
            slow_consumer_disconnects.clone(),
        );
        registry.register(
            "auction_direct_clients",
            "Clients whose events are written by the task that received them (caught up, on a small feed)",
            direct_clients.clone(),
        );
        registry.register("auction_bids", "Bids by source and outcome", bids.clone());
        registry.register(
            "auction_redis_reconnects",
            "Reconnections to Redis",
            redis_reconnects.clone(),
        );
        registry.register(
            "auction_redis_out_of_memory_refusals",
            "Requests refused because Redis is out of memory (maxmemory reached)",
            redis_out_of_memory.clone(),
        );
        registry.register(
            "auction_ready",
            "1 while /readyz answers 200 (Redis reachable, not draining), else 0",
            ready.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        let ops = crate::ops_metrics::OpsMetrics::register(&mut registry);
        Metrics {
            registry,
            connections,
            max_connections,
            connections_refused,
            events_delivered,
            delivery_latency,
            resumes,
            replay_reads_shared,
            live_resubscribes,
            slow_consumer_disconnects,
            direct_clients,
            bids,
            redis_reconnects,
            redis_out_of_memory,
            ready,
            ops,
        }
    }

    /// Handles for `transport`; also makes its series visible at zero.
    pub fn transport(&self, transport: Transport) -> TransportMetrics {
        let labels = TransportLabels { transport };
        let refused = |reason| {
            self.connections_refused
                .get_or_create(&RefusalLabels { transport, reason })
                .clone()
        };
        let resume = |outcome| {
            self.resumes
                .get_or_create(&ResumeLabels { transport, outcome })
                .clone()
        };
        TransportMetrics {
            connections: self.connections.get_or_create(&labels).clone(),
            max_connections: self.max_connections.get_or_create(&labels).clone(),
            refused_full: refused(RefusalReason::replica_full),
            refused_per_address: refused(RefusalReason::per_address),
            events_delivered: self.events_delivered.get_or_create(&labels).clone(),
            delivery_latency: self.delivery_latency.get_or_create(&labels).clone(),
            resumes_replayed: resume(ResumeOutcome::replayed),
            resumes_reset: resume(ResumeOutcome::reset),
            replay_reads_shared: self.replay_reads_shared.get_or_create(&labels).clone(),
            live_resubscribes: self.live_resubscribes.get_or_create(&labels).clone(),
            slow_consumer_disconnects: self
                .slow_consumer_disconnects
                .get_or_create(&labels)
                .clone(),
            direct_clients: self.direct_clients.get_or_create(&labels).clone(),
            redis_out_of_memory: self.redis_out_of_memory.clone(),
        }
    }

    pub fn bid(&self, source: &'static str, outcome: BidOutcome) {
        self.bids
            .get_or_create(&BidLabels { source, outcome })
            .inc();
    }

    /// Makes every bid series visible at zero.
    pub fn register_bid_series(&self, sources: &[&'static str]) {
        for &source in sources {
            for outcome in BidOutcome::ALL {
                let _ = self.bids.get_or_create(&BidLabels { source, outcome });
            }
        }
    }

    pub fn redis_reconnects(&self) -> Counter {
        self.redis_reconnects.clone()
    }

    /// Counts a request refused because Redis is out of memory (a bid, a
    /// creation, a new subscription answered `redis_out_of_memory`).
    pub fn redis_out_of_memory(&self) -> Counter {
        self.redis_out_of_memory.clone()
    }

    /// Records whether `/readyz` would answer 200; set at every scrape, so
    /// the exposition never disagrees with the probe.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The exposition, in the OpenMetrics text format (which Prometheus
    /// scrapes natively).
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_names() {
        let metrics = Metrics::new();
        let sse = metrics.transport(Transport::sse);
        sse.connections.inc();
        sse.max_connections.set(10);
        sse.refused_per_address.inc();
        metrics.set_ready(true);
        sse.events_delivered.inc();
        sse.delivery_latency.observe(0.003);
        metrics.bid("user", BidOutcome::too_low);
        metrics.redis_reconnects().inc();
        let text = metrics.render();
        for needle in [
            "auction_connections{transport=\"sse\"} 1",
            "auction_events_delivered_total{transport=\"sse\"} 1",
            "auction_delivery_latency_seconds_bucket{le=\"0.004\",transport=\"sse\"} 1",
            "auction_resumes_total{transport=\"sse\",outcome=\"replayed\"} 0",
            "auction_slow_consumer_disconnects_total{transport=\"sse\"} 0",
            "auction_direct_clients{transport=\"sse\"} 0",
            "auction_bids_total{source=\"user\",outcome=\"too_low\"} 1",
            "auction_redis_reconnects_total 1",
            "auction_max_connections{transport=\"sse\"} 10",
            "auction_connections_refused_total{transport=\"sse\",reason=\"per_address\"} 1",
            "auction_connections_refused_total{transport=\"sse\",reason=\"replica_full\"} 0",
            "auction_ready 1",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
