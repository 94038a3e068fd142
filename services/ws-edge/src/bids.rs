//! Bids over the socket go to the bidder's HTTP API as the socket's user
//! (their token as `Authorization: Bearer`, their address as
//! `X-Forwarded-For`, so the bidder limits each user on their own); its
//! answer comes back as an `ack` or an `error` with the bidder's code.
//!
//! Every bid carries an `Idempotency-Key`: the client's `idempotency_key`
//! when it sent one (so it can retry across sockets and over HTTP), else one
//! made of this socket's random identity and the bid's `ref` (a retry with
//! the same `ref` on the same socket is the same bid). While the bidder
//! cannot tell what became of a bid, it is retried with the same key within
//! the bid's time budget; a bid still unresolved at the end is answered
//! `bid_outcome_unknown`, never as refused.

use crate::protocol::{INVALID_ID, Refusal, ack_json, error_json};
use auction_domain::{AuctionId, IdempotencyKey};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A bid gets an answer within this time, whatever the bidder does.
const BID_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before asking again about a bid whose outcome is not known.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// An attempt with less time than this left is not started.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct BidForwarder {
    http: reqwest::Client,
    bidder_url: String,
}

/// What one attempt at the bidder came to.
enum Attempt {
    /// A definite answer: the reply to send.
    Answered(String),
    /// Certainly not applied (no connection, or `redis_unavailable`).
    NotApplied(String),
    /// Sent, and no definite answer: it may have been applied.
    Unknown(String),
}

impl BidForwarder {
    pub fn new(bidder_url: &str) -> Result<BidForwarder, String> {
        let http = reqwest::Client::builder()
            .timeout(BID_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|error| format!("cannot build the HTTP client: {error}"))?;
        Ok(BidForwarder {
            http,
            bidder_url: bidder_url.trim_end_matches('/').to_owned(),
        })
    }

