// A browser client of the live auctions: watch one auction or many over
// Server-Sent Events or a WebSocket, resume after every drop with nothing
// lost or repeated, sign in, and bid with an idempotency key.
//
// An ES module with no dependencies and no build step. The messages it
// reads and sends are described in docs/protocol.schema.json; the
// repository's browser tests check every message it sees against it.
//
//   import { AuctionClient } from "/assets/auction-client.js";
//   const client = new AuctionClient({ transport: "auto" });
//   client.on("event", (event) => console.log(event.type, event.auction, event.data));
//   client.on("state", ({ state, transport }) => console.log(state, transport));
//   client.watch("1234");
//   await client.signIn("Ada");
//   const result = await client.bid("1234", { amount: 150000 });
//
// Transports: "sse" (EventSource on `/events?auctions=...`, bids by HTTP
// POST), "ws" (one WebSocket on `/ws`, bids over it) and "auto": a
// WebSocket first; when its upgrade is refused or times out, or the socket
// closes before its first message, SSE and HTTP POST instead, and a
// WebSocket again `wsRetryMs` later (or at the next reconnect after that).

/** Answers that do not say what became of a bid: it may have been placed.
 *  The same bid (the same key) is sent again until another answer. */
export const UNSETTLED = Object.freeze([
  "bid_outcome_unknown", "not_replicated", "redis_unavailable", "bidder_unavailable", "identity_unavailable",
]);

/** Kinds of auction events, as named on both transports. */
export const EVENT_TYPES = Object.freeze(["init", "bid", "closed", "opened", "extended", "admin", "viewers", "gone"]);

const DEFAULTS = {
  transport: "auto",
  baseUrl: "",
  bidderUrl: null,
  wsUrl: null,
  token: null,
  // A WebSocket that neither opens nor is refused within this is given up.
  upgradeTimeoutMs: 2500,
  // After a WebSocket failed in "auto": how long SSE serves before trying
  // a WebSocket again.
  wsRetryMs: 60_000,
  // Full-jitter backoff: a random pause up to min(max, base * 2^attempt).
  backoffBaseMs: 250,
  backoffMaxMs: 10_000,
  // Bids: tries of one bid while its answer is unsettled, and the pause.
  bidAttempts: 8,
  bidRetryMs: 1000,
  // How long a bid over the socket waits for the edge's `authenticated`.
  authWaitMs: 3000,
  // Query parameters added to every stream and socket URL (e.g. the edges'
  // demo controls' `{demo: "<client id>"}`).
  connectionParams: null,
  // Tabs that watch together make one SSE stream: changes wait this long,
  // so that tabs opening together cost one new stream, and streams being
  // replaced do not pile up at the edge before it sees the old one close.
  sseDebounceMs: 250,
};

/** Compares two event ids `<ms>-<seq>`: -1, 0 or 1. */
export function compareIds(a, b) {
  const [am, as = "0"] = String(a).split("-");
  const [bm, bs = "0"] = String(b).split("-");
  const ma = BigInt(am), mb = BigInt(bm), sa = BigInt(as), sb = BigInt(bs);
  if (ma !== mb) return ma < mb ? -1 : 1;
  if (sa !== sb) return sa < sb ? -1 : 1;
  return 0;
}

function base36(text) {
  let value = 0n;
  for (const digit of text) value = value * 36n + BigInt(parseInt(digit, 36));
  return value;
}

/** The positions named by a stream id `m1.<newest>.<auction>~<below>[-<seq>]...`
 *  (numbers in base 36): Map(auction -> `<ms>-<seq>`), or null. */
export function decodeStreamId(id) {
  const parts = typeof id === "string" ? id.split(".") : [];
  if (parts[0] !== "m1" || parts.length < 2) return null;
  const newest = base36(parts[1]);
  const positions = new Map();
  for (const part of parts.slice(2)) {
    const at = part.indexOf("~");
    if (at < 0) return null;
    const [below, seq] = part.slice(at + 1).split("-");
    positions.set(part.slice(0, at), `${newest - base36(below)}-${seq ? base36(seq) : 0n}`);
  }
  return positions;
}

