//! The identity provider's keys against a real bidder and a real JWKS
//! server: a slow provider is fetched one at a time and requests wait for
//! it a bounded time; a key the provider removed stops being accepted once
//! the key set's lifetime (`AUCTION_JWKS_KEY_TTL_S`, or the provider's
//! shorter `Cache-Control: max-age`) is over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Stack, eventually};
use std::time::Duration;
use test_support::idp::{IdpKey, TestIdp};

/// A bid with `token`: status, error code, `Retry-After`.
async fn bid(stack: &Stack, token: &str, amount: u64) -> (u16, String, Option<u64>) {
    let response = stack
        .http
        .post(stack.url("/auctions/keys/bids"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"amount":{amount}}}"#))
        .send()
        .await
        .unwrap();
    common::answer(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_is_fetched_once_while_requests_wait_a_bounded_time() {
    let rotated = IdpKey::generate("rotated");
    let provider = TestIdp::start(&[&rotated]);
    let mut env = provider.env();
    env.push(("AUCTION_JWKS_WAIT_MS", "300".into()));
    let stack = Stack::start(1, &env);
    stack.create_auction("keys", 1_000, 1, 600_000).await;
    provider.set_delay(Duration::from_secs(3));

    // Ten requests at once, none of whose keys the bidder has: one with the
    // provider's new key, nine with keys it never published.
    let mut tokens = vec![rotated.token("fresh", serde_json::json!({}))];
    for n in 0..9 {
        tokens.push(IdpKey::generate(&format!("made-up-{n}")).token("x", serde_json::json!({})));
    }
    let answers = futures_join(&stack, &tokens).await;
    // All answered while the one fetch was still going: none waited for it
    // to end, and none started another.
    assert_eq!(provider.in_flight(), 1, "answered before the fetch ended");
    for (status, code, retry_after) in &answers {
        assert_eq!(*status, 503, "{code}");
        assert_eq!(code, "identity_unavailable");
        assert!(
            retry_after.is_some_and(|s| (1..=6).contains(&s)),
            "{retry_after:?}"
        );
    }

    // Once the keys are in, the new key is accepted and made-up ones refused.
    let (status, code, _) = eventually(
        "the rotated key accepted",
        Duration::from_secs(15),
        || async {
            let answer = bid(&stack, &tokens[0], 2_000).await;
            (answer.0 != 503).then_some(answer)
        },
    )
    .await;
    assert_eq!(status, 201, "{code}");
    let (status, code, _) = bid(&stack, &tokens[1], 3_000).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"));
    assert_eq!(provider.most_in_flight(), 1, "one fetch at a time");
    assert!(provider.fetches() <= 2, "{} fetches", provider.fetches());
}

/// Sends a bid with each token at once; their answers in order.
async fn futures_join(stack: &Stack, tokens: &[String]) -> Vec<(u16, String, Option<u64>)> {
    let mut tasks = Vec::new();
    for (n, token) in tokens.iter().enumerate() {
        let (http, url, token) = (
            stack.http.clone(),
            stack.url("/auctions/keys/bids"),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(format!(r#"{{"amount":{}}}"#, 1_000 + n))
                .send()
                .await
                .unwrap();
            common::answer(response).await
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_key_stops_being_accepted_after_the_shorter_lifetime() {
    // The setting alone, then a provider's max-age shorter than it.
    for (ttl_s, cache_control) in [("1", None), ("3600", Some("public, max-age=1"))] {
        let old = IdpKey::generate("old");
        let new = IdpKey::generate("new");
        let provider = TestIdp::start(&[&old, &new]);
        provider.set_cache_control(cache_control);
        let mut env = provider.env();
        env.push(("AUCTION_JWKS_KEY_TTL_S", ttl_s.into()));
        let stack = Stack::start(1, &env);
        stack.create_auction("keys", 1_000, 1, 600_000).await;
        let old_token = old.token("old-user", serde_json::json!({}));
        let new_token = new.token("new-user", serde_json::json!({}));
        let (status, code, _) = bid(&stack, &old_token, 1_000).await;
        assert_eq!(status, 201, "{code}");

        // The provider withdraws the old key.
        provider.publish(&[&new]);
        let mut amount = 2_000;
        eventually("the removed key refused", Duration::from_secs(15), || {
            amount += 1;
            let (stack, token) = (&stack, &old_token);
            async move {
                let (status, code, _) = bid(stack, token, amount).await;
                (status == 401).then(|| assert_eq!(code, "invalid_token"))
            }
        })
        .await;
        let (status, code, _) = bid(&stack, &new_token, 100_000).await;
        assert_eq!(status, 201, "the key still published is accepted: {code}");
    }
}
