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
//! by a task of its own, from whichever node answers first) moves only the
//! channels whose slot another primary serves now: they leave the old
//! primary's task and are subscribed, and announced, by the new one's (a
//! task starts for a new primary, and stops for a node that serves nothing
//! any more). Every other subscription stays up, its notices flowing: a
//! failover pauses only the failed primary's auctions. A node that refuses
//! a subscription with `MOVED` or drops one (its slot moved) loses its
//! connection and subscribes again with backoff, until the new map moves
//! the channel away.

use super::wire::Wire;
use super::{LiveMessage, auction_of_channel};
use crate::error::LogError;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

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

/// What the node tasks and the slot map's reader tell the connection.
enum ShardEvent {
    Message(LiveMessage),
    /// These auctions are subscribed now (first or again).
    Subscribed(Vec<auction_domain::AuctionId>),
    /// The slot map changed (a failover, a slot migrated): the new one.
    SlotMap(SlotMap),
}

enum Command {
    Watch(Vec<String>),
    Unwatch(String),
}

/// One primary's task: where to send it commands, and how to stop it.
struct NodeTask {
    commands: mpsc::UnboundedSender<Command>,
    abort: AbortHandle,
}

/// The per-primary connections. Dropping it stops every task (and closes
/// their connections).
pub(super) struct Shards {
    events: mpsc::Receiver<ShardEvent>,
    /// For the tasks of primaries that appear later (a promoted replica).
    sender: mpsc::Sender<ShardEvent>,
    access: Access,
    /// Each primary's task, by address. Commands are few (one per batch
    /// of auctions the hub starts or stops watching): unbounded.
    nodes: HashMap<Node, NodeTask>,
    slots: SlotMap,
    /// Every watched channel and the node whose task holds it.
    assigned: HashMap<String, Node>,
    tasks: JoinSet<()>,
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
        let (sender, events) = mpsc::channel(EVENT_QUEUE);
        let mut shards = Shards {
            events,
            sender,
            access,
            nodes: HashMap::new(),
            slots: Vec::new(),
            assigned: HashMap::new(),
            tasks: JoinSet::new(),
        };
        shards.start_tasks(&slots)?;
        shards.slots = slots.clone();
        // The primaries first, then the seeds: whichever answers.
        let mut ask: Vec<Node> = shards.nodes.keys().cloned().collect();
        ask.sort();
        ask.extend(
            seed_nodes
                .into_iter()
                .filter(|node| !shards.nodes.contains_key(node)),
        );
        shards.tasks.spawn(watch_topology(
            SlotReader::new(shards.access.clone(), ask),
            slots,
            shards.sender.clone(),
        ));
        Ok(shards)
    }

    /// Starts a task for each primary of `slots` that has none.
    fn start_tasks(&mut self, slots: &SlotMap) -> Result<(), LogError> {
        for (_, _, node) in slots {
            if self.nodes.contains_key(node) {
                continue;
            }
            let client = self.access.client(node)?;
            let (commands, received) = mpsc::unbounded_channel();
            let abort =
                self.tasks
                    .spawn(shard(node.clone(), client, received, self.sender.clone()));
            self.nodes
                .insert(node.clone(), NodeTask { commands, abort });
        }
        Ok(())
    }

    /// The primary serving `channel`'s slot in the current map.
    fn primary_of(&self, channel: &str) -> Option<&Node> {
        let slot = key_slot(channel.as_bytes());
        let index = self.slots.partition_point(|(_, end, _)| *end < slot);
        let (start, _, node) = self.slots.get(index)?;
        (*start <= slot).then_some(node)
    }

    /// Hands each channel to its primary's task; returns at once (each
    /// subscription is announced by [`LiveMessage::Subscribed`]).
    pub(super) fn watch(&mut self, channels: Vec<String>) -> Result<(), LogError> {
        let mut by_node: HashMap<Node, Vec<String>> = HashMap::new();
        for channel in channels {
            let Some(node) = self.primary_of(&channel) else {
                // A slot no primary serves: the map is partial (the cluster
                // is not fully formed). Start over later with a fresh map.
                let slot = key_slot(channel.as_bytes());
                return Err(LogError::Unavailable(format!(
                    "no primary serves slot {slot}"
                )));
            };
            by_node.entry(node.clone()).or_default().push(channel);
        }
        for (node, channels) in by_node {
            for channel in &channels {
                self.assigned.insert(channel.clone(), node.clone());
            }
            self.send(&node, Command::Watch(channels))?;
        }
        Ok(())
    }

    pub(super) fn unwatch(&mut self, channel: String) -> Result<(), LogError> {
        match self.assigned.remove(&channel) {
            Some(node) => self.send(&node, Command::Unwatch(channel)),
            None => Ok(()),
        }
    }

    fn send(&self, node: &Node, command: Command) -> Result<(), LogError> {
        let sent = self
            .nodes
            .get(node)
            .is_some_and(|task| task.commands.send(command).is_ok());
        if sent {
            Ok(())
        } else {
            Err(LogError::Unavailable(format!(
                "the live connection to {node} ended"
            )))
        }
    }

    /// Follows a new slot map: only the channels whose slot is served by
    /// another primary now move (unsubscribed from the old one's task,
    /// subscribed by the new one's, and announced again once made); every
    /// other subscription stays as it is, its notices flowing. Tasks start
    /// for new primaries and stop for nodes that serve nothing any more. A
    /// channel whose slot no primary serves in the new map stays where it
    /// is until one does.
    fn follow(&mut self, slots: SlotMap) -> Result<(), LogError> {
        self.start_tasks(&slots)?;
        self.slots = slots;
        let mut moved: HashMap<Node, Vec<String>> = HashMap::new();
        let mut left: Vec<(Node, String)> = Vec::new();
        for (channel, holder) in &self.assigned {
            if let Some(primary) = self.primary_of(channel)
                && primary != holder
            {
                moved
                    .entry(primary.clone())
                    .or_default()
                    .push(channel.clone());
                left.push((holder.clone(), channel.clone()));
            }
        }
        for (holder, channel) in left {
            // The old holder may be dead: it is stopped below if it serves
            // nothing now, and otherwise forgets the channel.
            if let Some(task) = self.nodes.get(&holder) {
                let _ = task.commands.send(Command::Unwatch(channel));
            }
        }
        let count: usize = moved.values().map(Vec::len).sum();
        for (node, channels) in moved {
            for channel in &channels {
                self.assigned.insert(channel.clone(), node.clone());
            }
            self.send(&node, Command::Watch(channels))?;
        }
        let serving: HashSet<&Node> = self
            .slots
            .iter()
            .map(|(_, _, node)| node)
            .chain(self.assigned.values())
            .collect();
        let stopped: Vec<Node> = self
            .nodes
            .keys()
            .filter(|node| !serving.contains(node))
            .cloned()
            .collect();
        for node in &stopped {
            if let Some(task) = self.nodes.remove(node) {
                task.abort.abort();
            }
        }
        // Reap the tasks that ended (the ones just stopped, on a later map).
        while self.tasks.try_join_next().is_some() {}
        tracing::warn!(
            moved = count,
            stayed = self.assigned.len() - count,
            stopped = ?stopped.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "the cluster's slot map changed; only the auctions whose primary changed subscribe again"
        );
        Ok(())
    }

    /// The next message; `None` once the connection has ended (a new
    /// primary's task could not be set up). Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<LiveMessage> {
        loop {
            match self.events.recv().await? {
                ShardEvent::Message(message) => return Some(message),
                ShardEvent::Subscribed(auctions) => {
                    return Some(LiveMessage::Subscribed { auctions });
                }
                ShardEvent::SlotMap(slots) => {
                    if let Err(error) = self.follow(slots) {
                        tracing::warn!(%error, "cannot follow the cluster's new slot map; the live connection starts over");
                        return None;
                    }
                }
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

/// Reads the slot map every second and hands on each map that differs
/// from the last one handed on. A node that does not answer is skipped
/// (the next is asked); when none answers, the node tasks notice on their
/// own.
async fn watch_topology(mut reader: SlotReader, opened: SlotMap, events: mpsc::Sender<ShardEvent>) {
    let mut current = opened;
    let mut tick = tokio::time::interval(TOPOLOGY_INTERVAL);
    tick.reset();
    loop {
        tick.tick().await;
        if let Some(map) = reader.read().await
            && map != current
        {
            current = map.clone();
            if events.send(ShardEvent::SlotMap(map)).await.is_err() {
                return;
            }
        }
    }
}

/// Why a node's connection stopped.
enum Lost {
    /// Reconnect and subscribe again. A subscription refused with `MOVED`
    /// (its slot moved) is retried so too, until the slot map's reader
    /// sees the move and hands the channel to its new primary's task.
    Again(String),
    /// The connection is gone (the hub stopped listening): the task ends.
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
            Ok(Err(error)) => Lost::Again(error.to_string()),
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
                        Ok(Err(error)) => return Lost::Again(error.to_string()),
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
