// The comparison page: one auction followed over SSE and over a WebSocket
// at once, each by its own client of the auction client library, with
// per-transport figures (latency from `placed_at`, bytes per event, every
// recovery after a drop: how long it took, the delay in force, events
// missed and repeated) and a conclusion drawn from them.
import { AuctionClient, compareIds } from "./auction-client.js";

const auctionId = new URLSearchParams(location.search).get("auction") || "1234";
const LATENCIES_KEPT = 200;
const IDS_KEPT = 5000;
// Kinds of event that carry an id: what an edge counts as delivered
// (`auction_events_delivered_total`: not `init`, not `viewers`).
const WITH_ID = new Set(["bid", "closed", "opened", "extended", "admin"]);
// This page's own connections, as the edges' demo controls know them.
const client = `cmp-${Math.random().toString(36).slice(2, 12)}`;

/** One transport's counters; `render` writes them into its panel. */
function tracker(name) {
  return {
    name,
    state: "connecting",
    events: 0, // every auction event handed to the page, `init` included
    delivered: 0, // event frames received (repeats included), as the edge counts them
    bids: 0,
    bytes: 0, // of bid events, as the edge encodes them, uncompressed
    latencies: [],
    ids: [], // ids of events received, in order (bounded)
    idSet: new Set(),
    firstId: null,
    lastId: null,
    repeated: 0, // sent again or out of order: dropped by the library
    missed: 0,
    drops: 0,
    down: false,
    gaveUp: 0, // EventSource closed for good (an error answer), in all
    outageGaveUp: 0, // ... during the outage under way
    log: [], // every recovery, oldest first
    pending: null, // the latest recovery, until the next drop settles it
    mark: null, // counters when the connection in use failed
    extensions: null, // the WebSocket's negotiated extensions
    openedAtWall: 0, // when the connection in use opened (Unix ms)
    retryMs: null, // SSE: the `retry:` the edge sends, as its demo control tells it
  };
}
const sse = tracker("sse");
const ws = tracker("ws");
const trackers = { sse, ws };

/** An id one transport has is missed by the other when it lies within
 *  the range both have covered (after both first ids, up to the lower of
 *  the two last ids) and the other lacks it. */
function countMissed() {
  if (!sse.firstId || !ws.firstId) return;
  const from = compareIds(sse.firstId, ws.firstId) > 0 ? sse.firstId : ws.firstId;
  const to = compareIds(sse.lastId, ws.lastId) < 0 ? sse.lastId : ws.lastId;
  const within = (id) => compareIds(id, from) >= 0 && compareIds(id, to) <= 0;
  sse.missed = ws.ids.filter((id) => within(id) && !sse.idSet.has(id)).length;
  ws.missed = sse.ids.filter((id) => within(id) && !ws.idSet.has(id)).length;
}

/** What a recovery cost: missed and repeated since its drop (final once
 *  the next drop comes). */
function settle(t) {
  if (!t.pending || t.pending.settled) return;
  t.pending.missed = t.missed - t.pending.mark.missed;
  t.pending.repeated = t.repeated - t.pending.mark.repeated;
}

