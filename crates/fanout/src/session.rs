//! How a client connection starts: the contract's resume rules.
//!
//! 1. Join the auction's feed first, so nothing published from now on is
//!    missed.
//! 2. A resume id the feed published recently: replay what followed it
//!    from memory. Else a resume id the stream can still serve: replay
//!    everything after it from the stream ([`CatchUp`]). Anything else
//!    (none, garbled, empty, in the future, older than retention): an `init`
//!    snapshot, `reset: true` unless no id was given.
//! 3. Go live, dropping feed events at or below the last id sent.

use crate::codec::{Codec, Event, Item};
use crate::hub::{Hub, JoinError};
use auction_domain::{AuctionId, EventId, EventKind};
use event_log::{LogError, Snapshot};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Events of the current round shown in `init.history`.
const HISTORY_LEN: usize = 10;
/// How many newest events a snapshot reads to find that history.
const SNAPSHOT_EVENTS: usize = 40;
/// Events per replay read.
const REPLAY_BATCH: usize = 256;

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
    fn from(_: LogError) -> Self {
        OpenError::Unavailable
    }
}

/// How the client's view starts.
pub enum Start<F> {
    /// Send this `init` frame; it reflects events up to `last`.
    Init {
        frame: F,
        last: EventId,
        reset: bool,
    },
    /// Replay the events after the client's id, then go live.
    Replay(CatchUp<F>),
}

pub struct Opening<F> {
    pub feed: broadcast::Receiver<Item<F>>,
    pub start: Start<F>,
}

/// Joins the feed and decides how the client starts (steps 1 and 2).
/// `NotFound` for an auction that does not exist.
pub async fn open<C: Codec>(
    hub: &Hub<C>,
    auction: &AuctionId,
    resume: Resume,
    join_wait: Duration,
) -> Result<Opening<C::Frame>, OpenError> {
    // A watched auction exists (auctions are never deleted): a resume
    // served from memory costs no Redis round trip at all.
    if !hub.watches(auction) && !hub.log().exists(auction).await? {
        return Err(OpenError::NotFound);
    }
    let joined = hub.join(auction, join_wait).await?;
    if let Resume::From(id) = resume {
        if let Some(events) = joined.recent_after(id) {
            return Ok(Opening {
                feed: joined.rx,
                start: Start::Replay(CatchUp::from_memory(auction.clone(), id, events)),
            });
        }
        if hub.log().window(auction).await?.can_resume_from(id) {
            return Ok(Opening {
                feed: joined.rx,
                start: Start::Replay(CatchUp::new(auction.clone(), id)),
            });
        }
    }
    let start = init(hub, auction, resume != Resume::Fresh).await?;
    Ok(Opening {
        feed: joined.rx,
        start,
    })
}

/// A fresh `init` for `auction`.
pub async fn init<C: Codec>(
    hub: &Hub<C>,
    auction: &AuctionId,
    reset: bool,
) -> Result<Start<C::Frame>, OpenError> {
    let snapshot = hub
        .log()
        .snapshot(auction, SNAPSHOT_EVENTS)
        .await?
        .ok_or(OpenError::NotFound)?;
    let json = init_json(&snapshot, reset);
    Ok(Start::Init {
        frame: hub.codec().init(auction, snapshot.last_id, &json),
        last: snapshot.last_id,
        reset,
    })
}

/// `{"auction":Auction,"history":[Bid...],"reset":bool}`: the history is the
/// current round's bids, newest first.
pub fn init_json(snapshot: &Snapshot, reset: bool) -> String {
    let auction = serde_json::to_string(&snapshot.auction).unwrap_or_else(|_| "null".into());
    let mut json = String::with_capacity(auction.len() + 160 * HISTORY_LEN + 40);
    json.push_str("{\"auction\":");
    json.push_str(&auction);
    json.push_str(",\"history\":[");
    let bids = snapshot
        .recent
        .iter()
        .skip_while(|event| event.kind == EventKind::Closed)
        .take_while(|event| event.kind == EventKind::Bid)
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

/// Replays the events after a client's id: the feed's recent events
/// (already encoded, shared), or the stream in batches.
#[derive(Debug)]
pub struct CatchUp<F> {
    auction: AuctionId,
    after: EventId,
    /// Served from memory: everything up to the feed's newest event.
    memory: Option<Vec<Arc<Event<F>>>>,
    done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUpError {
    /// Events after the client's id were trimmed meanwhile: send a reset
    /// `init` instead (only possible before anything was replayed).
    Gap,
    Unavailable,
}

impl<F> CatchUp<F> {
    /// Reads the stream after `after`.
    pub fn new(auction: AuctionId, after: EventId) -> CatchUp<F> {
        CatchUp {
            auction,
            after,
            memory: None,
            done: false,
        }
    }

    /// Replays `events` (everything the feed published after `after`); the
    /// rest reaches the client through the feed.
    pub fn from_memory(
        auction: AuctionId,
        after: EventId,
        events: Vec<Arc<Event<F>>>,
    ) -> CatchUp<F> {
        CatchUp {
            auction,
            after,
            memory: Some(events),
            done: false,
        }
    }

    /// The id of the last event replayed so far (or the resume id).
    pub fn last(&self) -> EventId {
        self.after
    }

    /// Appends the frames of the next batch of events to `out`. Returns
    /// `false` once there is nothing more: the client is caught up.
    pub async fn next_batch<C: Codec<Frame = F>>(
        &mut self,
        hub: &Hub<C>,
        out: &mut Vec<F>,
    ) -> Result<bool, CatchUpError>
    where
        F: Clone,
    {
        if self.done {
            return Ok(false);
        }
        if let Some(events) = self.memory.take() {
            self.done = true;
            if let Some(last) = events.last() {
                self.after = last.id;
            }
            out.extend(events.iter().map(|event| event.frame.clone()));
            return Ok(false);
        }
        let events = hub
            .log()
            .read_after(&self.auction, self.after, REPLAY_BATCH)
            .await
            .map_err(|_| CatchUpError::Unavailable)?;
        if let Some(first) = events.first()
            && first.prev != self.after
        {
            return Err(CatchUpError::Gap);
        }
        for event in &events {
            out.push(hub.codec().event(&self.auction, event));
            self.after = event.id;
        }
        self.done = events.len() < REPLAY_BATCH;
        Ok(!events.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auction_domain::{Auction, AuctionStatus};
    use event_log::StoredEvent;

    fn event(seq: u64, kind: EventKind, data: &str) -> StoredEvent {
        StoredEvent {
            id: EventId::new(10, seq),
            prev: EventId::new(10, seq.saturating_sub(1)),
            kind,
            data: data.into(),
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
            },
            recent: vec![
                event(5, EventKind::Closed, "{}"),
                event(4, EventKind::Bid, r#"{"amount":3}"#),
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
