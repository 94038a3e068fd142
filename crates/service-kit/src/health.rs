use crate::process::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use telemetry::Metrics;

/// Readiness: Redis reachable and not draining.
#[derive(Debug, Default)]
pub struct Health {
    redis_ok: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn set_redis_ok(&self, ok: bool) {
        let was = self.redis_ok.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!("Redis is reachable");
            } else {
                tracing::warn!("Redis is unreachable");
            }
        }
    }

    pub fn redis_ok(&self) -> bool {
        self.redis_ok.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        self.redis_ok() && !self.draining()
    }
}

#[derive(Clone)]
struct OpsState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// `/healthz`, `/readyz` and `/metrics`: served only on the ops listener
/// (`AUCTION_OPS_LISTEN`), never on the public port, so whatever routes
/// the public port (an Ingress, nginx) cannot expose them.
pub(crate) fn ops_routes(ctx: &Context) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            health: ctx.health.clone(),
            metrics: ctx.metrics.clone(),
        })
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let health = &state.health;
    if health.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let reason = if health.draining() {
            "draining\n"
        } else {
            "redis unreachable\n"
        };
        (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
    }
}

async fn metrics(State(state): State<OpsState>) -> Response {
    state.metrics.set_ready(state.health.ready());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(Metrics::CONTENT_TYPE),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// How long Redis must fail every probe before a ready replica turns
/// unready (docs/api.md, "Services"). A cluster's role change or a node
/// rejoining fails some probes for a moment while the replica goes on
/// serving; turning unready on each would flap `/readyz` and take the
/// replica out of its load balancer for nothing.
pub const UNREADY_AFTER: Duration = Duration::from_secs(3);

/// Probes Redis every `interval` with `ping` (given `interval` to answer)
/// and records the result in `health`, until shutdown: ready at the first
/// answer, unready once probes have failed for [`UNREADY_AFTER`] without
/// one answering.
pub fn watch_redis<P, F>(ctx: &Context, interval: Duration, ping: P)
where
    P: Fn() -> F + Send + 'static,
    F: Future<Output = bool> + Send,
{
    let health = ctx.health.clone();
    let shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        // Since when every probe failed (none: the last one answered).
        let mut failing_since: Option<tokio::time::Instant> = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let ok = tokio::time::timeout(interval, ping())
                .await
                .unwrap_or(false);
            if ok {
                failing_since = None;
                health.set_redis_ok(true);
            } else {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= UNREADY_AFTER {
                    health.set_redis_ok(false);
                }
            }
        }
    });
}
