//! How a replica's hub is set up.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Capacity of each auction's broadcast ring, which is also how far a
    /// client may fall behind before it counts as slow and is disconnected.
    pub queue_capacity: usize,
    /// How often each feed's clients get the keepalive frame, at least
    /// (for a transport with one; see [`Codec::keepalive`](crate::Codec::keepalive)): in front of an
    /// event when the feed is busy, as an [`Item::Tick`](crate::Item::Tick) when it is quiet.
    pub keepalive: Duration,
    /// How long a feed with no clients stays subscribed (avoids churn when a
    /// client reconnects).
    pub idle_feed_ttl: Duration,
    /// How often this replica reports its viewers per auction and learns
    /// the totals over all replicas.
    pub viewers_interval: Duration,
    /// How long a replay page read from the stream is kept for the next
    /// clients resuming from the same id (zero: shared only while read).
    pub replay_keep: Duration,
    /// This replica's name in the viewer counts (unique per process).
    pub replica: String,
}

impl HubConfig {
    /// How often idle feeds are swept, and watched auctions audited.
    pub(crate) fn sweep_interval(&self) -> Duration {
        self.idle_feed_ttl.max(Duration::from_millis(100))
    }
}
