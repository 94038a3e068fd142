//! A Redis Cluster of the test's own, started the way operators do: six
//! `redis-server --cluster-enabled yes` processes on loopback, then
//! `redis-cli --cluster create ... --cluster-replicas 1`: three primaries,
//! each with one replica.

use crate::redis_server::{Entry, TestRedis, TestRedisProcesses, remove_data};
use crate::{free_cluster_ports, wait_for};
use redis::cluster::ClusterClient;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Nodes of the cluster: 3 primaries + 3 replicas.
const NODES: usize = 6;
/// How long a node may be unreachable before its replica takes over. Short,
/// so failover tests finish in seconds.
const NODE_TIMEOUT_MS: u64 = 2000;

struct Node {
    port: u16,
    /// Removed on drop, after the process is gone.
    dir: TempDir,
    child: Option<Child>,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
}

/// One line of `CLUSTER NODES`, the parts tests use.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    pub failed: bool,
    /// The id of the primary this node replicates (replicas only).
    pub replica_of: Option<String>,
    /// Slot ranges served (primaries only), inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts six nodes and forms the cluster; returns once every slot is
    /// served and every replica is in sync with its primary.
    pub fn start() -> RedisCluster {
        // A port checked free can still be taken before redis-server binds
        // it (by another test): then start over on other ports.
        let (cluster, ports) = (0..5)
            .find_map(|_| {
                let ports = free_cluster_ports(NODES);
                // Dropped (and its nodes killed) if one node fails.
                let mut cluster = RedisCluster { nodes: Vec::new() };
                for &port in &ports {
                    let dir = tempfile::Builder::new()
                        .prefix("auction-redis-cluster-")
                        .tempdir()
                        .expect("cannot create a temporary directory");
                    let child = spawn(port, dir.path())?;
                    cluster.nodes.push(Node {
                        port,
                        dir,
                        child: Some(child),
                    });
                }
                Some((cluster, ports))
            })
            .expect("could not start six redis-server nodes on free ports");
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is not installed (apt-get install redis-tools)");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_until_healthy(Duration::from_secs(30));
        cluster
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
    }

    /// Sends one command to the node on `port`.
    pub fn command(&self, port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn)
    }

    fn text(&self, port: u16, args: &[&str]) -> Option<String> {
        match self.command(port, args).ok()? {
            redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
            redis::Value::VerbatimString { text, .. } => Some(text),
            redis::Value::SimpleString(text) => Some(text),
            _ => None,
        }
    }

    /// The cluster as the node on `port` sees it.
    pub fn nodes_seen_by(&self, port: u16) -> Option<Vec<NodeInfo>> {
        let text = self.text(port, &["CLUSTER", "NODES"])?;
        Some(text.lines().filter_map(parse_node_line).collect())
    }

    /// Waits until every running node reports `cluster_state:ok`, agrees on
    /// who serves every slot, and every running replica's link to its
    /// primary is up.
    pub fn wait_until_healthy(&self, timeout: Duration) {
        wait_for("the Redis Cluster to be healthy", timeout, || {
            let mut owners: Option<Vec<(u16, u16, u16)>> = None;
            for port in self.live_ports() {
                let info = self.text(port, &["CLUSTER", "INFO"])?;
                if !info.contains("cluster_state:ok") {
                    return None;
                }
                let nodes = self.nodes_seen_by(port)?;
                let mut seen: Vec<(u16, u16, u16)> = nodes
                    .iter()
                    .filter(|node| node.primary && !node.failed)
                    .flat_map(|node| node.slots.iter().map(|&(a, b)| (a, b, node.port)))
                    .collect();
                seen.sort_unstable();
                let served: u32 = seen.iter().map(|&(a, b, _)| u32::from(b - a) + 1).sum();
                if served != 16384 || owners.as_ref().is_some_and(|o| *o != seen) {
                    return None;
                }
                owners = Some(seen);
                let replication = self.text(port, &["INFO", "replication"])?;
                if replication.contains("role:slave")
                    && !replication.contains("master_link_status:up")
                {
                    return None;
                }
            }
            owners.map(|_| ())
        });
    }

    /// The slot of a key (or of a hash tag such as `{1234}`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.live_ports().next().expect("a running node");
        match self.command(port, &["CLUSTER", "KEYSLOT", key]) {
            Ok(redis::Value::Int(slot)) => slot as u16,
            other => panic!("CLUSTER KEYSLOT answered {other:?}"),
        }
    }

    /// The primary serving `slot`, as the running nodes see it.
    pub fn primary_of_slot(&self, slot: u16) -> NodeInfo {
        let port = self.live_ports().next().expect("a running node");
        self.nodes_seen_by(port)
            .expect("CLUSTER NODES")
            .into_iter()
            .find(|node| {
                node.primary
                    && !node.failed
                    && node.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })
            .expect("a primary serves the slot")
    }

    /// The primary holding `auction`'s keys.
    pub fn primary_of_auction(&self, auction: &str) -> NodeInfo {
        self.primary_of_slot(self.slot_of(&format!("{{{auction}}}")))
    }

    /// Kills the node on `port` with SIGKILL, as a crash would.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed node on `port` again with its data and
    /// `nodes.conf`: it rejoins, as a replica of whoever took its slots (as
    /// a restarted pod does).
    pub fn restart(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port)
            .expect("a node of this cluster");
        assert!(node.child.is_none(), "the node is running");
        node.child = Some(spawn(port, node.dir.path()).expect("the node restarts on its port"));
    }

    /// Waits until a replica took over the slots of the killed primary on
    /// `port`; returns the time that took from now.
    pub fn wait_for_failover(&self, port: u16, timeout: Duration) -> Duration {
        let started = Instant::now();
        wait_for("a replica to take over", timeout, || {
            let any = self.live_ports().next()?;
            let nodes = self.nodes_seen_by(any)?;
            let dead_serves = nodes
                .iter()
                .any(|node| node.port == port && node.primary && !node.slots.is_empty());
            (!dead_serves).then_some(())
        });
        wait_for("the cluster to be ok again", timeout, || {
            self.live_ports()
                .all(|port| {
                    self.text(port, &["CLUSTER", "INFO"])
                        .is_some_and(|info| info.contains("cluster_state:ok"))
                })
                .then_some(())
        });
        started.elapsed()
    }

    /// Swaps the primary on `port` with its replica the way an operator
    /// does: `CLUSTER FAILOVER` sent to the replica (which waits until it
    /// holds every write of the primary, then takes over). Returns the
    /// port of the new primary once the cluster is healthy again.
    pub fn swap_with_replica(&self, port: u16) -> u16 {
        // The primary's own word for its replica (gossip may not have
        // told every node yet).
        let replica_port: u16 = wait_for("an online replica", Duration::from_secs(20), || {
            let info = self.text(port, &["INFO", "replication"])?;
            info.lines()
                .filter(|line| line.starts_with("slave") && line.contains("state=online"))
                .find_map(|line| {
                    line.split(',')
                        .find_map(|part| part.strip_prefix("port="))
                        .and_then(|port| port.parse().ok())
                })
        });
        let replica = NodeInfo {
            id: self
                .text(replica_port, &["CLUSTER", "MYID"])
                .expect("CLUSTER MYID"),
            port: replica_port,
            primary: false,
            failed: false,
            replica_of: None,
            slots: Vec::new(),
        };
        // The primary heeds the replica's request only once its own view
        // of the cluster has the replica as its own (gossip).
        wait_for(
            "the primary to know its replica",
            Duration::from_secs(20),
            || {
                let nodes = self.nodes_seen_by(port)?;
                let primary = nodes.iter().find(|node| node.port == port)?;
                nodes
                    .iter()
                    .any(|node| {
                        node.id == replica.id && node.replica_of.as_ref() == Some(&primary.id)
                    })
                    .then_some(())
            },
        );
        // A manual failover the primary did not heed times out after 5 s
        // with nothing changed: then it is asked again.
        let mut asked: Option<Instant> = None;
        wait_for("the replica to take over", Duration::from_secs(40), || {
            if asked.is_none_or(|at| at.elapsed() > Duration::from_secs(6)) {
                if let Err(error) = self.command(replica.port, &["CLUSTER", "FAILOVER"]) {
                    panic!("CLUSTER FAILOVER on {}: {error}", replica.port);
                }
                asked = Some(Instant::now());
            }
            self.live_ports()
                .all(|any| {
                    self.nodes_seen_by(any).is_some_and(|nodes| {
                        nodes.iter().any(|node| {
                            node.id == replica.id && node.primary && !node.slots.is_empty()
                        })
                    })
                })
                .then_some(())
        });
        self.wait_until_healthy(Duration::from_secs(30));
        replica.port
    }

    /// The ports of the primaries serving slots now.
    pub fn primaries(&self) -> Vec<u16> {
        let port = self.live_ports().next().expect("a running node");
        let mut ports: Vec<u16> = self
            .nodes_seen_by(port)
            .expect("CLUSTER NODES")
            .into_iter()
            .filter(|node| node.primary && !node.failed && !node.slots.is_empty())
            .map(|node| node.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Moves `slot` from its primary to another primary, keys and all, the
    /// way `redis-cli --cluster reshard` does: IMPORTING / MIGRATING, MIGRATE
    /// of every key, then SETSLOT NODE on every primary. Returns the port
    /// of the new owner.
    pub fn migrate_slot(&self, slot: u16) -> u16 {
        let source = self.primary_of_slot(slot);
        let port = source.port;
        let nodes = self.nodes_seen_by(port).expect("CLUSTER NODES");
        let target = nodes
            .iter()
            .find(|node| node.primary && !node.failed && node.id != source.id)
            .expect("another primary")
            .clone();
        let slot_text = slot.to_string();
        let ok = |result: redis::RedisResult<redis::Value>, what: &str| {
            if let Err(error) = result {
                panic!("{what}: {error}");
            }
        };
        ok(
            self.command(
                target.port,
                &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &source.id],
            ),
            "SETSLOT IMPORTING",
        );
        ok(
            self.command(
                port,
                &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &target.id],
            ),
            "SETSLOT MIGRATING",
        );
        loop {
            let keys: Vec<String> =
                match self.command(port, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"]) {
                    Ok(value) => redis::from_redis_value(value).expect("key list"),
                    Err(error) => panic!("GETKEYSINSLOT: {error}"),
                };
            if keys.is_empty() {
                break;
            }
            let target_port = target.port.to_string();
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &target_port,
                "",
                "0",
                "5000",
                "KEYS",
            ];
            args.extend(keys.iter().map(String::as_str));
            ok(self.command(port, &args), "MIGRATE");
        }
        for node in nodes.iter().filter(|node| node.primary && !node.failed) {
            ok(
                self.command(
                    node.port,
                    &["CLUSTER", "SETSLOT", &slot_text, "NODE", &target.id],
                ),
                "SETSLOT NODE",
            );
        }
        wait_for(
            "every node to see the slot's new owner",
            Duration::from_secs(20),
            || {
                self.live_ports()
                    .all(|port| {
                        self.nodes_seen_by(port).is_some_and(|nodes| {
                            nodes.iter().any(|node| {
                                node.id == target.id
                                    && node.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
                            })
                        })
                    })
                    .then_some(())
            },
        );
        target.port
    }

    /// Every entry of `auction`'s stream, oldest first, read through the
    /// cluster (from whichever primary serves it now).
    pub fn stream(&self, auction: &str) -> Vec<Entry> {
        let seeds: Vec<String> = self
            .live_ports()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect();
        let client = ClusterClient::new(seeds).expect("cluster client");
        let mut conn = client.get_connection().expect("connect to the cluster");
        crate::redis_server::read_stream(&mut conn, auction)
    }

    /// Total CPU time (user + system, seconds) the running nodes used so
    /// far, from `INFO cpu`.
    pub fn cpu_seconds(&self) -> f64 {
        self.live_ports()
            .filter_map(|port| self.text(port, &["INFO", "cpu"]))
            .map(|info| {
                info.lines()
                    .filter_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        matches!(name, "used_cpu_sys" | "used_cpu_user")
                            .then(|| value.trim().parse::<f64>().ok())?
                    })
                    .sum::<f64>()
            })
            .sum()
    }
}

