// The origin's one connection per transport, shared by every auction page
// of the browser (a SharedWorker). A browser allows six HTTP/1.1
// connections per origin and an EventSource holds one: without this, a
// seventh auction tab never loads. Here every tab's auction goes on ONE
// SSE stream (`/events?auctions=...`) and ONE WebSocket, and each tab gets
// the events of its own auction, as from a connection of its own.
//
// Tabs post: {type: "watch", transport, auction}, {type: "unwatch"},
// {type: "leave"} (pagehide), and for the WebSocket {type: "auth", token}
// and {type: "bid", bid, token}. The worker posts: {type: "alone"} (no room
// for another auction: the tab connects by itself), {type: "state",
// transport, state} ("connecting", "open", "reconnecting", "stopped"),
// {type: "sse", kind, data, id} (the event's data text and the auction's
// own id, `<ms>-<seq>`, decoded from the stream's id) and {type: "ws",
// message} (the edge's message; `ack`/`error` with the tab's own `ref`).
"use strict";

/** port -> {transport, auction}: what each tab watches. */
const tabs = new Map();

/** One transport's audience: auction -> Map(port -> ready), a port being
 *  ready once it has had the auction's `init` (until then it gets nothing
 *  else of it). */
function Audience() {
  const byAuction = new Map();
  return {
    byAuction,
    add(auction, port) {
      if (!byAuction.has(auction)) byAuction.set(auction, new Map());
      byAuction.get(auction).set(port, false);
    },
    remove(auction, port) {
      const ports = byAuction.get(auction);
      if (!ports) return;
      ports.delete(port);
      if (ports.size === 0) byAuction.delete(auction);
    },
    /** Whether a port of `auction` still waits for its `init`. */
    waiting(auction) {
      const ports = byAuction.get(auction);
      return Boolean(ports) && [...ports.values()].some((ready) => !ready);
    },
    /** Posts `message` to the ports of `auction`: an `init` to all (and
     *  they are ready), anything else to the ready ones. */
    deliver(auction, message, isInit) {
      const ports = byAuction.get(auction);
      if (!ports) return;
      for (const [port, ready] of ports) {
        if (isInit) ports.set(port, true);
        else if (!ready) continue;
        port.postMessage(message);
      }
    },
    ports() {
      const all = new Set();
      for (const ports of byAuction.values()) for (const port of ports.keys()) all.add(port);
      return all;
    },
  };
}

/** A base-36 number, exactly (a BigInt). */
function base36(text) {
  let value = 0n;
  for (const digit of text) value = value * 36n + BigInt(parseInt(digit, 36));
  return value;
}

/** The entries of a stream id `m1.<newest>.<auction>~<below>[-<seq>]...`:
 *  {newest, entries: [[auction, text]]}, or null. */
function splitStreamId(id) {
  const parts = typeof id === "string" ? id.split(".") : [];
  if (parts[0] !== "m1" || parts.length < 2) return null;
  const entries = parts.slice(2).map((part) => {
    const at = part.indexOf("~");
    return [part.slice(0, at), part.slice(at + 1)];
  });
  return { newest: parts[1], entries };
}

/** `auction`'s own event id (`<ms>-<seq>`) in the stream id `id`, or null
 *  when the id does not name it (no event of it yet). */
function ownId(id, auction) {
  const split = splitStreamId(id);
  if (!split) return null;
  const entry = split.entries.find(([name]) => name === auction);
  if (!entry) return null;
  const [below, seq] = entry[1].split("-");
  return `${base36(split.newest) - base36(below)}-${seq ? base36(seq) : 0n}`;
}

/** The stream id `id` naming only the auctions in `keep`: the others
 *  (new to a tab: they start again with `init`; or no longer watched)
 *  are left out. */
function keepOnly(id, keep) {
  const split = splitStreamId(id);
  if (!split) return null;
  const entries = split.entries.filter(([name]) => keep.has(name));
  return ["m1", split.newest, ...entries.map(([name, at]) => `${name}~${at}`)].join(".");
}

/** The auction an event of a stream of several is about. */
function auctionOf(data) {
  if (!data) return null;
  return typeof data.auction === "string" ? data.auction : data.auction && data.auction.id;
}

// --- Server-Sent Events: one /events?auctions=... stream ---------------------

const sse = {
  audience: Audience(),
  source: null,
  lastId: null, // the stream's id: where this browser is in every auction
  state: "connecting",
  timer: null,
  attempt: 0,
};

function sseState(state) {
  sse.state = state;
  for (const port of sse.audience.ports()) port.postMessage({ type: "state", transport: "sse", state });
}

/** A change of auctions: one new stream for them all, soon (tabs that open
 *  together make one change). */
function sseChanged() {
  clearTimeout(sse.timer);
  sse.timer = setTimeout(sseOpen, 50);
}

/** (Re)opens the stream of every watched auction, resuming each from the
 *  stream's last id, except those a tab waits an `init` of. */