/** Follows the auction over `t`'s transport with a client of its own. */
function follow(t) {
  const library = new AuctionClient({ transport: t.name, connectionParams: { demo: client } });
  library.on("message", (seen) => {
    const type = seen.transport === "sse" ? seen.event : seen.message.type;
    if (!WITH_ID.has(type)) return;
    t.delivered += 1;
    if (type === "bid") {
      // Bids are what fan-out repeats to every watcher: their size is the cost.
      t.bids += 1;
      t.bytes += seen.bytes;
    }
  });
  library.on("event", (event) => {
    if (event.type === "viewers" || event.type === "gone") return;
    t.events += 1;
    if (!WITH_ID.has(event.type) || !event.id) return render();
    const id = event.id;
    if (!t.idSet.has(id)) {
      t.ids.push(id);
      t.idSet.add(id);
      if (t.ids.length > IDS_KEPT) t.idSet.delete(t.ids.shift());
    }
    if (!t.firstId) t.firstId = id;
    if (!t.lastId || compareIds(id, t.lastId) > 0) t.lastId = id;
    // Latency of live bids only: one placed before this connection opened
    // is a replay, and its delay is the outage's.
    if (event.type === "bid" && event.data.placed_at && event.data.placed_at >= t.openedAtWall) {
      t.latencies.push(Math.max(0, Date.now() - event.data.placed_at));
      if (t.latencies.length > LATENCIES_KEPT) t.latencies.shift();
    }
    if (t.pending && t.pending.firstEventMs === null) {
      t.pending.firstEventMs = performance.now() - t.pending.openedAt;
    }
    countMissed();
    render();
  });
  library.on("repeat", () => {
    t.repeated += 1;
    render();
  });
  library.on("state", ({ state }) => {
    if ((state === "reconnecting" || state === "stopped") && !t.down) {
      // The connection in use failed: the recovery before it is settled.
      settle(t);
      if (t.pending) t.pending.settled = true;
      t.down = true;
      t.drops += 1;
      t.outageGaveUp = 0;
      t.mark = { missed: t.missed, repeated: t.repeated };
    }
    if (state === "stopped") {
      // EventSource gave up for good on an error answer (a 503 from a
      // full, draining or refusing edge): only the library brings it back.
      t.gaveUp += 1;
      t.outageGaveUp += 1;
    }
    t.state = { open: "connected", stopped: "gave-up", closed: "stopped" }[state] || state;
    render();
  });
  library.on("open", ({ extensions, recovery }) => {
    t.extensions = extensions;
    t.openedAtWall = Date.now();
    t.down = false;
    if (recovery) {
      t.pending = {
        ...recovery,
        retryMs: t.retryMs,
        gaveUp: t.outageGaveUp,
        openedAt: performance.now(),
        firstEventMs: null,
        mark: t.mark || { missed: 0, repeated: 0 },
        missed: 0,
        repeated: 0,
        settled: false,
      };
      t.log.push(t.pending);
    }
    render();
  });
  library.watch(auctionId);
}

// --- demo controls: drops and refusals made by the edges ----------------------

const say = (text) => { document.getElementById("demo-status").textContent = text; };
const CONTROLS_OFF = "The demo controls are off on this server (AUCTION_DEMO_CONTROLS).";

/** Asks the edges (through the load balancer) to end this page's
 *  connections: each replica acts only on those it holds, so ask again
 *  until one ended some. An SSE edge's answer tells its `retry:`. */
async function serverDrop(transport, how) {
  for (let attempt = 0; attempt < 8; attempt += 1) {
    const answer = await fetch(`/demo/${transport}/drop?client=${client}&how=${how}`, { method: "POST" });
    if (answer.status === 404) { say(CONTROLS_OFF); return 0; }
    const body = await answer.json().catch(() => ({}));
    if (Number.isInteger(body.retry_ms)) trackers[transport].retryMs = body.retry_ms;
    if (body.ended > 0) { say(`${transport}: ${how} by replica ${body.replica}`); return body.ended; }
  }
  say(`${transport}: no replica held this page's connection`);
  return 0;
}

/** Makes every replica of both edges refuse new streams for `seconds`
 *  (round robin reaches each in turn), then resets both of this page's
 *  connections, which must come back through the refusal. */
async function serverRefuse(seconds) {
  const replicas = new Set();
  for (const transport of ["sse", "ws"]) {
    for (let attempt = 0; attempt < 6; attempt += 1) {
      const answer = await fetch(`/demo/${transport}/refuse?seconds=${seconds}`, { method: "POST" });
      if (answer.status === 404) { say(CONTROLS_OFF); return; }
      const body = await answer.json().catch(() => ({}));
      if (body.replica) replicas.add(`${transport}:${body.replica}`);
    }
  }
  await Promise.all([serverDrop("sse", "reset"), serverDrop("ws", "reset")]);
  say(`${replicas.size} edge replicas refuse new streams for ${seconds} s (503); both connections were reset`);
}

// --- figures ------------------------------------------------------------------

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
const median = (values) => percentile(values, 50);
const ms = (value) => `${Math.round(value)} ms`;
const seconds = (value) => `${(value / 1000).toFixed(1)} s`;

