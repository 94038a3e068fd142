//! Auctions made for a test, through the event log's own create script (no
//! bidder, no token): the tests are about what happens after.

use auction_domain::AuctionId;
use event_log::{AuctionSpec, AuctionWriter, CreateOutcome};

/// The terms a test's auctions are created with (each titled `Lot <id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub starting_price: u64,
    pub min_increment: u64,
    pub duration_ms: u64,
}

impl Terms {
    /// Starting price 100, increment 10, open `duration_ms`.
    pub const fn open_for(duration_ms: u64) -> Terms {
        Terms {
            starting_price: 100,
            min_increment: 10,
            duration_ms,
        }
    }
}

/// Creates an auction for each id (title `Lot <id>`, starting price 100,
/// increment 10, open `duration_ms`) on the Redis at `url`, 16 at a time.
pub async fn create(url: &str, ids: &[String], duration_ms: u64) {
    create_with(url, ids, Terms::open_for(duration_ms)).await;
}

/// [`create`] with the given terms. Panics if an id already exists.
pub async fn create_with(url: &str, ids: &[String], terms: Terms) {
    let target = event_log::parse_redis_url(url).expect("a Redis URL");
    let writer = AuctionWriter::new(
        event_log::connect_manager(&target, || {}).expect("a Redis client"),
        100,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(16).max(1)) {
        let (writer, chunk) = (writer.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for id in chunk {
                let spec = AuctionSpec {
                    id: AuctionId::parse(&id).expect("a valid auction id"),
                    title: format!("Lot {id}"),
                    starting_price: terms.starting_price,
                    min_increment: terms.min_increment,
                    duration_ms: terms.duration_ms,
                    description: None,
                    image_url: None,
                    seller: None,
                    terms: None,
                    rules: Default::default(),
                };
                let outcome = writer.create(&spec).await.expect("the auction is created");
                assert!(
                    matches!(outcome, CreateOutcome::Created(_)),
                    "auction {id} already exists"
                );
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a create task");
    }
}