function sseOpen() {
  clearTimeout(sse.timer);
  if (sse.source) sse.source.close();
  sse.source = null;
  const auctions = [...sse.audience.byAuction.keys()];
  if (auctions.length === 0) return;
  const query = new URLSearchParams({ auctions: auctions.join(",") });
  const resume = keepOnly(sse.lastId, new Set(auctions.filter((a) => !sse.audience.waiting(a))));
  if (resume) query.set("lastEventId", resume);
  const source = new EventSource(`/events?${query}`);
  sse.source = source;
  source.addEventListener("open", () => {
    if (source !== sse.source) return;
    sse.attempt = 0;
    // A change of auctions is not news to the tabs; a recovery is.
    if (sse.state !== "open") sseState("open");
  });
  for (const kind of ["init", "bid", "viewers", "closed", "opened", "extended", "admin", "gone"]) {
    source.addEventListener(kind, (event) => {
      if (source !== sse.source) return;
      let data;
      try { data = JSON.parse(event.data); } catch (_) { return; }
      const auction = auctionOf(data);
      const withId = kind !== "viewers" && kind !== "gone";
      if (withId && event.lastEventId) sse.lastId = event.lastEventId;
      const id = withId ? ownId(event.lastEventId, auction) : null;
      sse.audience.deliver(auction, { type: "sse", kind, data: event.data, id }, kind === "init");
      if (kind === "gone") {
        // That auction's part of the stream has ended; its tabs ask again.
        for (const port of sse.audience.byAuction.get(auction)?.keys() || []) unwatch(port);
      }
    });
  }
  source.addEventListener("error", () => {
    if (source !== sse.source) return;
    if (source.readyState === EventSource.CLOSED) {
      // Refused (404: none of the auctions exists; 503: no replica could
      // take it): EventSource stops for good. Open a new one after a pause.
      sseState("stopped");
      const pause = Math.min(10000, 2000 * 2 ** sse.attempt);
      sse.attempt += 1;
      sse.timer = setTimeout(sseOpen, pause / 2 + Math.random() * pause / 2);
    } else {
      // EventSource reconnects by itself, sending the last id.
      sseState("reconnecting");
    }
  });
}

// --- WebSocket: one socket, one subscription per auction -------------------------

const ws = {
  audience: Audience(),
  socket: null,
  open: false,
  attempt: 0,
  lastIds: new Map(), // auction -> its last event id
  subscribing: [], // auctions subscribed to, not yet answered (in order)
  bids: new Map(), // worker's ref -> {port, ref}
  sequence: 0,
  token: null, // the session the socket speaks for (sent by `auth`)
  auth: "none", // "pending", "yes", "unsupported"
  authenticated: null, // the edge's `authenticated` message
};

function wsSend(message) {
  if (ws.open) ws.socket.send(JSON.stringify(message));
}

function wsBroadcast(message) {
  for (const port of ws.audience.ports()) port.postMessage(message);
}

/** Subscribes to `auction`: from its last id, or afresh (an `init`) when a
 *  tab waits for one. */
function wsSubscribe(auction) {
  const message = { type: "subscribe", auction };
  if (!ws.audience.waiting(auction) && ws.lastIds.has(auction)) message.last_id = ws.lastIds.get(auction);
  ws.subscribing.push(auction);
  wsSend(message);
}

function wsAuthenticate(token) {
  if (!token) return;
  ws.token = token;
  ws.auth = "pending";
  ws.authenticated = null;
  wsSend({ type: "auth", token });
}

function wsConnect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.socket = socket;
  ws.open = false;
  ws.auth = "none";
  ws.subscribing = [];
  socket.addEventListener("open", () => {
    ws.open = true;
    ws.attempt = 0;
    if (ws.token) wsAuthenticate(ws.token);
    for (const auction of ws.audience.byAuction.keys()) wsSubscribe(auction);
    wsBroadcast({ type: "state", transport: "ws", state: "open" });
  });
  socket.addEventListener("message", (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (_) { return; }
    wsReceive(message);
  });
  socket.addEventListener("close", () => {
    ws.open = false;
    ws.bids.clear(); // the tabs count their bids as unsettled
    wsBroadcast({ type: "state", transport: "ws", state: "reconnecting" });
    // Exponential backoff with full jitter: 0.25 s doubling to 10 s.
    const ceiling = Math.min(10000, 250 * 2 ** ws.attempt);
    ws.attempt += 1;
    setTimeout(wsConnect, Math.random() * ceiling);
  });
}

function wsReceive(message) {
  switch (message.type) {
    case "init":
    case "bid":
    case "closed":
    case "opened":
    case "extended":
    case "admin": {
      const auction = auctionOf(message.payload) || message.auction;
      if (message.type === "init") ws.subscribing = ws.subscribing.filter((a) => a !== auction);
      if (message.id) ws.lastIds.set(auction, message.id);
      ws.audience.deliver(auction, { type: "ws", message }, message.type === "init");
      break;
    }
    case "viewers":
      ws.audience.deliver(message.auction, { type: "ws", message }, false);
      break;
    case "gone":
      ws.audience.deliver(message.auction, { type: "ws", message }, false);
      for (const port of ws.audience.byAuction.get(message.auction)?.keys() || []) unwatch(port);
      break;
    case "reinstated":
      wsBroadcast({ type: "ws", message });
      break;
    case "authenticated":
      ws.auth = "yes";
      ws.authenticated = message;
      wsBroadcast({ type: "ws", message });
      break;
    case "ack":
    case "error": {
      const bid = message.ref && ws.bids.get(message.ref);
      if (bid) {
        ws.bids.delete(message.ref);
        bid.port.postMessage({ type: "ws", message: { ...message, ref: bid.ref } });
      } else if (message.type === "error" && !message.ref) {
        wsRefusal(message);
      }
      break;
    }
  }
}

