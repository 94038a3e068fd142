//! `scripts/run`, as a newcomer runs it: it names the replica that cannot
//! start and exits non-zero, and says "ready" only once every replica
//! answers `/readyz` on its ops port. Runs the real script with the binaries `cargo test`
//! built (`SKIP_BUILD=1`), on free ports, with its data in a temporary
//! directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::{RedisServer, binary_path, free_cluster_ports, free_port, wait_for};

/// A replica in `scripts/run`'s order.
struct Replica {
    binary: &'static str,
    port: u16,
    ops: u16,
}

struct Ports {
    replicas: Vec<Replica>,
    public: u16,
}

impl Ports {
    fn free() -> Ports {
        let replicas = [
            "bidder", "bidder", "sse-edge", "sse-edge", "ws-edge", "ws-edge",
        ]
        .into_iter()
        .map(|binary| Replica {
            binary,
            port: free_port(),
            ops: free_port(),
        })
        .collect();
        Ports {
            replicas,
            public: free_port(),
        }
    }

    /// The public ports of `binary`'s replicas, as the script takes them.
    fn of(&self, binary: &str) -> String {
        self.list(binary, |replica| replica.port)
    }

    /// The ops ports of `binary`'s replicas.
    fn ops_of(&self, binary: &str) -> String {
        self.list(binary, |replica| replica.ops)
    }

