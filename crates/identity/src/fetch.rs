//! One bounded HTTP(S) GET, for the identity provider's key set: a whole
//! deadline, a body cap, TLS with rustls (ring) and the system's root
//! certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` apply). A client of its
//! own rather than reqwest's TLS: reqwest's rustls backend without
//! aws-lc-rs needs a process-wide crypto provider installed before any of
//! the workspace's reqwest clients is built, which would turn every
//! process's and test's plain-HTTP client into a start-up hazard.

use http_body_util::BodyExt;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A 2xx answer's body, and how long its `Cache-Control` lets it be kept
/// (`None`: it does not say).
pub(crate) struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

/// A GET client for one URL.
pub(crate) struct Fetcher {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    deadline: Duration,
    max_bytes: usize,
}

impl Fetcher {
    pub(crate) fn new(url: &str, deadline: Duration, max_bytes: usize) -> Result<Fetcher, String> {
        let uri: Uri = url
            .parse()
            .map_err(|error| format!("{url:?} is not a URL: {error}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?} is not an http(s) URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = https.then(tls_connector).transpose()?;
        Ok(Fetcher {
            uri,
            host,
            port,
            tls,
            deadline,
            max_bytes,
        })
    }

    /// The body of a 2xx answer.
    pub(crate) async fn get(&self) -> Result<Fetched, String> {
        tokio::time::timeout(self.deadline, self.get_unbounded())
            .await
            .map_err(|_| format!("no answer within {:?}", self.deadline))?
    }

    async fn get_unbounded(&self) -> Result<Fetched, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|error| format!("cannot connect: {error}"))?;
        match &self.tls {
            None => self.exchange(tcp).await,
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|error| format!("{:?} is not a server name: {error}", self.host))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|error| format!("TLS: {error}"))?;
                self.exchange(stream).await
            }
        }
    }

    async fn exchange<S>(&self, stream: S) -> Result<Fetched, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<hyper::body::Bytes>,
        >(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP: {error}"))?;
        // Drives the connection; ends when the exchange is over or the
        // caller's deadline drops the sender.
        let driver = tokio::spawn(connection);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        let authority = self
            .uri
            .authority()
            .map_or(self.host.clone(), |a| a.to_string());
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .body(http_body_util::Empty::new())
            .map_err(|error| format!("request: {error}"))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|error| format!("HTTP: {error}"))?;
            if !response.status().is_success() {
                return Err(format!("answered {}", response.status()));
            }
            let max_age = response
                .headers()
                .get_all(hyper::header::CACHE_CONTROL)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .filter_map(cache_max_age)
                .min();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|error| format!("HTTP body: {error}"))?;
                if let Some(data) = frame.data_ref() {
                    if bytes.len() + data.len() > self.max_bytes {
                        return Err(format!("the body is over {} bytes", self.max_bytes));
                    }
                    bytes.extend_from_slice(data);
                }
            }
            Ok(Fetched {
                body: bytes,
                max_age,
            })
        }
        .await;
        driver.abort();
        result
    }
}

/// How long a `Cache-Control` value lets an answer be kept: its
/// `max-age`, or nothing at all for `no-store` / `no-cache`.
fn cache_max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        let (name, seconds) = directive.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        // A malformed max-age is treated as stale (RFC 9111, 4.2.1).
        let seconds = seconds.trim().trim_matches('"').parse::<u64>().unwrap_or(0);
        Some(Duration::from_secs(seconds))
    })
}

/// TLS with the system's roots. No roots at all is an error at start-up,
/// not at the first token.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "no usable root certificates for the JWKS URL ({} errors loading them)",
            found.errors.len()
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| format!("TLS: {error}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_gives_a_lifetime() {
        let s = Duration::from_secs;
        assert_eq!(cache_max_age("public, max-age=300"), Some(s(300)));
        assert_eq!(
            cache_max_age("Max-Age=\"60\", must-revalidate"),
            Some(s(60))
        );
        assert_eq!(cache_max_age("no-store"), Some(s(0)));
        assert_eq!(cache_max_age("max-age=soon"), Some(s(0)));
        assert_eq!(cache_max_age("public"), None);
    }
}
