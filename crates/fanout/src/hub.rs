//! The replica's hub: its feeds, the tasks that keep them (the subscriber,
//! the audit, the viewer counts), and how a client joins a feed.

use crate::codec::{Codec, Item};
use crate::config::HubConfig;
use crate::feed::{Feed, Position};
use crate::feeds::Feeds;
use crate::replays::Replays;
use crate::subscriber::{Subscriber, Watch};
use crate::viewers::{Viewer, Watchers};
use auction_domain::AuctionId;
use event_log::{EventStore, LiveSource, RedisTarget, StreamReader};
use futures_util::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Bound of the queue of "start watching this auction" requests: more than
/// a replica's clients can ask for in one burst (a restart hands a replica
/// thousands of auctions at once); past it, a client is refused as busy.
const COMMAND_QUEUE: usize = 16_384;

/// What the hub's live path counts.
#[derive(Debug, Clone, Default)]
pub struct LiveCounters {
    /// Reconnections of the live connection as a whole
    /// (`auction_redis_reconnects_total`, with the command connection's).
    pub reconnects: Counter,
    /// Watched auctions subscribed again (`auction_live_resubscribes_total`):
    /// after the whole live connection was lost, or in a cluster after
    /// their primary's connection was or their slot moved.
    pub resubscribes: Counter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The subscription path could not go live in time (Redis down).
    Unavailable,
    /// Too many new auctions requested at once.
    Busy,
}

/// A client's place in an auction's feed (see [`Hub::join`]).
pub(crate) struct Joined {
    pub(crate) rx: broadcast::Receiver<Item>,
    pub(crate) position: Position,
}

impl Joined {
    pub(crate) fn feed(&self) -> &Arc<Feed> {
        self.position.feed()
    }
}

/// Handle to the replica's hub; cheap to clone.
pub struct Hub<C: Codec> {
    feeds: Arc<Feeds>,
    commands: mpsc::Sender<Watch>,
    codec: Arc<C>,
    store: Arc<dyn EventStore>,
    config: Arc<HubConfig>,
    connected: Arc<AtomicBool>,
    replays: Arc<Replays>,
    watchers: Arc<Watchers>,
}

impl<C: Codec> Clone for Hub<C> {
    fn clone(&self) -> Self {
        Hub {
            feeds: self.feeds.clone(),
            commands: self.commands.clone(),
            codec: self.codec.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            connected: self.connected.clone(),
            replays: self.replays.clone(),
            watchers: self.watchers.clone(),
        }
    }
}

impl<C: Codec> Hub<C> {
    /// Starts a hub on `store` and `live` (Redis in a replica, memory in
    /// tests); its tasks run until `shutdown`, counting in `counters`.
    pub fn start(
        store: Arc<dyn EventStore>,
        live: Arc<dyn LiveSource>,
        codec: C,
        config: HubConfig,
        counters: LiveCounters,
        shutdown: CancellationToken,
    ) -> Hub<C> {
        let (commands, requests) = mpsc::channel(COMMAND_QUEUE);
        let hub = Hub {
            feeds: Arc::default(),
            commands,
            codec: Arc::new(codec),
            store,
            replays: Arc::new(Replays::new(config.replay_keep)),
            config: Arc::new(config),
            connected: Arc::new(AtomicBool::new(false)),
            watchers: Arc::default(),
        };
        tokio::spawn(crate::viewers::report(
            hub.feeds.clone(),
            hub.watchers.clone(),
            hub.store.clone(),
            (*hub.config).clone(),
            shutdown.clone(),
        ));
        // Bounded: the audit waits while the subscriber ends what it sent.
        let (vanished_tx, vanished) = mpsc::channel(4);
        tokio::spawn(crate::audit::run(
            hub.feeds.clone(),
            hub.store.clone(),
            hub.config.sweep_interval(),
            vanished_tx,
            shutdown.clone(),
        ));
        let subscriber = Subscriber {
            feeds: hub.feeds.clone(),
            store: hub.store.clone(),
            codec: hub.codec.clone(),
            config: (*hub.config).clone(),
            replays: hub.replays.clone(),
            connected: hub.connected.clone(),
            live,
            requests,
            vanished,
            reconnects: counters.reconnects,
            resubscribes: counters.resubscribes,
            shutdown,
            cursors: HashMap::new(),
            watched: 0,
            unrecovered: HashSet::new(),
        };
        tokio::spawn(subscriber.run());
        hub
    }

    /// Opens the replica's command connection (its reconnects counted in
    /// `counters.reconnects` too) and starts the hub on it.
    pub fn connect(
        target: &RedisTarget,
        codec: C,
        config: HubConfig,
        counters: LiveCounters,
        shutdown: CancellationToken,
    ) -> Result<Hub<C>, String> {
        let counted = counters.reconnects.clone();
        let conn = event_log::connect_manager(target, move || {
            counted.inc();
        })
        .map_err(|error| format!("cannot set up the Redis client: {error}"))?;
        let store = Arc::new(StreamReader::new(conn));
        let live = Arc::new(target.clone());
        Ok(Hub::start(store, live, codec, config, counters, shutdown))
    }

    /// Readiness: the subscription is up and Redis answers commands.
    pub async fn healthy(&self) -> bool {
        self.connected() && self.store.ping().await.is_ok()
    }

    /// [`healthy`](Self::healthy) as a probe a readiness watcher can call
    /// again and again.
    pub fn health_probe(&self) -> impl Fn() -> BoxFuture<'static, bool> + Send + 'static {
        let hub = self.clone();
        move || {
            let hub = hub.clone();
            Box::pin(async move { hub.healthy().await })
        }
    }

    pub(crate) fn codec(&self) -> &Arc<C> {
        &self.codec
    }

    pub(crate) fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Counts `address` as a viewer of `auction` while the result lives.
    pub(crate) fn viewer(&self, auction: &AuctionId, address: IpAddr) -> Viewer {
        self.watchers.add(auction, address)
    }

    pub(crate) fn replays(&self) -> &Replays {
        &self.replays
    }

    /// Whether the pub/sub connection is up (part of readiness).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Whether this replica watches `auction` already (so it exists).
    pub fn watches(&self, auction: &AuctionId) -> bool {
        self.feeds.contains(auction)
    }

    /// Attaches a receiver to the auction's feed, starting the feed if
    /// needed, and waits until the feed is live: from then on, every event
    /// appended to the stream after the feed's starting point reaches the
    /// receiver, in order. The caller reads anything older from the feed's
    /// recent events or from the stream.
    pub(crate) async fn join(
        &self,
        auction: &AuctionId,
        wait: Duration,
    ) -> Result<Joined, JoinError> {
        let (feed, attached) = self.feeds.join(
            auction,
            || self.start_feed(auction),
            |feed| feed.subscribe(),
        )?;
        // A feed found in the map has not ended: the map ends a feed only
        // as it removes it, under the same lock.
        let (rx, sent) = attached.ok_or(JoinError::Unavailable)?;
        if !feed.wait_live(wait).await {
            return Err(JoinError::Unavailable);
        }
        Ok(Joined {
            rx,
            position: Position::new(feed, sent),
        })
    }

    /// A new feed for the auction, asked of the subscriber task (which
    /// makes it live); `Busy` if its queue of requests is full.
    fn start_feed(&self, auction: &AuctionId) -> Result<Arc<Feed>, JoinError> {
        let feed = Feed::new(self.config.queue_capacity, self.codec.keepalive());
        let request = Watch {
            auction: auction.clone(),
            feed: feed.clone(),
        };
        self.commands
            .try_send(request)
            .map_err(|_| JoinError::Busy)?;
        Ok(feed)
    }
}
