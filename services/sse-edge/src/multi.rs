//! The SSE stream of several auctions, `GET /events?auctions=a,b,c`: one
//! connection where a page watches many lots (a browser allows six per
//! origin over HTTP/1.1, and every other request of the origin queues
//! behind them).
//!
//! Each auction is a subscription of its own, started and resumed as the
//! one-auction stream's are (`Delivery::start_framed`), and the stream's
//! subscriptions are read together ([`LiveSet`]): one write carries events
//! of all of them. What is its own is the id: every event is closed by the
//! stream's id ([`Positions`]), which names where the client is in each
//! auction, so the one id a browser sends back resumes them all.

use crate::SseEndpoint;
use crate::codec::SseCodec;
use crate::stream::{SseSocket, client_gone, end, response_head, serve_then_end};
use crate::stream_id::Positions;
use auction_domain::{AuctionId, EventId};
use bytes::{BufMut, BytesMut};
use fanout::{Codec, Frame, Framing, LiveSet, OpenError, Opening, Resume};
use service_kit::demo::DemoGuard;
use service_kit::{RequestHead, address_key, refusal};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

pub const PATH: &str = "/events";

/// What a request for a stream of several auctions asks for, read from
/// its head before the stream starts (an open stream keeps none of it).
pub struct Request {
    auctions: Vec<AuctionId>,
    /// Each named auction's resume point; `None`: the id given was not
    /// one of ours (every auction starts afresh, as after a reset).
    resume: Option<Vec<(AuctionId, EventId)>>,
}

impl Request {
    /// The auctions (`auctions=a,b,c`, at most `max`, each once) and the
    /// resume id (`Last-Event-ID`, or `lastEventId` in the query: a page
    /// that changes its auctions opens a new stream with its last id).
    /// `Err`: the refusal to send.
    pub fn read(head: &RequestHead, max: usize) -> Result<Request, Vec<u8>> {
        let list = head
            .query_param("auctions")
            .and_then(percent_decoded)
            .unwrap_or_default();
        let mut auctions: Vec<AuctionId> = Vec::new();
        for name in list.split(',').filter(|name| !name.is_empty()) {
            let auction = AuctionId::parse(name)
                .map_err(|error| refusal::bad_request("invalid_auction_id", &error.to_string()))?;
            if !auctions.contains(&auction) {
                auctions.push(auction);
            }
        }
        if auctions.is_empty() {
            return Err(refusal::bad_request(
                "invalid_auctions",
                "name the auctions to watch: /events?auctions=<id>,<id>",
            ));
        }
        if auctions.len() > max {
            return Err(refusal::bad_request(
                "too_many_auctions",
                &format!("a stream carries at most {max} auctions"),
            ));
        }
        let id = head
            .header("last-event-id")
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .map(str::to_owned)
            .or_else(|| head.query_param("lastEventId").and_then(percent_decoded));
        let resume = match &id {
            None => Some(Vec::new()),
            // Entries of at most every auction the id may name: the ones
            // asked for now and as many others (a page that changed them).
            Some(id) => Positions::parse(id, 2 * max),
        };
        Ok(Request { auctions, resume })
    }

    /// Where `auction` resumes.
    fn resume(&self, auction: &AuctionId) -> Resume {
        match &self.resume {
            None => Resume::Garbled,
            // Not in the id: an auction added to the stream, or one not
            // seen yet (its init had no event to name).
            Some(entries) => entries
                .iter()
                .find(|(a, _)| a == auction)
                .map_or(Resume::Fresh, |(_, id)| Resume::From(*id)),
        }
    }
}

/// Writes each event of the stream closed by the stream's id: the shared
/// frame without its blank line, then `id: <stream id>` and the blank
/// line. The event is dispatched at that blank line, so a browser never
/// holds the auction's own id (a later `id:` line replaces an earlier
/// one), and the stream's id arrives with its event or not at all.
struct StreamIds(Positions);

impl Framing for StreamIds {
    fn frame(&mut self, auction: &AuctionId, id: EventId, frame: &Frame, out: &mut Vec<Frame>) {
        self.0.set(auction, id);
        let id = self.0.encode();
        out.push(frame.slice(..frame.len().saturating_sub(1)));
        let mut tail = BytesMut::with_capacity(id.len() + 6);
        tail.put_slice(b"id: ");
        tail.put_slice(&id);
        tail.put_slice(b"\n\n");
        out.push(tail.freeze());
    }
}

