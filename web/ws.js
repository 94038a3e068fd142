// The WebSocket page. Every auction tab of the browser shares one socket
// (the SharedWorker of shared-stream.js subscribes it to each tab's
// auction and routes the answers); without SharedWorker the page opens its
// own. On every close the socket reconnects with exponential backoff and
// jitter and resubscribes with the last event id, so the edge replays
// exactly what was missed. Bids go over the socket and are answered by
// `ack` or `error` with the same `ref`.
"use strict";

(() => {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/ws`;
  const pending = new Map(); // ref -> resolve
  let socket = null;
  let shared = null; // the shared connection's port, when there is one
  let open = false; // whether this page's connection (own or shared) is open
  let attempt = 0;
  let everConnected = false;
  let sequence = 0;
  let sawInit = false;
  // Whether this socket's edge takes `auth`: "pending" after sending it,
  // "yes" on `authenticated`, "unsupported" when the edge does not know the
  // message (an older edge: signed-in bids then go by HTTP with the token).
  let auth = "none";
  let authWaiters = [];

  function settleAuth(state) {
    auth = state;
    for (const wake of authWaiters) wake();
    authWaiters = [];
  }

  /** The connection is open (subscribed from our last id, or afresh). */
  function onOpen() {
    open = true;
    settleAuth("none");
    sawInit = false;
    authenticate();
    // The first connection says "Live" only when its `init` has drawn the
    // auction: until then the page shows nothing current.
    if (everConnected) {
      setTimeout(() => { if (!sawInit && open) Auction.setConnection("resumed"); }, 300);
    }
    everConnected = true;
  }

  /** The connection dropped. These bids were sent: they may have been
   *  placed. The form asks again with the same key once it is open. */
  function onClose() {
    open = false;
    for (const resolve of pending.values()) {
      resolve({ ok: false, body: { error: "bid_outcome_unknown" } });
    }
    pending.clear();
    Auction.setConnection("reconnecting");
  }

  /** One message of the edge about this page's auction or session. */
  function onMessage(message) {
    switch (message.type) {
      case "init":
        sawInit = true;
        Auction.onInit(message.payload, message.id);
        Auction.setConnection(message.payload.reset ? "reset" : "connected");
        if (message.payload.reset) setTimeout(() => Auction.setConnection("connected"), 1500);
        break;
      case "bid":
        Auction.onBid(message.payload, message.id);
        break;
      case "viewers":
        Auction.onViewers(message.count);
        break;
      case "closed":
      case "opened":
        Auction.onAuction(message.type, message.payload, message.id);
        break;
      case "extended":
        Auction.onExtended(message.payload, message.id);
        break;
      case "admin":
        Auction.onAdmin(message.payload, message.id);
        break;
      case "reinstated":
        Auction.onSuspended(false);
        break;
      case "gone":
        // The auction vanished: unless it is back, say so; if it is, watch
        // it again.
        Auction.checkExists().then((exists) => {
          if (exists && shared) setTimeout(() => shared.postMessage({ type: "watch", transport: "ws", auction: Auction.auctionId }), 2000);
        });
        break;
      case "authenticated":
        settleAuth("yes");
        break;
      case "ack":
      case "error": {
        if (message.type === "error" && !message.ref && auth === "pending" && message.error === "unknown_type") {
          settleAuth("unsupported");
          break;
        }
        const resolve = pending.get(message.ref);
        if (resolve) {
          pending.delete(message.ref);
          resolve(message.type === "ack" ? { ok: true } : { ok: false, body: message });
        } else if (message.type === "error" && message.error === "bidder_suspended") {
          Auction.onSuspended(true);
        } else if (message.type === "error" && message.error === "not_found") {
          Auction.setConnection("stopped", "no such auction");
          Auction.onNotFound();
        } else if (message.type === "error" && ["invalid_token", "token_expired"].includes(message.error)) {
          // The socket stays usable for watching; the next bid signs in again.
          settleAuth("none");
          Auction.signOut();
        }
        break;
      }
    }
  }

  /** This page's own socket (no SharedWorker). */
  function connect() {
    Auction.setConnection(everConnected ? "reconnecting" : "connecting");
    socket = new WebSocket(url);
    socket.addEventListener("open", () => {
      attempt = 0;
      const message = { type: "subscribe", auction: Auction.auctionId };
      if (Auction.lastId) message.last_id = Auction.lastId;
      socket.send(JSON.stringify(message));
      onOpen();
    });
    socket.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (_) { return; }
      onMessage(message);
    });
    socket.addEventListener("close", () => {
      onClose();
      // Exponential backoff with full jitter: 0.25 s doubling to 10 s.
      const ceiling = Math.min(10000, 250 * 2 ** attempt);
      attempt += 1;
      setTimeout(connect, Math.random() * ceiling);
    });
  }

  /** The shared socket's messages for this page. */
  function onShared(message) {
    if (message.type === "ws" && message.message) onMessage(message.message);
    else if (message.type === "state" && message.transport === "ws") {
      if (message.state === "open") onOpen();
      else if (message.state === "reconnecting") onClose();
    }
  }

  /** Sends the session's token, if any: bids on this socket are then the
   *  session's. Sent again on every new socket. */
  function authenticate() {
    const session = Auction.session;
    if (!session || !open) return;
    auth = "pending";
    if (shared) shared.postMessage({ type: "auth", token: session.token });
    else socket.send(JSON.stringify({ type: "auth", token: session.token }));
  }
  Auction.onSessionChange(authenticate);

  Auction.setupForm(async ({ amount, bidder, token, key, max }) => {
    if (token && auth === "pending") {
      // Signed in a moment ago: wait for the edge's answer to `auth`.
      await new Promise((wake) => { authWaiters.push(wake); setTimeout(wake, 3000); });
    }
    // A maximum goes to the bidder directly: the socket carries plain bids.
    if (token && (auth === "unsupported" || max)) return Auction.postBid({ amount, bidder, token, key, max });
    return bidOverSocket({ amount, bidder, token, key });
  });

  /** The bid's key goes with it (`idempotency_key`), so a retry on another
   *  socket, after a reconnect, is still the same bid. */
  const bidOverSocket = ({ amount, bidder, token, key }) => new Promise((resolve) => {
    if (!open) {
      resolve({ ok: false, body: { error: "bidder_unavailable" } });
      return;
    }
    sequence += 1;
    const ref = `b${Date.now().toString(36)}-${sequence}`;
    pending.set(ref, resolve);
    const bid = { type: "bid", auction: Auction.auctionId, amount, bidder, ref, idempotency_key: key };
    if (shared) shared.postMessage({ type: "bid", bid, token });
    else socket.send(JSON.stringify(bid));
  });

  shared = Auction.sharedConnection(onShared, () => {
    shared = null;
    connect();
  });
  if (!shared) connect();
})();
