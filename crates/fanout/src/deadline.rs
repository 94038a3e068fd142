//! The deadline on every Redis operation of the subscription path.

use event_log::LogError;
use std::future::Future;
use std::time::Duration;

/// Redis operations of the subscription path give up after this long; the
/// connection is then treated as lost and re-established.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a Redis operation of the subscription path under its deadline
/// ([`REDIS_TIMEOUT`]); the error is one readable line.
pub(crate) async fn timed<T>(
    operation: impl Future<Output = Result<T, LogError>>,
) -> Result<T, String> {
    match tokio::time::timeout(REDIS_TIMEOUT, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("Redis did not answer in time".to_owned()),
    }
}
