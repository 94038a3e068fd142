//! How a client connection starts: the contract's resume rules.
//!
//! 1. Join the auction's feed first, so nothing published from now on is
//!    missed.
//! 2. A resume id the feed published recently: replay what followed it
//!    from memory. Else a resume id the stream can still serve: replay
//!    everything after it from the stream ([`CatchUp`]), in pages read once
//!    for every client resuming from the same id at the same time
//!    ([`replays`](crate::replays)). Anything else (none, garbled, empty, in
//!    the future, older than retention): an `init` snapshot, `reset: true`
//!    unless no id was given.
//! 3. Go live, dropping feed events at or below the last id sent.

use crate::codec::{Codec, EncodedEvent, Frame, Item};
use crate::feed::{Feed, Position};
use crate::hub::{Hub, JoinError};
use crate::replays::{self, Lookup, Page, Unavailable};
use crate::viewers::Viewer;
use auction_domain::{AuctionId, EventId, EventKind};
use event_log::{LogError, Snapshot};
use prometheus_client::metrics::counter::Counter;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Events of the current round shown in `init.history`.
const HISTORY_LEN: usize = 10;
/// How many newest events a snapshot reads to find that history.
const SNAPSHOT_EVENTS: usize = 40;

/// The client's resume point, from `Last-Event-ID`, `lastEventId` or `last_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// No resume point was given.
    Fresh,
    /// A well-formed id (it may still be too old or in the future).
    From(EventId),
    /// Present but not an id (empty, garbled, not UTF-8, too long).
    Garbled,
}

impl Resume {
    pub fn parse(value: Option<&[u8]>) -> Resume {
        match value {
            None => Resume::Fresh,
            Some(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| EventId::parse(text.trim()))
                .map_or(Resume::Garbled, Resume::From),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    NotFound,
    Unavailable,
    Busy,
    /// Redis refused a read for memory (`maxmemory`, noeviction: even a
    /// transaction of reads is refused then). Nothing is wrong with the
    /// replica; it serves again once memory frees.
    OutOfMemory,
}

impl From<JoinError> for OpenError {
    fn from(error: JoinError) -> Self {
        match error {
            JoinError::Unavailable => OpenError::Unavailable,
            JoinError::Busy => OpenError::Busy,
        }
    }
}

impl From<LogError> for OpenError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::OutOfMemory(_) => OpenError::OutOfMemory,
            _ => OpenError::Unavailable,
        }
    }
}

impl From<Unavailable> for OpenError {
    fn from(_: Unavailable) -> Self {
        OpenError::Unavailable
    }
}

/// How the client's view starts.
pub(crate) enum Start {
    /// Send this `init` frame; it reflects events up to `last`.
    Init {
        frame: Frame,
        last: EventId,
        reset: bool,
    },
    /// Replay the events after the client's id, then go live.
    Replay(CatchUp),
}

/// A client that has joined its auction's feed and knows how to start.
pub struct Opening {
    pub(crate) auction: AuctionId,
    pub(crate) rx: broadcast::Receiver<Item>,
    /// The receiver's position in the feed.
    pub(crate) position: Position,
    pub(crate) start: Start,
    /// The auction's viewers when the client joined (0: not known yet).
    pub(crate) viewers: u32,
    /// This client counted among the auction's viewers, while it watches.
    pub(crate) viewer: Viewer,
}

