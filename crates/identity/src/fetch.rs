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
    pub(crate) async fn get(&self) -> Result<Vec<u8>, String> {
        tokio::time::timeout(self.deadline, self.get_unbounded())
            .await
            .map_err(|_| format!("no answer within {:?}", self.deadline))?
    }

    async fn get_unbounded(&self) -> Result<Vec<u8>, String> {
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

    async fn exchange<S>(&self, stream: S) -> Result<Vec<u8>, String>
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
            Ok(bytes)
        }
        .await;
        driver.abort();
        result
    }
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
