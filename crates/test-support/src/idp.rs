//! A stand-in identity provider for tests: EC P-256 keys generated at test
//! time with the `openssl` CLI (nothing private is committed), published as
//! a JWKS document by a small HTTP server on a loopback port, and tokens
//! signed with them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const IDP_ISSUER: &str = "https://idp.test.invalid/";
pub const IDP_AUDIENCE: &str = "auction-api";

/// One signing key: its `kid`, private key and public JWK.
pub struct IdpKey {
    pub kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl IdpKey {
    /// A fresh P-256 key named `kid`.
    pub fn generate(kid: &str) -> IdpKey {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("key.pem");
        let status = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .arg("-out")
            .arg(&private)
            .status()
            .expect("run openssl (the identity tests need the openssl CLI)");
        assert!(status.success(), "openssl genpkey failed");
        let public = Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&private)
            .output()
            .expect("run openssl pkey");
        assert!(public.status.success(), "openssl pkey failed");
        // A P-256 SubjectPublicKeyInfo ends with the uncompressed point:
        // 0x04, then x and y, 32 bytes each.
        let der = public.stdout;
        assert_eq!(der.len(), 91, "unexpected P-256 public key encoding");
        let (x, y) = der[27..].split_at(32);
        let pem = std::fs::read(&private).unwrap();
        IdpKey {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ec_pem(&pem).unwrap(),
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            }),
        }
    }

    /// A token for `sub` with these claims merged over the defaults (an
    /// hour's lifetime, the test issuer and audience).
    pub fn token(&self, sub: &str, overrides: serde_json::Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = serde_json::json!({
            "iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": sub,
            "iat": now, "exp": now + 3600,
        });
        if let (Some(claims), Some(overrides)) = (claims.as_object_mut(), overrides.as_object()) {
            for (name, value) in overrides {
                claims.insert(name.clone(), value.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }

    /// The public JWK (to sign an algorithm-confusion token with it).
    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.jwk
    }
}

/// A JWKS endpoint on a loopback port, serving the keys last published.
pub struct TestIdp {
    pub url: String,
    /// With TLS: the self-signed certificate to trust (`SSL_CERT_FILE`).
    pub ca_file: Option<std::path::PathBuf>,
    _dir: Option<tempfile::TempDir>,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    answers: Arc<Answers>,
}

/// How the key set is answered, and what the fetches are doing.
#[derive(Default)]
struct Answers {
    /// How long each fetch waits before it is answered (a slow provider).
    delay: Mutex<Duration>,
    /// The answers' `Cache-Control`, if any.
    cache_control: Mutex<Option<String>>,
    /// Fetches being answered now, and the most there were at once.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl TestIdp {
    pub fn start(keys: &[&IdpKey]) -> TestIdp {
        TestIdp::serve(keys, None)
    }

    /// Over https, with a certificate for `localhost` generated now; trust
    /// it in the process under test with `SSL_CERT_FILE` (see `env`).
    pub fn start_tls(keys: &[&IdpKey]) -> TestIdp {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("run openssl");
            assert!(status.success(), "openssl {args:?} failed");
        };
        // A test CA (what SSL_CERT_FILE trusts) and a certificate for
        // localhost that it signs.
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-days",
                    "1",
                    "-subj",
                    "/CN=test CA",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    "key.pem",
                    "-out",
                    "leaf.csr",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            path("leaf.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ]);
        let (cert, key) = (path("cert.pem"), path("key.pem"));
        use rustls::pki_types::pem::PemObject;
        let chain = vec![rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap()];
        let private = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .unwrap();
        let mut idp = TestIdp::serve(keys, Some(Arc::new(config)));
        idp.url = idp.url.replace("http://127.0.0.1", "https://localhost");
        idp.ca_file = Some(path("ca.pem"));
        idp._dir = Some(dir);
        idp
    }

    fn serve(keys: &[&IdpKey], tls: Option<Arc<rustls::ServerConfig>>) -> TestIdp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(String::new()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Answers::default());
        let idp = TestIdp {
            answers: answers.clone(),
            url: format!("http://{addr}/.well-known/jwks.json"),
            ca_file: None,
            _dir: None,
            document: document.clone(),
            fetches: fetches.clone(),
            stop: stop.clone(),
            addr,
        };
        idp.publish(keys);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                fetches.fetch_add(1, Ordering::SeqCst);
                // Each fetch on its own thread, so concurrent fetches are
                // seen as such (and counted) rather than queued here.
                let (document, answers, tls) = (document.clone(), answers.clone(), tls.clone());
                std::thread::spawn(move || {
                    let now = answers.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    answers.most_in_flight.fetch_max(now, Ordering::SeqCst);
                    let delay = *answers.delay.lock().unwrap();
                    std::thread::sleep(delay);
                    // The document as it is when the answer is sent.
                    let body = document.lock().unwrap().clone();
                    let cache_control = answers.cache_control.lock().unwrap().clone();
                    match &tls {
                        None => answer(stream, &body, cache_control.as_deref()),
                        Some(config) => {
                            if let Ok(connection) = rustls::ServerConnection::new(config.clone()) {
                                answer(
                                    rustls::StreamOwned::new(connection, stream),
                                    &body,
                                    cache_control.as_deref(),
                                );
                            }
                        }
                    }
                    answers.in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        idp
    }

    /// Serves exactly `keys` from now on (a rotation).
    pub fn publish(&self, keys: &[&IdpKey]) {
        let set =
            serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        *self.document.lock().unwrap() = set.to_string();
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Each fetch is answered after `delay` from now on (a slow provider).
    pub fn set_delay(&self, delay: Duration) {
        *self.answers.delay.lock().unwrap() = delay;
    }

    /// Answers carry this `Cache-Control` from now on (`None`: none).
    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.answers.cache_control.lock().unwrap() = value.map(str::to_owned);
    }

    /// Fetches being answered right now.
    pub fn in_flight(&self) -> usize {
        self.answers.in_flight.load(Ordering::SeqCst)
    }

    /// The most fetches that were being answered at once.
    pub fn most_in_flight(&self) -> usize {
        self.answers.most_in_flight.load(Ordering::SeqCst)
    }

    /// Settings that point a bidder or ws-edge at this provider (and make
    /// it trust the test certificate, over TLS).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AUCTION_JWKS_URL", self.url.clone()),
            ("AUCTION_JWT_ISSUER", IDP_ISSUER.into()),
            ("AUCTION_JWT_AUDIENCE", IDP_AUDIENCE.into()),
        ];
        if let Some(ca) = &self.ca_file {
            env.push(("SSL_CERT_FILE", ca.display().to_string()));
        }
        env
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn answer(mut stream: impl Read + Write, body: &str, cache_control: Option<&str>) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let cache_control = cache_control
        .map(|value| format!("Cache-Control: {value}\r\n"))
        .unwrap_or_default();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{cache_control}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// An `alg: none` token carrying `claims` and no signature.
pub fn unsigned_token(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// An HS256 token over `claims` with `kid`, keyed by `secret` (e.g. a
/// provider's public key, for an algorithm-confusion attempt).
pub fn hs256_token(secret: &[u8], kid: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

/// Guest-token claims as the bidder mints them, for `sub`, expiring at `exp`.
pub fn guest_claims(sub: &str, exp: u64) -> serde_json::Value {
    serde_json::json!({
        "iss": identity::GUEST_ISSUER, "aud": identity::GUEST_AUDIENCE, "sub": sub,
        "name": "Mallory", "roles": ["seller"], "iat": 0, "exp": exp,
    })
}

/// Seconds since the epoch.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
