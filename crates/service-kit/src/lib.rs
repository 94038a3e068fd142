//! The life of a service process, shared by `bidder`, `sse-edge` and
//! `ws-edge`: read settings (exit 2 on a bad one), start telemetry, bind,
//! serve `/healthz` `/readyz` `/metrics` on the ops listener (never on the
//! public port), and on SIGTERM/SIGINT turn
//! unready, refuse new connections, drain and exit 0 within the grace period.

pub mod client_address;
pub mod connections;
pub mod demo;
pub mod edge;
mod error;
mod gate;
mod health;
pub mod process;
pub mod rate;
mod raw_http;
pub mod refusal;
pub mod security_headers;
pub mod spec;

pub use error::{ApiError, OUT_OF_MEMORY_MESSAGE, error_response};
pub use gate::{Admission, ConnectionGate, GateMetrics, Refused, address_key};
pub use health::{Health, watch_redis};
pub use process::{Common, Context, Process, bind, serve};
pub use raw_http::{
    FastPath, RequestHead, error_response_bytes, error_response_with_headers, serve_routes,
    serve_with_fast_path,
};
