//! The bidder's HTTP API (docs/api.md).
//!
//! Reading is open to everyone. Writing needs a bearer token: bids are tied
//! to the token's bidder (never to anything in the body) and rate-limited
//! per bidder and per client address (so identities minted for free cannot
//! multiply one address's rate); creating auctions also needs the `seller`
//! role. `POST /sessions` has a per-address limit of its own; refused
//! tokens are charged to the address's write limit.

use crate::rate_limit::RateLimiter;
use auction_domain::{
    AuctionId, BidRequest, BidSource, BidderId, BidderName, IdempotencyKey, InputError, Seller,
    parse_bid_request, parse_create_request,
};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use event_log::{
    Admin, AuctionRules, AuctionSpec, AuctionWriter, BidAnswer, BidOrder, Catalogue, CreateOutcome,
    ListCursor, LogError,
};
use identity::{Authenticator, Identity, TokenError};
use serde_json::{Value, json};
use service_kit::ApiError;
use service_kit::client_address::ClientAddress;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use telemetry::{BidOutcome, Metrics};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

/// Request bodies larger than this get 413 (a bid, a session).
const MAX_BODY: usize = 4096;
/// A new auction's body may be larger: its description and its terms are
/// each up to 2,000 characters, each up to 4 bytes of UTF-8, or 12 as a
/// JSON escape pair (`\ud83d\ude00`), beside a title and the rest.
const MAX_CREATE_BODY: usize = 64 * 1024;
/// `GET /auctions` pages: `?limit=` up to this many, this many by default.
const LIST_MAX_LIMIT: usize = 100;
const LIST_DEFAULT_LIMIT: usize = 50;
const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Clone)]
pub struct ApiState {
    pub writer: AuctionWriter,
    /// The `/admin/...` routes' writes and reads (`crate::admin`).
    pub admin: Admin,
    pub catalogue: Catalogue,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    /// For bids and auction creation (every identity from one address
    /// together) and refused tokens, per client address.
    pub address_limiter: Arc<RateLimiter<IpAddr>>,
    /// For `POST /sessions`, per client address: a session is free, so
    /// minting them is limited on its own.
    pub session_limiter: Arc<RateLimiter<IpAddr>>,
    /// For `GET /auctions`, per client address: the one read that costs
    /// a page of Redis reads.
    pub list_limiter: Arc<RateLimiter<IpAddr>>,
    /// For bids and auction creation: one bucket per bidder, so users
    /// behind one address (or one ws-edge) do not share a limit.
    pub bidder_limiter: Arc<RateLimiter<BidderId>>,
    pub clients: ClientAddress,
    /// `AUCTION_SOFT_CLOSE_MS`: for auctions created without their own.
    pub default_soft_close_ms: u64,
}

pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/sessions", post(create_session))
        .route("/auctions", post(create_auction).get(list_auctions))
        .route("/auctions/{id}", get(get_auction))
        .route("/auctions/{id}/bids", post(place_bid))
        .route("/auctions/{id}/me", get(my_standing))
        .route("/openapi.json", get(openapi))
        .merge(crate::admin::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        // In the documented error shape, as every other refusal (axum's
        // own 405 has an empty body); `Allow` is kept.
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .with_state(state)
        .layer(axum::middleware::from_fn(bearer_challenge))
        .layer(axum::middleware::from_fn(close_when_body_unread))
}

