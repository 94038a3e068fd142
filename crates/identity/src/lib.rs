//! Who is bidding. A bidder proves who they are with a signed bearer token
//! (JWT) from one of two sources:
//!
//! - guest sessions: tokens this project mints itself (`POST /sessions`,
//!   `bidder token`), HS256 with the shared `AUCTION_SESSION_SECRET`, so
//!   every bidder and ws-edge replica accepts every other's tokens;
//! - an external identity provider: tokens signed with the keys it
//!   publishes at `AUCTION_JWKS_URL`, with issuer and audience checked.
//!
//! The token's header picks the source: HMAC tokens are guest tokens and are
//! checked only against the secret; RSA/EC/EdDSA tokens only against the
//! provider's published keys. A token cannot choose its own trust: `alg:
//! none` does not parse, an HMAC token "signed" with a provider's public key
//! fails against the secret, and a JWKS entry with a symmetric key is never
//! used.

mod config;
mod fetch;
mod guest;
mod jwks;

pub use config::{ExternalIdp, IdentityConfig, SETTINGS};
pub use guest::{GUEST_AUDIENCE, GUEST_ISSUER, GuestKey, Session};

use auction_domain::{Bidder, BidderId, BidderName};
use jsonwebtoken::AlgorithmFamily;
use std::fmt;

/// The role that may create auctions.
pub const SELLER_ROLE: &str = "seller";

/// The role that may manage auctions and bidders (`/admin/...`): a guest
/// token minted with `bidder token --role admin`, or a provider token whose
/// `roles` claim lists `admin`.
pub const ADMIN_ROLE: &str = "admin";

/// A caller whose token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub bidder: Bidder,
    /// The token's `roles` claim (e.g. `seller`).
    pub roles: Vec<String>,
}

impl Identity {
    pub fn is_seller(&self) -> bool {
        self.roles.iter().any(|role| role == SELLER_ROLE)
    }

    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|role| role == ADMIN_ROLE)
    }
}

/// Why a token was refused. Each has a stable code clients can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// No token at all.
    Missing,
    /// Past its `exp`: sign in again.
    Expired,
    /// Anything else: malformed, tampered, wrongly signed, unknown key,
    /// another issuer or audience, not valid yet (`nbf`), unusable claims.
    /// The reason is for logs.
    Invalid(String),
    /// The token names a provider key this replica cannot check right now:
    /// the provider's key set is being fetched (longer than the bounded
    /// wait) or could not be fetched. Retry after this many seconds.
    Unavailable { retry_after_s: u64 },
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::Expired => "token_expired",
            TokenError::Invalid(_) => "invalid_token",
            TokenError::Unavailable { .. } => "identity_unavailable",
        }
    }

    /// A sentence for the client (never the internal reason).
    pub fn message(&self) -> &'static str {
        match self {
            TokenError::Missing => "sign in first: send Authorization: Bearer <token>",
            TokenError::Expired => "the token has expired; sign in again",
            TokenError::Invalid(_) => "the token is not valid here",
            TokenError::Unavailable { .. } => {
                "the identity provider's keys are not available yet; retry shortly"
            }
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Invalid(reason) => write!(f, "invalid_token: {reason}"),
            other => f.write_str(other.code()),
        }
    }
}

impl std::error::Error for TokenError {}

/// The token of an `Authorization: Bearer <token>` header value, if it is
/// one (the scheme is case-insensitive).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Verifies tokens of both sources and mints guest tokens. Cheap to clone
/// (the JWKS cache is shared).
#[derive(Clone)]
pub struct Authenticator {
    guest: Option<GuestKey>,
    external: Option<jwks::JwksVerifier>,
}

impl Authenticator {
    pub fn new(config: &IdentityConfig) -> Result<Authenticator, String> {
        let external = config
            .external
            .as_ref()
            .map(jwks::JwksVerifier::new)
            .transpose()?;
        Ok(Authenticator {
            guest: config.guest.clone(),
            external,
        })
    }

    /// The guest-session key, when guest sessions are on.
    pub fn guest(&self) -> Option<&GuestKey> {
        self.guest.as_ref()
    }

    /// Checks `token` and says who it belongs to.
    pub async fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        // A guest token seen before skips the decoding and the HMAC
        // (`GuestKey::verified`: the same answer, its expiry checked again).
        if let Some(identity) = self.guest.as_ref().and_then(|guest| guest.verified(token)) {
            return Ok(identity);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| TokenError::Invalid(format!("unreadable header: {error}")))?;
        if header.alg.family() == AlgorithmFamily::Hmac {
            let guest = self
                .guest
                .as_ref()
                .ok_or_else(|| TokenError::Invalid("guest sessions are off".into()))?;
            guest.verify(token)
        } else {
            let external = self
                .external
                .as_ref()
                .ok_or_else(|| TokenError::Invalid("no identity provider is configured".into()))?;
            external.verify(token, &header).await
        }
    }
}

/// Maps the library's refusal to ours: only expiry is told apart.
fn refused(error: jsonwebtoken::errors::Error) -> TokenError {
    match error.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
        _ => TokenError::Invalid(error.to_string()),
    }
}

/// The identity a verified token's claims describe. `id` has its source's
/// prefix already; a name that breaks the display-name rules falls back to
/// the id (an identity provider's names are not ours to refuse).
fn identity(id: String, name: Option<&str>, roles: Vec<String>) -> Result<Identity, TokenError> {
    let id = BidderId::parse(&id).map_err(|error| TokenError::Invalid(error.message))?;
    let name = name
        .and_then(|name| BidderName::parse(name).ok())
        .or_else(|| {
            let short: String = id
                .as_str()
                .chars()
                .take(auction_domain::MAX_NAME_CHARS)
                .collect();
            BidderName::parse(&short).ok()
        })
        .ok_or_else(|| TokenError::Invalid("no usable name".into()))?;
    Ok(Identity {
        bidder: Bidder { id, name },
        roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_the_token_of_a_bearer_header_only() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }

    #[test]
    fn names_that_break_the_rules_fall_back_to_the_id() {
        let who = identity("x_42".into(), Some("\u{202E}evil"), vec![]).unwrap();
        assert_eq!(who.bidder.name.as_str(), "x_42");
        let who = identity("x_42".into(), Some(" Ada "), vec!["seller".into()]).unwrap();
        assert_eq!(who.bidder.name.as_str(), "Ada");
        assert!(who.is_seller());
        assert!(identity("x_a b".into(), None, vec![]).is_err());
    }
}
