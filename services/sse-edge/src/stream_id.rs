//! The event id of a stream of several auctions: where the client is in
//! every one of them, in one SSE id.
//!
//! A browser sends back only the last id it saw (`Last-Event-ID`), so each
//! event's id must be enough to resume every auction of the stream: it
//! carries each auction's last event id (a Redis stream id, `<ms>-<seq>`),
//! not only the id of the event it closes. Auction ids (`[A-Za-z0-9_-]`)
//! and base-36 digits never hold `.` or `~`, so the form is unambiguous
//! and safe in a URL as it is:
//!
//! ```text
//! m1.<newest ms, base 36>.<auction>~<ms below the newest, base 36>[-<seq, base 36>]...
//! m1.mgt4l2qo.1234~0.lot-7~2b3-1
//! ```
//!
//! Times are written as their distance below the newest, so an auction
//! that saw an event lately costs a few bytes. An auction with no entry
//! starts afresh (an `init`); an entry for an auction the stream does not
//! name is ignored, so a client that changes its auctions passes its last
//! id with the new list and keeps its place in those it still watches.

use auction_domain::{AuctionId, EventId};
use bytes::{BufMut, Bytes, BytesMut};

const VERSION: &str = "m1";

/// Each auction's last event id, in the stream's order. Entries with no
/// event yet (`0-0`) are left out of the id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Positions(Vec<(AuctionId, EventId)>);

impl Positions {
    /// Every auction of the stream (once each), none seen yet.
    pub fn new(auctions: &[AuctionId]) -> Positions {
        let mut positions = Vec::with_capacity(auctions.len());
        for auction in auctions {
            if !positions.iter().any(|(a, _)| a == auction) {
                positions.push((auction.clone(), EventId::ZERO));
            }
        }
        Positions(positions)
    }

    /// Where `auction` is; `0-0` if nowhere yet or not in the stream.
    #[cfg(test)]
    pub fn get(&self, auction: &AuctionId) -> EventId {
        self.0
            .iter()
            .find(|(a, _)| a == auction)
            .map_or(EventId::ZERO, |(_, id)| *id)
    }

    /// The client has `id` of `auction` now. An auction not in the stream
    /// is ignored; an id never moves back.
    pub fn set(&mut self, auction: &AuctionId, id: EventId) {
        if let Some((_, at)) = self.0.iter_mut().find(|(a, _)| a == auction) {
            *at = (*at).max(id);
        }
    }

    /// The id, as an SSE `id:` line's value.
    pub fn encode(&self) -> Bytes {
        let newest = self.0.iter().map(|(_, id)| id.ms).max().unwrap_or(0);
        let mut out = BytesMut::with_capacity(16 + self.0.len() * 16);
        out.put_slice(VERSION.as_bytes());
        out.put_u8(b'.');
        put_base36(&mut out, newest);
        for (auction, id) in &self.0 {
            if *id == EventId::ZERO {
                continue;
            }
            out.put_u8(b'.');
            out.put_slice(auction.as_str().as_bytes());
            out.put_u8(b'~');
            put_base36(&mut out, newest - id.ms);
            if id.seq != 0 {
                out.put_u8(b'-');
                put_base36(&mut out, id.seq);
            }
        }
        out.freeze()
    }

    /// Reads an id this module wrote: each named auction's position.
    /// `None`: not such an id (garbled, another version, a plain event id,
    /// more than `max_entries` entries).
    pub fn parse(text: &str, max_entries: usize) -> Option<Vec<(AuctionId, EventId)>> {
        let mut parts = text.trim().split('.');
        if parts.next()? != VERSION {
            return None;
        }
        let newest = base36(parts.next()?)?;
        let mut entries = Vec::new();
        for part in parts {
            if entries.len() == max_entries {
                return None;
            }
            let (auction, at) = part.split_once('~')?;
            let (below, seq) = match at.split_once('-') {
                Some((below, seq)) => (below, base36(seq)?),
                None => (at, 0),
            };
            let ms = newest.checked_sub(base36(below)?)?;
            let id = EventId::new(ms, seq);
            if id == EventId::ZERO {
                return None;
            }
            entries.push((AuctionId::parse(auction).ok()?, id));
        }
        Some(entries)
    }
}

fn put_base36(out: &mut BytesMut, mut value: u64) {
    let mut digits = [0u8; 13];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdefghijklmnopqrstuvwxyz"[(value % 36) as usize];
        value /= 36;
        if value == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// A base-36 number as [`put_base36`] writes it (lower case, no sign, no
/// leading zero, fits a u64).
fn base36(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 13 || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        return None;
    }
    u64::from_str_radix(text, 36).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> AuctionId {
        AuctionId::parse(text).unwrap()
    }

    #[test]
    fn writes_distances_below_the_newest_and_leaves_out_auctions_not_seen() {
        let mut positions = Positions::new(&[id("a"), id("lot-7"), id("b")]);
        positions.set(&id("a"), EventId::new(1_700_000_000_000, 0));
        positions.set(&id("lot-7"), EventId::new(1_700_000_000_100, 3));
        let text = String::from_utf8(positions.encode().to_vec()).unwrap();
        assert_eq!(text, "m1.loyw3v50.a~2s.lot-7~0-3");
        assert_eq!(
            Positions::parse(&text, 10).unwrap(),
            vec![
                (id("a"), EventId::new(1_700_000_000_000, 0)),
                (id("lot-7"), EventId::new(1_700_000_000_100, 3)),
            ]
        );
    }

    #[test]
    fn an_id_never_moves_back_and_other_auctions_are_ignored() {
        let mut positions = Positions::new(&[id("a")]);
        positions.set(&id("a"), EventId::new(5, 1));
        positions.set(&id("a"), EventId::new(5, 0));
        positions.set(&id("x"), EventId::new(9, 0));
        assert_eq!(positions.get(&id("a")), EventId::new(5, 1));
        assert_eq!(positions.get(&id("x")), EventId::ZERO);
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        for text in [
            "",
            "5-1",
            "m2.1.a~0",
            "m1",
            "m1.",
            "m1.01.a~0",
            "m1.A.a~0",
            "m1.z.a~10",
            "m1.1.a",
            "m1.1.a~0-",
            "m1.1.a b~0",
            "m1.0.a~0",
            "m1.1.a~0.b~0.c~0",
            "m1.zzzzzzzzzzzzzz.a~0",
        ] {
            assert_eq!(Positions::parse(text, 2), None, "{text:?}");
        }
        assert_eq!(Positions::parse("m1.0", 2), Some(vec![]));
    }

    proptest::proptest! {
        #[test]
        fn every_id_reads_back(
            entries in proptest::collection::vec(
                ("[A-Za-z0-9_-]{1,64}", 1u64..=u64::MAX / 2, 0u64..1_000_000), 0..20)
        ) {
            let auctions: Vec<AuctionId> = entries.iter().map(|(a, _, _)| id(a)).collect();
            let mut positions = Positions::new(&auctions);
            for (auction, ms, seq) in &entries {
                positions.set(&id(auction), EventId::new(*ms, *seq));
            }
            let text = String::from_utf8(positions.encode().to_vec()).unwrap();
            let read = Positions::parse(&text, 20).unwrap();
            for (auction, at) in &read {
                proptest::prop_assert_eq!(positions.get(auction), *at);
            }
            let distinct: std::collections::BTreeSet<&str> =
                auctions.iter().map(AuctionId::as_str).collect();
            let seen = distinct.iter().filter(|a| positions.get(&id(a)) != EventId::ZERO).count();
            proptest::prop_assert_eq!(read.len(), seen);
        }
    }
}
