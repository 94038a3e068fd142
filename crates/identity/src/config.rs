//! The identity settings, shared by the bidder and ws-edge.

use crate::guest::GuestKey;
use settings::{Kind, Setting, SettingError, Settings};
use std::time::Duration;

pub const SESSION_SECRET: Setting = Setting {
    key: "session_secret",
    kind: Kind::Text,
    default: None,
    help: "guest-session signing secret, at least 32 bytes, the same on every replica; \
           required unless an identity provider is configured",
    secret: true,
};
pub const SESSION_TTL_S: Setting = Setting {
    key: "session_ttl_s",
    kind: Kind::Number {
        min: 60,
        max: 30 * 24 * 3600,
    },
    default: Some("43200"),
    help: "guest token lifetime (60 s to 30 days)",
    secret: false,
};
pub const JWKS_URL: Setting = Setting {
    key: "jwks_url",
    kind: Kind::Text,
    default: None,
    help: "the identity provider's JWKS (`http(s)://`); needs the two below",
    secret: false,
};
pub const JWT_ISSUER: Setting = Setting {
    key: "jwt_issuer",
    kind: Kind::Text,
    default: None,
    help: "`iss` the provider's tokens must carry",
    secret: false,
};
pub const JWT_AUDIENCE: Setting = Setting {
    key: "jwt_audience",
    kind: Kind::Text,
    default: None,
    help: "`aud` the provider's tokens must contain",
    secret: false,
};
pub const JWKS_KEY_TTL_S: Setting = Setting {
    key: "jwks_key_ttl_s",
    kind: Kind::Number {
        min: 1,
        max: 24 * 3600,
    },
    default: Some("600"),
    help: "how long a fetched key set is used before it is fetched again (1 s to 24 h); \
           the provider's shorter `Cache-Control: max-age` wins",
    secret: false,
};
pub const JWKS_WAIT_MS: Setting = Setting {
    key: "jwks_wait_ms",
    kind: Kind::Number {
        min: 10,
        max: 10_000,
    },
    default: Some("1000"),
    help: "how long a request waits for a key-set fetch in flight before 503 \
           `identity_unavailable` (10 to 10000)",
    secret: false,
};

/// The identity settings, read by every binary that checks tokens.
pub const SETTINGS: &[Setting] = &[
    SESSION_SECRET,
    SESSION_TTL_S,
    JWKS_URL,
    JWT_ISSUER,
    JWT_AUDIENCE,
    JWKS_KEY_TTL_S,
    JWKS_WAIT_MS,
];

/// The shortest secret accepted: 256 bits, HS256's own strength.
const MIN_SECRET_BYTES: usize = 32;

/// An external identity provider: where its keys are published, and the
/// issuer and audience its tokens must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdp {
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    /// How long a fetched key set is used before it is fetched again
    /// (`AUCTION_JWKS_KEY_TTL_S`); the provider's `Cache-Control: max-age`
    /// shortens it, never lengthens it.
    pub key_ttl: Duration,
    /// How long a request waits for a fetch in flight before it is answered
    /// `identity_unavailable` (`AUCTION_JWKS_WAIT_MS`).
    pub fetch_wait: Duration,
}

/// Which token sources are on.
#[derive(Clone)]
pub struct IdentityConfig {
    /// Guest sessions, from `AUCTION_SESSION_SECRET` and `AUCTION_SESSION_TTL_S`.
    pub guest: Option<GuestKey>,
    /// From `AUCTION_JWKS_URL`, `AUCTION_JWT_ISSUER`, `AUCTION_JWT_AUDIENCE`.
    pub external: Option<ExternalIdp>,
}

