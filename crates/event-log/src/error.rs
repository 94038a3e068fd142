use std::fmt;

/// Redis could not be reached or answered something unexpected.
#[derive(Debug, Clone)]
pub enum LogError {
    /// The command did not run: the connection was refused (nothing was
    /// sent), or Redis answered with an error (loading, out of memory...).
    /// Retry later.
    Unavailable(String),
    /// A write whose outcome is unknown: it was sent, and no answer came
    /// (a response timeout, a connection lost mid-command). Redis may have
    /// run it or may still run it: a frozen Redis runs the queued script
    /// when it resumes. Only writes report this (classified by `from_write`);
    /// a retry of an idempotent write learns the real outcome.
    Unknown(String),
    /// Redis answered, but not in the shape the scripts produce.
    Corrupt(String),
    /// The write was applied on the primary, but fewer replicas than
    /// required confirmed it in time (`WAIT`): it could still be lost in a
    /// failover. Retry later (with the same `Idempotency-Key`).
    NotReplicated(String),
}

impl LogError {
    /// Classifies the error of a command that writes: `Unavailable` only
    /// when the command certainly did not run, `Unknown` otherwise.
    pub(crate) fn from_write(error: redis::RedisError) -> LogError {
        use redis::ErrorKind;
        // A refused connection sent nothing. Redis refusing the command
        // (LOADING, BUSY, OOM, READONLY, NOSCRIPT... every code but the
        // generic ERR a failing script raises) ran none of it. A client
        // side error stopped before sending. Anything else (a timeout, a
        // reset, an end of stream, an answer we cannot read) may come after
        // Redis received the command.
        let did_not_run = error.is_connection_refusal()
            || match error.kind() {
                ErrorKind::Server(_) => error.code().is_some_and(|code| code != "ERR"),
                ErrorKind::Client
                | ErrorKind::InvalidClientConfig
                | ErrorKind::AuthenticationFailed => true,
                _ => false,
            };
        if did_not_run {
            LogError::Unavailable(error.to_string())
        } else {
            LogError::Unknown(error.to_string())
        }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Unavailable(message) => write!(f, "Redis is unavailable: {message}"),
            LogError::Unknown(message) => {
                write!(
                    f,
                    "Redis did not answer a write, which may have run: {message}"
                )
            }
            LogError::Corrupt(message) => write!(f, "unexpected data in Redis: {message}"),
            LogError::NotReplicated(message) => write!(f, "not replicated in time: {message}"),
        }
    }
}

impl std::error::Error for LogError {}

impl From<redis::RedisError> for LogError {
    fn from(error: redis::RedisError) -> Self {
        LogError::Unavailable(error.to_string())
    }
}

pub(crate) fn corrupt(what: impl Into<String>) -> LogError {
    LogError::Corrupt(what.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_unavailable_only_when_it_certainly_did_not_run() {
        let io = |kind| redis::RedisError::from(std::io::Error::new(kind, "x"));
        let refused = LogError::from_write(io(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(refused, LogError::Unavailable(_)), "{refused:?}");
        for kind in [
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::BrokenPipe,
        ] {
            let error = LogError::from_write(io(kind));
            assert!(matches!(error, LogError::Unknown(_)), "{kind:?}: {error:?}");
        }
    }
}