/// A request answered before its body was read (a 429, 401 or 413 is
/// decided before reading) leaves the rest of that body on the connection,
/// so the connection cannot carry another request and is closed. The
/// answer says so with `Connection: close` (RFC 9112, 9.6), rather than the
/// client finding a reset on its next request.
async fn close_when_body_unread(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::body::HttpBody;
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next
            .run(axum::extract::Request::from_parts(parts, body))
            .await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let body = Body::new(ReadToEnd {
        inner: body,
        read: read.clone(),
    });
    let mut response = next
        .run(axum::extract::Request::from_parts(parts, body))
        .await;
    if !read.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records when it has been read to its end.
struct ReadToEnd {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl axum::body::HttpBody for ReadToEnd {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Every 401 says which scheme is expected (RFC 6750).
async fn bearer_challenge(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// `AUCTION_CORS_ALLOWED_ORIGINS`: which origins' pages may read the
/// API's answers from a browser (docs/pages.md, "Security headers and CORS").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: any origin (the API uses no cookies; tokens travel in
    /// `Authorization`, which a page must hold to send).
    Any,
    /// These origins only; none (the default): same-origin pages only, as
    /// behind nginx, where the pages and the API share one origin.
    Only(Vec<HeaderValue>),
}

impl CorsOrigins {
    pub fn read(settings: &settings::Settings) -> Result<CorsOrigins, settings::SettingError> {
        const KEY: &settings::Setting = &service_kit::spec::bidder::CORS_ALLOWED_ORIGINS;
        let items = settings.list(KEY)?;
        if items.iter().any(|item| item == "*") {
            return match items.len() {
                1 => Ok(CorsOrigins::Any),
                _ => Err(settings.error(KEY, "\"*\" allows every origin; list no other with it")),
            };
        }
        items
            .iter()
            .map(|item| {
                service_kit::security_headers::parse_origin(item)
                    .and_then(|origin| {
                        HeaderValue::try_from(origin).map_err(|error| error.to_string())
                    })
                    .map_err(|problem| settings.error(KEY, problem))
            })
            .collect::<Result<_, _>>()
            .map(CorsOrigins::Only)
    }
}

/// The API's CORS: the allowed origins may call it (a preflight answers
/// for the methods and request headers it takes) and may read `Retry-After`
/// from its answers (errors included); any other origin gets no
/// `Access-Control-Allow-Origin`, so its pages cannot read an answer.
pub fn cors_layer(origins: &CorsOrigins) -> CorsLayer {
    let allow = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::Only(list) => AllowOrigin::list(list.iter().cloned()),
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("traceparent"),
        ])
        .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
        .max_age(std::time::Duration::from_secs(600))
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

pub(crate) fn invalid(error: InputError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, error.code, error.message)
}

fn unavailable(error: LogError) -> ApiError {
    match error {
        LogError::Unavailable(message) => {
            tracing::warn!(%message, "Redis unavailable");
            ApiError::redis_unavailable()
        }
        LogError::NotReplicated(message) => {
            // Applied on the primary but not yet on enough replicas: a
            // retry with the same Idempotency-Key gets the same answer
            // once it is replicated, and appends nothing twice.
            tracing::warn!(%message, "bid not replicated in time");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_replicated",
                "the bid was not confirmed by enough Redis replicas in time; retry with the same Idempotency-Key",
            )
            .retry_after(1)
        }
        LogError::Unknown(message) => {
            tracing::warn!(%message, "Redis did not answer a write");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                "the event store did not answer in time and may still apply this request; \
                 repeat it to learn the outcome",
            )
            .retry_after(1)
        }
        LogError::OutOfMemory(message) => {
            tracing::warn!(%message, "Redis refused a write: out of memory");
            ApiError::redis_out_of_memory()
        }
        LogError::Corrupt(message) => {
            tracing::error!(%message, "unexpected data in Redis");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "unexpected data in the event store",
            )
        }
    }
}

/// A bid sent to Redis that got no answer: Redis may have appended it, or
/// may still (a stalled Redis runs the queued script when it resumes). Not
/// `redis_unavailable`, which means nothing happened: a client told that
/// would bid again and end with two bids, or be refused against its own.
fn outcome_unknown(keyed: bool) -> ApiError {
    let message = if keyed {
        "the bid may have been placed; retry with the same Idempotency-Key to learn its outcome"
    } else {
        "the bid may have been placed; send an Idempotency-Key with bids to learn the outcome \
         by retrying"
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "bid_outcome_unknown",
        message,
    )
    .retry_after(1)
}

/// A bid appended on the primary (its script answered) that enough
/// replicas did not confirm: `WAIT` timed out, was refused (the node had
/// just become a replica) or lost its connection. The bid stands unless a
/// failover loses it; a retry with the same Idempotency-Key answers the
/// one bid (201 once replicated), or places it once if a failover lost it.
fn not_replicated(keyed: bool) -> ApiError {
    let message = if keyed {
        "the bid was placed but not confirmed by enough Redis replicas in time; \
         retry with the same Idempotency-Key"
    } else {
        "the bid was placed but not confirmed by enough Redis replicas in time; \
         send an Idempotency-Key with bids to confirm it by retrying"
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_replicated", message).retry_after(1)
}

pub(crate) fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no auction with id {id:?}"),
    )
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

impl ApiState {
    /// The answer to a failed Redis call, counting refusals for memory.
    pub(crate) fn refuse(&self, error: LogError) -> ApiError {
        if matches!(error, LogError::OutOfMemory(_)) {
            self.metrics.redis_out_of_memory().inc();
        }
        unavailable(error)
    }

    fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        self.clients.of(peer, headers)
    }

    fn rate_limit(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
        self.address_limiter
            .check(&self.client_ip(peer, headers), Instant::now())
            .map_err(rate_limited)
    }

    /// The caller of a write route: their token checked, then their own
    /// rate limit and their address's (one address with many identities
    /// shares the address's rate). A refused token is charged to the
    /// address too, so a flood of bad tokens is limited as well.
    pub(crate) async fn caller(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Identity, ApiError> {
        let verified = match headers.get(header::AUTHORIZATION) {
            None => Err(TokenError::Missing),
            Some(value) => match value.to_str().ok().and_then(identity::bearer_token) {
                None => Err(TokenError::Invalid("not a Bearer authorization".into())),
                Some(token) => self.auth.verify(token).await,
            },
        };
        match verified {
            Ok(caller) => {
                let now = Instant::now();
                self.bidder_limiter
                    .check(&caller.bidder.id, now)
                    .map_err(rate_limited)?;
                self.address_limiter
                    .check(&self.client_ip(peer, headers), now)
                    .map_err(rate_limited)?;
                Ok(caller)
            }
            Err(error) => {
                self.rate_limit(peer, headers)?;
                if let TokenError::Invalid(reason) = &error {
                    tracing::debug!(%reason, "token refused");
                }
                if let TokenError::Unavailable { retry_after_s } = error {
                    // Not a refusal: the token may well be good once the
                    // provider's keys are in.
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        error.code(),
                        error.message(),
                    )
                    .retry_after(retry_after_s));
                }
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    error.code(),
                    error.message(),
                ))
            }
        }
    }
}

fn rate_limited(seconds: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests from this client; slow down",
    )
    .retry_after(seconds)
}

/// Reads a JSON body: 415 unless `Content-Type` is JSON, 413 over 4 KiB.
pub(crate) async fn json_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<Bytes, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.len() > 5 && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
        });
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body must be at most {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large())
}

/// `POST /sessions {"name"}`: a guest session for `name`.
async fn create_session(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state
        .session_limiter
        .check(&state.client_ip(peer, &headers), Instant::now())
        .map_err(rate_limited)?;
    let Some(guest) = state.auth.guest() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "sessions_disabled",
            "guest sessions are off here; sign in with the identity provider",
        ));
    };
    let body = json_body(&headers, body, MAX_BODY).await?;
    let name = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(object)) => match object.get("name") {
            Some(Value::String(name)) => BidderName::parse(name).map_err(invalid)?,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_name",
                    "send {\"name\": \"<display name>\"}",
                ));
            }
        },
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "the body must be a JSON object",
            ));
        }
    };
    let session = guest.mint(&name, &[]).map_err(|message| {
        tracing::error!(%message, "cannot mint a session");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot sign a token",
        )
    })?;
    tracing::info!(bidder_id = %session.bidder_id, "guest session created");
    let mut response = json_response(
        StatusCode::CREATED,
        serde_json::to_string(&session).unwrap_or_default(),
    );
    // A bearer token: no cache (a browser's, a proxy's) may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn create_auction(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = state.caller(peer, &headers).await?;
    if !caller.is_seller() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "creating auctions needs the seller role",
        ));
    }
    let body = json_body(&headers, body, MAX_CREATE_BODY).await?;
    let request = parse_create_request(&body).map_err(invalid)?;
    let explicit_id = request.id.is_some();
    let mut spec = AuctionSpec {
        id: request.id.unwrap_or_else(random_id),
        title: request.title,
        starting_price: request.starting_price,
        min_increment: request.min_increment,
        duration_ms: request.duration_ms,
        description: request.description,
        image_url: request.image_url.map(|url| url.as_str().to_owned()),
        // The seller is the token's bidder, as a bid's bidder is: never
        // anything in the body.
        seller: Some(Seller {
            id: caller.bidder.id.as_str().to_owned(),
            name: caller.bidder.name.as_str().to_owned(),
        }),
        terms: request.terms,
        rules: AuctionRules {
            soft_close_ms: request.soft_close_ms.unwrap_or(state.default_soft_close_ms),
            reserve_price: request.reserve_price,
            buy_now_price: request.buy_now_price,
        },
    };
    // A generated id that collides (1 in 62^12) is regenerated a few times.
    for _ in 0..3 {
        let sent = Instant::now();
        let created = state.writer.create(&spec).await;
        state.metrics.redis_command("create", sent.elapsed());
        match created.map_err(|error| state.refuse(error))? {
            CreateOutcome::Created(auction) => {
                tracing::info!(auction = %auction.id, "auction created");
                let body = serde_json::to_string(&auction).unwrap_or_default();
                return Ok(json_response(StatusCode::CREATED, body));
            }
            CreateOutcome::Exists if explicit_id => break,
            CreateOutcome::Exists => spec.id = random_id(),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "auction_exists",
        format!("an auction with id {:?} already exists", spec.id.as_str()),
    ))
}