/// Joins the feed and decides how the client starts (steps 1 and 2).
/// `NotFound` for an auction that does not exist. `shared` counts replay
/// reads taken from another client's read in flight.
pub(crate) async fn open<C: Codec>(
    hub: &Hub<C>,
    auction: &AuctionId,
    resume: Resume,
    address: IpAddr,
    join_wait: Duration,
    shared: &Counter,
) -> Result<Opening, OpenError> {
    // A watched auction exists (auctions are never deleted): a resume
    // served from memory costs no Redis round trip at all.
    if !hub.watches(auction) && !hub.store().exists(auction).await? {
        return Err(OpenError::NotFound);
    }
    let joined = hub.join(auction, join_wait).await?;
    // Each read of the recent run is bound first: its lock is not held
    // across the reads below.
    let start = match resume {
        Resume::From(id) => match recent_after(joined.feed(), id) {
            Some(events) => Start::Replay(CatchUp::from_memory(auction.clone(), id, events)),
            None => {
                // Taken once joined: reads with a higher ticket started
                // after the join (see `CatchUp`).
                let ticket = hub.replays().ticket();
                // The first page also tells whether the stream held the id:
                // one read for both, shared with the clients resuming from
                // the same id meanwhile.
                let page = read_page(hub, auction, id, None, shared).await?;
                if page.held {
                    Start::Replay(CatchUp::new(
                        auction.clone(),
                        id,
                        page,
                        ticket,
                        joined.feed().clone(),
                    ))
                } else {
                    init(hub, auction, true).await?
                }
            }
        },
        Resume::Garbled => init(hub, auction, true).await?,
        // Many fresh clients of one auction (a storm after a restart) share
        // one `init` while nothing new happened: no read, no encoding each.
        Resume::Fresh => match shared_init(joined.feed()) {
            Some((last, frame)) => Start::Init {
                frame,
                last,
                reset: false,
            },
            None => {
                let start = init(hub, auction, false).await?;
                if let Start::Init { frame, last, .. } = &start {
                    joined.feed().recent().offer_init(*last, frame.clone());
                }
                start
            }
        },
    };
    Ok(Opening {
        auction: auction.clone(),
        viewer: hub.viewer(auction, address),
        viewers: joined.feed().viewers(),
        rx: joined.rx,
        position: joined.position,
        start,
    })
}

/// The events after `id` that the feed published recently, if it can
/// tell what they are; `None`: ask the stream.
fn recent_after(feed: &Feed, id: EventId) -> Option<Vec<Arc<EncodedEvent>>> {
    feed.recent().after(id)
}

/// The feed's shared `init` for a fresh client, and the id it reflects:
/// valid for this client, which joined the feed first.
fn shared_init(feed: &Feed) -> Option<(EventId, Frame)> {
    feed.recent().shared_init()
}

/// A fresh `init` for `auction`.
pub(crate) async fn init<C: Codec>(
    hub: &Hub<C>,
    auction: &AuctionId,
    reset: bool,
) -> Result<Start, OpenError> {
    let (frame, last) = init_frame(hub, auction, reset).await?;
    Ok(Start::Init { frame, last, reset })
}

/// The `init` frame for `auction` and the id of the newest event it
/// reflects, from a snapshot read atomically.
pub(crate) async fn init_frame<C: Codec>(
    hub: &Hub<C>,
    auction: &AuctionId,
    reset: bool,
) -> Result<(Frame, EventId), OpenError> {
    let snapshot = hub
        .store()
        .snapshot(auction, SNAPSHOT_EVENTS)
        .await?
        .ok_or(OpenError::NotFound)?;
    let json = init_json(&snapshot, reset);
    Ok((
        hub.codec().init(auction, snapshot.last_id, &json),
        snapshot.last_id,
    ))
}

/// `{"auction":Auction,"history":[Bid...],"reset":bool}`: the history is the
/// current round's bids, newest first.
fn init_json(snapshot: &Snapshot, reset: bool) -> String {
    let auction = serde_json::to_string(&snapshot.auction).unwrap_or_else(|_| "null".into());
    let mut json = String::with_capacity(auction.len() + 160 * HISTORY_LEN + 40);
    json.push_str("{\"auction\":");
    json.push_str(&auction);
    json.push_str(",\"history\":[");
    // Back to the round's `opened`, past its `closed` and `extended` events.
    let bids = snapshot
        .recent
        .iter()
        // An admin's action (an extension, say) does not end the round.
        .filter(|event| event.kind != EventKind::Admin)
        .take_while(|event| event.kind != EventKind::Opened)
        .filter(|event| event.kind == EventKind::Bid)
        .take(HISTORY_LEN);
    for (index, bid) in bids.enumerate() {
        if index > 0 {
            json.push(',');
        }
        json.push_str(&bid.data);
    }
    json.push_str("],\"reset\":");
    json.push_str(if reset { "true" } else { "false" });
    json.push('}');
    json
}

