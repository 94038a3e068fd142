//! Who may bid, against real processes: guest sessions shared by replicas,
//! an identity provider's keys fetched from its JWKS URL (and rotated), and
//! every kind of bad token refused with nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Stack, eventually};
use serde_json::{Value, json};
use std::time::Duration;
use test_support::idp::{self, IdpKey, TestIdp, guest_claims, now_s};
use test_support::{TEST_SESSION_SECRET, guest_token};

async fn bid(
    stack: &Stack,
    replica: usize,
    token: Option<&str>,
    amount: u64,
) -> (u16, Value, Option<String>) {
    let mut request = stack
        .http
        .post(format!(
            "{}/auctions/who/bids",
            stack.bidders[replica].url()
        ))
        .header("content-type", "application/json")
        // Never trusted: the stream shows the token's bidder.
        .body(format!(r#"{{"amount":{amount},"bidder":"Someone Else"}}"#));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap().to_owned());
    let (status, json) = common::status_and_json(response).await;
    (status, json, challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_get_401_and_leave_nothing_in_the_stream() {
    let key = IdpKey::generate("k1");
    let stranger = IdpKey::generate("k1"); // same kid, another key
    let provider = TestIdp::start(&[&key]);
    let stack = Stack::start(1, &provider.env());
    stack.create_auction("who", 1_000, 100, 600_000).await;

    let expired_guest = idp::hs256_token(
        TEST_SESSION_SECRET.as_bytes(),
        "guest",
        &guest_claims("g_expired", now_s() - 3600),
    );
    let other_secret = idp::hs256_token(
        b"another secret that is long enough!!",
        "guest",
        &guest_claims("g_forged", now_s() + 3600),
    );
    let valid = guest_token("Ann");
    let mut parts: Vec<&str> = valid.split('.').collect();
    let forged_payload = other_secret.split('.').nth(1).unwrap().to_owned();
    parts[1] = &forged_payload;
    let tampered = parts.join(".");
    let unsigned = idp::unsigned_token(&guest_claims("g_none", now_s() + 3600));
    let unsigned_idp = idp::unsigned_token(&json!({
        "iss": idp::IDP_ISSUER, "aud": idp::IDP_AUDIENCE, "sub": "u1", "exp": now_s() + 3600,
    }));
    // A provider token re-signed with HMAC keyed by the provider's public key.
    let confused = idp::hs256_token(
        key.public_jwk().to_string().as_bytes(),
        "k1",
        &json!({ "iss": idp::IDP_ISSUER, "aud": idp::IDP_AUDIENCE, "sub": "u1", "exp": now_s() + 3600 }),
    );
    let mut not_yet = guest_claims("g_not_yet", now_s() + 7200);
    not_yet["nbf"] = json!(now_s() + 3600);
    let not_yet_guest = idp::hs256_token(TEST_SESSION_SECRET.as_bytes(), "guest", &not_yet);
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        (
            "guest not valid for an hour (nbf)",
            Some(not_yet_guest),
            "invalid_token",
        ),
        (
            "provider token not valid for an hour (nbf)",
            Some(key.token("u1", json!({"nbf": now_s() + 3600}))),
            "invalid_token",
        ),
        ("no token", None, "missing_token"),
        ("not a JWT", Some("hello".into()), "invalid_token"),
        ("expired guest", Some(expired_guest), "token_expired"),
        (
            "guest of another secret",
            Some(other_secret),
            "invalid_token",
        ),
        ("tampered guest", Some(tampered), "invalid_token"),
        ("alg none (guest claims)", Some(unsigned), "invalid_token"),
        (
            "alg none (provider claims)",
            Some(unsigned_idp),
            "invalid_token",
        ),
        (
            "HS256 keyed by the public key",
            Some(confused),
            "invalid_token",
        ),
        (
            "signed by another key",
            Some(stranger.token("u1", json!({}))),
            "invalid_token",
        ),
        (
            "unknown kid",
            Some(IdpKey::generate("k9").token("u1", json!({}))),
            "invalid_token",
        ),
        (
            "another audience",
            Some(key.token("u1", json!({"aud": "other-api"}))),
            "invalid_token",
        ),
        (
            "another issuer",
            Some(key.token("u1", json!({"iss": "https://evil.invalid/"}))),
            "invalid_token",
        ),
        (
            "expired provider token",
            Some(key.token("u1", json!({"exp": now_s() - 3600}))),
            "token_expired",
        ),
    ];
    for (what, token, code) in &cases {
        let (status, json, challenge) = bid(&stack, 0, token.as_deref(), 5_000).await;
        assert_eq!(status, 401, "{what}: {json}");
        assert_eq!(json["error"], *code, "{what}: {json}");
        assert_eq!(challenge.as_deref(), Some("Bearer"), "{what}");
    }
    assert!(stack.stream("who").await.is_empty(), "nothing was written");

    // The same stack accepts good tokens of both kinds, and the stream
    // names the token's bidder, never the body's.
    let (status, json, _) = bid(&stack, 0, Some(&valid), 5_000).await;
    assert_eq!(status, 201, "{json}");
    let provider_token = key.token("u1", json!({"name": "Grace"}));
    let (status, json, _) = bid(&stack, 0, Some(&provider_token), 6_000).await;
    assert_eq!(status, 201, "{json}");
    let bids: Vec<(String, String)> = stack
        .stream("who")
        .await
        .iter()
        .map(|(_, _, data)| {
            (
                data["bidder"].as_str().unwrap().to_owned(),
                data["bidder_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(bids[0].0, "Ann");
    assert!(bids[0].1.starts_with("g_"), "{bids:?}");
    assert_eq!(bids[1], ("Grace".to_owned(), "x_u1".to_owned()));
}

#[tokio::test]
async fn two_replicas_accept_each_others_guest_sessions() {
    let stack = Stack::start(2, &[]);
    stack.create_auction("who", 1_000, 100, 600_000).await;
    let response = stack
        .http
        .post(format!("{}/sessions", stack.bidders[0].url()))
        .json(&json!({"name": "  Ada Lovelace "}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store"),
        "a token is never cached"
    );
    let (status, session) = common::status_and_json(response).await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["name"], "Ada Lovelace");
    let bidder_id = session["bidder_id"].as_str().unwrap();
    assert!(bidder_id.starts_with("g_"), "{session}");
    let expires_at = session["expires_at"].as_u64().unwrap();
    let ttl_ms = expires_at.saturating_sub(now_s() * 1000);
    assert!(
        ((12 * 3600 - 60) * 1000..=12 * 3600 * 1000 + 1000).contains(&ttl_ms),
        "the default lifetime is 12 h: {ttl_ms} ms"
    );
    let token = session["token"].as_str().unwrap();
    let (status, json, _) = bid(&stack, 1, Some(token), 1_000).await;
    assert_eq!(status, 201, "the other replica accepts it: {json}");
    assert_eq!(json["bid"]["bidder_id"], bidder_id);
    assert_eq!(json["bid"]["bidder"], "Ada Lovelace");
    let (_, auction) = stack.get("/auctions/who").await;
    assert_eq!(auction["current"]["bidder_id"], bidder_id);
}

#[tokio::test]
async fn a_session_name_must_be_a_plain_display_name() {
    let stack = Stack::start(1, &[]);
    for name in [
        json!(""),
        json!("   "),
        json!("\u{3000}\u{00A0} "),
        json!("a\u{200B}b"),
        json!("\u{200D}"),
        json!("a\u{202E}b"),
        json!("a\u{2028}b"),
        json!("a\u{2029}b"),
        json!("x".repeat(41)),
        json!(7),
    ] {
        let response = stack
            .http
            .post(stack.url("/sessions"))
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        let (status, json) = common::status_and_json(response).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("invalid_name")),
            "{name}: {json}"
        );
    }
}

#[tokio::test]
async fn creating_an_auction_needs_the_seller_role() {
    let stack = Stack::start(1, &[]);
    let body = r#"{"id":"lot","title":"Lamp","starting_price":500,"min_increment":50,"duration_ms":60000}"#;
    let create = |token: Option<String>| {
        let mut request = stack
            .http
            .post(stack.url("/auctions"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { common::status_and_json(request.send().await.unwrap()).await }
    };
    let (status, json) = create(None).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("missing_token"))
    );
    let (status, json) = create(Some(guest_token("Buyer"))).await;
    assert_eq!((status, json["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(stack.get("/auctions/lot").await.0, 404, "nothing created");
    let (status, json) = create(Some(test_support::seller_token())).await;
    assert_eq!(status, 201, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_provider_key_is_picked_up_without_a_restart() {
    let old = IdpKey::generate("2025-01");
    let provider = TestIdp::start(&[&old]);
    let stack = Stack::start(1, &provider.env());
    stack.create_auction("who", 1_000, 100, 600_000).await;
    let (status, json, _) = bid(&stack, 0, Some(&old.token("u1", json!({}))), 1_000).await;
    assert_eq!(status, 201, "{json}");

    // The provider rotates: a new key, the old one withdrawn.
    let new = IdpKey::generate("2025-02");
    provider.publish(&[&new]);
    let token = new.token("u2", json!({}));
    let mut amount = 2_000;
    eventually(
        "the new key to be accepted",
        Duration::from_secs(15),
        || {
            amount += 100;
            let (stack, token, amount) = (&stack, &token, amount);
            async move {
                let (status, json, _) = bid(stack, 0, Some(token), amount).await;
                match status {
                    201 => Some(()),
                    401 => {
                        assert_eq!(json["error"], "invalid_token");
                        None
                    }
                    other => panic!("unexpected {other}: {json}"),
                }
            }
        },
    )
    .await;
    // Refetches are bounded: a few tries within a second or two, not one
    // fetch per request.
    assert!(provider.fetches() <= 4, "{} fetches", provider.fetches());
    let (status, json, _) = bid(&stack, 0, Some(&old.token("u1", json!({}))), 90_000).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("invalid_token")),
        "the withdrawn key no longer signs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_publishing_its_keys_over_https_is_trusted_through_the_system_roots() {
    let key = IdpKey::generate("tls-1");
    // A certificate the bidder trusts only through SSL_CERT_FILE, as it
    // would trust a real provider through the system's roots.
    let provider = TestIdp::start_tls(&[&key]);
    assert!(provider.url.starts_with("https://localhost:"));
    let stack = Stack::start(1, &provider.env());
    stack.create_auction("who", 1_000, 100, 600_000).await;
    let (status, json, _) = bid(&stack, 0, Some(&key.token("u1", json!({}))), 1_000).await;
    assert_eq!(status, 201, "{json}\n{}", stack.bidders[0].logs());
    assert_eq!(json["bid"]["bidder_id"], "x_u1");
    assert_eq!(provider.fetches(), 1);
}

/// Reads one HTTP response head from `stream` and returns it lower-cased,
/// with its body skipped (it is small: an error body).
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(read > 0, "closed before answering");
        buffer.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&buffer).to_lowercase()
}

/// Whether the server closed `stream` (reads to its end within a deadline).
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn an_answer_given_before_the_body_was_read_says_connection_close() {
    let stack = Stack::start(
        1,
        &[
            ("AUCTION_SESSION_RATE_LIMIT_PER_S", "1".into()),
            ("AUCTION_SESSION_RATE_LIMIT_BURST", "1".into()),
        ],
    );
    use tokio::io::AsyncWriteExt;
    let body = r#"{"name":"Ada"}"#;
    let head = format!(
        "POST /sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(stack.bidders[0].addr)
        .await
        .unwrap();
    // The first request is served and its body read: the connection stays.
    stream
        .write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("http/1.1 201"), "{answer}");
    assert!(!answer.contains("connection: close"), "{answer}");
    // The second is refused before its body arrives: the answer says the
    // connection closes, and it does.
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("http/1.1 429"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let _ = stream.write_all(body.as_bytes()).await;
    assert!(closed_by_server(&mut stream).await);
}