/** A stream id naming `positions` (Map or entries of auction -> `<ms>-<seq>`). */
export function encodeStreamId(positions) {
  const entries = [...positions].map(([auction, id]) => {
    const [ms, seq = "0"] = String(id).split("-");
    return [auction, BigInt(ms), BigInt(seq)];
  }).filter(([, ms, seq]) => ms > 0n || seq > 0n);
  if (entries.length === 0) return null;
  const newest = entries.reduce((max, [, ms]) => (ms > max ? ms : max), 0n);
  const parts = entries.map(([auction, ms, seq]) =>
    `${auction}~${(newest - ms).toString(36)}${seq ? `-${seq.toString(36)}` : ""}`);
  return ["m1", newest.toString(36), ...parts].join(".");
}

/** A new idempotency key: random, so no two intended bids share one. */
export function newIdempotencyKey() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The auction an event is about: its `auction` id, or the auction itself
 *  (`init`, `opened`, `closed`). */
function auctionOf(data) {
  if (!data) return null;
  return typeof data.auction === "string" ? data.auction : data.auction && data.auction.id;
}

const wait = (ms) => new Promise((wake) => setTimeout(wake, ms));

/** A monotonic clock in ms, for durations. */
const now = () => (globalThis.performance ? performance.now() : Date.now());

/** The UTF-8 size of `text` in bytes, without encoding it. */
function utf8Length(text) {
  let length = text.length;
  for (let i = 0; i < text.length; i += 1) {
    const code = text.charCodeAt(i);
    // 2 bytes up to U+07FF, 3 above; a surrogate pair (two units) is 4.
    if (code >= 0x80) length += code < 0x800 || (code >= 0xd800 && code <= 0xdfff) ? 1 : 2;
  }
  return length;
}

/** The bytes of an SSE event as an edge writes it: its `event:` line, a
 *  `data:` line per line of data, its `id:` line if it has one, and the
 *  blank line (HTTP's own framing, such as chunks, not included). */
function sseEventBytes(type, data, id) {
  const lines = data.split("\n").length;
  return 8 + type.length + lines * 7 + utf8Length(data) - (lines - 1) + (id ? 5 + id.length : 0) + 1;
}

/** The bytes of a server's WebSocket text frame of `text`, uncompressed:
 *  the text and the frame header (server frames are not masked). */
function wsFrameBytes(text) {
  const length = utf8Length(text);
  return length + (length <= 125 ? 2 : length <= 0xffff ? 4 : 10);
}