impl RedisCluster {
    /// Sets `cluster-node-timeout` on every running node: how long a node
    /// may be unreachable before it counts as failed (and its replica takes
    /// over). Longer than a freeze, a frozen primary stays the owner of its
    /// slots and the rest of the cluster keeps serving.
    pub fn set_node_timeout(&self, timeout: Duration) {
        let millis = timeout.as_millis().to_string();
        for port in self.live_ports() {
            if let Err(error) =
                self.command(port, &["CONFIG", "SET", "cluster-node-timeout", &millis])
            {
                panic!("CONFIG SET cluster-node-timeout on {port}: {error}");
            }
        }
    }

    /// Freezes the node on `port` (`SIGSTOP`): it keeps its connections
    /// and answers nothing until [`RedisCluster::thaw`].
    pub fn freeze(&self, port: u16) {
        self.signal(port, "STOP");
    }

    /// Resumes a node frozen by [`RedisCluster::freeze`] (`SIGCONT`).
    pub fn thaw(&self, port: u16) {
        self.signal(port, "CONT");
    }

    /// Sends a signal (`STOP`, `CONT`) to the running node on `port`.
    fn signal(&self, port: u16, name: &str) {
        let pid = self
            .nodes
            .iter()
            .find(|node| node.port == port)
            .and_then(|node| node.child.as_ref())
            .expect("a running node of this cluster")
            .id();
        crate::service::signal(pid, name);
    }