    /// Places the bid under `key` and returns the reply to send on the
    /// socket, within `BID_TIMEOUT`.
    pub async fn place(
        &self,
        auction: &str,
        amount: String,
        token: &str,
        reference: &str,
        key: &IdempotencyKey,
        client: IpAddr,
    ) -> String {
        let deadline = Instant::now() + BID_TIMEOUT;
        // The amount's JSON text as the client sent it (valid JSON: it was
        // parsed), judged by the bidder exactly as an HTTP bid's.
        let body = format!("{{\"amount\":{amount}}}");
        // Once one attempt may have been applied, the bid's outcome stays
        // unknown until an answer says otherwise: a later `redis_unavailable`
        // says nothing about the earlier attempt.
        let mut maybe_applied = false;
        let mut last_detail = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < MIN_ATTEMPT {
                break;
            }
            match self
                .attempt(auction, &body, token, reference, key, client, left)
                .await
            {
                Attempt::Answered(reply) => return reply,
                Attempt::NotApplied(detail) => last_detail = detail,
                Attempt::Unknown(detail) => {
                    maybe_applied = true;
                    last_detail = detail;
                }
            }
            if deadline.saturating_duration_since(Instant::now()) < RETRY_PAUSE + MIN_ATTEMPT {
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        if maybe_applied {
            error_json(
                Some(reference),
                "bid_outcome_unknown",
                &format!(
                    "the bid may have been placed ({last_detail}); send it again with the same \
                     ref on this socket, or the same idempotency_key, to learn its outcome"
                ),
            )
        } else {
            error_json(
                Some(reference),
                "bidder_unavailable",
                &format!("the bid service did not answer; the bid was not placed: {last_detail}"),
            )
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        auction: &str,
        body: &str,
        token: &str,
        reference: &str,
        key: &IdempotencyKey,
        client: IpAddr,
        time_left: Duration,
    ) -> Attempt {
        let url = format!("{}/auctions/{auction}/bids", self.bidder_url);
        let response = self
            .http
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("idempotency-key", key.as_str())
            .header("x-forwarded-for", client.to_string())
            .timeout(time_left)
            .body(body.to_owned())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            // No connection: the request was never sent.
            Err(error) if error.is_connect() => return Attempt::NotApplied(error.to_string()),
            Err(error) => return Attempt::Unknown(error.to_string()),
        };
        let status = response.status();
        let json: Value = match response.json().await {
            Ok(json) => json,
            Err(error) => return Attempt::Unknown(format!("{status}: {error}")),
        };
        if status.as_u16() == 201
            && let Some(id) = json["id"].as_str()
        {
            return Attempt::Answered(ack_json(reference, id));
        }
        let code = json["error"].as_str().unwrap_or("bid_failed");
        let message = json["message"]
            .as_str()
            .unwrap_or("the bid was not accepted");
        match code {
            "bid_outcome_unknown" => return Attempt::Unknown(message.to_owned()),
            "redis_unavailable" => return Attempt::NotApplied(message.to_owned()),
            _ => {}
        }
        let mut reply = json!({"type":"error","ref":reference,"error":code,"message":message});
        // `bid_too_low` carries the figures the client needs.
        for extra in ["current", "min_next"] {
            if let Some(value) = json.get(extra) {
                reply[extra] = value.clone();
            }
        }
        Attempt::Answered(reply.to_string())
    }
}

/// Bids a socket may have in flight to the bidder.
const BIDS_IN_FLIGHT: usize = 16;

/// A socket's bids in flight: each is posted by a task of its own, and the
/// answers come back through a bounded channel, so a slow bidder never
/// stalls delivery. Created on first use: most sockets never bid.
#[derive(Default)]
pub struct PendingBids {
    answers: Option<(mpsc::Sender<String>, mpsc::Receiver<String>)>,
    /// This socket's random identity, part of the `Idempotency-Key` of a
    /// bid sent without one. Made on the first bid.
    identity: Option<String>,
}

impl PendingBids {
    /// Starts placing a bid; `Some` is an immediate refusal to send.
    #[allow(clippy::too_many_arguments)] // the bid message's fields, as parsed
    pub fn place(
        &mut self,
        forwarder: &BidForwarder,
        auction: String,
        amount: String,
        token: Arc<str>,
        reference: String,
        idempotency_key: Option<String>,
        client: IpAddr,
    ) -> Option<String> {
        if AuctionId::parse(&auction).is_err() {
            return Some(Refusal::new(Some(reference), "invalid_auction_id", INVALID_ID).to_json());
        }
        let key = match idempotency_key {
            Some(key) => IdempotencyKey::parse(key.as_bytes()),
            None => {
                let identity = self.identity.get_or_insert_with(|| {
                    std::iter::repeat_with(fastrand::alphanumeric)
                        .take(16)
                        .collect()
                });
                // "ws" + 16 + "-" + a ref of at most 128 bytes can pass 128:
                // a long ref is kept whole by hashing it in.
                let key = format!("ws{identity}-{reference}");
                if key.len() <= 128 {
                    IdempotencyKey::parse(key.as_bytes())
                } else {
                    let digest = fnv1a64(reference.as_bytes());
                    IdempotencyKey::parse(format!("ws{identity}-h{digest:016x}").as_bytes())
                }
            }
        };
        let key = match key {
            Ok(key) => key,
            Err(error) => {
                return Some(Refusal::new(Some(reference), error.code, error.message).to_json());
            }
        };
        let (sender, _) = self
            .answers
            .get_or_insert_with(|| mpsc::channel(BIDS_IN_FLIGHT));
        let Ok(permit) = sender.clone().try_reserve_owned() else {
            let message = "wait for earlier bids to be answered";
            return Some(Refusal::new(Some(reference), "too_many_pending_bids", message).to_json());
        };
        let forwarder = forwarder.clone();
        tokio::spawn(async move {
            let reply = forwarder
                .place(&auction, amount, &token, &reference, &key, client)
                .await;
            permit.send(reply);
        });
        None
    }

    /// Where to send this socket a message of its own (a suspension
    /// notice): the answers' channel, made now if no bid made it yet.
    pub fn notices(&mut self) -> mpsc::Sender<String> {
        let (sender, _) = self
            .answers
            .get_or_insert_with(|| mpsc::channel(BIDS_IN_FLIGHT));
        sender.clone()
    }

    /// The next answer to send; pending while no bid was ever placed.
    /// Cancel-safe.
    pub async fn next_answer(&mut self) -> String {
        match &mut self.answers {
            Some((_, answers)) => match answers.recv().await {
                Some(answer) => answer,
                // Never: this struct holds a sender.
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

/// FNV-1a, 64 bits: a stable short name for a long `ref` (not a security
/// measure: the key is scoped to the bidder anyway).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