/** An `error` without `ref`: the answer to `auth` or to the oldest
 *  `subscribe` not yet answered (the edge answers them in order). */
function wsRefusal(message) {
  if (ws.auth === "pending" && message.error === "unknown_type") {
    ws.auth = "unsupported";
    wsBroadcast({ type: "ws", message });
  } else if (message.error === "bidder_suspended") {
    wsBroadcast({ type: "ws", message });
  } else if (["invalid_token", "token_expired"].includes(message.error)) {
    ws.auth = "none";
    ws.token = null;
    wsBroadcast({ type: "ws", message });
  } else if (["not_found", "invalid_auction_id", "redis_unavailable"].includes(message.error) && ws.subscribing.length) {
    const auction = ws.subscribing.shift();
    if (message.error === "redis_unavailable") {
      // Asked again shortly; the tabs keep waiting.
      setTimeout(() => { if (ws.open && ws.audience.byAuction.has(auction)) wsSubscribe(auction); }, 1000 + Math.random() * 1000);
      return;
    }
    const ports = [...(ws.audience.byAuction.get(auction)?.keys() || [])];
    for (const port of ports) {
      port.postMessage({ type: "ws", message });
      unwatch(port);
    }
  }
}

function wsBid(port, bid, token) {
  if (!ws.open) {
    port.postMessage({ type: "ws", message: { type: "error", ref: bid.ref, error: "bidder_unavailable" } });
    return;
  }
  // The bid is the tab's session's: say so first if the socket speaks for
  // another (the edge takes messages in order).
  if (token && token !== ws.token && ws.auth !== "unsupported") wsAuthenticate(token);
  ws.sequence += 1;
  const ref = `w${ws.sequence}`;
  ws.bids.set(ref, { port, ref: bid.ref });
  wsSend({ ...bid, ref });
}

// --- the tabs ----------------------------------------------------------------

/** The most auctions one stream carries (the edge's
 *  AUCTION_SSE_MAX_AUCTIONS_PER_STREAM default). */
const MAX_AUCTIONS = 100;

function watch(port, transport, auction) {
  unwatch(port);
  const audience = transport === "sse" ? sse.audience : ws.audience;
  if (!audience.byAuction.has(auction) && audience.byAuction.size >= MAX_AUCTIONS) {
    // One stream cannot take another auction: this tab connects by itself.
    port.postMessage({ type: "alone" });
    return;
  }
  tabs.set(port, { transport, auction });
  if (transport === "sse") {
    sse.audience.add(auction, port);
    if (sse.source) port.postMessage({ type: "state", transport, state: sse.state });
    sseChanged();
  } else {
    ws.audience.add(auction, port);
    if (!ws.socket) wsConnect();
    else {
      port.postMessage({ type: "state", transport, state: ws.open ? "open" : "reconnecting" });
      if (ws.open) wsSubscribe(auction);
    }
  }
}

function unwatch(port) {
  const tab = tabs.get(port);
  if (!tab) return;
  tabs.delete(port);
  if (tab.transport === "sse") {
    sse.audience.remove(tab.auction, port);
    if (!sse.audience.byAuction.has(tab.auction)) sseChanged();
  } else {
    ws.audience.remove(tab.auction, port);
    if (!ws.audience.byAuction.has(tab.auction)) {
      ws.subscribing = ws.subscribing.filter((a) => a !== tab.auction);
      ws.lastIds.delete(tab.auction);
      wsSend({ type: "unsubscribe", auction: tab.auction });
    }
    for (const [ref, bid] of ws.bids) if (bid.port === port) ws.bids.delete(ref);
  }
}

self.addEventListener("connect", (event) => {
  const port = event.ports[0];
  port.addEventListener("message", ({ data }) => {
    switch (data && data.type) {
      case "watch":
        watch(port, data.transport === "ws" ? "ws" : "sse", String(data.auction));
        break;
      case "unwatch":
      case "leave":
        unwatch(port);
        break;
      case "auth":
        if (ws.open && data.token === ws.token && ws.auth === "yes") {
          port.postMessage({ type: "ws", message: ws.authenticated });
        } else if (ws.open && data.token === ws.token && ws.auth === "unsupported") {
          port.postMessage({ type: "ws", message: { type: "error", error: "unknown_type" } });
        } else if (!(data.token === ws.token && ws.auth === "pending")) {
          wsAuthenticate(data.token);
        }
        break;
      case "bid":
        wsBid(port, data.bid, data.token);
        break;
    }
  });
  port.start();
  port.postMessage({ type: "hello" });
});
