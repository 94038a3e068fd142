//! Both scripts that open an auction (create.lua, ensure_open.lua) write its
//! first state through the prelude's `init_state`: one spec gives one state
//! either way, a stream that outlived its state goes on from its newest
//! entry, and a round ensure_open starts again keeps the spec's fields.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use auction_domain::{
    Auction, AuctionId, BidSource, Bidder, BidderId, BidderName, EventId, Seller,
};
use event_log::{
    AuctionSpec, AuctionWriter, BidAnswer, Catalogue, CreateOutcome, EnsureOutcome, StreamReader,
};
use std::time::Duration;
use test_support::RedisServer;

const DURATION_MS: u64 = 600_000;

fn spec(id: &str) -> AuctionSpec {
    AuctionSpec {
        id: AuctionId::parse(id).unwrap(),
        title: "Brass \"pocket\" watch".into(),
        starting_price: 10_000,
        min_increment: 500,
        duration_ms: DURATION_MS,
        description: Some("Hand-wound, with its chain.".into()),
        image_url: Some("/assets/lot-watch.svg".into()),
        seller: Some(Seller {
            id: "g_seller1".into(),
            name: "Ada \"the\" Seller".into(),
        }),
        terms: Some("Collection only.\nPayment within 3 days.".into()),
        rules: Default::default(),
    }
}

fn connect(redis: &RedisServer) -> (AuctionWriter, StreamReader, Catalogue) {
    let target = event_log::parse_redis_url(&redis.url()).unwrap();
    let conn = event_log::connect_manager(&target, || {}).unwrap();
    (
        AuctionWriter::new(conn.clone(), 1000),
        StreamReader::new(conn.clone()),
        Catalogue::new(conn),
    )
}

async fn create(writer: &AuctionWriter, id: &str) -> Auction {
    match writer.create(&spec(id)).await.unwrap() {
        CreateOutcome::Created(auction) => *auction,
        CreateOutcome::Exists => panic!("{id} already exists"),
    }
}

async fn ensure_open(writer: &AuctionWriter, id: &str) -> Auction {
    let (outcome, auction) = writer.ensure_open(&spec(id), Duration::ZERO).await.unwrap();
    assert_eq!(outcome, EnsureOutcome::Created, "{id}");
    auction
}

async fn bid(writer: &AuctionWriter, id: &str, amount: u64) -> EventId {
    let bidder = Bidder {
        id: BidderId::parse("g_ann").unwrap(),
        name: BidderName::parse("ann").unwrap(),
    };
    let attempt = writer
        .place_bid(
            &AuctionId::parse(id).unwrap(),
            amount,
            &bidder,
            BidSource::User,
            None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    match attempt.answer {
        BidAnswer::Accepted { id, .. } => id,
        other => panic!("a bid of {amount} on {id}: {other:?}"),
    }
}

#[tokio::test]
async fn create_and_ensure_open_give_one_spec_the_same_state() {
    let redis = RedisServer::start();
    let (writer, _, catalogue) = connect(&redis);
    let before = auction_domain::clock::now_ms();
    let created = create(&writer, "by-create").await;
    let ensured = ensure_open(&writer, "by-ensure").await;
    let after = auction_domain::clock::now_ms();
    for (id, auction) in [("by-create", &created), ("by-ensure", &ensured)] {
        // What the script answered is what the state hash reads back as.
        let stored = catalogue.get(&AuctionId::parse(id).unwrap()).await.unwrap();
        assert_eq!(stored.as_ref(), Some(auction), "{id}");
        assert!(
            (before + DURATION_MS..=after + DURATION_MS).contains(&auction.ends_at),
            "{id} ends at {}",
            auction.ends_at
        );
    }
    let spec = spec("x");
    assert_eq!(created.title, spec.title);
    assert_eq!(created.min_increment, spec.min_increment);
    assert_eq!(created.description, spec.description);
    assert_eq!(created.image_url, spec.image_url);
    assert_eq!(created.seller, spec.seller);
    assert_eq!(created.terms, spec.terms);
    assert_eq!(created.current, None);
    let alike = |auction: &Auction| Auction {
        id: String::new(),
        ends_at: 0,
        ..auction.clone()
    };
    assert_eq!(alike(&created), alike(&ensured));
}

#[tokio::test]
async fn an_auction_opened_over_a_stream_that_outlived_its_state_continues_its_chain() {
    let redis = RedisServer::start();
    let (writer, reader, _) = connect(&redis);
    for id in ["again-by-create", "again-by-ensure"] {
        create(&writer, id).await;
        let last = bid(&writer, id, 10_000).await;
        // The state goes (deleted by hand); the stream stays.
        assert_eq!(redis.command(&format!("DEL auction:{{{id}}}")), ":1\r\n");
        if id == "again-by-create" {
            create(&writer, id).await;
        } else {
            ensure_open(&writer, id).await;
        }
        let auction = AuctionId::parse(id).unwrap();
        let snapshot = reader.snapshot(&auction, 10).await.unwrap().unwrap();
        assert_eq!(snapshot.last_id, last, "{id}");
        let next = bid(&writer, id, 10_000).await;
        let events = reader.read_after(&auction, last, 10).await.unwrap();
        assert_eq!(events.len(), 1, "{id}");
        assert_eq!((events[0].id, events[0].prev), (next, last), "{id}");
    }
}

#[tokio::test]
async fn a_round_reopened_by_ensure_open_keeps_the_specs_fields() {
    let redis = RedisServer::start();
    let (writer, reader, _) = connect(&redis);
    let short = AuctionSpec {
        duration_ms: 50,
        ..spec("rounds")
    };
    let (outcome, _) = writer.ensure_open(&short, Duration::ZERO).await.unwrap();
    assert_eq!(outcome, EnsureOutcome::Created);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Past its end: closed, then a new round at once (no pause).
    let (outcome, reopened) = writer.ensure_open(&short, Duration::ZERO).await.unwrap();
    assert_eq!(outcome, EnsureOutcome::Reopened);
    assert_eq!(reopened.description, short.description);
    assert_eq!(reopened.image_url, short.image_url);
    assert_eq!(reopened.seller, short.seller);
    assert_eq!(reopened.terms, short.terms);
    assert_eq!(reopened.current, None);
    let events = reader
        .read_after(&short.id, EventId::ZERO, 10)
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
    assert_eq!(kinds, ["closed", "opened"]);
}
