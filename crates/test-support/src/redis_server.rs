use crate::{free_port, wait_for};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// A `redis-server` of one test's own: a free loopback port (never 6379),
/// a temporary directory, append-only persistence so a kill and restart
/// keeps the data (as a production Redis with AOF would).
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Serving TLS only, with a self-signed certificate in `dir`.
    tls: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// A server that speaks only TLS, with a self-signed certificate (made
    /// with `openssl`); its [`url`](Self::url) is `rediss://…/#insecure`.
    pub fn start_tls() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(tls: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("auction-redis-")
            .tempdir()
            .expect("cannot create a temporary directory");
        if tls {
            let made = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-keyout",
                    "tls.key",
                    "-out",
                    "tls.crt",
                ])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is not installed");
            assert!(made.success(), "openssl could not make a certificate");
            // The client side of the tests uses rustls, which needs a provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        for _ in 0..5 {
            let port = free_port();
            if port == 6379 {
                continue;
            }
            if let Some(child) = spawn(port, dir.path(), tls) {
                return RedisServer {
                    port,
                    dir,
                    child: Some(child),
                    tls,
                };
            }
        }
        panic!("could not start redis-server on a free port");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://127.0.0.1:{}/#insecure", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is
    /// answered, as with a hung server or a network black hole.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn unpause(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        crate::service::signal(pid, name);
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        let child = wait_for("redis-server to restart", Duration::from_secs(10), || {
            spawn(self.port, self.dir.path(), self.tls)
        });
        self.child = Some(child);
    }

    /// Starts the server again on the same port without its data, as after
    /// a disk loss or a failover to a replica that had nothing.
    pub fn restart_empty(&mut self) {
        self.kill();
        remove_data(self.dir.path(), |name| name.starts_with("tls."));
        let child = wait_for("redis-server to restart", Duration::from_secs(10), || {
            spawn(self.port, self.dir.path(), self.tls)
        });
        self.child = Some(child);
    }

    /// Sends one command (inline protocol) and returns the raw reply.
    pub fn command(&self, line: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write to redis");
        let mut buffer = [0u8; 4096];
        let read = stream.read(&mut buffer).unwrap_or(0);
        String::from_utf8_lossy(&buffer[..read]).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes everything in a stopped server's directory but the files
/// `keep` names: its data (the append-only files) is lost.
pub(crate) fn remove_data(dir: &Path, keep: impl Fn(&str) -> bool) {
    for entry in std::fs::read_dir(dir).expect("read the data dir") {
        let path = entry.expect("dir entry").path();
        if path
            .file_name()
            .is_some_and(|name| keep(&name.to_string_lossy()))
        {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("remove data");
        } else {
            std::fs::remove_file(&path).expect("remove data");
        }
    }
}

fn spawn(port: u16, dir: &Path, tls: bool) -> Option<Child> {
    let mut command = Command::new("redis-server");
    if tls {
        command
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-cert-file", "tls.crt", "--tls-key-file", "tls.key"])
            .args(["--tls-ca-cert-file", "tls.crt", "--tls-auth-clients", "no"]);
    } else {
        command.args(["--port", &port.to_string()]);
    }
    let mut child = command
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "yes", "--loglevel", "warning"])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is not installed (apt-get install redis-server)");
    for _ in 0..250 {
        if let Ok(Some(_)) = child.try_wait() {
            return None; // exited: most likely the port was taken
        }
        // A TLS port cannot answer a plain PING: accepting is enough there.
        let up = if tls {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        } else {
            ping(port)
        };
        if up {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// One entry of an auction's stream, as tests compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub kind: String,
    pub data: String,
}

impl RedisServer {
    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection())
            .expect("connect to the test redis-server")
    }

    /// Every entry of `auction`'s stream, oldest first.
    pub fn stream(&self, auction: &str) -> Vec<Entry> {
        read_stream(&mut self.connection(), auction)
    }

    /// The ids of `auction`'s stream strictly after `after` and up to and
    /// including `until`, compared as (ms, seq) pairs.
    pub fn stream_ids_between(&self, auction: &str, after: &str, until: &str) -> Vec<String> {
        <Self as TestRedis>::stream_ids_between(self, auction, after, until)
    }
}

/// Appends an event to an auction's stream and chain atomically and
/// publishes no notice (KEYS: the auction's chain hash, its stream;
/// returns the new id): a notice lost on the way, as edges see it.
pub const APPEND_WITHOUT_NOTICE: &str =
    "local prev = redis.call('HGET', KEYS[1], 'last_id') or '0-0'
     local id = redis.call('XADD', KEYS[2], '*', 'kind', 'bid', 'data', '{}',
       'prev', prev, 'at', '0', 'tp', '')
     redis.call('HSET', KEYS[1], 'last_id', id)
     return id";

/// What tests need of the Redis they run against, one node or a cluster,
/// so one test body can run on both.
pub trait TestRedis: Sync {
    /// `AUCTION_REDIS_URL` for the services.
    fn url(&self) -> String;

    /// Every entry of `auction`'s stream, oldest first.
    fn stream(&self, auction: &str) -> Vec<Entry>;

    /// The ids of `auction`'s stream strictly after `after` and up to and
    /// including `until`, compared as (ms, seq) pairs.
    fn stream_ids_between(&self, auction: &str, after: &str, until: &str) -> Vec<String> {
        let (after, until) = (id_pair(after), id_pair(until));
        self.stream(auction)
            .into_iter()
            .map(|entry| entry.id)
            .filter(|id| id_pair(id) > after && id_pair(id) <= until)
            .collect()
    }

