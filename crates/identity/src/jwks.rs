//! An identity provider's tokens, checked against the keys it publishes at
//! its JWKS URL. Keys are fetched when first needed and cached by `kid`; a
//! token naming an unknown `kid` (the provider rotated its keys) triggers a
//! refetch, at most once per [`MIN_REFETCH_INTERVAL`] so a stream of made-up
//! `kid`s cannot turn into a stream of requests to the provider.

use crate::config::ExternalIdp;
use crate::fetch::Fetcher;
use crate::{Identity, TokenError, identity, refused};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The least time between two fetches of the key set.
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

struct Inner {
    url: String,
    validation_base: Validation,
    fetcher: Fetcher,
    keys: RwLock<HashMap<String, ProviderKey>>,
    /// Held while fetching (one fetch at a time); holds the last attempt.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
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
                keys: RwLock::new(HashMap::new()),
                last_fetch: tokio::sync::Mutex::new(None),
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

    /// The key `kid`, refetching the set once if it is unknown.
    async fn key(&self, kid: &str) -> Result<ProviderKey, TokenError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let mut last_fetch = self.inner.last_fetch.lock().await;
        // Another caller may have fetched while this one waited.
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let recently = last_fetch.is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL);
        if !recently {
            *last_fetch = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    tracing::info!(url = %self.inner.url, keys = keys.len(), "fetched the identity provider's keys");
                    *self.inner.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
                }
                // Keep the keys we have: a provider outage must not sign
                // everybody out.
                Err(error) => {
                    tracing::warn!(url = %self.inner.url, %error, "cannot fetch the identity provider's keys")
                }
            }
        }
        self.cached(kid)
            .ok_or_else(|| TokenError::Invalid(format!("unknown key {kid:?}")))
    }

    fn cached(&self, kid: &str) -> Option<ProviderKey> {
        let keys = self.inner.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(kid).cloned()
    }

    async fn fetch(&self) -> Result<HashMap<String, ProviderKey>, String> {
        let body = self.inner.fetcher.get().await?;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|error| format!("not a JWK set: {error}"))?;
        Ok(usable_keys(&set))
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
