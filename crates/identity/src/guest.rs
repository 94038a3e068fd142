//! Guest sessions: tokens signed with the shared secret (HS256).

use crate::{Identity, TokenError, identity, refused};
use auction_domain::BidderName;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// `iss` of guest tokens. Never accepted from the identity provider (its
/// tokens are checked against its own issuer).
pub const GUEST_ISSUER: &str = "auction-fanout/guest";
/// `aud` of guest tokens.
pub const GUEST_AUDIENCE: &str = "auction-fanout";
/// Random characters in a guest id after `g_`: 62^16 ≈ 2^95, so two
/// sessions never share an id.
const GUEST_ID_CHARS: usize = 16;
/// Verified guest tokens remembered at most (see [`Verified`]): a few
/// hundred KiB at most (a token is about 300 bytes).
const VERIFIED_CAPACITY: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
struct GuestClaims {
    iss: String,
    aud: String,
    sub: String,
    name: String,
    #[serde(default)]
    roles: Vec<String>,
    iat: u64,
    exp: u64,
    /// Never minted here (the library checks it when present); read only
    /// so that a token carrying one is not remembered (`Verified`).
    #[serde(default, skip_serializing)]
    nbf: Option<serde_json::Value>,
}

/// A guest session, as `POST /sessions` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub token: String,
    pub bidder_id: String,
    pub name: String,
    /// When the token expires, Unix milliseconds.
    pub expires_at: u64,
}

/// The shared secret and the lifetime of the tokens made with it.
#[derive(Clone)]
pub struct GuestKey {
    encoding: Arc<EncodingKey>,
    decoding: Arc<DecodingKey>,
    validation: Arc<Validation>,
    ttl: Duration,
    verified: Arc<Mutex<Verified>>,
}

/// Guest tokens whose signature and claims checked out, with the times
/// that bound their validity, so a client sending the same token with
/// every request (a publisher on a keep-alive connection, a page bidding)
/// is not decoded and its HMAC checked each time.
///
/// Sound because everything checked of a guest token but its times depends
/// only on the token's bytes and the secret, both fixed for an entry (the
/// key is the whole token: the signature alone would let another payload
/// borrow it). Its expiry is checked again on every use, with the
/// library's own rule and leeway ([`Verified::usable`]); a token past it
/// is verified in full, which gives the error the library gives. A token
/// with an `nbf` is not kept (this project mints none). Only successes
/// are kept, so every refusal is the library's.
/// Bounded: at most [`VERIFIED_CAPACITY`] tokens.
#[derive(Default)]
struct Verified {
    tokens: HashMap<Box<str>, (Identity, TokenTimes)>,
}

/// A verified token's `exp`, seconds. Tokens with an `nbf` are not kept,
/// so `exp` is the one time that can turn a verified token down.
#[derive(Debug, Clone, Copy)]
struct TokenTimes {
    exp: u64,
}

impl Verified {
    /// Whether a token with `times` passes the library's expiry check now
    /// (`jsonwebtoken::validation::validate`: refused once `exp -
    /// reject_tokens_expiring_in_less_than < now - leeway`).
    fn usable(times: TokenTimes, validation: &Validation, now: u64) -> bool {
        !(validation.validate_exp
            && times
                .exp
                .saturating_sub(validation.reject_tokens_expiring_in_less_than)
                < now.saturating_sub(validation.leeway))
    }

    fn insert(
        &mut self,
        token: &str,
        identity: Identity,
        times: TokenTimes,
        validation: &Validation,
        now: u64,
    ) {
        if self.tokens.len() >= VERIFIED_CAPACITY && !self.tokens.contains_key(token) {
            self.tokens
                .retain(|_, (_, times)| Verified::usable(*times, validation, now));
            if self.tokens.len() >= VERIFIED_CAPACITY {
                // Still full of live tokens: start over rather than track
                // recency; a token dropped is only verified in full again.
                self.tokens.clear();
            }
        }
        self.tokens.insert(token.into(), (identity, times));
    }
}

