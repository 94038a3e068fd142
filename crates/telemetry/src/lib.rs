//! Observability for every process: `tracing` logs to stderr, OpenTelemetry
//! trace export over OTLP (only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set),
//! and the contract's Prometheus metrics with the standard process metrics.

mod logging;
mod metrics;
mod ops_metrics;
mod process;
mod trace;

pub use logging::{LogFormat, TelemetryGuard, init};
pub use metrics::{BidOutcome, Metrics, Transport, TransportMetrics};
pub use process::max_open_files;
pub use trace::{continue_and_link, continue_trace, current_traceparent, parse_traceparent};