    /// Whether replicas may take over a failed primary
    /// (`cluster-replica-no-failover` on every running node). Held, a
    /// primary that is down stays the owner of its slots until it is back.
    fn allow_failover(&self, allowed: bool) {
        let value = if allowed { "no" } else { "yes" };
        for port in self.live_ports() {
            if let Err(error) = self.command(
                port,
                &["CONFIG", "SET", "cluster-replica-no-failover", value],
            ) {
                panic!("CONFIG SET cluster-replica-no-failover on {port}: {error}");
            }
        }
    }
}

impl TestRedis for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }

    fn stream(&self, auction: &str) -> Vec<Entry> {
        RedisCluster::stream(self, auction)
    }

    fn on_owner(&self, auction: &str, args: &[&str]) -> redis::Value {
        let port = self.primary_of_auction(auction).port;
        self.command(port, args)
            .unwrap_or_else(|error| panic!("{} on {port}: {error}", args[0]))
    }

    fn pause_owner(&self, auction: &str) {
        self.signal(self.primary_of_auction(auction).port, "STOP");
    }

    fn unpause(&self) {
        for port in self.live_ports() {
            self.signal(port, "CONT");
        }
    }
}

/// A node's restart here is in place: replicas are held from taking over
/// meanwhile, so the primary comes back as the owner of its slots (a
/// failover is what the cluster's own tests take apart).
impl TestRedisProcesses for RedisCluster {
    fn crash_and_restart_owner(&mut self, auction: &str, while_down: &mut dyn FnMut()) {
        let port = self.primary_of_auction(auction).port;
        self.allow_failover(false);
        self.kill(port);
        while_down();
        self.restart(port);
        self.wait_until_healthy(Duration::from_secs(30));
        self.allow_failover(true);
    }