    /// The newest id of `auction`'s stream (`0-0` when empty).
    fn head(&self, auction: &str) -> String {
        self.stream(auction)
            .last()
            .map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone())
    }

    /// Waits until the stream holds `more` events after `after`; returns the
    /// newest id then.
    fn wait_for_more(&self, auction: &str, after: &str, more: usize) -> String {
        wait_for("more events in the stream", Duration::from_secs(30), || {
            let newer: Vec<Entry> = self
                .stream(auction)
                .into_iter()
                .filter(|entry| id_pair(&entry.id) > id_pair(after))
                .collect();
            (newer.len() >= more).then(|| newer[newer.len() - 1].id.clone())
        })
    }

    /// Runs one command on the node holding `auction`'s keys (the one
    /// server, or the primary serving the auction's slot) and returns its
    /// reply.
    fn on_owner(&self, auction: &str, args: &[&str]) -> redis::Value;

    /// Freezes (SIGSTOP) the node holding `auction`'s keys: its connections
    /// stay open and nothing is answered, as with a hung server.
    fn pause_owner(&self, auction: &str);

    /// Unfreezes (SIGCONT) whatever [`pause_owner`](Self::pause_owner)
    /// froze.
    fn unpause(&self);

    /// How many times the node holding `auction`'s keys has run `command`
    /// (lower case, as in `INFO commandstats`: `xrange`) since it started.
    fn command_calls(&self, auction: &str, command: &str) -> u64 {
        let info: String =
            redis::from_redis_value(self.on_owner(auction, &["INFO", "commandstats"]))
                .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().expect("a count of calls"))
    }

    /// Appends an event to `auction`'s stream and chain atomically, but
    /// publishes no notice: a notice lost on the way, as edges see it.
    /// Returns the new id.
    fn append_without_notice(&self, auction: &str) -> String {
        let (chain, events) = (
            format!("auction:{{{auction}}}"),
            format!("auction:{{{auction}}}:events"),
        );
        let reply = self.on_owner(
            auction,
            &["EVAL", APPEND_WITHOUT_NOTICE, "2", &chain, &events],
        );
        redis::from_redis_value(reply).expect("append without a notice")
    }

    /// Deletes (XDEL) the event `id` from `auction`'s stream, leaving a
    /// hole; whether it was there.
    fn delete_event(&self, auction: &str, id: &str) -> bool {
        let events = format!("auction:{{{auction}}}:events");
        let deleted: i64 =
            redis::from_redis_value(self.on_owner(auction, &["XDEL", &events, id])).expect("XDEL");
        deleted == 1
    }
}

/// What a test does to the Redis processes themselves; it needs them
/// owned, not shared.
pub trait TestRedisProcesses: TestRedis {
    /// The node holding `auction`'s keys crashes (SIGKILL); `while_down`
    /// runs; then the node starts again on its port with its data and
    /// serves what it served before.
    fn crash_and_restart_owner(&mut self, auction: &str, while_down: &mut dyn FnMut());

    /// The nodes holding `auctions`' keys start again on their ports
    /// without their data: they serve what they served before, empty.
    fn restart_owners_empty(&mut self, auctions: &[&str]);
}

/// A reference serves wherever the thing does.
impl<T: TestRedis + ?Sized> TestRedis for &T {
    fn url(&self) -> String {
        (**self).url()
    }

    fn stream(&self, auction: &str) -> Vec<Entry> {
        (**self).stream(auction)
    }

    fn on_owner(&self, auction: &str, args: &[&str]) -> redis::Value {
        (**self).on_owner(auction, args)
    }

    fn pause_owner(&self, auction: &str) {
        (**self).pause_owner(auction);
    }

    fn unpause(&self) {
        (**self).unpause();
    }
}

impl TestRedis for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }

    fn stream(&self, auction: &str) -> Vec<Entry> {
        RedisServer::stream(self, auction)
    }

    fn on_owner(&self, _auction: &str, args: &[&str]) -> redis::Value {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.connection())
            .unwrap_or_else(|error| panic!("{}: {error}", args[0]))
    }

    fn pause_owner(&self, _auction: &str) {
        self.pause();
    }

    fn unpause(&self) {
        RedisServer::unpause(self);
    }
}

impl TestRedisProcesses for RedisServer {
    fn crash_and_restart_owner(&mut self, _auction: &str, while_down: &mut dyn FnMut()) {
        self.kill();
        while_down();
        self.restart();
    }

    fn restart_owners_empty(&mut self, _auctions: &[&str]) {
        self.restart_empty();
    }
}

/// Every entry of `auction`'s stream, oldest first, over `conn` (one
/// node's connection or a cluster's).
pub(crate) fn read_stream(conn: &mut impl redis::ConnectionLike, auction: &str) -> Vec<Entry> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("auction:{{{auction}}}:events"))
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    reply
        .ids
        .iter()
        .map(|entry| Entry {
            id: entry.id.clone(),
            kind: entry.get("kind").expect("kind field"),
            data: entry.get("data").expect("data field"),
        })
        .collect()
}

/// `"<ms>-<seq>"` → `(ms, seq)`; `0-0` for anything else.
pub fn id_pair(id: &str) -> (u64, u64) {
    id.split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .unwrap_or((0, 0))
}

impl RedisServer {
    /// The newest id of `auction`'s stream (`0-0` when empty).
    pub fn head(&self, auction: &str) -> String {
        <Self as TestRedis>::head(self, auction)
    }

    /// Waits until the stream holds `more` events after `after`; returns the
    /// newest id then.
    pub fn wait_for_more(&self, auction: &str, after: &str, more: usize) -> String {
        <Self as TestRedis>::wait_for_more(self, auction, after, more)
    }
}