impl IdentityConfig {
    /// The start-up rule: at least one source must be configured. Without
    /// an identity provider, `AUCTION_SESSION_SECRET` is required, and it
    /// is never made up: replicas that invented their own secrets would
    /// refuse each other's tokens. The three provider settings go together.
    pub fn read(settings: &Settings) -> Result<IdentityConfig, SettingError> {
        let ttl_s = settings.number(&SESSION_TTL_S)?;
        let guest = match settings.text(&SESSION_SECRET)? {
            None => None,
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(settings.error(
                    &SESSION_SECRET,
                    format!(
                        "is {} bytes; use at least {MIN_SECRET_BYTES} random bytes \
                         (e.g. `openssl rand -hex 32`)",
                        secret.len()
                    ),
                ));
            }
            Some(secret) => Some(
                GuestKey::new(secret.as_bytes(), Duration::from_secs(ttl_s))
                    .map_err(|problem| settings.error(&SESSION_SECRET, problem))?,
            ),
        };
        let url = settings
            .text(&JWKS_URL)?
            .filter(|url| !url.trim().is_empty());
        let issuer = settings.text(&JWT_ISSUER)?.filter(|text| !text.is_empty());
        let audience = settings
            .text(&JWT_AUDIENCE)?
            .filter(|text| !text.is_empty());
        let external = match (url, issuer, audience) {
            (None, None, None) => None,
            (Some(url), Some(issuer), Some(audience)) => {
                let url = url.trim().to_owned();
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(settings.error(&JWKS_URL, format!("{url:?} is not an http(s) URL")));
                }
                Some(ExternalIdp {
                    jwks_url: url,
                    issuer,
                    audience,
                    key_ttl: Duration::from_secs(settings.number(&JWKS_KEY_TTL_S)?),
                    fetch_wait: Duration::from_millis(settings.number(&JWKS_WAIT_MS)?),
                })
            }
            (None, _, _) => {
                return Err(settings.error(
                    &JWKS_URL,
                    "is required when AUCTION_JWT_ISSUER or AUCTION_JWT_AUDIENCE is set",
                ));
            }
            (Some(_), None, _) => {
                return Err(settings.error(
                    &JWT_ISSUER,
                    "is required with AUCTION_JWKS_URL (the `iss` the provider's tokens carry)",
                ));
            }
            (Some(_), Some(_), None) => {
                return Err(settings.error(
                    &JWT_AUDIENCE,
                    "is required with AUCTION_JWKS_URL (the `aud` tokens for this API carry)",
                ));
            }
        };
        if guest.is_none() && external.is_none() {
            return Err(settings.error(
                &SESSION_SECRET,
                "is required: at least 32 random bytes, the same on every bidder and ws-edge \
                 replica (or configure an identity provider with AUCTION_JWKS_URL)",
            ));
        }
        Ok(IdentityConfig { guest, external })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<IdentityConfig, SettingError> {
        static SPEC: settings::Spec = settings::Spec {
            binary: "test",
            about: "identity settings",
            usage: &[],
            groups: &[SETTINGS],
            defaults: &[],
        };
        let settings = Settings::load(
            &SPEC,
            &[],
            None,
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        IdentityConfig::read(&settings)
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_secret_or_a_provider_is_required() {
        let error = read(&[]).err().unwrap();
        assert_eq!(error.setting, "AUCTION_SESSION_SECRET");
        let error = read(&[("AUCTION_SESSION_SECRET", "short")]).err().unwrap();
        assert_eq!(error.setting, "AUCTION_SESSION_SECRET");
        let config = read(&[("AUCTION_SESSION_SECRET", SECRET)]).unwrap();
        assert!(config.guest.is_some() && config.external.is_none());
        let provider_only = read(&[
            ("AUCTION_JWKS_URL", "http://127.0.0.1:1/jwks"),
            ("AUCTION_JWT_ISSUER", "https://idp.example"),
            ("AUCTION_JWT_AUDIENCE", "auctions"),
        ])
        .unwrap();
        assert!(provider_only.guest.is_none());
    }

    #[test]
    fn provider_settings_go_together() {
        let error = read(&[
            ("AUCTION_SESSION_SECRET", SECRET),
            ("AUCTION_JWKS_URL", "http://127.0.0.1:1/jwks"),
        ])
        .err()
        .unwrap();
        assert_eq!(error.setting, "AUCTION_JWT_ISSUER");
        let error = read(&[
            ("AUCTION_SESSION_SECRET", SECRET),
            ("AUCTION_JWT_AUDIENCE", "a"),
        ])
        .err()
        .unwrap();
        assert_eq!(error.setting, "AUCTION_JWKS_URL");
        let error = read(&[
            ("AUCTION_JWKS_URL", "ftp://x"),
            ("AUCTION_JWT_ISSUER", "i"),
            ("AUCTION_JWT_AUDIENCE", "a"),
        ])
        .err()
        .unwrap();
        assert_eq!(error.setting, "AUCTION_JWKS_URL");
        let error = read(&[
            ("AUCTION_SESSION_SECRET", SECRET),
            ("AUCTION_SESSION_TTL_S", "0"),
        ])
        .err()
        .unwrap();
        assert_eq!(error.setting, "AUCTION_SESSION_TTL_S");
    }
}
