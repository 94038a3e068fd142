use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The contract's error body `{"error":"<code>","message":"<text>"}` with
/// its status, and an optional `Retry-After` (seconds).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    pub fn redis_unavailable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis_unavailable",
            "the event store is unreachable; retry shortly",
        )
        .retry_after(1)
    }
}

impl ApiError {
    /// 503 `redis_out_of_memory`: Redis refused the write for memory
    /// (`maxmemory` reached); nothing was applied. Served again, with no
    /// restart, once memory frees.
    pub fn redis_out_of_memory() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis_out_of_memory",
            OUT_OF_MEMORY_MESSAGE,
        )
        .retry_after(OUT_OF_MEMORY_RETRY_S)
    }
}

/// What a `redis_out_of_memory` refusal says.
pub const OUT_OF_MEMORY_MESSAGE: &str =
    "the event store is out of memory and refused this request, which was not applied; retry later";
/// Its `Retry-After`, seconds: memory frees by expiry or by an operator.
pub const OUT_OF_MEMORY_RETRY_S: u64 = 5;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = error_response(self.status, self.code, &self.message);
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// An error body with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
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
