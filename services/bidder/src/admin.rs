//! `/admin/...`: what the `admin` role may do (docs/api.md: "Admin"). Every
//! route needs a token with the `admin` role (a guest token minted with
//! `bidder token --role admin`, or a provider token whose `roles` claim
//! lists `admin`); any other token is answered 403 `forbidden` and changes
//! nothing.
//!
//! - `POST /admin/auctions/{id}/close|extend|cancel|delete`: one atomic
//!   script each, appending an `admin` event that names who acted;
//! - `POST /admin/bidders/{id}/suspend|reinstate`: a suspended bidder's
//!   bids are refused 403 `bidder_suspended`, their sockets told;
//! - `GET /admin/suspended`, `GET /admin/actions`: for the admin page.

use crate::api::{ApiState, invalid, json_body, json_response, not_found};
use auction_domain::{AuctionId, BidderId};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use event_log::{ActionOutcome, AuctionAction};
use identity::Identity;
use serde_json::{Map, Value, json};
use service_kit::ApiError;
use std::net::SocketAddr;
use tracing::Instrument;

/// An admin action's body is small: a reason and, for an extension, a time.
const MAX_ADMIN_BODY: usize = 4096;
/// A reason is shown on every page of the auction: kept short.
const MAX_REASON_CHARS: usize = 200;
/// How many recent actions `GET /admin/actions` shows.
const RECENT_ACTIONS: usize = 50;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/admin/auctions/{id}/{action}", post(auction_action))
        .route("/admin/bidders/{id}/{action}", post(bidder_action))
        .route("/admin/suspended", get(suspended))
        .route("/admin/actions", get(recent_actions))
}

/// The caller, if their token carries the `admin` role.
async fn admin(
    state: &ApiState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Identity, ApiError> {
    let caller = state.caller(peer, headers).await?;
    if !caller.is_admin() {
        tracing::info!(bidder_id = %caller.bidder.id, "admin action refused: no admin role");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this needs the admin role",
        ));
    }
    Ok(caller)
}

/// The body's fields: none when the body is empty, else a JSON object.
async fn fields(headers: &HeaderMap, body: Body) -> Result<Map<String, Value>, ApiError> {
    let empty = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|length| length.as_bytes() == b"0")
        || (headers.get(header::CONTENT_TYPE).is_none()
            && headers.get(header::TRANSFER_ENCODING).is_none()
            && headers.get(header::CONTENT_LENGTH).is_none());
    if empty {
        return Ok(Map::new());
    }
    let bytes = json_body(headers, body, MAX_ADMIN_BODY).await?;
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body must be a JSON object",
        )),
    }
}

/// The optional `reason`: at most 200 characters, no control characters.
fn reason(fields: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_reason",
            format!("reason must be text of at most {MAX_REASON_CHARS} characters"),
        )
    };
    match fields.get("reason") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            if text.chars().count() > MAX_REASON_CHARS || text.chars().any(char::is_control) {
                return Err(bad());
            }
            Ok((!text.trim().is_empty()).then(|| text.clone()))
        }
        Some(_) => Err(bad()),
    }
}

/// A JSON number that is a whole number (`1.5e3` and `1500.0` are 1500).
fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 9_007_199_254_740_992.0)
            .map(|f| f as u64)
    })
}

fn unknown_action() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin action")
}

/// `POST /admin/auctions/{id}/{close|extend|cancel|delete}`, in a span of
/// its own (joining the caller's trace), so its log lines carry the trace.
async fn auction_action(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!("POST /admin/auctions/{id}/{action}", otel.kind = "server", auction = %id);
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        telemetry::continue_trace(&span, traceparent);
    }
    auction_action_inner(state, peer, id, action, headers, body)
        .instrument(span)
        .await
}

async fn auction_action_inner(
    state: ApiState,
    peer: SocketAddr,
    id: String,
    action: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !matches!(action.as_str(), "close" | "extend" | "cancel" | "delete") {
        return Err(unknown_action());
    }
    let caller = admin(&state, peer, &headers).await?;
    let auction = AuctionId::parse(&id).map_err(invalid)?;
    let fields = fields(&headers, body).await?;
    let reason = reason(&fields)?;
    let action = match action.as_str() {
        "close" => AuctionAction::Close,
        "cancel" => AuctionAction::Cancel,
        "delete" => AuctionAction::Delete,
        _ => AuctionAction::Extend {
            ends_at: fields
                .get("ends_at")
                .and_then(whole_number)
                .filter(|ends_at| *ends_at <= 1 << 53)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_ends_at",
                        "send {\"ends_at\": <the new end, Unix ms>}",
                    )
                })?,
        },
    };
    let sent = std::time::Instant::now();
    let outcome = state
        .admin
        .act(&auction, action, &caller.bidder, reason.as_deref())
        .await;
    state.metrics.redis_command("admin", sent.elapsed());
    let outcome = outcome.map_err(|error| state.refuse(error))?;
    match outcome {
        ActionOutcome::Done { event, auction } => {
            tracing::info!(
                auction = %auction.id,
                action = action.as_str(),
                admin = %caller.bidder.id,
                "admin action"
            );
            state.metrics.admin_action(action.as_str());
            Ok(json_response(
                StatusCode::OK,
                json!({"action": action.as_str(), "id": event.to_string(), "auction": auction})
                    .to_string(),
            ))
        }
        ActionOutcome::Missing => Err(not_found(&id)),
        ActionOutcome::NotOpen { status } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "auction_not_open",
            format!("the auction is {status}; only delete applies"),
        )),
        ActionOutcome::NotLater { ends_at } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ends_at_not_later",
            format!("the auction ends at {ends_at}; an extension must end later"),
        )),
    }
}

/// `POST /admin/bidders/{id}/{suspend|reinstate}`.
async fn bidder_action(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !matches!(action.as_str(), "suspend" | "reinstate") {
        return Err(unknown_action());
    }
    let caller = admin(&state, peer, &headers).await?;
    let bidder = BidderId::parse(&id).map_err(invalid)?;
    let fields = fields(&headers, body).await?;
    let reason = reason(&fields)?;
    let suspend = action == "suspend";
    let changed = if suspend {
        state
            .admin
            .suspend(&bidder, &caller.bidder, reason.as_deref())
            .await
    } else {
        state
            .admin
            .reinstate(&bidder, &caller.bidder, reason.as_deref())
            .await
    }
    .map_err(|error| state.refuse(error))?;
    tracing::info!(bidder_id = %bidder, %action, admin = %caller.bidder.id, "admin action");
    state
        .metrics
        .admin_action(if suspend { "suspend" } else { "reinstate" });
    Ok(json_response(
        StatusCode::OK,
        json!({"bidder": bidder.as_str(), "suspended": suspend, "changed": changed}).to_string(),
    ))
}

/// `GET /admin/suspended`: `{"bidders":[id...]}`.
async fn suspended(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin(&state, peer, &headers).await?;
    let ids = state
        .admin
        .suspended()
        .await
        .map_err(|error| state.refuse(error))?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "bidders": ids }).to_string(),
    ))
}

/// `GET /admin/actions`: `{"actions":[...]}`, newest first.
async fn recent_actions(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin(&state, peer, &headers).await?;
    let actions = state
        .admin
        .recent(RECENT_ACTIONS)
        .await
        .map_err(|error| state.refuse(error))?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "actions": actions }).to_string(),
    ))
}
