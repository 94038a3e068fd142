//! Bids over the socket go to the bidder's HTTP API as the socket's user
//! (their token as `Authorization: Bearer`, their address as
//! `X-Forwarded-For`, so the bidder limits each user on their own); its
//! answer comes back as an `ack` or an `error` with the bidder's code.

use crate::protocol::{INVALID_ID, Refusal, ack_json, error_json};
use auction_domain::AuctionId;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A bid gets an answer within this time, whatever the bidder does.
const BID_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct BidForwarder {
    http: reqwest::Client,
    bidder_url: String,
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

    /// Places the bid and returns the reply to send on the socket.
    pub async fn place(
        &self,
        auction: &str,
        amount: Value,
        token: &str,
        reference: &str,
        client: IpAddr,
    ) -> String {
        let url = format!("{}/auctions/{auction}/bids", self.bidder_url);
        let body = json!({ "amount": amount }).to_string();
        let response = self
            .http
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("x-forwarded-for", client.to_string())
            .body(body)
            .send()
            .await;
        let unavailable = |detail: String| {
            error_json(
                Some(reference),
                "bidder_unavailable",
                &format!("the bid service did not answer: {detail}"),
            )
        };
        let response = match response {
            Ok(response) => response,
            Err(error) => return unavailable(error.to_string()),
        };
        let status = response.status();
        let json: Value = match response.json().await {
            Ok(json) => json,
            Err(error) => return unavailable(format!("{status}: {error}")),
        };
        if status.as_u16() == 201
            && let Some(id) = json["id"].as_str()
        {
            return ack_json(reference, id);
        }
        let code = json["error"].as_str().unwrap_or("bid_failed");
        let message = json["message"]
            .as_str()
            .unwrap_or("the bid was not accepted");
        let mut reply = json!({"type":"error","ref":reference,"error":code,"message":message});
        // `bid_too_low` carries the figures the client needs.
        for extra in ["current", "min_next"] {
            if let Some(value) = json.get(extra) {
                reply[extra] = value.clone();
            }
        }
        reply.to_string()
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
}

impl PendingBids {
    /// Starts placing a bid; `Some` is an immediate refusal to send.
    pub fn place(
        &mut self,
        forwarder: &BidForwarder,
        auction: String,
        amount: Value,
        token: Arc<str>,
        reference: String,
        client: IpAddr,
    ) -> Option<String> {
        if AuctionId::parse(&auction).is_err() {
            return Some(Refusal::new(Some(reference), "invalid_auction_id", INVALID_ID).to_json());
        }
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
                .place(&auction, amount, &token, &reference, client)
                .await;
            permit.send(reply);
        });
        None
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
