//! Streaming clients that behave like the pages: an SSE client that
//! reconnects with `Last-Event-ID` like EventSource, and a WebSocket client
//! that resubscribes with `last_id`. Both record what they saw in a
//! [`Seen`], to compare with the stream.

use crate::Seen;
use eventsource_stream::Eventsource;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Follows an auction like EventSource: on every end or error it reconnects
/// (to the next URL of `edges` when one refuses) with Last-Event-ID, until
/// `done` says so or `timeout` passes (then it returns what it saw).
pub async fn sse_follow(
    edges: &[String],
    auction: &str,
    timeout: Duration,
    done: impl FnMut(&Seen) -> bool,
) -> Seen {
    sse_follow_from(edges, auction, None, timeout, done).await
}

/// [`sse_follow`], starting from the resume point `last` (as a reconnecting
/// EventSource would).
pub async fn sse_follow_from(
    edges: &[String],
    auction: &str,
    last: Option<String>,
    timeout: Duration,
    mut done: impl FnMut(&Seen) -> bool,
) -> Seen {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut seen = Seen {
        last,
        ..Seen::default()
    };
    let mut edge = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline && !done(&seen) {
        let url = format!("{}/auctions/{auction}/events", edges[edge % edges.len()]);
        let mut request = http.get(&url);
        if let Some(last) = &seen.last {
            request = request.header("Last-Event-ID", last);
        }
        let response = match tokio::time::timeout_at(deadline, request.send()).await {
            Ok(Ok(response)) if response.status() == 200 => response,
            Ok(Ok(response)) => {
                seen.refusals.push(response.status().as_u16());
                edge += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Ok(Err(_)) => {
                edge += 1; // connection refused: this replica is gone
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(_) => break,
        };
        let mut events = response.bytes_stream().eventsource();
        loop {
            // Wake up now and then so `done` is asked even when nothing arrives.
            let wake = (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline);
            let next = tokio::time::timeout_at(wake, events.next()).await;
            let event = match next {
                Ok(Some(Ok(event))) => event,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    if done(&seen) {
                        return seen;
                    }
                    continue;
                }
                _ => break,
            };
            match event.event.as_str() {
                "init" => {
                    let json: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                    seen.inits
                        .push((event.id.clone(), json["reset"].as_bool().unwrap()));
                }
                "bid" | "closed" | "opened" => seen.ids.push(event.id.clone()),
                // Viewer counts and the like are not the auction's events.
                _ => continue,
            }
            if !event.id.is_empty() {
                seen.last = Some(event.id.clone());
            }
            if done(&seen) {
                return seen;
            }
        }
        seen.reconnects += 1;
    }
    seen
}

/// Follows one auction: subscribes (with `last_id` once it has one), and on
/// every close or error reconnects, trying the next of `edges` when one
/// refuses, until `done` or `timeout`.
pub async fn ws_follow(
    edges: &[String],
    auction: &str,
    timeout: Duration,
    mut done: impl FnMut(&Seen) -> bool,
) -> Seen {
    let mut seen = Seen::default();
    let mut edge = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline && !done(&seen) {
        let url = &edges[edge % edges.len()];
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        else {
            edge += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut subscribe = json!({"type":"subscribe","auction":auction});
        if let Some(last) = &seen.last {
            subscribe["last_id"] = json!(last);
        }
        if ws
            .send(Message::Text(subscribe.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        loop {
            let wake = (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline);
            let message = match tokio::time::timeout_at(wake, ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Value>(&text).unwrap(),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    seen.refusals.push(frame.map_or(0, |f| u16::from(f.code)));
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(_) => break,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    if done(&seen) {
                        return seen;
                    }
                    continue;
                }
                Err(_) => break,
            };
            let id = message["id"].as_str().unwrap_or("").to_owned();
            match message["type"].as_str() {
                Some("init") => seen
                    .inits
                    .push((id.clone(), message["payload"]["reset"].as_bool().unwrap())),
                Some("bid" | "closed" | "opened") => seen.ids.push(id.clone()),
                Some("error") => panic!("unexpected error: {message}"),
                _ => continue,
            }
            if !id.is_empty() {
                seen.last = Some(id);
            }
            if done(&seen) {
                return seen;
            }
        }
        seen.reconnects += 1;
    }
    seen
}
