// The WebSocket page: one socket, one subscription. On every close it
// reconnects with exponential backoff and jitter and resubscribes with the
// last event id, so the edge replays exactly what was missed. Bids go over
// the socket and are answered by `ack` or `error` with the same `ref`.
"use strict";

(() => {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/ws`;
  const pending = new Map(); // ref -> resolve
  let socket = null;
  let attempt = 0;
  let everConnected = false;
  let sequence = 0;
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

  function connect() {
    Auction.setConnection(everConnected ? "reconnecting" : "connecting");
    socket = new WebSocket(url);
    settleAuth("none");
    let sawInit = false;
    socket.addEventListener("open", () => {
      attempt = 0;
      authenticate();
      const message = { type: "subscribe", auction: Auction.auctionId };
      if (Auction.lastId) message.last_id = Auction.lastId;
      socket.send(JSON.stringify(message));
      // The first connection says "Live" only when its `init` has drawn the
      // auction: until then the page shows nothing current.
      if (everConnected) {
        setTimeout(() => { if (!sawInit && socket.readyState === WebSocket.OPEN) Auction.setConnection("resumed"); }, 300);
      }
      everConnected = true;
    });
    socket.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (_) { return; }
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
    });
    socket.addEventListener("close", () => {
      // These bids were sent: they may have been placed. The form asks
      // again with the same key once a socket is open.
      for (const resolve of pending.values()) {
        resolve({ ok: false, body: { error: "bid_outcome_unknown" } });
      }
      pending.clear();
      // Exponential backoff with full jitter: 0.25 s doubling to 10 s.
      const ceiling = Math.min(10000, 250 * 2 ** attempt);
      attempt += 1;
      Auction.setConnection("reconnecting");
      setTimeout(connect, Math.random() * ceiling);
    });
  }

  /** Sends the session's token, if any: bids on this socket are then the
   *  session's. Sent again on every new socket. */
  function authenticate() {
    const session = Auction.session;
    if (session && socket && socket.readyState === WebSocket.OPEN) {
      auth = "pending";
      socket.send(JSON.stringify({ type: "auth", token: session.token }));
    }
  }
  Auction.onSessionChange(authenticate);

  Auction.setupForm(async ({ amount, bidder, token, key }) => {
    if (token && auth === "pending") {
      // Signed in a moment ago: wait for the edge's answer to `auth`.
      await new Promise((wake) => { authWaiters.push(wake); setTimeout(wake, 3000); });
    }
    if (token && auth === "unsupported") return Auction.postBid({ amount, bidder, token, key });
    return bidOverSocket({ amount, bidder, key });
  });

  /** The bid's key goes with it (`idempotency_key`), so a retry on another
   *  socket, after a reconnect, is still the same bid. */
  const bidOverSocket = ({ amount, bidder, key }) => new Promise((resolve) => {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      resolve({ ok: false, body: { error: "bidder_unavailable" } });
      return;
    }
    sequence += 1;
    const ref = `b${Date.now().toString(36)}-${sequence}`;
    pending.set(ref, resolve);
    socket.send(JSON.stringify({ type: "bid", auction: Auction.auctionId, amount, bidder, ref, idempotency_key: key }));
  });

  connect();
})();