fn random_id() -> AuctionId {
    let text: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(12)
        .collect();
    // Alphanumeric characters always form a valid id.
    AuctionId::parse(&text).unwrap_or_else(|_| unreachable!("alphanumeric ids are valid"))
}

/// `GET /auctions?limit=&cursor=`: a page of auctions, newest first, and
/// the cursor of the next page (`null` on the last).
async fn list_auctions(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    state
        .list_limiter
        .check(&state.client_ip(peer, &headers), Instant::now())
        .map_err(rate_limited)?;
    let Query(query) = query.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "the query must be limit=<1..100>&cursor=<next_cursor>",
        )
    })?;
    let limit = match query.get("limit") {
        None => LIST_DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=LIST_MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_limit",
                    format!("limit must be a whole number from 1 to {LIST_MAX_LIMIT}"),
                )
            })?,
    };
    let cursor = query
        .get("cursor")
        .map(|text| {
            ListCursor::parse(text).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    "cursor must be a next_cursor from an earlier page",
                )
            })
        })
        .transpose()?;
    let (auctions, next) = state
        .catalogue
        .list_page(cursor.as_ref(), limit)
        .await
        .map_err(|error| state.refuse(error))?;
    let body = json!({
        "auctions": auctions,
        "next_cursor": next.map(|cursor| cursor.to_string()),
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

async fn get_auction(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let auction_id = AuctionId::parse(&id).map_err(invalid)?;
    match state
        .catalogue
        .get(&auction_id)
        .await
        .map_err(|error| state.refuse(error))?
    {
        Some(auction) => Ok(json_response(
            StatusCode::OK,
            serde_json::to_string(&auction).unwrap_or_default(),
        )),
        None => Err(not_found(&id)),
    }
}

async fn place_bid(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let metrics = &state.metrics;
    let span = tracing::info_span!("POST /auctions/{id}/bids", otel.kind = "server", auction = %id);
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        telemetry::continue_trace(&span, traceparent);
    }
    let started = Instant::now();
    let result = place_bid_inner(&state, peer, &id, &headers, body)
        .instrument(span)
        .await;
    metrics.bid_duration(started.elapsed());
    match &result {
        Ok((_, outcome)) => metrics.bid("user", *outcome),
        Err(error)
            if error.status == StatusCode::BAD_REQUEST
                || error.status == StatusCode::PAYLOAD_TOO_LARGE
                || error.status == StatusCode::UNSUPPORTED_MEDIA_TYPE =>
        {
            metrics.bid("user", BidOutcome::invalid)
        }
        Err(error) if error.status.is_server_error() => {
            metrics.bid("user", BidOutcome::server_error)
        }
        Err(_) => {}
    }
    result.map(|(response, _)| response)
}

async fn place_bid_inner(
    state: &ApiState,
    peer: SocketAddr,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Response, BidOutcome), ApiError> {
    let caller = state.caller(peer, headers).await?;
    let auction = AuctionId::parse(id).map_err(invalid)?;
    let body = json_body(headers, body, MAX_BODY).await?;
    let request = parse_bid_request(&body).map_err(invalid)?;
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|value| IdempotencyKey::parse(value.as_bytes()))
        .transpose()
        .map_err(invalid)?;
    // The append's span context goes into the event itself, so each edge's
    // fan-out joins this trace.
    let append = async {
        let traceparent = telemetry::current_traceparent();
        state
            .writer
            .place(
                &auction,
                match request {
                    BidRequest::Amount(amount) => BidOrder::Amount(amount),
                    BidRequest::Max(max) => BidOrder::Max(max),
                    BidRequest::BuyNow => BidOrder::BuyNow,
                },
                &caller.bidder,
                BidSource::User,
                traceparent.as_deref(),
                idempotency_key.as_ref(),
            )
            .await
    };
    let sent = Instant::now();
    let attempt = append
        .instrument(tracing::info_span!("redis.place_bid", otel.kind = "client"))
        .await;
    state.metrics.redis_command("place_bid", sent.elapsed());
    let attempt = attempt
        .map_err(|error| match error {
            LogError::Unknown(message) => {
                tracing::warn!(%message, auction = %id, "bid outcome unknown");
                outcome_unknown(idempotency_key.is_some())
            }
            LogError::NotReplicated(message) => {
                tracing::warn!(%message, auction = %id, "bid not replicated in time");
                not_replicated(idempotency_key.is_some())
            }
            other => state.refuse(other),
        })?
        .ok_or_else(|| not_found(id))?;
    let (response, outcome) = match attempt.answer {
        BidAnswer::Accepted {
            id,
            bid,
            leading,
            max_amount,
        } => {
            // The caller's maximum is theirs alone: in this answer, never
            // in an event.
            let mut body = json!({ "id": id.to_string(), "bid": bid, "leading": leading });
            if let Some(max) = max_amount {
                body["max_amount"] = json!(max);
            }
            (
                json_response(StatusCode::CREATED, body.to_string()),
                BidOutcome::accepted,
            )
        }
        BidAnswer::MaxNotRaised { max_amount } => (
            json_response(
                StatusCode::CONFLICT,
                json!({
                    "error": "max_not_raised",
                    "message": format!("your maximum is already {max_amount}; a new one must be higher"),
                    "max_amount": max_amount,
                })
                .to_string(),
            ),
            BidOutcome::too_low,
        ),
        BidAnswer::BuyNowUnavailable => (
            json_response(
                StatusCode::CONFLICT,
                json!({
                    "error": "buy_now_unavailable",
                    "message": "this auction has no buy-now price, or bidding has reached it",
                })
                .to_string(),
            ),
            BidOutcome::too_low,
        ),
        BidAnswer::TooLow { current, min_next } => (
            json_response(
                StatusCode::CONFLICT,
                json!({
                    "error": "bid_too_low",
                    "message": format!("the bid must be at least {min_next}"),
                    "current": current,
                    "min_next": min_next,
                })
                .to_string(),
            ),
            BidOutcome::too_low,
        ),
        BidAnswer::Closed => (
            json_response(
                StatusCode::CONFLICT,
                json!({ "error": "auction_closed", "message": "the auction is closed" })
                    .to_string(),
            ),
            BidOutcome::closed,
        ),
        BidAnswer::BidderSuspended => (
            json_response(
                StatusCode::FORBIDDEN,
                json!({
                    "error": "bidder_suspended",
                    "message": "an admin suspended this bidder; bids are refused",
                })
                .to_string(),
            ),
            BidOutcome::invalid,
        ),
        BidAnswer::IdempotencyKeyReused => (
            json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "error": "idempotency_key_reused",
                    "message": "this Idempotency-Key was used for a different bid; use a new key",
                })
                .to_string(),
            ),
            BidOutcome::invalid,
        ),
    };
    let outcome = if attempt.replayed {
        BidOutcome::duplicate
    } else {
        outcome
    };
    Ok((response, outcome))
}

