//! The live path on a Redis Cluster: one sharded-subscription connection
//! per primary, each on a task of its own, so a node that freezes, drops
//! off the network or fails holds up only the auctions in its slots.
//!
//! At open, the slot map is read (`CLUSTER SLOTS`, from the first node that
//! answers) and one task starts per primary. Each task owns the channels of
//! its slots: it subscribes them (`SSUBSCRIBE`, one per channel, sent at
//! once), forwards their notices, pings its node every second, and when the
//! node does not answer within its deadline (or the connection ends) it
//! connects again, with backoff, and subscribes everything it owns again.
//! Every subscription it makes (first or again) is announced as
//! [`LiveMessage::Subscribed`]: the hub then brings those auctions' feeds in
//! line with their streams (notices sent meanwhile are gone). The other
//! tasks go on meanwhile.
//!
//! A change of the slot map (a failover, a slot migrated; read every second
//! by a task of its own, from whichever node answers first) or a node that
//! refuses a subscription with `MOVED` or drops one (its slot moved) ends
//! the whole live connection: the hub opens a new one over the new map and
//! backfills every feed, the one recovery path proven by the prev-id chain.

use super::wire::Wire;
use super::{LiveMessage, auction_of_channel};
use crate::error::LogError;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Connecting (and `AUTH`), one batch of subscriptions, or one ping: a
/// node that takes longer counts as lost, and only its auctions wait.
const NODE_DEADLINE: Duration = Duration::from_millis(1000);
/// How often each node is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How often the slot map is read.
const TOPOLOGY_INTERVAL: Duration = Duration::from_secs(1);
/// How long one node may take to answer `CLUSTER SLOTS` before the next
/// is asked.
const TOPOLOGY_DEADLINE: Duration = Duration::from_millis(500);
/// Messages (notices, announcements) the node tasks queue for the hub.
/// Past it a task waits (its socket buffers): nothing is dropped.
const EVENT_QUEUE: usize = 4096;
/// Longest wait between two connection attempts to one node.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where a primary listens.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Node {
    host: String,
    port: u16,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Slot ranges (inclusive) and the primary serving each, sorted.
pub(crate) type SlotMap = Vec<(u16, u16, Node)>;

/// What a node task tells the connection.
enum ShardEvent {
    Message(LiveMessage),
    /// These auctions are subscribed now (first or again).
    Subscribed(Vec<auction_domain::AuctionId>),
    /// The slot map is not the one the connection opened with.
    Moved(String),
}

enum Command {
    Watch(Vec<String>),
    Unwatch(String),
}

/// The per-primary connections. Dropping it stops every task (and closes
/// their connections).
pub(super) struct Shards {
    events: mpsc::Receiver<ShardEvent>,
    /// Each primary's task, by address. Commands are few (one per batch
    /// of auctions the hub starts or stops watching): unbounded.
    nodes: HashMap<Node, mpsc::UnboundedSender<Command>>,
    slots: SlotMap,
    _tasks: JoinSet<()>,
}

/// How to reach a node: `redis://[userinfo@]` in front of its address.
#[derive(Clone)]
struct Access {
    userinfo: String,
}

impl Access {
    fn client(&self, node: &Node) -> Result<Client, LogError> {
        Client::open(format!(
            "redis://{}{}:{}",
            self.userinfo, node.host, node.port
        ))
        .map_err(|error| LogError::Unavailable(format!("cluster node {node}: {error}")))
    }
}

impl Shards {
    /// Reads the slot map and starts one task per primary (subscribed to
    /// nothing yet). Fails only when no seed node answers.
    pub(super) async fn open(seeds: &[String]) -> Result<Shards, LogError> {
        let (access, seed_nodes) = parse_seeds(seeds)?;
        let mut asked = SlotReader::new(access.clone(), seed_nodes.clone());
        let slots = asked.read().await.ok_or_else(|| {
            LogError::Unavailable("no cluster node answered CLUSTER SLOTS".into())
        })?;
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let mut tasks = JoinSet::new();
        let mut nodes = HashMap::new();
        for (_, _, node) in &slots {
            if nodes.contains_key(node) {
                continue;
            }
            let client = access.client(node)?;
            let (commands, received) = mpsc::unbounded_channel();
            tasks.spawn(shard(node.clone(), client, received, tx.clone()));
            nodes.insert(node.clone(), commands);
        }
        // The primaries first, then the seeds: whichever answers.
        let mut ask: Vec<Node> = nodes.keys().cloned().collect();
        ask.sort();
        ask.extend(
            seed_nodes
                .into_iter()
                .filter(|node| !nodes.contains_key(node)),
        );
        tasks.spawn(watch_topology(
            SlotReader::new(access, ask),
            slots.clone(),
            tx,
        ));
        Ok(Shards {
            events,
            nodes,
            slots,
            _tasks: tasks,
        })
    }