export class AuctionClient {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    if (!["sse", "ws", "auto"].includes(this.options.transport)) {
      throw new TypeError(`transport must be "sse", "ws" or "auto", not ${this.options.transport}`);
    }
    this.mode = this.options.transport;
    this.token = this.options.token || null;
    this.listeners = new Map();
    this.watched = new Set(); // auctions watched
    this.positions = new Map(); // auction -> its last event id `<ms>-<seq>`
    this.fresh = new Set(); // auctions whose next delivery must be an `init`
    this.transport = null; // "sse" or "ws": the one in use
    this.state = "idle";
    this.attempt = 0;
    this.closed = false;
    this.wsFailedAt = null; // "auto": when a WebSocket last failed
    this.wsTimedOut = false; // whether that failure took a timeout
    // Since the connection in use failed, until another opens: what it took
    // (told with the next "open" event).
    this.outage = null;
    this.timers = new Set();
    // SSE
    this.source = null;
    this.sseTimer = null;
    // WebSocket
    this.socket = null;
    this.socketOpen = false;
    this.subscribing = []; // auctions subscribed to, not yet answered, in order
    this.pending = new Map(); // ref -> resolve
    this.sequence = 0;
    this.auth = "none"; // "pending", "yes", "unsupported"
    this.socketToken = null;
    this.authWaiters = [];
  }

  // --- events -----------------------------------------------------------------

  /** Listens to `type`: "event", "state", "open", "transport",
   *  "fallback", "refused", "repeat", "session", "message" or "send".
   *  Returns a function that stops. */
  on(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(listener);
    return () => this.listeners.get(type).delete(listener);
  }

  emit(type, value) {
    for (const listener of this.listeners.get(type) || []) {
      try { listener(value); } catch (error) { setTimeout(() => { throw error; }); }
    }
  }

  setState(state, detail) {
    this.state = state;
    this.emit("state", { state, transport: this.transport, ...(detail ? { detail } : {}) });
  }

  later(fn, ms) {
    const timer = setTimeout(() => { this.timers.delete(timer); if (!this.closed) fn(); }, ms);
    this.timers.add(timer);
    return timer;
  }

  /** The pause before the next try: `floorMs` plus `scale` times a
   *  full-jitter backoff step (random up to min(max, base * 2^attempt)),
   *  booked on the outage under way. */
  backoff({ floorMs = 0, scale = 1 } = {}) {
    const ceiling = Math.min(this.options.backoffMaxMs, this.options.backoffBaseMs * 2 ** this.attempt);
    this.attempt += 1;
    const pause = floorMs + scale * Math.random() * ceiling;
    if (this.outage) {
      this.outage.pausedMs += pause;
      this.outage.pauseBoundMs += floorMs + scale * ceiling;
    }
    return pause;
  }

  /** The connection in use failed: an outage starts, unless one is under way. */
  failed() {
    this.outage ??= { since: now(), attempts: 0, pausedMs: 0, pauseBoundMs: 0, triedAt: null };
  }

  /** A new try to connect during an outage; `triedAt` null: the browser's
   *  own (EventSource after its retry delay), whose start is not seen. */
  tried(triedAt = now()) {
    if (!this.outage) return;
    this.outage.attempts += 1;
    this.outage.triedAt = triedAt;
  }

  /** A connection is open: tells the "open" listeners, with what the
   *  recovery took when it ends an outage. */
  opened(transport, extensions) {
    const outage = this.outage;
    this.outage = null;
    const at = now();
    const recovery = outage && {
      downMs: at - outage.since,
      attempts: Math.max(1, outage.attempts),
      pausedMs: outage.pausedMs,
      pauseBoundMs: outage.pauseBoundMs,
      connectMs: outage.triedAt === null ? null : at - outage.triedAt,
    };
    this.emit("open", { transport, extensions, recovery });
  }

  /** `url` with the `connectionParams` option's parameters added. */
  withConnectionParams(url) {
    const params = this.options.connectionParams;
    if (!params) return url;
    const extra = new URLSearchParams(params).toString();
    if (!extra) return url;
    return `${url}${url.includes("?") ? "&" : "?"}${extra}`;
  }

  url(path, base = this.options.baseUrl) {
    return `${(base || "").replace(/\/$/, "")}${path}`;
  }

  wsUrl() {
    if (this.options.wsUrl) return this.withConnectionParams(this.options.wsUrl);
    const base = this.options.baseUrl ? new URL(this.options.baseUrl) : globalThis.location;
    return this.withConnectionParams(`${base.protocol === "https:" ? "wss" : "ws"}://${base.host}/ws`);
  }

  // --- watching -----------------------------------------------------------------

  /** Watches `auctions` (an id or a list). Each starts with an `init`, or
   *  resumes from `lastId` (the auction's own `<ms>-<seq>`) when given. An
   *  auction already watched with `fresh: true` is sent a new `init`. */
  watch(auctions, { lastId = null, fresh = false } = {}) {
    const list = (Array.isArray(auctions) ? auctions : [auctions]).map(String);
    const added = [];
    for (const auction of list) {
      const known = this.watched.has(auction);
      if (known && !fresh) continue;
      this.watched.add(auction);
      if (lastId && list.length === 1 && !known) this.positions.set(auction, lastId);
      else if (fresh || !known) {
        this.positions.delete(auction);
        this.fresh.add(auction);
      }
      added.push(auction);
    }
    if (added.length === 0 || this.closed) return;
    if (!this.transport) return this.connect();
    if (this.transport === "ws") {
      if (this.socketOpen) for (const auction of added) this.subscribe(auction);
    } else {
      this.sseChanged();
    }
  }

  /** Stops watching `auctions` (an id or a list). */
  unwatch(auctions) {
    const list = (Array.isArray(auctions) ? auctions : [auctions]).map(String);
    for (const auction of list) {
      if (!this.watched.delete(auction)) continue;
      this.positions.delete(auction);
      this.fresh.delete(auction);
      this.subscribing = this.subscribing.filter((a) => a !== auction);
      if (this.transport === "ws") this.send({ type: "unsubscribe", auction });
    }
    if (this.transport === "sse") this.sseChanged();
  }

  /** The auction's last event id `<ms>-<seq>`, where a resume starts. */
  lastId(auction) {
    return this.positions.get(String(auction)) || null;
  }

  /** Closes every connection for good. */
  close() {
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    clearTimeout(this.sseTimer);
    this.stopSse();
    this.stopWs();
    this.setState("closed");
  }

  connect() {
    if (this.closed || this.watched.size === 0) return;
    // "auto" tries a WebSocket at every (re)connect, unless the last one
    // failed slowly (a timeout, or a socket closed before its first
    // message) less than wsRetryMs ago: a refusal costs one quick answer.
    const useWs = this.mode === "ws" || (this.mode === "auto" && !(this.wsTimedOut &&
      this.wsFailedAt !== null && Date.now() - this.wsFailedAt < this.options.wsRetryMs));
    if (useWs) this.openWs();
    else this.openSse();
  }

  /** Hands one event to the listeners, once: an event whose id is not past
   *  the auction's position is a repeat and is dropped. */
  deliver(type, auction, data, id) {
    if (!auction || !this.watched.has(auction)) return;
    if (type === "init") {
      this.fresh.delete(auction);
      if (id) this.positions.set(auction, id);
    } else if (type === "viewers" || type === "gone") {
      if (this.fresh.has(auction)) return;
      id = null;
    } else {
      if (this.fresh.has(auction)) return;
      const at = this.positions.get(auction);
      if (id && at && compareIds(id, at) <= 0) {
        // Sent again (a replay overlapping what arrived) or out of order.
        this.emit("repeat", { type, auction, id, transport: this.transport });
        return;
      }
      if (id) this.positions.set(auction, id);
    }
    if (type === "gone") {
      this.watched.delete(auction);
      this.positions.delete(auction);
    }
    this.emit("event", { type, auction, id: id || null, data, transport: this.transport });
  }

  // --- Server-Sent Events ---------------------------------------------------------

  sseChanged() {
    clearTimeout(this.sseTimer);
    this.sseTimer = this.later(() => { if (this.transport === "sse") this.openSse(); }, this.options.sseDebounceMs);
  }

  stopSse() {
    if (this.source) this.source.close();
    this.source = null;
  }

  openSse() {
    clearTimeout(this.sseTimer);
    this.stopSse();
    const switching = this.transport !== "sse";
    this.transport = "sse";
    if (this.watched.size === 0) return;
    const query = new URLSearchParams({ auctions: [...this.watched].join(",") });
    const resume = encodeStreamId([...this.positions].filter(([a]) => this.watched.has(a) && !this.fresh.has(a)));
    if (resume) query.set("lastEventId", resume);
    if (switching) this.emit("transport", { transport: "sse" });
    if (this.state !== "open") this.setState(["idle", "connecting"].includes(this.state) ? "connecting" : "reconnecting");
    const source = new EventSource(this.withConnectionParams(this.url(`/events?${query}`)));
    this.source = source;
    this.tried();
    source.addEventListener("open", () => {
      if (source !== this.source) return;
      this.attempt = 0;
      if (this.state !== "open") this.setState("open");
      this.opened("sse", null);
      if (this.mode === "auto") this.scheduleProbe();
    });
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => {
        if (source !== this.source) return;
        let data;
        try { data = JSON.parse(event.data); } catch (_) { return; }
        // `viewers` and `gone` carry no id: lastEventId is still an earlier event's.
        const id = type === "viewers" || type === "gone" ? null : event.lastEventId || null;
        this.emit("message", { transport: "sse", event: type, id: event.lastEventId || null, data, bytes: sseEventBytes(type, event.data, id) });
        const auction = auctionOf(data);
        const own = type === "viewers" || type === "gone" ? null : decodeStreamId(event.lastEventId);
        this.deliver(type, auction, data, own ? own.get(auction) || null : null);
      });
    }
    source.addEventListener("error", () => {
      if (source !== this.source) return;
      this.failed();
      const refused = source.readyState === EventSource.CLOSED;
      if (refused || this.mode === "auto") {
        // Refused (404: none of the auctions exists; 503: no replica could
        // take it): EventSource stops for good. Or "auto", which tries a
        // WebSocket first at a reconnect. Again after a pause.
        this.stopSse();
        this.setState(refused ? "stopped" : "reconnecting");
        this.later(() => this.connect(), refused ? this.backoff({ floorMs: 500, scale: 2 }) : this.backoff());
      } else {
        // EventSource reconnects by itself after the server's `retry:`
        // delay, sending the last id.
        this.tried(null);
        this.setState("reconnecting");
      }
    });
  }

  /** "auto" on SSE: a WebSocket again once `wsRetryMs` passed since the
   *  last failed; SSE stays until the socket is open. */
  scheduleProbe() {
    clearTimeout(this.probeTimer);
    const due = Math.max(0, this.wsFailedAt === null ? 0 : this.wsFailedAt + this.options.wsRetryMs - Date.now());
    this.probeTimer = this.later(() => {
      if (this.transport === "sse" && this.source && !this.socket) this.openWs({ handover: true });
    }, due);
  }

  // --- WebSocket ------------------------------------------------------------------------

  stopWs() {
    const socket = this.socket;
    this.socket = null;
    this.socketOpen = false;
    if (socket) {
      try { socket.close(1000); } catch (_) { /* closing */ }
    }
    this.unsettle();
  }

  /** The socket closed: bids sent on it may have been placed. */
  unsettle() {
    for (const resolve of this.pending.values()) resolve({ ok: false, body: { error: "bid_outcome_unknown" } });
    this.pending.clear();
    this.settleAuth("none");
  }

  /** Opens a socket. With `handover`, SSE serves until the socket opens. */
  openWs({ handover = false } = {}) {
    if (this.socket) this.stopWs();
    if (!handover) this.stopSse();
    const fallback = this.mode === "auto";
    let socket;
    try {
      socket = new WebSocket(this.wsUrl());
    } catch (_) {
      return this.wsFailed("refused", handover);
    }
    this.socket = socket;
    this.socketOpen = false;
    if (!handover) this.tried();
    if (!handover) {
      if (this.transport !== "ws") this.emit("transport", { transport: "ws" });
      this.transport = "ws";
      if (this.state !== "open") this.setState(["idle", "connecting"].includes(this.state) ? "connecting" : "reconnecting");
    }
    let heard = false;
    const timeout = fallback ? this.later(() => {
      if (socket === this.socket && !this.socketOpen) {
        this.socket = null;
        try { socket.close(); } catch (_) { /* closing */ }
        this.wsFailed("timeout", handover);
      }
    }, this.options.upgradeTimeoutMs) : null;
    socket.addEventListener("open", () => {
      if (socket !== this.socket) return;
      clearTimeout(timeout);
      this.socketOpen = true;
      if (handover) {
        // The socket takes over: SSE stops; its last positions resume here.
        handover = false;
        this.stopSse();
        this.transport = "ws";
        this.emit("transport", { transport: "ws" });
      }
      this.subscribing = [];
      if (this.token) this.authenticate(this.token);
      for (const auction of this.watched) this.subscribe(auction);
      this.setState("open");
      this.opened("ws", socket.extensions);
    });
    socket.addEventListener("message", (event) => {
      if (socket !== this.socket) return;
      let message;
      try { message = JSON.parse(event.data); } catch (_) { return; }
      if (!heard) {
        heard = true;
        this.attempt = 0;
      }
      this.emit("message", { transport: "ws", message, bytes: wsFrameBytes(event.data) });
      this.receive(message);
    });
    socket.addEventListener("close", () => {
      if (socket !== this.socket) return;
      clearTimeout(timeout);
      const wasOpen = this.socketOpen;
      this.socket = null;
      this.socketOpen = false;
      this.unsettle();
      // A socket that was serving (not one tried next to SSE) failed.
      if (!handover) this.failed();
      if (fallback && !heard) return this.wsFailed(wasOpen ? "closed_before_message" : "refused", handover);
      this.setState("reconnecting");
      this.later(() => this.connect(), this.backoff());
    });
  }

  /** "auto": the WebSocket did not work; SSE and HTTP POST instead. */
  wsFailed(reason, handover) {
    this.wsFailedAt = Date.now();
    this.wsTimedOut = reason !== "refused";
    this.emit("fallback", { reason });
    if (handover && this.source) return this.scheduleProbe();
    this.openSse();
  }

  send(message) {
    if (!this.socketOpen) return false;
    this.emit("send", { transport: "ws", message });
    this.socket.send(JSON.stringify(message));
    return true;
  }

  subscribe(auction) {
    const message = { type: "subscribe", auction };
    const at = this.positions.get(auction);
    if (at && !this.fresh.has(auction)) message.last_id = at;
    this.subscribing.push(auction);
    this.send(message);
  }

  settleAuth(state) {
    this.auth = state;
    if (state === "none") this.socketToken = null;
    for (const wake of this.authWaiters) wake();
    this.authWaiters = [];
  }

  authenticate(token) {
    this.socketToken = token;
    this.auth = "pending";
    this.send({ type: "auth", token });
  }

  receive(message) {
    switch (message.type) {
      case "init":
      case "bid":
      case "closed":
      case "opened":
      case "extended":
      case "admin": {
        const auction = auctionOf(message.payload) || message.auction;
        if (message.type === "init") this.subscribing = this.subscribing.filter((a) => a !== auction);
        this.deliver(message.type, auction, message.payload, message.id || null);
        break;
      }
      case "viewers":
        this.deliver("viewers", message.auction, { auction: message.auction, count: message.count }, null);
        break;
      case "gone":
        this.deliver("gone", message.auction, { auction: message.auction }, null);
        break;
      case "reinstated":
        this.emit("session", { suspended: false });
        break;
      case "authenticated":
        this.settleAuth("yes");
        this.emit("session", { authenticated: { bidder_id: message.bidder_id, name: message.name } });
        break;
      case "ack":
      case "error": {
        const resolve = message.ref && this.pending.get(message.ref);
        if (resolve) {
          this.pending.delete(message.ref);
          resolve(message.type === "ack" ? { ok: true, body: { id: message.id } } : { ok: false, body: message });
        } else if (message.type === "error" && !message.ref) {
          this.refusal(message);
        }
        break;
      }
    }
  }

  /** An `error` without `ref`: the answer to `auth`, or to the oldest
   *  `subscribe` not yet answered (the edge answers them in order). */
  refusal(message) {
    if (message.error === "bidder_suspended") {
      // The socket's bidder was suspended by an admin: its bids are refused.
      this.emit("session", { suspended: true });
    } else if (this.auth === "pending" && message.error === "unknown_type") {
      this.settleAuth("unsupported");
    } else if (["invalid_token", "token_expired"].includes(message.error)) {
      this.settleAuth("none");
      if (this.token === this.socketToken || this.token) this.token = null;
      this.emit("session", { refused: message.error });
    } else if (["not_found", "invalid_auction_id", "redis_unavailable", "redis_out_of_memory"].includes(message.error) && this.subscribing.length) {
      const auction = this.subscribing.shift();
      if (message.error === "redis_unavailable" || message.error === "redis_out_of_memory") {
        this.later(() => { if (this.socketOpen && this.watched.has(auction)) this.subscribe(auction); }, 1000 + Math.random() * 1000);
        return;
      }
      this.watched.delete(auction);
      this.positions.delete(auction);
      this.emit("refused", { auction, error: message.error });
    }
  }

  // --- sessions and bids ---------------------------------------------------------------

  /** Signs in as a guest (`POST /sessions`): resolves to the session
   *  `{token, bidder_id, name, expires_at}`, `{error}` when refused, or null
   *  when the bidder has no sessions. */
  async signIn(name) {
    const response = await fetch(this.url("/sessions", this.options.bidderUrl ?? this.options.baseUrl), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name }),
    });
    if (response.status === 404 || response.status === 405) return null;
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    if (response.status !== 201 || !body || !body.token) return { error: body || { error: "bidder_unavailable" } };
    this.setToken(body.token);
    return { token: body.token, bidder_id: body.bidder_id, name: body.name, expires_at: body.expires_at };
  }

  /** The bearer token of later bids (null: signed out). A socket is told at once. */
  setToken(token) {
    this.token = token || null;
    if (this.token && this.socketOpen && this.socketToken !== this.token) this.authenticate(this.token);
  }

  /**
   * Places one bid: `request` is `{amount}`, `{max_amount}` or `{buy_now: true}`.
   * Sent with `key` (a new idempotency key unless given) and, while the
   * answer does not say what became of it (UNSETTLED, or no answer), sent
   * again with the same key, over whichever transport is up (`bidderUrl`:
   * where an HTTP bid goes, when not the client's). Resolves to
   * `{ok: true, body}` or `{ok: false, body: {error, ...}}`.
   */
  async bid(auction, request, { key, token = this.token, bidder, onRetry, bidderUrl } = {}) {
    key = key || newIdempotencyKey();
    let result = { ok: false, body: { error: "bid_outcome_unknown" } };
    for (let attempt = 0; attempt < this.options.bidAttempts; attempt += 1) {
      if (attempt > 0) {
        if (onRetry) onRetry(attempt, result);
        await wait(this.options.bidRetryMs);
      }
      try {
        result = await this.bidOnce(String(auction), request, { key, token, bidder, bidderUrl });
      } catch (_) {
        result = { ok: false, body: { error: "bid_outcome_unknown" } };
      }
      if (result.ok || !result.body || !UNSETTLED.includes(result.body.error)) break;
    }
    if (!result.ok && result.body && ["invalid_token", "token_expired"].includes(result.body.error) && token === this.token) {
      this.token = null;
      this.emit("session", { refused: result.body.error });
    }
    result.key = key;
    result.unsettled = !result.ok && Boolean(result.body) && UNSETTLED.includes(result.body.error);
    return result;
  }

  async bidOnce(auction, request, { key, token, bidder, bidderUrl }) {
    const plain = typeof request.amount === "number" && request.max_amount === undefined && !request.buy_now;
    if (plain && token && this.transport === "ws" && this.socketOpen) {
      if (this.socketToken !== token || this.auth === "none") this.authenticate(token);
      if (this.auth === "pending") {
        await new Promise((wake) => { this.authWaiters.push(wake); setTimeout(wake, this.options.authWaitMs); });
      }
      if (this.auth === "yes" && this.socketOpen && this.socketToken === token) return this.bidOverSocket(auction, request.amount, key);
    }
    return this.postBid(auction, request, { key, token, bidder, bidderUrl });
  }

  bidOverSocket(auction, amount, key) {
    return new Promise((resolve) => {
      this.sequence += 1;
      const ref = `b${Date.now().toString(36)}-${this.sequence}`;
      this.pending.set(ref, resolve);
      if (!this.send({ type: "bid", auction, amount, ref, idempotency_key: key })) {
        this.pending.delete(ref);
        resolve({ ok: false, body: { error: "bidder_unavailable" } });
      }
    });
  }

  /** `POST /auctions/{id}/bids`. */
  async postBid(auction, request, { key, token, bidder, bidderUrl = this.options.bidderUrl ?? this.options.baseUrl }) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (key) headers["Idempotency-Key"] = key;
    // Without a session (a deployment without them) the name goes along.
    const body = token || !bidder ? request : { ...request, bidder };
    const response = await fetch(this.url(`/auctions/${encodeURIComponent(auction)}/bids`, bidderUrl), {
      method: "POST",
      headers,
      body: JSON.stringify(body),
    });
    let answer = null;
    try { answer = await response.json(); } catch (_) { /* not JSON */ }
    if (response.status === 201) return { ok: true, body: answer };
    return { ok: false, status: response.status, body: answer || { error: response.status >= 500 ? "bid_outcome_unknown" : "unknown" } };
  }
}
