//! Demo controls (`AUCTION_DEMO_CONTROLS`, off by default): let a page see
//! what a dropped or refused connection really does to its transport, made
//! by the server, not by the page. Unsafe in production: anyone who can
//! reach the public port could end connections and refuse every new one.
//!
//! A connection opened with `demo=<client id>` in its URL is remembered
//! under that id while it is open. On the public port:
//!
//! - `POST /demo/{sse,ws}/drop?client=<id>&how=reset|drain` ends this
//!   replica's connections of that client: `reset` abruptly (TCP RST),
//!   `drain` as the transport ends gracefully (SSE: FIN; WebSocket: close
//!   1012). Answers `{"replica", "ended"}`: a replica holds only its own
//!   connections, so a caller behind a load balancer asks each replica in
//!   turn until one ended some. An SSE replica adds `retry_ms`, the
//!   `retry:` its streams are sent: the delay after which a browser's
//!   EventSource reconnects (a page cannot read it from EventSource).
//! - `POST /demo/{sse,ws}/refuse?seconds=N` (1 to 60) makes this replica
//!   answer every new stream or upgrade 503 `demo_refusing` with
//!   `Retry-After` for N seconds. Answers `{"replica", "refusing_s"}`.
//!
//! Off, `/demo/...` is 404 and `demo=` is ignored.

use crate::error::ApiError;
use crate::raw_http::error_response_bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use settings::{Kind, Setting};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const DEMO_CONTROLS: Setting = Setting {
    key: "demo_controls",
    kind: Kind::Flag,
    default: Some("false"),
    help: "UNSAFE IN PRODUCTION: anyone reaching the public port may end connections and refuse \
           new ones. `POST /demo/{sse,ws}/drop` and `/demo/{sse,ws}/refuse` for the comparison \
           page (see [SSE or WebSocket?](protocol.md#sse-or-websocket)); off: 404",
    secret: false,
};

/// Longest refusal period one request may ask for.
const MAX_REFUSE_S: u64 = 60;
/// Longest client id remembered.
const MAX_CLIENT_ID: usize = 64;

/// How a demo drop ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Abruptly: `SO_LINGER` 0, then close (RST).
    Reset,
    /// The transport's own graceful end.
    Drain,
}

/// The replica's demo controls.
pub struct DemoControls {
    enabled: bool,
    replica: String,
    /// The `retry:` an SSE replica sends its streams, told in its drop
    /// answers; `None` on a WebSocket replica.
    retry_ms: Option<u64>,
    state: Mutex<State_>,
}

#[derive(Default)]
struct State_ {
    next_key: u64,
    connections: HashMap<u64, (String, DemoEnd)>,
    refuse_until: Option<Instant>,
}

/// What a demo drop signals to one connection.
#[derive(Clone)]
pub struct DemoEnd {
    /// Cancelled for a drain; a child of the replica's shutdown, so that
    /// waiting on it also sees the replica's own drain.
    pub drain: CancellationToken,
    /// Cancelled for a reset.
    pub reset: CancellationToken,
}

/// A connection remembered under its client id while it lives.
pub struct DemoGuard {
    controls: Arc<DemoControls>,
    key: u64,
    pub end: DemoEnd,
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        self.controls.lock().connections.remove(&self.key);
    }
}

impl DemoControls {
    /// `retry_ms`: the `retry:` of an SSE replica's streams (`None` for a
    /// WebSocket replica).
    pub fn new(enabled: bool, replica: &str, retry_ms: Option<u64>) -> Arc<DemoControls> {
        Arc::new(DemoControls {
            enabled,
            replica: replica.to_owned(),
            retry_ms,
            state: Mutex::new(State_::default()),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> MutexGuard<'_, State_> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers a connection opened with `demo=<client>`; `None` when the
    /// controls are off or the id is unusable.
    pub fn register(
        self: &Arc<Self>,
        client: Option<&str>,
        shutdown: &CancellationToken,
    ) -> Option<DemoGuard> {
        let client = client.filter(|client| self.enabled && valid_client(client))?;
        let end = DemoEnd {
            drain: shutdown.child_token(),
            reset: CancellationToken::new(),
        };
        let mut state = self.lock();
        let key = state.next_key;
        state.next_key += 1;
        state
            .connections
            .insert(key, (client.to_owned(), end.clone()));
        Some(DemoGuard {
            controls: self.clone(),
            key,
            end,
        })
    }

    /// Ends this replica's connections of `client`; how many.
    pub fn drop_client(&self, client: &str, how: How) -> usize {
        let state = self.lock();
        let mut ended = 0;
        for (owner, end) in state.connections.values() {
            if owner == client {
                match how {
                    How::Reset => end.reset.cancel(),
                    How::Drain => end.drain.cancel(),
                }
                ended += 1;
            }
        }
        ended
    }

    /// Refuses new streams and upgrades for `period`.
    pub fn refuse_for(&self, period: Duration) {
        self.lock().refuse_until = Some(Instant::now() + period);
    }

    /// While refusing: the complete 503 response for a new stream or
    /// upgrade.
    pub fn refusal(&self) -> Option<Vec<u8>> {
        if !self.enabled {
            return None;
        }
        let left = self
            .lock()
            .refuse_until?
            .checked_duration_since(Instant::now())?;
        let retry_s = left.as_millis().div_ceil(1000).max(1) as u64;
        Some(error_response_bytes(
            503,
            "Service Unavailable",
            "demo_refusing",
            "this replica refuses new connections for a demonstration; retry",
            Some(retry_s),
        ))
    }

    /// `/demo/{transport}/drop` and `/demo/{transport}/refuse`; nothing
    /// when the controls are off.
    pub fn routes(self: &Arc<Self>, transport: &str) -> Router {
        if !self.enabled {
            return Router::new();
        }
        Router::new()
            .route(&format!("/demo/{transport}/drop"), post(drop_route))
            .route(&format!("/demo/{transport}/refuse"), post(refuse_route))
            .with_state(self.clone())
    }
}

fn valid_client(client: &str) -> bool {
    !client.is_empty()
        && client.len() <= MAX_CLIENT_ID
        && client
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

fn bad(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_demo_request", message)
}

async fn drop_route(
    State(controls): State<Arc<DemoControls>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = query
        .get("client")
        .filter(|client| valid_client(client))
        .ok_or_else(|| bad("client: 1 to 64 letters, digits, - or _"))?;
    let how = match query.get("how").map(String::as_str) {
        Some("reset") => How::Reset,
        Some("drain") => How::Drain,
        _ => return Err(bad("how: reset or drain")),
    };
    let ended = controls.drop_client(client, how);
    let mut answer = serde_json::json!({ "replica": controls.replica, "ended": ended });
    if let Some(retry_ms) = controls.retry_ms {
        answer["retry_ms"] = retry_ms.into();
    }
    Ok(Json(answer))
}

async fn refuse_route(
    State(controls): State<Arc<DemoControls>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let seconds = query
        .get("seconds")
        .and_then(|seconds| seconds.parse::<u64>().ok())
        .filter(|seconds| (1..=MAX_REFUSE_S).contains(seconds))
        .ok_or_else(|| bad("seconds: 1 to 60"))?;
    controls.refuse_for(Duration::from_secs(seconds));
    Ok(Json(
        serde_json::json!({ "replica": controls.replica, "refusing_s": seconds }),
    ))
}

/// Sets `SO_LINGER` 0 on `stream`: its close sends a reset.
pub fn linger_zero(stream: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