    fn restart_owners_empty(&mut self, auctions: &[&str]) {
        let mut ports: Vec<u16> = auctions
            .iter()
            .map(|auction| self.primary_of_auction(auction).port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        self.allow_failover(false);
        for &port in &ports {
            self.kill(port);
        }
        for &port in &ports {
            let node = self
                .nodes
                .iter()
                .find(|node| node.port == port)
                .expect("a node of this cluster");
            // Its place in the cluster stays; its data goes.
            remove_data(node.dir.path(), |name| name == "nodes.conf");
            self.restart(port);
        }
        self.wait_until_healthy(Duration::from_secs(30));
        self.allow_failover(true);
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `id ip:port@bus flags primary-id ping pong epoch link slot...`
fn parse_node_line(line: &str) -> Option<NodeInfo> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let id = (*fields.first()?).to_owned();
    let address = fields.get(1)?;
    let port = address
        .split('@')
        .next()?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()?;
    let flags = fields.get(2)?;
    let slots = fields
        .iter()
        .skip(8)
        .filter(|field| !field.starts_with('['))
        .filter_map(|field| match field.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => field.parse().ok().map(|slot| (slot, slot)),
        })
        .collect();
    Some(NodeInfo {
        id,
        port,
        primary: flags.split(',').any(|flag| flag == "master"),
        // Not `fail?` (suspected by one node only), nor `nofailover`.
        failed: flags.split(',').any(|flag| flag == "fail"),
        replica_of: fields
            .get(3)
            .filter(|id| **id != "-")
            .map(|id| (*id).to_owned()),
        slots,
    })
}

/// Starts one node; `None` if it exited at start (its port was taken).
fn spawn(port: u16, dir: &Path) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        // As the project ships its clusters: while a failed primary's slots
        // have no owner, the other shards go on serving.
        .args(["--cluster-require-full-coverage", "no"])
        .args(["--save", "", "--appendonly", "yes", "--loglevel", "warning"])
        .arg("--dir")
        .arg(dir)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is not installed (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        let pong = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(500)))
            .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn));
        if pong.is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server on port {port} did not start");
}