impl SseEndpoint {
    /// One stream of several auctions, from admission to its FIN (or, after
    /// a demo reset, its RST).
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn stream_many(
        self: Arc<Self>,
        stream: TcpStream,
        client: IpAddr,
        request: Result<Request, Vec<u8>>,
        demo: Option<Box<DemoGuard>>,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let request = match request {
                Ok(request) => request,
                Err(refusal) => return refusal::refuse(stream, &refusal).await,
            };
            let _admission = match self.gate.admit(client) {
                Ok(admission) => admission,
                Err(refused) => return refusal::refuse(stream, &refused.response()).await,
            };
            let mut set = LiveSet::framed(Box::new(StreamIds(Positions::new(&request.auctions))));
            match Box::pin(self.start_many(&stream, &request, &mut set, address_key(client))).await
            {
                Ok(()) => serve_then_end(&stream, self.serve_many(&stream, &mut set), demo).await,
                Err(Some(refusal)) => refusal::refuse(stream, &refusal).await,
                Err(None) => end(&stream),
            }
        }
    }

    /// Opens every auction (refusing the stream if the event store does
    /// not answer, or if none exists), writes the head, then each found
    /// auction's start (init or replay) and each missing one's `gone`.
    async fn start_many(
        &self,
        stream: &TcpStream,
        request: &Request,
        set: &mut LiveSet,
        address: IpAddr,
    ) -> Result<(), Option<Vec<u8>>> {
        if self.shutdown.is_cancelled() {
            return Err(Some(refusal::draining()));
        }
        if let Some(refusal) = self.demo.refusal() {
            return Err(Some(refusal));
        }
        let mut openings: Vec<Opening> = Vec::with_capacity(request.auctions.len());
        let mut missing = Vec::new();
        for auction in &request.auctions {
            match self
                .delivery
                .open(auction, request.resume(auction), address)
                .await
            {
                Ok(opening) => openings.push(opening),
                Err(OpenError::NotFound) => missing.push(auction),
                Err(OpenError::OutOfMemory) => {
                    return Err(Some(refusal::redis_out_of_memory()));
                }
                Err(OpenError::Unavailable | OpenError::Busy) => {
                    return Err(Some(refusal::redis_unavailable()));
                }
            }
        }
        if openings.is_empty() {
            return Err(Some(refusal::not_found("none of these auctions exists")));
        }
        self.event_socket.set_up(stream);
        let mut socket = SseSocket(stream);
        self.delivery
            .write_head(&mut socket, response_head(self.retry_ms))
            .await
            .map_err(|_| None)?;
        for auction in missing {
            let frame = SseCodec.gone(auction);
            self.delivery
                .write_head(&mut socket, frame)
                .await
                .map_err(|_| None)?;
        }
        for opening in openings {
            let (subscription, rx) = self
                .delivery
                .start_framed(&mut socket, opening, set.batch())
                .await
                .map_err(|_| None)?;
            set.insert(subscription, rx);
        }
        Ok(())
    }

    /// Delivers the stream's auctions until the client leaves, the replica
    /// drains, or one of them ends it (lapped, reset, stalled: the browser
    /// resumes every auction from the stream's id).
    async fn serve_many(&self, stream: &TcpStream, set: &mut LiveSet) {
        let shutdown = self.shutdown.cancelled();
        tokio::pin!(shutdown);
        let mut socket = SseSocket(stream);
        while !set.is_empty() {
            let (key, item) = tokio::select! {
                biased;
                _ = &mut shutdown => return,
                next = set.next() => next,
                _ = client_gone(stream) => return,
            };
            if set
                .forward(&self.delivery, &mut socket, key, item)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// A query value with its `%XX` escapes decoded (a page's URLSearchParams
/// writes `,` as `%2C` and `~` as `%7E`). `None`: not ASCII once decoded.
fn percent_decoded(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = raw.get(at + 1..at + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    out.is_ascii()
        .then(|| String::from_utf8(out).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decoded("a%2Cb,c").as_deref(), Some("a,b,c"));
        assert_eq!(percent_decoded("m1.x.a%7E0").as_deref(), Some("m1.x.a~0"));
        assert_eq!(percent_decoded("%zz"), None);
        assert_eq!(percent_decoded("%2"), None);
        assert_eq!(percent_decoded("%C3%A9"), None);
    }

    #[test]
    fn each_event_is_closed_by_the_streams_id() {
        let a = AuctionId::parse("a").unwrap();
        let b = AuctionId::parse("b").unwrap();
        let mut ids = StreamIds(Positions::new(&[a.clone(), b.clone()]));
        let mut out = Vec::new();
        let frame = crate::codec::encode(Some(EventId::new(36, 0)), "bid", "{}");
        ids.frame(&a, EventId::new(36, 0), &frame, &mut out);
        ids.frame(&b, EventId::new(72, 1), &frame, &mut out);
        let written: Vec<u8> = out.iter().flat_map(|f| f.iter().copied()).collect();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "id: 36-0\nevent: bid\ndata: {}\nid: m1.10.a~0\n\n\
             id: 36-0\nevent: bid\ndata: {}\nid: m1.20.a~10.b~0-1\n\n"
        );
    }
}