/// `GET /auctions/{id}/me`: the caller's standing, from the server's own
/// record (not from the visible history): whether they lead, their
/// maximum, their latest bid, and once closed whether they won.
async fn my_standing(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.caller(peer, &headers).await?;
    let auction_id = AuctionId::parse(&id).map_err(invalid)?;
    let auction = state
        .catalogue
        .get(&auction_id)
        .await
        .map_err(|error| state.refuse(error))?
        .ok_or_else(|| not_found(&id))?;
    let standing = state
        .writer
        .standing(&auction_id, &caller.bidder.id)
        .await
        .map_err(|error| state.refuse(error))?
        .ok_or_else(|| not_found(&id))?;
    // The leader by the current bid, as every page sees it.
    let leading = standing.leading
        && auction
            .current
            .as_ref()
            .is_some_and(|bid| bid.bidder_id == caller.bidder.id.as_str());
    let bid_made = standing.last_bid.is_some() || standing.max_amount.is_some();
    let status = match auction.status {
        auction_domain::AuctionStatus::Closed if leading && auction.sold == Some(true) => "won",
        auction_domain::AuctionStatus::Closed if bid_made => "lost",
        auction_domain::AuctionStatus::Closed => "none",
        // Ended without a winner: whoever bid lost.
        auction_domain::AuctionStatus::Cancelled if bid_made => "lost",
        auction_domain::AuctionStatus::Cancelled => "none",
        auction_domain::AuctionStatus::Open if leading => "leading",
        auction_domain::AuctionStatus::Open if bid_made => "outbid",
        auction_domain::AuctionStatus::Open => "none",
    };
    let body = json!({
        "auction": auction.id,
        "bidder_id": caller.bidder.id.as_str(),
        "status": status,
        "leading": leading,
        "max_amount": standing.max_amount,
        "last_bid": standing.last_bid,
    });
    let mut response = json_response(StatusCode::OK, body.to_string());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