    /// The task of the primary serving `channel`'s slot.
    fn owner(&self, channel: &str) -> Option<&mpsc::UnboundedSender<Command>> {
        let slot = key_slot(channel.as_bytes());
        let index = self.slots.partition_point(|(_, end, _)| *end < slot);
        let (start, _, node) = self.slots.get(index)?;
        (*start <= slot).then(|| self.nodes.get(node))?
    }

    /// Hands each channel to its primary's task; returns at once (each
    /// subscription is announced by [`LiveMessage::Subscribed`]).
    pub(super) fn watch(&mut self, channels: Vec<String>) -> Result<(), LogError> {
        let mut by_node: HashMap<Node, Vec<String>> = HashMap::new();
        for channel in channels {
            let slot = key_slot(channel.as_bytes());
            let index = self.slots.partition_point(|(_, end, _)| *end < slot);
            match self.slots.get(index) {
                Some((start, _, node)) if *start <= slot => {
                    by_node.entry(node.clone()).or_default().push(channel);
                }
                // A slot no primary serves: the map is partial (the cluster
                // is not fully formed). Start over later with a fresh map.
                _ => {
                    return Err(LogError::Unavailable(format!(
                        "no primary serves slot {slot}"
                    )));
                }
            }
        }
        for (node, channels) in by_node {
            let sent = self
                .nodes
                .get(&node)
                .is_some_and(|task| task.send(Command::Watch(channels)).is_ok());
            if !sent {
                return Err(LogError::Unavailable(format!(
                    "the live connection to {node} ended"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn unwatch(&mut self, channel: String) -> Result<(), LogError> {
        match self.owner(&channel) {
            Some(task) if task.send(Command::Unwatch(channel)).is_ok() => Ok(()),
            _ => Err(LogError::Unavailable(
                "a cluster node's live connection ended".into(),
            )),
        }
    }

    /// The next message; `None` once the connection has ended (the slot
    /// map changed). Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<LiveMessage> {
        match self.events.recv().await? {
            ShardEvent::Message(message) => Some(message),
            ShardEvent::Subscribed(auctions) => Some(LiveMessage::Subscribed { auctions }),
            ShardEvent::Moved(why) => {
                tracing::warn!(
                    why,
                    "the cluster's slot map changed; the live connection starts over"
                );
                None
            }
        }
    }
}

/// The seeds' credentials (the same in each) and addresses.
fn parse_seeds(seeds: &[String]) -> Result<(Access, Vec<Node>), LogError> {
    let mut userinfo = String::new();
    let mut nodes = Vec::new();
    for seed in seeds {
        let rest = seed.strip_prefix("redis://").unwrap_or(seed);
        let (info, address) = match rest.rsplit_once('@') {
            Some((info, address)) => (format!("{info}@"), address),
            None => (String::new(), rest),
        };
        let parsed = address
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
        let Some((host, port)) = parsed else {
            return Err(LogError::Unavailable(
                "a cluster seed is not host:port".into(),
            ));
        };
        userinfo = info;
        nodes.push(Node {
            host: host.to_owned(),
            port,
        });
    }
    Ok((Access { userinfo }, nodes))
}

/// Reads the slot map from the first node of a list that answers, asking
/// the one that answered last time first.
pub(crate) struct SlotReader {
    access: Access,
    nodes: Vec<Node>,
    connections: HashMap<Node, MultiplexedConnection>,
    first: usize,
}

impl SlotReader {
    /// A reader asking the seed nodes of a cluster URL.
    pub(crate) fn of_seeds(seeds: &[String]) -> Result<SlotReader, LogError> {
        let (access, nodes) = parse_seeds(seeds)?;
        Ok(SlotReader::new(access, nodes))
    }

    fn new(access: Access, nodes: Vec<Node>) -> SlotReader {
        SlotReader {
            access,
            nodes,
            connections: HashMap::new(),
            first: 0,
        }
    }

    /// `None`: no node answered in time.
    pub(crate) async fn read(&mut self) -> Option<SlotMap> {
        for offset in 0..self.nodes.len() {
            let index = (self.first + offset) % self.nodes.len();
            let node = self.nodes[index].clone();
            match tokio::time::timeout(TOPOLOGY_DEADLINE, self.read_from(&node)).await {
                Ok(Ok(map)) => {
                    self.first = index;
                    return Some(map);
                }
                Ok(Err(error)) => {
                    tracing::debug!(%node, %error, "CLUSTER SLOTS failed");
                    self.connections.remove(&node);
                }
                Err(_) => {
                    tracing::debug!(%node, "CLUSTER SLOTS timed out");
                    self.connections.remove(&node);
                }
            }
        }
        None
    }

    async fn read_from(&mut self, node: &Node) -> Result<SlotMap, LogError> {
        let conn = match self.connections.get(node) {
            Some(conn) => conn.clone(),
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(TOPOLOGY_DEADLINE))
                    .set_response_timeout(Some(TOPOLOGY_DEADLINE));
                let conn = self
                    .access
                    .client(node)?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                self.connections.insert(node.clone(), conn.clone());
                conn
            }
        };
        let mut conn = conn;
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        parse_slots(reply, node)
    }
}

/// `CLUSTER SLOTS` as a sorted map: `[start, end, [host, port, ...], replicas...]`
/// per range. An empty host (`""` or `?`) is the node asked.
fn parse_slots(reply: Value, asked: &Node) -> Result<SlotMap, LogError> {
    let corrupt = |what: &Value| LogError::Corrupt(format!("CLUSTER SLOTS answered {what:?}"));
    let Value::Array(ranges) = &reply else {
        return Err(corrupt(&reply));
    };
    let mut map = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(corrupt(range));
        };
        let [
            Value::Int(start),
            Value::Int(end),
            Value::Array(primary),
            ..,
        ] = fields.as_slice()
        else {
            return Err(corrupt(range));
        };
        let host = match primary.first() {
            Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            Some(Value::SimpleString(host)) => host.clone(),
            _ => return Err(corrupt(range)),
        };
        let host = if host.is_empty() || host == "?" {
            asked.host.clone()
        } else {
            host
        };
        let (Ok(start), Ok(end), Some(Value::Int(port))) =
            (u16::try_from(*start), u16::try_from(*end), primary.get(1))
        else {
            return Err(corrupt(range));
        };
        let Ok(port) = u16::try_from(*port) else {
            return Err(corrupt(range));
        };
        map.push((start, end, Node { host, port }));
    }
    map.sort();
    Ok(map)
}

/// Reads the slot map every second; a map that differs from the one the
/// connection opened with ends it. A node that does not answer is
/// skipped (the next is asked); when none answers, the node tasks notice
/// on their own.
async fn watch_topology(mut reader: SlotReader, opened: SlotMap, events: mpsc::Sender<ShardEvent>) {
    let mut tick = tokio::time::interval(TOPOLOGY_INTERVAL);
    tick.reset();
    loop {
        tick.tick().await;
        if let Some(map) = reader.read().await
            && map != opened
        {
            let _ = events
                .send(ShardEvent::Moved("the cluster's slot map changed".into()))
                .await;
            return;
        }
    }
}

/// Why a node's connection stopped.
enum Lost {
    /// Reconnect and subscribe again.
    Again(String),
    /// The node refused a subscription with `MOVED`/`ASK` (the slot is
    /// elsewhere now) or the connection is gone: the task ends.
    Done,
}

/// One primary's task: its connection, its channels, its reconnects.
async fn shard(
    node: Node,
    client: Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<ShardEvent>,
) {
    let info = client.get_connection_info().clone();
    let (username, password) = (
        info.redis_settings().username().map(str::to_owned),
        info.redis_settings().password().map(str::to_owned),
    );
    let mut channels: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        // What the hub asked while there was no connection.
        loop {
            match commands.try_recv() {
                Ok(Command::Watch(new)) => channels.extend(new),
                Ok(Command::Unwatch(channel)) => {
                    channels.remove(&channel);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        let owned: Vec<String> = channels.iter().cloned().collect();
        let connect = async {
            let mut wire = Wire::connect(
                &node.host,
                node.port,
                username.as_deref(),
                password.as_deref(),
            )
            .await?;
            subscribe(&mut wire, &owned).await?;
            Ok::<Wire, LogError>(wire)
        };
        let lost = match tokio::time::timeout(NODE_DEADLINE, connect).await {
            Ok(Ok(wire)) => {
                let up_at = Instant::now();
                let lost = serve(wire, &node, owned, &mut channels, &mut commands, &events).await;
                if up_at.elapsed() >= MAX_BACKOFF {
                    backoff = Duration::from_millis(50);
                }
                lost
            }
            Ok(Err(error)) => refused(&error, &events)
                .await
                .unwrap_or(Lost::Again(error.to_string())),
            Err(_) => Lost::Again(format!("no answer within {NODE_DEADLINE:?}")),
        };
        let why = match lost {
            Lost::Done => return,
            Lost::Again(why) => why,
        };
        tracing::warn!(
            %node,
            error = %why,
            auctions = channels.len(),
            "a cluster node's live connection was lost; its auctions resubscribe when it answers"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A subscription refused with `MOVED` or `ASK`: the slot map changed
/// (the connection ends); `None` for any other failure.
async fn refused(error: &LogError, events: &mpsc::Sender<ShardEvent>) -> Option<Lost> {
    let LogError::Unavailable(message) = error else {
        return None;
    };
    if !(message.starts_with("MOVED") || message.starts_with("ASK")) {
        return None;
    }
    let _ = events
        .send(ShardEvent::Moved(format!(
            "a subscription was refused: {message}"
        )))
        .await;
    Some(Lost::Done)
}

/// `SSUBSCRIBE` each channel (one command each, sent at once).
async fn subscribe(wire: &mut Wire, channels: &[String]) -> Result<(), LogError> {
    if channels.is_empty() {
        return Ok(());
    }
    let commands: Vec<Vec<&[u8]>> = channels
        .iter()
        .map(|channel| vec![&b"SSUBSCRIBE"[..], channel.as_bytes()])
        .collect();
    wire.call_each(&commands).await
}

fn auctions_of(channels: &[String]) -> Vec<auction_domain::AuctionId> {
    channels
        .iter()
        .filter_map(|channel| auction_of_channel(channel))
        .collect()
}

/// Runs one connection until it is lost: forwards notices, subscribes and
/// unsubscribes as the hub asks, pings the node.
async fn serve(
    mut wire: Wire,
    node: &Node,
    subscribed: Vec<String>,
    channels: &mut HashSet<String>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::Sender<ShardEvent>,
) -> Lost {
    if !subscribed.is_empty() {
        tracing::info!(%node, auctions = subscribed.len(), "subscribed to a cluster node's notices");
        let announce = ShardEvent::Subscribed(auctions_of(&subscribed));
        if events.send(announce).await.is_err() {
            return Lost::Done;
        }
    }
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.reset();
    loop {
        tokio::select! {
            message = wire.next() => match message {
                Some(message) => {
                    if events.send(ShardEvent::Message(message)).await.is_err() {
                        return Lost::Done;
                    }
                }
                None => return Lost::Again("the connection ended".into()),
            },
            command = commands.recv() => match command {
                None => return Lost::Done,
                Some(Command::Watch(new)) => {
                    let new: Vec<String> = new
                        .into_iter()
                        .filter(|channel| channels.insert(channel.clone()))
                        .collect();
                    match tokio::time::timeout(NODE_DEADLINE, subscribe(&mut wire, &new)).await {
                        Ok(Ok(())) => {
                            let announce = ShardEvent::Subscribed(auctions_of(&new));
                            if events.send(announce).await.is_err() {
                                return Lost::Done;
                            }
                        }
                        Ok(Err(error)) => {
                            return refused(&error, events)
                                .await
                                .unwrap_or(Lost::Again(error.to_string()));
                        }
                        Err(_) => {
                            return Lost::Again(format!(
                                "a subscription had no answer within {NODE_DEADLINE:?}"
                            ));
                        }
                    }
                }
                Some(Command::Unwatch(channel)) => {
                    if channels.remove(&channel) {
                        let args: [&[u8]; 2] = [b"SUNSUBSCRIBE", channel.as_bytes()];
                        let call = wire.call(&args, 1);
                        match tokio::time::timeout(NODE_DEADLINE, call).await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => return Lost::Again(error.to_string()),
                            Err(_) => return Lost::Again("an unsubscription had no answer".into()),
                        }
                    }
                }
            },
            _ = ping.tick() => {
                match tokio::time::timeout(NODE_DEADLINE, wire.call(&[b"PING"], 1)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Lost::Again(error.to_string()),
                    Err(_) => {
                        return Lost::Again(format!("no answer to a ping within {NODE_DEADLINE:?}"));
                    }
                }
            }
        }
    }
}

/// The cluster slot of a key: CRC16 (XMODEM) of the key, or of its hash
/// tag (the part between the first `{` and the next `}`, when not empty),
/// modulo 16384.
fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_are_the_clusters() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"auction:{a-1}:live"), key_slot(b"a-1"));
        assert_eq!(key_slot(b"x{}y"), crc16(b"x{}y") % 16384);
    }
}