/// The page after `after`: one kept or in flight for it (with
/// `newer_than`, only one whose read started after that ticket), or a new
/// read. `shared` counts the pages taken from another client's read.
async fn read_page<C: Codec>(
    hub: &Hub<C>,
    auction: &AuctionId,
    after: EventId,
    newer_than: Option<u64>,
    shared: &Counter,
) -> Result<Arc<Page>, Unavailable> {
    let lookup = hub.replays().page(auction, after, newer_than, |started| {
        replays::read_page(
            hub.store().clone(),
            hub.codec().clone(),
            auction.clone(),
            after,
            started,
        )
    });
    match lookup {
        Lookup::Kept(page) => {
            shared.inc();
            Ok(page)
        }
        Lookup::Flight {
            flight,
            shared: joined,
        } => {
            if joined {
                shared.inc();
            }
            flight.await
        }
    }
}

/// Replays the events after a client's id: the feed's recent events
/// (already encoded, shared), or the stream in pages (read and encoded
/// once for every client resuming from the same id at the same time).
///
/// Invariant: the replay ends only at a point from which the client's feed
/// carries everything. A page that ends the stream ends the replay only if
/// its read started after the client joined its feed ([`Page::started`]
/// above the client's ticket): a page read before, for another client, may
/// end before events the feed published before this client joined, which
/// this client gets from nowhere else. Such a replay goes on from its last
/// event with the feed's recent events when they cover it (they and the
/// feed hold every event after it), else with a read that started after
/// the join. What the feed then also delivers is at or below the last id
/// sent, and dropped.
#[derive(Debug)]
pub(crate) struct CatchUp {
    auction: AuctionId,
    after: EventId,
    /// Served from memory: everything up to the feed's newest event.
    memory: Option<Vec<Arc<EncodedEvent>>>,
    /// The next page, already read.
    page: Option<Arc<Page>>,
    /// The client's ticket, taken once it had joined its feed.
    ticket: u64,
    /// The next read must have started after the client joined.
    fresh: bool,
    /// The client's feed, whose recent events may finish the replay.
    recent: Option<Arc<Feed>>,
    done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CatchUpError {
    /// The stream no longer holds the event after the last one replayed
    /// (`MAXLEN ~` trimmed it while the client caught up). Possible before
    /// the first batch (trimmed since the window was checked) and between
    /// any two batches: the client's view must restart from a reset `init`.
    Gap,
    Unavailable,
}

impl CatchUp {
    /// Replays `page` (the events after `after`, held by the stream), then
    /// reads on as needed.
    fn new(
        auction: AuctionId,
        after: EventId,
        page: Arc<Page>,
        ticket: u64,
        recent: Arc<Feed>,
    ) -> CatchUp {
        CatchUp {
            auction,
            after,
            memory: None,
            page: Some(page),
            ticket,
            fresh: false,
            recent: Some(recent),
            done: false,
        }
    }

    /// Replays `events` (everything the feed published after `after`); the
    /// rest reaches the client through the feed.
    fn from_memory(auction: AuctionId, after: EventId, events: Vec<Arc<EncodedEvent>>) -> CatchUp {
        CatchUp {
            auction,
            after,
            memory: Some(events),
            page: None,
            ticket: 0,
            fresh: false,
            recent: None,
            done: false,
        }
    }

    /// The id of the last event replayed so far (or the resume id).
    pub(crate) fn last(&self) -> EventId {
        self.after
    }

