//! The security headers of every answer a service gives (docs/pages.md:
//! "Security headers").
//!
//! Every answer carries a `Content-Security-Policy` (with
//! `frame-ancestors 'none'`, so no other site can frame a page or its bid
//! form), `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` (the
//! same for browsers that predate `frame-ancestors`) and
//! `Referrer-Policy: no-referrer`. Answers that are not pages (JSON,
//! plain text, errors) get [`API_POLICY`], which lets nothing load; the
//! edges' pages and assets get [`SecurityHeaders::pages`], which lets
//! scripts, styles and images come from the page's own origin only: no
//! inline script, no inline style, no `eval`.
//!
//! The router of every service gets the API headers from [`serve`] (a
//! route layered with [`SecurityHeaders::apply`] keeps its own policy);
//! answers written outside the router (the raw path's refusals, the 408 of
//! a late body) carry the same lines ([`RAW_LINES`], [`insert_baseline`]).
//!
//! `Strict-Transport-Security` is not sent here: the services speak plain
//! HTTP behind whatever terminates TLS, and only that server knows the
//! answer went out over TLS; it is the one to send HSTS (docs/operations.md, "TLS and HTTP/2").
//!
//! [`serve`]: crate::serve

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use tower_http::set_header::SetResponseHeaderLayer;

macro_rules! api_policy {
    () => {
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    };
}

/// The policy of every answer that is not a page: nothing may be loaded
/// from it, nothing may frame it.
pub const API_POLICY: &str = api_policy!();

/// The security header lines of [`API_POLICY`], for responses written
/// byte by byte (each line ends in CRLF).
pub(crate) const RAW_LINES: &str = concat!(
    "Content-Security-Policy: ",
    api_policy!(),
    "\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n"
);

/// The headers a router's answers get, unless an answer set its own.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    policy: HeaderValue,
}

impl SecurityHeaders {
    /// For answers that are not pages: [`API_POLICY`].
    pub fn api() -> SecurityHeaders {
        SecurityHeaders {
            policy: HeaderValue::from_static(API_POLICY),
        }
    }

    /// For the pages and their assets: scripts, styles, fonts and the like
    /// from the page's origin only (`web/` has no inline script or style);
    /// pictures also from any `https:` address (an auction's `image_url`
    /// may be one); connections (fetch, EventSource, WebSocket) to the
    /// page's origin and to `connect_origins` (the bidder's, when the
    /// pages post to it on another origin). Each of `connect_origins` must
    /// have come from [`origin_of`].
    pub fn pages(connect_origins: &[String]) -> SecurityHeaders {
        let connect: String = connect_origins
            .iter()
            .map(|origin| format!(" {origin}"))
            .collect();
        let policy = format!(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' https:; \
             connect-src 'self'{connect}; object-src 'none'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'none'"
        );
        // `origin_of` lets through only characters a header value may hold;
        // should one slip by, the page falls back to its own origin.
        let policy = HeaderValue::try_from(policy).unwrap_or_else(|_| {
            tracing::warn!(
                "a connect origin cannot go in a header; pages connect to their own origin only"
            );
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' https:; \
                 connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                 frame-ancestors 'none'",
            )
        });
        SecurityHeaders { policy }
    }

    /// The policy this sends.
    pub fn policy(&self) -> &HeaderValue {
        &self.policy
    }

    /// `router` with this policy on the answers of its routes only (the
    /// pages and assets): a request no route matches falls through to the
    /// listener's own headers, the API's, so a 404 is never a document.
    /// The other headers are the same for both and come from there.
    pub fn apply_to_routes(&self, router: Router) -> Router {
        router.route_layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            self.policy.clone(),
        ))
    }

    /// `router` with these headers on every answer that has none of its own.
    pub fn apply(&self, router: Router) -> Router {
        let set = |name: HeaderName, value: HeaderValue| {
            SetResponseHeaderLayer::if_not_present(name, value)
        };
        router
            .layer(set(header::CONTENT_SECURITY_POLICY, self.policy.clone()))
            .layer(set(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .layer(set(
                header::X_FRAME_OPTIONS,
                HeaderValue::from_static("DENY"),
            ))
            .layer(set(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ))
    }
}

/// Adds the API headers that `headers` lacks (for an answer made outside
/// any router).
pub(crate) fn insert_baseline(headers: &mut HeaderMap) {
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, API_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    }
}

/// The origin (`scheme://host[:port]`, as a browser sends it in `Origin`)
/// of an `http://` or `https://` URL, which may have a path; scheme and
/// host in lower case. Refuses anything else, and any character that has
/// no place in a host name (a policy or header cannot be smuggled in).
pub fn origin_of(url: &str) -> Result<String, String> {
    let lower = url.to_ascii_lowercase();
    let (scheme, rest) = if let Some(rest) = lower.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = lower.strip_prefix("http://") {
        ("http", rest)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_chars =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if authority.is_empty() || !authority.chars().all(host_chars) {
        return Err(format!("{url:?} has no valid host[:port]"));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// An origin exactly (`scheme://host[:port]`, no path): what a browser
/// sends in `Origin`, to compare with it.
pub fn parse_origin(origin: &str) -> Result<String, String> {
    let parsed = origin_of(origin)?;
    if parsed.len() != origin.len() {
        return Err(format!(
            "{origin:?} is not an origin (scheme://host[:port], nothing after)"
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_read_from_urls_and_nothing_else_gets_through() {
        assert_eq!(
            origin_of("https://Bids.Example.com:8443/api?x").as_deref(),
            Ok("https://bids.example.com:8443")
        );
        assert_eq!(
            origin_of("http://[::1]:8080").as_deref(),
            Ok("http://[::1]:8080")
        );
        for bad in [
            "ftp://x",
            "https://",
            "https://a b",
            "https://x; script-src *",
            "https://x'",
            "https://x\r\nSet-Cookie: a=b",
            "example.com",
        ] {
            assert!(origin_of(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_origin("http://localhost:8081").as_deref(),
            Ok("http://localhost:8081")
        );
        assert!(parse_origin("http://localhost:8081/").is_err());
    }

    #[test]
    fn the_pages_policy_names_the_connect_origins() {
        let headers = SecurityHeaders::pages(&["https://bids.example.com".to_owned()]);
        let policy = headers.policy().to_str().unwrap_or_default();
        assert!(policy.contains("connect-src 'self' https://bids.example.com;"));
        assert!(policy.contains("frame-ancestors 'none'"));
        assert!(!policy.contains("unsafe"));
    }

    #[test]
    fn raw_lines_carry_the_api_policy() {
        assert!(RAW_LINES.contains(API_POLICY));
        assert_eq!(RAW_LINES.matches("\r\n").count(), 4);
    }
}
