use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where cargo put the workspace binary `name` (next to the test binary's
/// `deps/` directory). `cargo test --workspace` builds every binary first.
pub fn binary_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// A project binary running as a child process, killed on drop.
pub struct ServiceProcess {
    child: Child,
    /// The public port.
    pub addr: SocketAddr,
    /// The ops listener: `/healthz`, `/readyz`, `/metrics`.
    pub ops_addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts `binary` with `AUCTION_LISTEN=127.0.0.1:0` and
    /// `AUCTION_OPS_LISTEN=127.0.0.1:0` plus `env`, and waits for its
    /// `listening on <addr>` and `ops listener on <addr>` lines.
    pub fn start(binary: &str, env: &[(&str, String)]) -> ServiceProcess {
        ServiceProcess::start_command(binary, Command::new(binary_path(binary)), env)
    }

    /// [`start`](Self::start) with the process's open-file limit lowered
    /// to `limit` (as a small container or a careless ulimit would set it).
    pub fn start_with_file_limit(
        binary: &str,
        env: &[(&str, String)],
        limit: u32,
    ) -> ServiceProcess {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\""))
            .arg(binary_path(binary));
        ServiceProcess::start_command(binary, command, env)
    }

    fn start_command(binary: &str, mut command: Command, env: &[(&str, String)]) -> ServiceProcess {
        command
            .env("AUCTION_LISTEN", "127.0.0.1:0")
            .env("AUCTION_OPS_LISTEN", "127.0.0.1:0")
            .env("AUCTION_LOG_FORMAT", "pretty")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            // Viewer counts come at any time; a test that is not about them
            // does not want them among the events it checks (one about
            // them sets its own interval).
            .env("AUCTION_VIEWERS_INTERVAL_MS", "600000")
            // Every client of a test comes from one address; a test about
            // the cap per address sets its own.
            .env("AUCTION_MAX_CONNECTIONS_PER_ADDRESS", "10000000")
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn service binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let (ops_tx, ops_rx) = mpsc::channel();
        let sink = log.clone();
        let name = binary.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    let _ = addr_tx.send(addr);
                }
                if let Some(addr) = addr_after(&line, OPS_LINE) {
                    let _ = ops_tx.send(addr);
                }
                if std::env::var_os("TEST_SHOW_LOGS").is_some() {
                    eprintln!("[{name}] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut reported = |rx: &mpsc::Receiver<SocketAddr>, what: &str| {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(addr) => addr,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "{binary} did not report its {what}; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        };
        let ops_addr = reported(&ops_rx, "ops address");
        let addr = reported(&addr_rx, "address");
        ServiceProcess {
            child,
            addr,
            ops_addr,
            log,
        }
    }

    /// The public port's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The ops listener's URL.
    pub fn ops_url(&self) -> String {
        format!("http://{}", self.ops_addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The value of the metric line starting with `series` (name and
    /// labels, e.g. `auction_connections{transport="sse"}`) on `/metrics`,
    /// or 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(self.ops_addr) else {
            return 0.0;
        };
        let _ = write!(stream, "GET /metrics HTTP/1.0\r\n\r\n");
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Whether `GET path` on the ops listener answers with `status` right
    /// now.
    pub fn answers(&self, path: &str, status: u16) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(self.ops_addr) else {
            return false;
        };
        let _ = write!(stream, "GET {path} HTTP/1.0\r\n\r\n");
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text.split(' ').nth(1) == Some(status.to_string().as_str())
    }

    /// Everything the process wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a service logs before its ops listener's address.
const OPS_LINE: &str = "ops listener on ";

fn listening_addr(line: &str) -> Option<SocketAddr> {
    addr_after(line, "listening on ")
}

fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Runs `binary` to completion (bounded by `timeout`) and returns its exit
/// status and stderr.
pub fn run_to_exit(binary: &str, env: &[(&str, &str)], timeout: Duration) -> (ExitStatus, String) {
    let mut command = Command::new(binary_path(binary));
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn binary");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{binary} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, reader.join().unwrap_or_default())
}

/// Sends the signal `name` (`TERM`, `KILL`, `STOP`, `CONT`...) to `pid`,
/// as `kill -NAME pid` does; a failure fails the test.
pub(crate) fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

#[cfg(test)]
mod tests {
    use super::listening_addr;

    #[test]
    fn finds_the_address_in_pretty_and_json_lines() {
        assert_eq!(
            listening_addr("INFO x: bidder listening on 127.0.0.1:4000")
                .unwrap()
                .port(),
            4000
        );
        assert_eq!(
            listening_addr(r#"{"message":"bidder listening on [::1]:5000","level":"INFO"}"#)
                .unwrap()
                .port(),
            5000
        );
    }

    #[test]
    fn tells_the_ops_line_from_the_public_one() {
        let ops = "INFO x: bidder ops listener on 127.0.0.1:4001";
        assert_eq!(listening_addr(ops), None);
        assert_eq!(
            super::addr_after(ops, super::OPS_LINE).unwrap().port(),
            4001
        );
    }
}