const STATES = {
  connecting: "Connecting",
  connected: "Live",
  reconnecting: "Reconnecting…",
  "gave-up": "EventSource gave up (an error answer, such as a 503); the library starts it again",
  stopped: "Stopped",
};

const bytesFigure = (t) => (t.bids ? `${Math.round(t.bytes / t.bids)} B before compression` : "—");

function compressionFigure(t) {
  if (t.name === "sse") return "none: SSE is not compressed";
  if (t.extensions === null) return "—";
  // The browser inflates each message before the page sees it.
  return t.extensions.includes("permessage-deflate") ? "permessage-deflate: fewer bytes on the wire than shown" : "none";
}

function delayFigure(t) {
  if (t.name === "ws") return "backoff: random up to 250 ms, doubling to 10 s";
  return t.retryMs === null ? "— (told by the edge at a drop)" : `${ms(t.retryMs)} (the edge's retry:)`;
}

/** One recovery in words. */
function describe(t, r) {
  const tries = [];
  if (r.gaveUp) tries.push(`EventSource gave up ${r.gaveUp} time${r.gaveUp === 1 ? "" : "s"}`);
  if (r.attempts > 1) tries.push(`${r.attempts} tries`);
  if (r.pauseBoundMs > 0) tries.push(`the library paused ${ms(r.pausedMs)} of at most ${ms(r.pauseBoundMs)}`);
  else if (t.name === "sse" && r.retryMs !== null) tries.push(`retry delay ${ms(r.retryMs)}`);
  return `reconnected after ${ms(r.downMs)}${tries.length ? ` (${tries.join("; ")})` : ""}, ` +
    `first event ${r.firstEventMs === null ? "not yet" : `${ms(r.firstEventMs)} later`}, ` +
    `${r.missed} missed, ${r.repeated} repeated`;
}

function render() {
  for (const t of [sse, ws]) {
    settle(t);
    const panel = document.getElementById(`panel-${t.name}`);
    const latency = percentile(t.latencies, 50);
    const p95 = percentile(t.latencies, 95);
    const last = t.log.at(-1);
    const rows = [
      ["state", "Connection", STATES[t.state] || t.state],
      ["events", "Events received", String(t.events)],
      ["latency", "Latency, median / p95", latency === null ? "—" : `${latency} ms / ${p95} ms`],
      ["bytes", "Bytes per bid event (average)", bytesFigure(t)],
      ["compression", "Compression", compressionFigure(t)],
      ["delay", t.name === "sse" ? "Retry delay in force" : "Reconnect delay in force", delayFigure(t)],
      ["drops", "Drops", String(t.drops)],
      ["recovery", "Last recovery", last === undefined ? "—" : ms(last.downMs)],
      ["gaveup", "EventSource gave up (restarted by the library)", t.name === "sse" ? String(t.gaveUp) : "—"],
      ["missed", "Events missed", String(t.missed)],
      ["repeated", "Events repeated (dropped by the library)", String(t.repeated)],
    ];
    Object.assign(panel.dataset, {
      state: t.state,
      events: String(t.events),
      delivered: String(t.delivered),
      drops: String(t.drops),
      recoveries: String(t.log.length),
      missed: String(t.missed),
      repeated: String(t.repeated),
      lastId: t.lastId || "",
      gaveUp: String(t.gaveUp),
      retryMs: t.retryMs === null ? "" : String(t.retryMs),
    });
    const log = panel.querySelector("ol.recoveries");
    log.replaceChildren(...t.log.map((r) => {
      const li = document.createElement("li");
      li.textContent = describe(t, r);
      Object.assign(li.dataset, {
        downMs: String(Math.round(r.downMs)),
        attempts: String(r.attempts),
        pausedMs: String(Math.round(r.pausedMs)),
        pauseBoundMs: String(Math.round(r.pauseBoundMs)),
        connectMs: r.connectMs === null ? "" : String(Math.round(r.connectMs)),
        retryMs: r.retryMs === null ? "" : String(r.retryMs),
        gaveUp: String(r.gaveUp),
        firstEventMs: r.firstEventMs === null ? "" : String(Math.round(r.firstEventMs)),
        missed: String(r.missed),
        repeated: String(r.repeated),
      });
      return li;
    }));
    const list = panel.querySelector("dl");
    if (!list.children.length) {
      for (const [key, label] of rows) {
        const dt = document.createElement("dt");
        dt.textContent = label;
        const dd = document.createElement("dd");
        dd.dataset.figure = key;
        list.append(dt, dd);
      }
    }
    for (const [key, , value] of rows) {
      const dd = list.querySelector(`[data-figure="${key}"]`);
      if (dd.textContent !== value) dd.textContent = value;
    }
  }
}

