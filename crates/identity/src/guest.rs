//! Guest sessions: tokens signed with the shared secret (HS256).

use crate::{Identity, TokenError, identity, refused};
use auction_domain::BidderName;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// `iss` of guest tokens. Never accepted from the identity provider (its
/// tokens are checked against its own issuer).
pub const GUEST_ISSUER: &str = "auction-fanout/guest";
/// `aud` of guest tokens.
pub const GUEST_AUDIENCE: &str = "auction-fanout";
/// Random characters in a guest id after `g_`: 62^16 ≈ 2^95, so two
/// sessions never share an id.
const GUEST_ID_CHARS: usize = 16;

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

    pub(crate) fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let claims = jsonwebtoken::decode::<GuestClaims>(token, &self.decoding, &self.validation)
            .map_err(refused)?
            .claims;
        // Only this project mints guest tokens, always with a `g_` id; the
        // check keeps another kind of id from ever arriving by this path.
        if !claims.sub.starts_with("g_") {
            return Err(TokenError::Invalid("a guest id must start with g_".into()));
        }
        identity(claims.sub, Some(&claims.name), claims.roles)
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
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key.encoding).unwrap();
        assert_eq!(key.verify(&token).unwrap_err(), TokenError::Expired);
    }
}
