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
    /// when it resumes. Only writes report this (classified by `from_write_on`);
    /// a retry of an idempotent write learns the real outcome.
    Unknown(String),
    /// Redis answered, but not in the shape the scripts produce.
    Corrupt(String),
    /// The write was applied on the primary, but fewer replicas than
    /// required confirmed it in time (`WAIT`): it could still be lost in a
    /// failover. Retry later (with the same `Idempotency-Key`).
    NotReplicated(String),
    /// Redis refused the command for memory (`maxmemory` reached under the
    /// `noeviction` policy: `OOM command not allowed when used memory >
    /// 'maxmemory'`). Nothing ran; it runs once memory frees.
    OutOfMemory(String),
}

impl LogError {
    /// Classifies the error of a command that writes: `Unavailable` only
    /// when the command certainly did not run, `Unknown` otherwise.
    ///
    /// Over a cluster connection (`cluster`), the cluster client retries a command whose
    /// connection broke (and on MOVED, TRYAGAIN, CLUSTERDOWN, READONLY)
    /// and reports only the last attempt's error: an earlier attempt may
    /// have run. So no error of a cluster write says "did not run": every
    /// one is `Unknown`, and a retry of the idempotent write learns the
    /// outcome.
    pub(crate) fn from_write_on(cluster: bool, error: redis::RedisError) -> LogError {
        use redis::ErrorKind;
        if cluster {
            return LogError::Unknown(error.to_string());
        }
        // A refused connection sent nothing. Redis refusing the command
        // (LOADING, BUSY, OOM, READONLY, NOSCRIPT... every code but the
        // generic ERR a failing script raises) ran none of it. A client
        // side error stopped before sending. Anything else (a timeout, a
        // reset, an end of stream, an answer we cannot read) may come after
        // Redis received the command.
        if is_out_of_memory(&error) {
            return LogError::OutOfMemory(error.to_string());
        }
        let did_not_run = error.is_connection_refusal()
            || match error.kind() {
                ErrorKind::Server(_) => error.code().is_some_and(|code| code != "ERR"),
                // Codes the client has no kind for: those refusing the
                // whole command before it runs.
                ErrorKind::Extension => error
                    .code()
                    .is_some_and(|code| REFUSING_CODES.contains(&code)),
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

impl LogError {
    /// An error met after a bid was appended (its script answered), while
    /// waiting for replicas: the bid stands on the primary, so this is
    /// never `Unavailable` (not placed) nor `Corrupt`. A `WAIT` that timed
    /// out, was refused (the node had just become a replica: "WAIT cannot
    /// be used with replica instances"), lost its connection or answered
    /// something unreadable all leave the bid appended and unconfirmed.
    pub(crate) fn after_append(self) -> LogError {
        match self {
            LogError::NotReplicated(message)
            | LogError::Unavailable(message)
            | LogError::Unknown(message)
            | LogError::Corrupt(message)
            | LogError::OutOfMemory(message) => LogError::NotReplicated(message),
        }
    }

    /// An error met after an auction was created (its script answered),
    /// while indexing it: the auction exists, so this is never
    /// `Unavailable`. `Unknown` tells the caller to repeat the request,
    /// and a repeat with the same id completes the indexing.
    pub(crate) fn after_create(self) -> LogError {
        match self {
            LogError::NotReplicated(message)
            | LogError::Unavailable(message)
            | LogError::Unknown(message)
            | LogError::Corrupt(message)
            | LogError::OutOfMemory(message) => LogError::Unknown(message),
        }
    }
}

/// Error codes (beside those the client knows) with which Redis refuses a
/// command without running any of it.
const REFUSING_CODES: &[&str] = &[
    "OOM",
    "BUSY",
    "NOAUTH",
    "WRONGPASS",
    "MISCONF",
    "NOREPLICAS",
];

/// Redis's refusal for memory: `OOM command not allowed when used memory
/// > 'maxmemory'` (a script's first write refused so says the same).
fn is_out_of_memory(error: &redis::RedisError) -> bool {
    error.code() == Some("OOM")
        // A transaction Redis would not queue: past `maxmemory` it refuses
        // to queue even reads (each command's error is kept).
        || error
            .clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, error)| error.code() == "OOM"))
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
            LogError::OutOfMemory(message) => write!(f, "Redis is out of memory: {message}"),
        }
    }
}

impl std::error::Error for LogError {}

impl From<redis::RedisError> for LogError {
    fn from(error: redis::RedisError) -> Self {
        if is_out_of_memory(&error) {
            return LogError::OutOfMemory(error.to_string());
        }
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
        let refused = LogError::from_write_on(false, io(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(refused, LogError::Unavailable(_)), "{refused:?}");
        // A cluster client may have retried an attempt that ran.
        let refused = LogError::from_write_on(true, io(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(refused, LogError::Unknown(_)), "{refused:?}");
        for kind in [
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::BrokenPipe,
        ] {
            let error = LogError::from_write_on(false, io(kind));
            assert!(matches!(error, LogError::Unknown(_)), "{kind:?}: {error:?}");
            let error = LogError::from_write_on(true, io(kind));
            assert!(matches!(error, LogError::Unknown(_)), "{kind:?}: {error:?}");
        }
    }
}