impl GuestKey {
    /// `secret` is at least 32 bytes (checked where settings are read).
    pub fn new(secret: &[u8], ttl: Duration) -> Result<GuestKey, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[GUEST_ISSUER]);
        validation.set_audience(&[GUEST_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // A token not valid yet (`nbf`, RFC 7519 4.1.5) is refused, with
        // the same minute of leeway for clock skew as `exp`.
        validation.validate_nbf = true;
        let unusable = |error: jsonwebtoken::errors::Error| format!("unusable secret: {error}");
        Ok(GuestKey {
            encoding: Arc::new(EncodingKey::from_secret(secret).map_err(unusable)?),
            decoding: Arc::new(DecodingKey::from_secret(secret).map_err(unusable)?),
            validation: Arc::new(validation),
            ttl,
            verified: Arc::default(),
        })
    }

    /// How long minted tokens last.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new guest session for `name` with a fresh `g_` id.
    pub fn mint(&self, name: &BidderName, roles: &[&str]) -> Result<Session, String> {
        self.mint_for(name, roles, self.ttl)
    }

    /// As [`GuestKey::mint`] with a lifetime of its own (operators' tokens).
    pub fn mint_for(
        &self,
        name: &BidderName,
        roles: &[&str],
        ttl: Duration,
    ) -> Result<Session, String> {
        let now = Duration::from_millis(auction_domain::clock::now_ms());
        let id: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(GUEST_ID_CHARS)
            .collect();
        let bidder_id = format!("g_{id}");
        let exp = (now + ttl).as_secs();
        let claims = GuestClaims {
            iss: GUEST_ISSUER.into(),
            aud: GUEST_AUDIENCE.into(),
            sub: bidder_id.clone(),
            name: name.as_str().into(),
            roles: roles.iter().map(|role| role.to_string()).collect(),
            iat: now.as_secs(),
            exp,
            nbf: None,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| format!("cannot sign the token: {error}"))?;
        Ok(Session {
            token,
            bidder_id,
            name: claims.name,
            expires_at: exp.saturating_mul(1000),
        })
    }

    /// The identity of `token` if it was verified here before and its
    /// times still hold: what [`GuestKey::verify`] would answer, without
    /// decoding it again. `None`: verify it in full.
    pub(crate) fn verified(&self, token: &str) -> Option<Identity> {
        let verified = self.verified_tokens();
        let (identity, times) = verified.tokens.get(token)?;
        let now = jsonwebtoken::get_current_timestamp();
        Verified::usable(*times, &self.validation, now).then(|| identity.clone())
    }

    pub(crate) fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let claims = jsonwebtoken::decode::<GuestClaims>(token, &self.decoding, &self.validation)
            .map_err(refused)?
            .claims;
        // Only this project mints guest tokens, always with a `g_` id; the
        // check keeps another kind of id from ever arriving by this path.
        if !claims.sub.starts_with("g_") {
            return Err(TokenError::Invalid("a guest id must start with g_".into()));
        }
        let times = TokenTimes { exp: claims.exp };
        let remember = claims.nbf.is_none();
        let identity = identity(claims.sub, Some(&claims.name), claims.roles)?;
        if remember {
            let now = jsonwebtoken::get_current_timestamp();
            self.verified_tokens()
                .insert(token, identity.clone(), times, &self.validation, now);
        }
        Ok(identity)
    }

    fn verified_tokens(&self) -> MutexGuard<'_, Verified> {
        // The map holds only verified tokens whatever a panic interrupted.
        match self.verified.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn name(text: &str) -> BidderName {
        BidderName::parse(text).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_as_its_bidder() {
        let key = GuestKey::new(SECRET, Duration::from_secs(60)).unwrap();
        let session = key.mint(&name("Ada"), &["seller"]).unwrap();
        assert!(session.bidder_id.starts_with("g_"));
        let who = key.verify(&session.token).unwrap();
        assert_eq!(who.bidder.id.as_str(), session.bidder_id);
        assert_eq!(who.bidder.name.as_str(), "Ada");
        assert!(who.is_seller());
        let other = key.mint(&name("Ada"), &[]).unwrap();
        assert_ne!(other.bidder_id, session.bidder_id, "ids are unique");
    }

    #[test]
    fn tokens_of_another_secret_or_tampered_or_expired_are_refused() {
        let key = GuestKey::new(SECRET, Duration::from_secs(60)).unwrap();
        let other = GuestKey::new(
            b"another secret of thirty-two bytes!",
            Duration::from_secs(60),
        )
        .unwrap();
        let foreign = other.mint(&name("Ada"), &[]).unwrap();
        assert_eq!(
            key.verify(&foreign.token).unwrap_err().code(),
            "invalid_token"
        );

        let token = key.mint(&name("Ada"), &[]).unwrap().token;
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = GuestClaims {
            iss: GUEST_ISSUER.into(),
            aud: GUEST_AUDIENCE.into(),
            sub: "g_someone".into(),
            name: "Ada".into(),
            roles: vec!["seller".into()],
            iat: 0,
            exp: u64::MAX / 2,
            nbf: None,
        };
        // The forged claims' payload spliced between the real header and
        // signature.
        let forged =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &forged, &other.encoding).unwrap();
        parts[1] = forged.split('.').nth(1).unwrap();
        assert_eq!(
            key.verify(&parts.join(".")).unwrap_err().code(),
            "invalid_token"
        );

        let expired = key
            .mint_for(&name("Ada"), &[], Duration::from_secs(0))
            .unwrap();
        // Expiry has a leeway of a minute for clock skew: sign one that
        // expired an hour ago.
        let claims = GuestClaims {
            iss: GUEST_ISSUER.into(),
            aud: GUEST_AUDIENCE.into(),
            sub: expired.bidder_id,
            name: "Ada".into(),
            roles: vec![],
            iat: 0,
            exp: expired.expires_at / 1000 - 3600,
            nbf: None,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key.encoding).unwrap();
        assert_eq!(key.verify(&token).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn a_token_verified_before_is_answered_from_memory_while_it_has_not_expired() {
        let key = GuestKey::new(SECRET, Duration::from_secs(60)).unwrap();
        let session = key.mint(&name("Ada"), &["seller"]).unwrap();
        assert_eq!(key.verified(&session.token), None, "not verified yet");
        let first = key.verify(&session.token).unwrap();
        assert_eq!(key.verified(&session.token), Some(first.clone()));
        // Clones share what was verified (every request's clone of the state).
        assert_eq!(key.clone().verified(&session.token), Some(first));
        // Another token never borrows an entry: the whole token is the key.
        let mut tampered = session.token.clone();
        tampered.push('A');
        assert_eq!(key.verified(&tampered), None);
        assert!(key.verify(&tampered).is_err());
        assert_eq!(key.verified(&tampered), None, "refusals are not kept");

        // The library's expiry rule, leeway included.
        let validation = &key.validation;
        let times = TokenTimes { exp: 1_000_000 };
        assert!(Verified::usable(times, validation, 1_000_000));
        assert!(Verified::usable(
            times,
            validation,
            1_000_000 + validation.leeway
        ));
        assert!(!Verified::usable(
            times,
            validation,
            1_000_001 + validation.leeway
        ));
    }

    #[test]
    fn tokens_with_a_not_before_are_not_kept_and_the_memory_is_bounded() {
        let key = GuestKey::new(SECRET, Duration::from_secs(60)).unwrap();
        let now = auction_domain::clock::now_ms() / 1000;
        let claims = GuestClaims {
            iss: GUEST_ISSUER.into(),
            aud: GUEST_AUDIENCE.into(),
            sub: "g_notbefore".into(),
            name: "Ada".into(),
            roles: vec![],
            iat: now,
            exp: now + 600,
            nbf: None,
        };
        let mut value = serde_json::to_value(&claims).unwrap();
        value["nbf"] = serde_json::json!(now);
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &value, &key.encoding).unwrap();
        assert!(key.verify(&token).is_ok());
        assert_eq!(key.verified(&token), None);

        for _ in 0..VERIFIED_CAPACITY + 10 {
            let token = key.mint(&name("Ada"), &[]).unwrap().token;
            key.verify(&token).unwrap();
            assert!(key.verified_tokens().tokens.len() <= VERIFIED_CAPACITY);
        }
    }
}
