//! What operators need beside the contract's metrics: the bidder's own
//! time to answer a bid, each Redis command's time, how late auctions
//! close, admin actions, and which build runs (`auction_build_info`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Request and command latency buckets, seconds: 0.5 ms to 10 s.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Close lag buckets, seconds: 10 ms to 5 min.
const CLOSE_LAG_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    service: String,
    version: String,
}

pub(crate) struct OpsMetrics {
    bid_duration: Histogram,
    redis_command_duration: Family<CommandLabels, Histogram, fn() -> Histogram>,
    close_lag: Histogram,
    admin_actions: Family<ActionLabels, Counter>,
    build_info: Family<BuildLabels, Gauge>,
}

impl OpsMetrics {
    pub(crate) fn register(registry: &mut Registry) -> OpsMetrics {
        let ops = OpsMetrics {
            bid_duration: histogram(),
            redis_command_duration: Family::new_with_constructor(histogram),
            close_lag: Histogram::new(CLOSE_LAG_BUCKETS),
            admin_actions: Family::default(),
            build_info: Family::default(),
        };
        registry.register(
            "auction_bid_duration_seconds",
            "The bidder's own time to answer a bid request (POST /auctions/{id}/bids), from request to response",
            ops.bid_duration.clone(),
        );
        registry.register(
            "auction_redis_command_duration_seconds",
            "Time of each Redis command or script the bidder runs, by command",
            ops.redis_command_duration.clone(),
        );
        registry.register(
            "auction_close_lag_seconds",
            "How long after its end each auction was closed by the closer",
            ops.close_lag.clone(),
        );
        registry.register(
            "auction_admin_actions",
            "Admin actions applied, by action",
            ops.admin_actions.clone(),
        );
        registry.register(
            "auction_build_info",
            "Always 1; the labels say which service and version runs",
            ops.build_info.clone(),
        );
        ops
    }
}

impl crate::Metrics {
    /// The time the bidder took to answer one bid.
    pub fn bid_duration(&self, took: Duration) {
        self.ops.bid_duration.observe(took.as_secs_f64());
    }

    /// The time one Redis command or script (`command`) took.
    pub fn redis_command(&self, command: &'static str, took: Duration) {
        self.ops
            .redis_command_duration
            .get_or_create(&CommandLabels { command })
            .observe(took.as_secs_f64());
    }

    /// How long after its end an auction was closed.
    pub fn close_lag(&self, lag: Duration) {
        self.ops.close_lag.observe(lag.as_secs_f64());
    }

    /// Counts an applied admin action; [`Metrics::register_admin_actions`]
    /// shows every action's series at zero.
    pub fn admin_action(&self, action: &'static str) {
        self.ops
            .admin_actions
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    pub fn register_admin_actions(&self, actions: &[&'static str]) {
        for &action in actions {
            let _ = self
                .ops
                .admin_actions
                .get_or_create(&ActionLabels { action });
        }
    }

    /// Sets `auction_build_info{service,version} 1`.
    pub fn set_build_info(&self, service: &str, version: &str) {
        self.ops
            .build_info
            .get_or_create(&BuildLabels {
                service: service.to_owned(),
                version: version.to_owned(),
            })
            .set(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_the_operator_series() {
        let metrics = crate::Metrics::new();
        metrics.bid_duration(std::time::Duration::from_millis(3));
        metrics.redis_command("place_bid", std::time::Duration::from_millis(1));
        metrics.close_lag(std::time::Duration::from_millis(120));
        metrics.admin_action("close");
        metrics.set_build_info("bidder", "1.2.3");
        let text = metrics.render();
        for line in [
            "auction_bid_duration_seconds_count 1",
            "auction_redis_command_duration_seconds_count{command=\"place_bid\"} 1",
            "auction_close_lag_seconds_bucket{le=\"0.25\"} 1",
            "auction_admin_actions_total{action=\"close\"} 1",
            "auction_build_info{service=\"bidder\",version=\"1.2.3\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
