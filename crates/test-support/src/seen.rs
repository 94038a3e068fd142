use crate::{RedisServer, id_pair};

/// What one streaming client saw over its whole life, whatever the transport.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Ids of `bid`/`closed`/`opened` events, in arrival order.
    pub ids: Vec<String>,
    /// (id, reset) of every `init`.
    pub inits: Vec<(String, bool)>,
    /// How many times the stream ended and the client reconnected.
    pub reconnects: usize,
    /// The resume point: the last id received (init or event).
    pub last: Option<String>,
    /// Statuses or close codes of refused or closed connections.
    pub refusals: Vec<u16>,
}

impl Seen {
    /// The id this client's history starts after: its first init's id.
    pub fn start(&self) -> &str {
        self.inits.first().map_or("0-0", |(id, _)| id.as_str())
    }

    pub fn has_reached(&self, id: &str) -> bool {
        self.last
            .as_deref()
            .is_some_and(|last| id_pair(last) >= id_pair(id))
    }

    /// Asserts that this client received exactly the stream's events after
    /// its first init and up to its last id: nothing missing, nothing twice.
    pub fn assert_exact(&self, redis: &RedisServer, auction: &str) {
        let last = self.last.as_deref().expect("the client received something");
        let expected = redis.stream_ids_between(auction, self.start(), last);
        assert!(!expected.is_empty(), "the run must include events");
        if self.ids != expected {
            let missing: Vec<_> = expected
                .iter()
                .filter(|id| !self.ids.contains(id))
                .take(5)
                .collect();
            let mut distinct = self.ids.clone();
            distinct.sort_by_key(|id| id_pair(id));
            distinct.dedup();
            panic!(
                "received {} ids, stream has {}; duplicates: {}; first missing: {missing:?}; inits: {:?}",
                self.ids.len(),
                expected.len(),
                self.ids.len() - distinct.len(),
                self.inits
            );
        }
    }
}