/** What the figures say, in words: each transport's plain recoveries
 *  (one try) against the delay that governs them, the recoveries through
 *  refusals, the bytes, and what was lost. */
function conclude() {
  const parts = [];
  const plain = (t) => t.log.filter((r) => r.attempts === 1 && !r.gaveUp).map((r) => r.downMs);
  const s = median(plain(sse));
  const w = median(plain(ws));
  if (s !== null) {
    const floor = Math.min(...plain(sse));
    parts.push(`SSE came back in ${ms(s)} (median of ${plain(sse).length}), never sooner than ${ms(floor)}: ` +
      `EventSource waits the retry delay the edge sets${sse.retryMs === null ? "" : ` (${ms(sse.retryMs)})`} before it reconnects.`);
  }
  if (w !== null) {
    parts.push(`The WebSocket came back in ${ms(w)} (median of ${plain(ws).length}): the library's backoff, a random pause up to 250 ms at first, then the handshake.`);
  }
  if (s !== null && w !== null) {
    parts.push(w < s ? `After a drop the WebSocket was back ${ms(s - w)} sooner here: its delay is the client's to choose, SSE's the server's.`
      : `After a drop SSE was back as soon as the WebSocket here.`);
  }
  const refused = (t) => t.log.filter((r) => r.attempts > 1 || r.gaveUp);
  for (const t of [sse, ws]) {
    const through = refused(t);
    if (!through.length) continue;
    const last = through.at(-1);
    const what = t.name === "sse"
      ? `EventSource gave up ${last.gaveUp} time${last.gaveUp === 1 ? "" : "s"} on the refusals and only the library's restarts brought SSE back`
      : `the WebSocket's upgrade was refused ${last.attempts - 1} time${last.attempts === 2 ? "" : "s"} and the library's backoff kept trying`;
    parts.push(`Through the last refusal ${what}, after ${seconds(last.downMs)}.`);
  }
  if (sse.bids && ws.bids) {
    parts.push(`Each bid event took ${Math.round(sse.bytes / sse.bids)} B over SSE and ${Math.round(ws.bytes / ws.bids)} B over the WebSocket before compression.`);
  }
  if (parts.length) {
    parts.push(`Missed: SSE ${sse.missed}, WebSocket ${ws.missed}; repeated: SSE ${sse.repeated}, WebSocket ${ws.repeated}.`);
  }
  document.getElementById("conclusion").textContent = parts.length
    ? parts.join(" ")
    : "Reset or refuse the connections to compare how each recovers.";
}
setInterval(conclude, 1000);

/** For tests and the curious: the ids each transport received and its
 *  recoveries. */
window.comparison = {
  ids: (name) => [...trackers[name].ids],
  log: (name) => trackers[name].log.map(({ mark, ...r }) => ({ ...r })),
  client,
};

document.getElementById("auction-name").textContent = auctionId;
document.getElementById("drop-sse").addEventListener("click", () => serverDrop("sse", "reset"));
document.getElementById("drop-ws").addEventListener("click", () => serverDrop("ws", "reset"));
document.getElementById("drop-both").addEventListener("click", () => { serverDrop("sse", "reset"); serverDrop("ws", "reset"); });
document.getElementById("drain-both").addEventListener("click", () => { serverDrop("sse", "drain"); serverDrop("ws", "drain"); });
document.getElementById("refuse").addEventListener("click", () => serverRefuse(10));
render();
conclude();
follow(sse);
follow(ws);
