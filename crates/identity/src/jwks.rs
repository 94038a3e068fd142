//! An identity provider's tokens, checked against the keys it publishes at
//! its JWKS URL.
//!
//! The key set is fetched when first needed and used for a bounded time:
//! `AUCTION_JWKS_KEY_TTL_S`, shortened by the provider's `Cache-Control:
//! max-age`. After that, or when a token names an unknown `kid` (the
//! provider rotated its keys), it is fetched again, so a key the provider
//! removed stops being accepted. Fetches are limited:
//!
//! - at most one is in flight at a time (it runs on its own task, so a
//!   request that stops waiting does not cancel it);
//! - the next starts no sooner than [`MIN_REFETCH_INTERVAL`] after the last
//!   one ended, so a slow provider or a stream of made-up `kid`s cannot turn
//!   into back-to-back requests to the provider;
//! - a request waits for one in flight at most `AUCTION_JWKS_WAIT_MS`, then
//!   gets `identity_unavailable` with a time to retry.
//!
//! A failed fetch keeps the keys already known (a provider outage must not
//! sign everybody out), for at most one more key lifetime past their own.

use crate::config::ExternalIdp;
use crate::fetch::Fetcher;
use crate::{Identity, TokenError, identity, refused};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The least time between the end of one fetch of the key set and the
/// start of the next.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(1);
/// A fetch of the key set gives up after this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Key sets larger than this are refused (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// At most this many keys are kept from one key set.
const MAX_KEYS: usize = 64;
/// The longest `sub` accepted (the bidder id is `x_` + `sub`).
const MAX_SUB_LEN: usize = auction_domain::MAX_BIDDER_ID_LEN - 2;

#[derive(Clone)]
struct ProviderKey {
    key: DecodingKey,
    /// The JWK's `alg`, when it pins one.
    alg: Option<Algorithm>,
}

#[derive(Deserialize)]
struct ProviderClaims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// The last key set fetched.
#[derive(Default)]
struct Cache {
    keys: HashMap<String, ProviderKey>,
    /// Until then the set is used as is; after it, a request fetches it
    /// again first.
    fresh_until: Option<Instant>,
    /// While fetching again fails (or is slow), the set is used until then,
    /// and never after.
    usable_until: Option<Instant>,
}

/// The fetches' schedule. Invariant: at most one fetch task exists, and
/// only while `in_flight` is set.
#[derive(Default)]
struct Schedule {
    /// When the fetch in flight started.
    in_flight: Option<Instant>,
    /// When the last fetch ended, and whether it failed.
    last_ended: Option<Instant>,
    last_failed: bool,
}

struct Inner {
    url: String,
    validation_base: Validation,
    fetcher: Fetcher,
    key_ttl: Duration,
    fetch_wait: Duration,
    cache: RwLock<Cache>,
    schedule: Mutex<Schedule>,
    /// Bumped when a fetch ends; requests waiting for it watch this.
    fetched: watch::Sender<u64>,
}

#[derive(Clone)]
pub(crate) struct JwksVerifier {
    inner: Arc<Inner>,
}

impl JwksVerifier {
    pub(crate) fn new(idp: &ExternalIdp) -> Result<JwksVerifier, String> {
        let fetcher = Fetcher::new(&idp.jwks_url, FETCH_TIMEOUT, MAX_JWKS_BYTES)?;
        // Algorithms are set per token from its key; the rest is fixed.
        let mut validation_base = Validation::new(Algorithm::RS256);
        validation_base.set_issuer(&[&idp.issuer]);
        validation_base.set_audience(&[&idp.audience]);
        validation_base.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // `nbf` in the future (RFC 7519 4.1.5): not valid yet, refused.
        validation_base.validate_nbf = true;
        Ok(JwksVerifier {
            inner: Arc::new(Inner {
                url: idp.jwks_url.clone(),
                validation_base,
                fetcher,
                key_ttl: idp.key_ttl,
                fetch_wait: idp.fetch_wait,
                cache: RwLock::new(Cache::default()),
                schedule: Mutex::new(Schedule::default()),
                fetched: watch::channel(0).0,
            }),
        })
    }

    pub(crate) async fn verify(
        &self,
        token: &str,
        header: &Header,
    ) -> Result<Identity, TokenError> {
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| TokenError::Invalid("the token names no key (kid)".into()))?;
        let key = self.key(kid).await?;
        // The key decides the algorithm family; the token may only pick
        // within it (and only the JWK's own `alg` when it pins one).
        let allowed = match key.alg {
            Some(alg) => alg == header.alg,
            None => header.alg.family() == key.key.family(),
        };
        if !allowed {
            return Err(TokenError::Invalid(format!(
                "{:?} does not fit key {kid:?}",
                header.alg
            )));
        }
        let mut validation = self.inner.validation_base.clone();
        validation.algorithms = vec![header.alg];
        let claims = jsonwebtoken::decode::<ProviderClaims>(token, &key.key, &validation)
            .map_err(refused)?
            .claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_SUB_LEN {
            return Err(TokenError::Invalid("sub is empty or too long".into()));
        }
        let name = claims
            .name
            .as_deref()
            .or(claims.preferred_username.as_deref());
        identity(format!("x_{}", claims.sub), name, claims.roles)
    }

    /// The key `kid`: from the set while it is fresh, else after fetching
    /// it again (or joining the fetch in flight) for at most the bounded
    /// wait.
    async fn key(&self, kid: &str) -> Result<ProviderKey, TokenError> {
        let inner = &self.inner;
        if let Some(key) = inner.cached(kid, Instant::now(), true) {
            return Ok(key);
        }
        if let Some(mut fetched) = Inner::fetch_or_join(inner) {
            // Err: the wait is over and the fetch goes on; the answer
            // comes from the set as it is.
            let _ = tokio::time::timeout(inner.fetch_wait, fetched.changed()).await;
        }
        let now = Instant::now();
        if let Some(key) = inner.cached(kid, now, false) {
            return Ok(key);
        }
        let schedule = inner.schedule();
        let retry_at = match (schedule.in_flight, schedule.last_ended) {
            // Still fetching: it ends by its timeout, and is then usable.
            (Some(started), _) => Some(started + FETCH_TIMEOUT),
            // The provider did not answer: the next fetch may start then.
            (None, Some(ended)) if schedule.last_failed => Some(ended + MIN_REFETCH_INTERVAL),
            _ => None,
        };
        match retry_at {
            Some(at) => Err(TokenError::Unavailable {
                retry_after_s: at
                    .saturating_duration_since(now)
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64,
            }),
            None => Err(TokenError::Invalid(format!("unknown key {kid:?}"))),
        }
    }
}

