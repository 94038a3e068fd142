// The auction page's connection, for both transports, through the auction
// client library (auction-client.js): the SSE page watches over
// Server-Sent Events and bids by HTTP POST; the WebSocket page uses the
// library's "auto" transport: a WebSocket (bids over it), or Server-Sent
// Events and HTTP POST where a proxy refuses WebSockets, and a WebSocket
// again later. Every auction tab of the browser shares one connection per
// transport (the SharedWorker of shared-stream.js, which holds the
// library's client); without SharedWorker the page holds its own client.
// The library resumes after every drop and drops repeats; the page shows.
import { AuctionClient } from "./auction-client.js";

/** Runs the page (`Auction` of common.js) over `kind`, "sse" or "ws". */
export function start(kind) {
  const mode = kind === "ws" ? "auto" : "sse";
  const auctionId = Auction.auctionId;
  // Signs in and, without the shared worker, watches and bids.
  const local = new AuctionClient({ transport: mode, bidderUrl: Auction.config.bidderUrl || "" });
  let connection = null; // {watch, unwatch, bid, setToken}
  let everConnected = false;
  let open = false;
  let sawInit = false;
  let transport = kind;

  function onState({ state, transport: now }) {
    if (now) transport = now;
    if (state === "open") {
      open = true;
      sawInit = false;
      // The first connection says "Live" only when its `init` has drawn the
      // auction; after a reconnect, no `init` means it resumed from our id.
      if (everConnected) {
        setTimeout(() => { if (!sawInit && open) Auction.setConnection("resumed", null, transport); }, 300);
      }
      everConnected = true;
    } else if (state === "connecting" || state === "reconnecting") {
      open = false;
      Auction.setConnection(everConnected ? "reconnecting" : "connecting", null, transport);
    } else if (state === "stopped") {
      // Refused; the client asks again after a pause. If this auction does
      // not exist, the page says so and stops watching it; "retrying" is
      // said only of an auction that is retried.
      open = false;
      Auction.setConnection("stopped", null, transport);
      Auction.checkExists().then((exists) => {
        if (!exists) connection.unwatch(auctionId);
        else if (!open) Auction.setConnection("stopped", "retrying shortly", transport);
      });
    }
  }

  function onEvent({ type, data, id, transport: over }) {
    if (over) transport = over;
    switch (type) {
      case "init":
        sawInit = true;
        Auction.onInit(data, id);
        Auction.setConnection(data.reset ? "reset" : "connected", null, transport);
        if (data.reset) setTimeout(() => Auction.setConnection("connected", null, transport), 1500);
        break;
      case "bid":
        Auction.onBid(data, id);
        break;
      case "viewers":
        Auction.onViewers(data.count);
        break;
      case "closed":
      case "opened":
        Auction.onAuction(type, data, id);
        break;
      case "extended":
        Auction.onExtended(data, id);
        break;
      case "admin":
        Auction.onAdmin(data, id);
        break;
      case "gone":
        // The auction vanished: unless it is back, say so; if it is, watch
        // it again.
        Auction.checkExists().then((exists) => {
          if (exists) setTimeout(() => connection.watch(auctionId), 2000);
        });
        break;
    }
  }

  function onRefused() {
    Auction.onNotFound();
  }

  function onSession(session) {
    // A refused token: the socket stays usable for watching; the next bid
    // signs in again.
    if (session && session.refused) Auction.signOut();
    if (session && typeof session.suspended === "boolean") Auction.onSuspended(session.suspended);
  }

  /** This page's own client (no SharedWorker, or it failed). */
  function alone() {
    local.on("state", onState);
    local.on("event", onEvent);
    local.on("refused", onRefused);
    local.on("session", onSession);
    if (Auction.session) local.setToken(Auction.session.token);
    connection = {
      watch: (auction) => local.watch(auction, { lastId: Auction.lastId }),
      unwatch: (auction) => local.unwatch(auction),
      bid: (auction, request, options) => local.bid(auction, request, options),
      setToken: (token) => local.setToken(token),
    };
    connection.watch(auctionId);
  }

  /** The shared worker's client, through its port. */
  function sharedClient(port) {
    const bids = new Map(); // id -> {resolve, onRetry}
    let sequence = 0;
    return {
      port,
      onMessage(message) {
        switch (message.type) {
          case "state": onState(message); break;
          case "event": onEvent(message.event); break;
          case "refused": onRefused(); break;
          case "session": onSession(message.session); break;
          case "retry": bids.get(message.id)?.onRetry?.(); break;
          case "bid": {
            const bid = bids.get(message.id);
            bids.delete(message.id);
            if (bid) bid.resolve(message.result);
            break;
          }
        }
      },
      watch: () => port.postMessage({ type: "watch", transport: kind, auction: auctionId }),
      unwatch: () => port.postMessage({ type: "unwatch" }),
      setToken: (token) => port.postMessage({ type: "token", token }),
      bid: (auction, request, { key, token, bidder, onRetry } = {}) => new Promise((resolve) => {
        sequence += 1;
        bids.set(sequence, { resolve, onRetry });
        port.postMessage({ type: "bid", id: sequence, auction, request, key, token, bidder, bidderUrl: Auction.config.bidderUrl });
      }),
    };
  }

  Auction.useClient(local);
  Auction.onSessionChange((session) => { if (connection) connection.setToken(session ? session.token : null); });
  // Bids by HTTP (the SSE page's) go from the page itself, on its own
  // connection to the bidder; the WebSocket page's through its connection.
  Auction.setupForm(({ amount, bidder, token, key, max }, onRetry) =>
    (kind === "sse" ? local : connection).bid(auctionId, max ? { max_amount: amount } : { amount }, { key: key || undefined, token, bidder, onRetry }));

  let viaWorker = null;
  const port = Auction.sharedConnection((message) => viaWorker && viaWorker.onMessage(message), () => {
    viaWorker = null;
    alone();
  });
  if (port) {
    viaWorker = sharedClient(port);
    connection = viaWorker;
    if (Auction.session) connection.setToken(Auction.session.token);
  } else {
    alone();
  }
}