    /// Appends the frames of the next batch of events to `out`. Returns
    /// `false` once there is nothing more: the client is caught up.
    /// `shared` counts reads taken from another client's read in flight.
    pub(crate) async fn next_batch<C: Codec>(
        &mut self,
        hub: &Hub<C>,
        out: &mut Vec<(EventId, Frame)>,
        shared: &Counter,
    ) -> Result<bool, CatchUpError> {
        if self.done {
            return Ok(false);
        }
        if let Some(events) = self.memory.take() {
            self.done = true;
            if let Some(last) = events.last() {
                self.after = last.id;
            }
            out.extend(events.iter().map(|event| (event.id, event.frame.clone())));
            return Ok(false);
        }
        let page = match self.page.take() {
            Some(page) => page,
            None => {
                let newer_than = self.fresh.then_some(self.ticket);
                read_page(hub, &self.auction, self.after, newer_than, shared)
                    .await
                    .map_err(|_| CatchUpError::Unavailable)?
            }
        };
        // Not held: the last event replayed was trimmed with the ones after
        // it. A break right after it: the next one was. The events up to a
        // break are still sent (they are the client's, in order), and the
        // next call reports the break.
        if !page.held || (page.broken && page.events.is_empty()) {
            return Err(CatchUpError::Gap);
        }
        out.extend(
            page.events
                .iter()
                .map(|event| (event.id, event.frame.clone())),
        );
        if let Some(last) = page.events.last() {
            self.after = last.id;
        }
        if page.full || page.broken {
            return Ok(true);
        }
        // The end of the stream when the page was read.
        if page.started > self.ticket {
            self.done = true;
            return Ok(false);
        }
        match self
            .recent
            .as_ref()
            .and_then(|feed| feed.recent().after(self.after))
        {
            Some(events) => self.memory = Some(events),
            None => self.fresh = true,
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auction_domain::Event;
    use auction_domain::{Auction, AuctionStatus};

    fn event(seq: u64, kind: EventKind, data: &str) -> Event {
        Event {
            id: EventId::new(10, seq),
            prev: EventId::new(10, seq.saturating_sub(1)),
            kind,
            data: data.into(),
            placed_at_ms: 0,
            traceparent: None,
        }
    }

    #[test]
    fn resume_values_parse() {
        assert_eq!(Resume::parse(None), Resume::Fresh);
        assert_eq!(
            Resume::parse(Some(b"5-1")),
            Resume::From(EventId::new(5, 1))
        );
        for garbled in [&b""[..], b"abc", b"\xff\xfe", b"5-", &[b'9'; 10_240][..]] {
            assert_eq!(Resume::parse(Some(garbled)), Resume::Garbled);
        }
    }

    #[test]
    fn init_history_is_the_current_round_newest_first() {
        let snapshot = Snapshot {
            auction: Auction {
                id: "a".into(),
                title: "T".into(),
                status: AuctionStatus::Closed,
                starting_price: 1,
                min_increment: 1,
                ends_at: 5,
                current: None,
                description: None,
                image_url: None,
                seller: None,
                terms: None,
                soft_close_ms: 0,
                buy_now_price: None,
                reserve_met: None,
                sold: None,
            },
            recent: vec![
                event(7, EventKind::Closed, "{}"),
                event(6, EventKind::Extended, r#"{"ends_at":9}"#),
                event(5, EventKind::Admin, r#"{"action":"close"}"#),
                event(4, EventKind::Bid, r#"{"amount":3}"#),
                event(4, EventKind::Admin, r#"{"action":"extend"}"#),
                event(3, EventKind::Bid, r#"{"amount":2}"#),
                event(2, EventKind::Opened, "{}"),
                event(1, EventKind::Bid, r#"{"amount":1}"#),
            ],
            last_id: EventId::new(10, 5),
        };
        let json: serde_json::Value = serde_json::from_str(&init_json(&snapshot, true)).unwrap();
        assert_eq!(
            json["history"],
            serde_json::json!([{"amount":3},{"amount":2}])
        );
        assert_eq!(json["reset"], true);
        assert_eq!(json["auction"]["status"], "closed");
    }
}