impl Inner {
    /// `kid` from the set: while it is fresh, or (`fresh_only` false) while
    /// it is still usable.
    fn cached(&self, kid: &str, now: Instant, fresh_only: bool) -> Option<ProviderKey> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let until = if fresh_only {
            cache.fresh_until
        } else {
            cache.usable_until
        };
        if until.is_some_and(|until| now < until) {
            cache.keys.get(kid).cloned()
        } else {
            None
        }
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver told when the fetch in flight ends: the one in flight,
    /// or a new one if the last ended long enough ago; `None` when it is
    /// too soon for another.
    fn fetch_or_join(inner: &Arc<Inner>) -> Option<watch::Receiver<u64>> {
        let mut schedule = inner.schedule();
        // Subscribed under the lock: a fetch cannot end unseen between
        // the check and the wait.
        let receiver = inner.fetched.subscribe();
        if schedule.in_flight.is_some() {
            return Some(receiver);
        }
        let now = Instant::now();
        if schedule
            .last_ended
            .is_some_and(|ended| now.saturating_duration_since(ended) < MIN_REFETCH_INTERVAL)
        {
            return None;
        }
        schedule.in_flight = Some(now);
        drop(schedule);
        let inner = inner.clone();
        // Bounded by FETCH_TIMEOUT; it outlives the request that started
        // it, so the others waiting for it still get its keys.
        tokio::spawn(async move {
            let result = inner.fetch().await;
            let ended = Instant::now();
            let failed = match result {
                Ok((keys, max_age)) => {
                    let lifetime = max_age.map_or(inner.key_ttl, |age| age.min(inner.key_ttl));
                    tracing::info!(url = %inner.url, keys = keys.len(), ?lifetime, "fetched the identity provider's keys");
                    let mut cache = inner.cache.write().unwrap_or_else(|p| p.into_inner());
                    // Counted from the fetch's start: the provider's
                    // max-age runs from when it answered.
                    *cache = Cache {
                        keys,
                        fresh_until: Some(now + lifetime),
                        usable_until: Some(now + lifetime + inner.key_ttl),
                    };
                    false
                }
                // Keep the keys we have until they are no longer usable: a
                // provider outage must not sign everybody out.
                Err(error) => {
                    tracing::warn!(url = %inner.url, %error, "cannot fetch the identity provider's keys");
                    true
                }
            };
            let mut schedule = inner.schedule();
            schedule.in_flight = None;
            schedule.last_ended = Some(ended);
            schedule.last_failed = failed;
            drop(schedule);
            inner
                .fetched
                .send_modify(|count| *count = count.wrapping_add(1));
        });
        Some(receiver)
    }

    async fn fetch(&self) -> Result<(HashMap<String, ProviderKey>, Option<Duration>), String> {
        let fetched = self.fetcher.get().await?;
        let set: JwkSet = serde_json::from_slice(&fetched.body)
            .map_err(|error| format!("not a JWK set: {error}"))?;
        Ok((usable_keys(&set), fetched.max_age))
    }
}

/// The signing keys of `set` by `kid`. Keys without a `kid`, keys for
/// encryption, symmetric keys (a public key set has no business holding a
/// secret, and accepting one would let anybody who reads it sign) and keys
/// the library cannot use are left out.
fn usable_keys(set: &JwkSet) -> HashMap<String, ProviderKey> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        if keys.len() >= MAX_KEYS {
            break;
        }
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            || matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
        {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        if key.family() == AlgorithmFamily::Hmac {
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(alg) => match Algorithm::from_str(&alg.to_string()) {
                Ok(alg) => Some(alg),
                // An `alg` we cannot verify with (e.g. an encryption one).
                Err(_) => continue,
            },
        };
        keys.insert(kid, ProviderKey { key, alg });
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_encryption_keys_are_never_used() {
        let set: JwkSet = serde_json::from_str(
            r#"{"keys":[
              {"kty":"oct","kid":"secret","k":"c2VjcmV0"},
              {"kty":"EC","kid":"enc","use":"enc","crv":"P-256",
               "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
              {"kty":"EC","kid":"sig","crv":"P-256",
               "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
              {"kty":"EC","crv":"P-256",
               "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
            ]}"#,
        )
        .unwrap();
        let keys = usable_keys(&set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["sig"]);
    }
}