    fn list(&self, binary: &str, port: impl Fn(&Replica) -> u16) -> String {
        self.replicas
            .iter()
            .filter(|replica| replica.binary == binary)
            .map(|replica| port(replica).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `scripts/run` running, its stdout and stderr collected as they come.
struct RunScript {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl RunScript {
    fn start(ports: &Ports, env: &[(&str, String)]) -> RunScript {
        RunScript::start_with(ports, env, &[])
    }

    fn start_with(ports: &Ports, env: &[(&str, String)], args: &[&str]) -> RunScript {
        RunScript::launch(ports, env, args, false)
    }

    /// As a non-interactive shell starts a background job (`scripts/run &`
    /// in a script): with SIGINT ignored.
    fn start_in_background(ports: &Ports) -> RunScript {
        RunScript::launch(ports, &[], &[], true)
    }

    fn launch(
        ports: &Ports,
        env: &[(&str, String)],
        args: &[&str],
        sigint_ignored: bool,
    ) -> RunScript {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let profile_dir = binary_path("bidder").parent().unwrap().to_owned();
        let profile = profile_dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            profile_dir.ends_with(format!("target/{profile}")),
            "scripts/run takes binaries from target/<profile>: {}",
            profile_dir.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let mut command = if sigint_ignored {
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg("trap '' INT; exec \"$0\" \"$@\"")
                .arg(root.join("scripts/run"));
            command
        } else {
            Command::new(root.join("scripts/run"))
        };
        if profile == "release" {
            command.arg("--release");
        }
        command.args(args);
        command
            .env("SKIP_BUILD", "1")
            .env("RUN_DIR", dir.path())
            .env("BIDDER_PORTS", ports.of("bidder"))
            .env("SSE_PORTS", ports.of("sse-edge"))
            .env("WS_PORTS", ports.of("ws-edge"))
            .env("BIDDER_OPS_PORTS", ports.ops_of("bidder"))
            .env("SSE_OPS_PORTS", ports.ops_of("sse-edge"))
            .env("WS_OPS_PORTS", ports.ops_of("ws-edge"))
            .env("PUBLIC_PORT", ports.public.to_string())
            .env("RUST_LOG", "warn")
            .env_remove("AUCTION_REDIS_URL")
            // The Redis it starts gets ports from this process's allocator
            // too: picked by the script, they could be ones another test
            // of this process was just given.
            .env("REDIS_PORT", free_port().to_string())
            .env(
                "REDIS_CLUSTER_PORTS",
                free_cluster_ports(6)
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("run scripts/run");
        let collect = |stream: Box<dyn Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let sink = text.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut text = sink.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            });
            text
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        RunScript {
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The pid `scripts/run` wrote for `binary` on `port`.
    fn pid_of(&self, binary: &str, port: u16) -> u32 {
        let path = self._dir.path().join(format!("pids/{binary}-{port}.pid"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .trim()
            .parse()
            .unwrap()
    }

    fn wait_ready(&mut self) {
        wait_for("ready", Duration::from_secs(90), || {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "scripts/run exited:\n{}",
                self.stderr()
            );
            self.said_ready().then_some(())
        });
    }

    fn said_ready(&self) -> bool {
        self.stdout().lines().any(|line| line.starts_with("ready"))
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "scripts/run did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ctrl-C, as a user stops it: everything stops and it exits 0, a
    /// stop asked for, not a failure.
    fn interrupt(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let status = self.wait_exit(Duration::from_secs(30));
        let stderr = self.stderr();
        assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
        assert!(
            stderr.contains("scripts/run: stopping everything"),
            "stderr:\n{stderr}"
        );
        status
    }
}

impl Drop for RunScript {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGTERM runs the script's trap, which stops what it started.
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.wait();
        }
    }
}

/// The status code `GET path` gets on 127.0.0.1:`port`, if it answers.
fn status_of(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn nginx_installed() -> bool {
    Command::new("sh")
        .args(["-c", "command -v nginx"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn scripts_run_names_the_replica_whose_port_is_taken_and_exits_non_zero() {
    // Its public port, then (another run) its ops port.
    for ops in [false, true] {
        let ports = Ports::free();
        let replica = &ports.replicas[3];
        let taken = if ops { replica.ops } else { replica.port };
        let _squatter = TcpListener::bind(("127.0.0.1", taken)).unwrap();
        let mut run = RunScript::start(&ports, &[]);
        let status = run.wait_exit(Duration::from_secs(60));
        let stderr = run.stderr();
        assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        let binary = replica.binary;
        assert!(
            last.contains(binary) && last.contains(&format!("port {taken} is taken")),
            "the last line names {binary} and port {taken}: {last:?}"
        );
        assert!(!run.said_ready(), "stdout:\n{}", run.stdout());
        // What it had started is stopped again.
        for Replica { binary, port, ops } in &ports.replicas[..3] {
            wait_for(
                &format!("{binary} on {port} to be stopped"),
                Duration::from_secs(10),
                || (!listening(*port) && !listening(*ops)).then_some(()),
            );
        }
    }
}

#[test]
fn scripts_run_names_a_replica_that_exits_during_start_up() {
    let ports = Ports::free();
    // Only the edges read this setting, and 0 is refused: both SSE and
    // WebSocket edges exit with code 2 right after starting.
    let mut run = RunScript::start(&ports, &[("AUCTION_MAX_CONNECTIONS", "0".into())]);
    let status = run.wait_exit(Duration::from_secs(60));
    let stderr = run.stderr();
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    let named = ports.replicas[2..]
        .iter()
        .any(|Replica { binary, port, .. }| {
            last.contains(&format!("{binary} on port {port} exited (code 2)"))
        });
    assert!(named, "the last line names an edge that exited: {last:?}");
    assert!(!run.said_ready(), "stdout:\n{}", run.stdout());
}

#[test]
fn scripts_run_prints_ready_only_once_every_replica_answers_readyz() {
    // Redis is down while the replicas start: they listen but answer 503 on
    // /readyz (on their ops ports) until it comes up.
    let mut redis = RedisServer::start();
    redis.kill();
    let ports = Ports::free();
    let mut run = RunScript::start(&ports, &[("AUCTION_REDIS_URL", redis.url())]);
    for Replica { binary, ops, .. } in &ports.replicas {
        wait_for(
            &format!("{binary} on ops port {ops} to answer 503"),
            Duration::from_secs(60),
            || (status_of(*ops, "/readyz") == Some(503)).then_some(()),
        );
    }
    assert!(
        !run.said_ready(),
        "ready while the replicas answer 503:\n{}",
        run.stdout()
    );

    redis.restart();
    wait_for("ready", Duration::from_secs(60), || {
        assert!(
            run.child.try_wait().unwrap().is_none(),
            "scripts/run exited:\n{}",
            run.stderr()
        );
        run.said_ready().then_some(())
    });
    for Replica { binary, port, ops } in &ports.replicas {
        assert_eq!(status_of(*ops, "/readyz"), Some(200), "{binary} on {ops}");
        // The public port does not serve it: only the ops port does.
        assert_eq!(status_of(*port, "/readyz"), Some(404), "{binary} on {port}");
    }
    let stdout = run.stdout();
    if nginx_installed() {
        assert_eq!(status_of(ports.public, "/nginx-health"), Some(200));
        assert!(
            stdout.contains(&format!("http://127.0.0.1:{}/?auction=1234", ports.public)),
            "{stdout}"
        );
    }

    if nginx_installed() {
        // Nor does nginx pass them on.
        for path in ["/readyz", "/healthz", "/metrics"] {
            assert_eq!(status_of(ports.public, path), Some(404), "nginx {path}");
        }
    }

    run.interrupt();
    for Replica { binary, port, ops } in &ports.replicas {
        wait_for(
            &format!("{binary} on {port} to be stopped"),
            Duration::from_secs(20),
            || (!listening(*port) && !listening(*ops)).then_some(()),
        );
    }
}

#[test]
fn scripts_run_cluster_starts_a_redis_cluster_and_every_replica_runs_on_it() {
    let ports = Ports::free();
    let mut run = RunScript::start_with(&ports, &[], &["--cluster"]);
    wait_for("ready", Duration::from_secs(90), || {
        assert!(
            run.child.try_wait().unwrap().is_none(),
            "scripts/run --cluster exited:\n{}",
            run.stderr()
        );
        run.said_ready().then_some(())
    });
    for Replica { binary, ops, .. } in &ports.replicas {
        assert_eq!(status_of(*ops, "/readyz"), Some(200), "{binary} on {ops}");
    }
    let stdout = run.stdout();
    let line = stdout
        .lines()
        .find(|line| line.contains("Redis Cluster on ports"))
        .unwrap_or_else(|| panic!("no Redis Cluster line:\n{stdout}"));
    let node_ports: Vec<u16> = line
        .split("ports ")
        .nth(1)
        .unwrap()
        .split(" (")
        .next()
        .unwrap()
        .split(' ')
        .map(|port| port.parse().unwrap())
        .collect();
    assert_eq!(node_ports.len(), 6, "{line}");
    // The simulator's bids land in the cluster: lot 1234's stream grows.
    let seeds: Vec<String> = node_ports
        .iter()
        .map(|port| format!("redis://127.0.0.1:{port}"))
        .collect();
    let client = redis::cluster::ClusterClient::new(seeds).unwrap();
    let mut conn = client.get_connection().unwrap();
    wait_for(
        "simulated bids in the cluster",
        Duration::from_secs(30),
        || {
            let length: u64 = redis::cmd("XLEN")
                .arg("auction:{1234}:events")
                .query(&mut conn)
                .unwrap();
            (length >= 1).then_some(())
        },
    );
    let roles: Vec<String> = node_ports
        .iter()
        .map(|port| {
            let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .unwrap()
                .get_connection()
                .unwrap();
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut node)
                .unwrap();
            info.lines()
                .find_map(|line| line.strip_prefix("role:"))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(
        roles.iter().filter(|role| *role == "master").count(),
        3,
        "{roles:?}"
    );
    assert_eq!(
        roles.iter().filter(|role| *role == "slave").count(),
        3,
        "{roles:?}"
    );

    run.interrupt();
    for port in node_ports {
        wait_for(
            &format!("cluster node {port} to be stopped"),
            Duration::from_secs(20),
            || (!listening(port)).then_some(()),
        );
    }
}

#[test]
fn scripts_run_starts_a_replica_that_dies_again_while_the_others_keep_serving() {
    let ports = Ports::free();
    let mut run = RunScript::start(&ports, &[]);
    run.wait_ready();
    let killed = &ports.replicas[2];
    let other = &ports.replicas[3];
    assert_eq!(killed.binary, "sse-edge");
    let pid = run.pid_of("sse-edge", killed.port);
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed_at = Instant::now();
    wait_for("the kill to be reported", Duration::from_secs(10), || {
        run.stderr()
            .contains(&format!(
                "sse-edge on port {} (pid {pid}) was killed (signal 9)",
                killed.port
            ))
            .then_some(())
    });
    // The other replica serves on, and the script runs on.
    assert_eq!(status_of(other.ops, "/readyz"), Some(200));
    assert!(run.child.try_wait().unwrap().is_none(), "{}", run.stderr());
    // The killed one is started again and ready within 10 s.
    wait_for(
        "the killed replica to answer /readyz",
        Duration::from_secs(10).saturating_sub(killed_at.elapsed()),
        || (status_of(killed.ops, "/readyz") == Some(200)).then_some(()),
    );
    assert_ne!(run.pid_of("sse-edge", killed.port), pid);
    wait_for("ready again", Duration::from_secs(5), || {
        run.stderr()
            .contains(&format!("sse-edge on port {} is ready again", killed.port))
            .then_some(())
    });
    assert!(run.child.try_wait().unwrap().is_none(), "{}", run.stderr());
    if nginx_installed() {
        assert_eq!(status_of(ports.public, "/nginx-health"), Some(200));
    }
    run.interrupt();
}

#[test]
fn scripts_run_in_the_background_stops_everything_on_sigint_and_exits_0() {
    let ports = Ports::free();
    let mut run = RunScript::start_in_background(&ports);
    run.wait_ready();
    run.interrupt();
    for Replica { binary, port, ops } in &ports.replicas {
        wait_for(
            &format!("{binary} on {port} to be stopped"),
            Duration::from_secs(20),
            || (!listening(*port) && !listening(*ops)).then_some(()),
        );
    }
    if nginx_installed() {
        assert!(!listening(ports.public), "nginx still listens");
    }
}
