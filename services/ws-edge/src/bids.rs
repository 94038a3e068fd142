//! Bids over the socket go to the bidder's HTTP API; its answer comes back
//! as an `ack` or an `error` with the bidder's code.

use crate::protocol::{ack_json, error_json};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::time::Duration;

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
        bidder: Value,
        reference: &str,
        client: IpAddr,
    ) -> String {
        let url = format!("{}/auctions/{auction}/bids", self.bidder_url);
        let body = json!({ "amount": amount, "bidder": bidder }).to_string();
        let response = self
            .http
            .post(url)
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
