//! `GET /ws` as the edge's fast path: what every socket of the replica
//! shares, and the life of one socket (admit, upgrade, session).

use crate::bids::BidForwarder;
use crate::codec::WsCodec;
use crate::pings::PingTicks;
use crate::session::Session;
use crate::upgrade::upgrade;
use fanout::Delivery;
use identity::Authenticator;
use service_kit::client_address::ClientAddress;
use service_kit::demo::{DemoControls, linger_zero};
use service_kit::edge::EventSocket;
use service_kit::rate::Rate;
use service_kit::{ConnectionGate, FastPath, RequestHead, refusal};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub struct WsEndpoint {
    pub delivery: Delivery<WsCodec>,
    pub gate: ConnectionGate,
    pub bids: BidForwarder,
    /// Checks `auth` messages' tokens (the bidder checks them again on
    /// every bid).
    pub auth: Authenticator,
    /// Whose socket it is: for the gate's cap per client address, and the
    /// address its bids are forwarded with.
    pub clients: ClientAddress,
    pub max_message: usize,
    /// When each socket pings its peer (see [`PingTicks`]).
    pub ping_ticks: PingTicks,
    /// The interval of those ticks: a peer has this long to answer a ping.
    pub ping_interval: Duration,
    /// Allowed `Origin` values; empty allows every origin.
    pub allowed_origins: Vec<String>,
    pub max_subscriptions: usize,
    /// Client messages per socket.
    pub message_rate: Rate,
    /// How each socket is set up once upgraded.
    pub event_socket: EventSocket,
    /// permessage-deflate is negotiated with the clients that offer it
    /// (`AUCTION_WS_COMPRESSION`).
    pub compression: bool,
    /// The sockets of each authenticated bidder, to tell them of a
    /// suspension.
    pub suspensions: Arc<crate::suspensions::Suspensions>,
    pub shutdown: CancellationToken,
    /// `AUCTION_DEMO_CONTROLS`: sockets opened with `demo=<client>`.
    pub demo: Arc<DemoControls>,
}

impl FastPath for WsEndpoint {
    fn claims(&self, head: &RequestHead) -> bool {
        head.method == "GET" && head.path() == "/ws"
    }

    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        head: RequestHead,
    ) -> impl Future<Output = ()> + Send {
        // Boxed: what the future captures it keeps for the socket's whole
        // life, and the head is needed only for the upgrade.
        let client = self.clients.of_stream(&stream, &head);
        // Boxed: most sockets have none, and each keeps this for its life.
        let demo = self
            .demo
            .register(head.query_param("demo"), &self.shutdown)
            .map(Box::new);
        let head = Box::new(head);
        async move {
            let _admission = match self.gate.admit(client) {
                Ok(admission) => admission,
                Err(refused) => return refusal::refuse(stream, &refused.response()).await,
            };
            // Boxed: the handshake is done once, and inline its state
            // would size the socket's task for the socket's whole life.
            let Some(upgraded) = Box::pin(upgrade(&self, stream, *head, client)).await else {
                return;
            };
            // A demo drain ends the socket as the replica's drain does
            // (close 1012); a demo reset ends it with a RST.
            let shutdown = match &demo {
                Some(demo) => demo.end.drain.clone(),
                None => self.shutdown.clone(),
            };
            let mut session = Session::new(&self, upgraded, shutdown);
            let Some(demo) = demo else {
                return session.run().await;
            };
            let reset = Box::pin(async {
                tokio::select! {
                    _ = session.run() => false,
                    _ = demo.end.reset.cancelled() => true,
                }
            })
            .await;
            if reset {
                linger_zero(session.raw());
            }
        }
    }
}
