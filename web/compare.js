// The comparison page: one auction followed over SSE and over a WebSocket
// at once, with per-transport figures (latency from `placed_at`, bytes per
// event, time to recover after a drop, events missed).
"use strict";

(() => {
  const auctionId = new URLSearchParams(location.search).get("auction") || "1234";
  const encoder = new TextEncoder();
  const LATENCIES_KEPT = 200;
  const IDS_KEPT = 5000;
  // This page's own connections, as the edges' demo controls know them.
  const client = `cmp-${Math.random().toString(36).slice(2, 12)}`;

  const compareIds = (a, b) => {
    const [am, as] = a.split("-").map(BigInt);
    const [bm, bs] = b.split("-").map(BigInt);
    if (am !== bm) return am < bm ? -1 : 1;
    if (as !== bs) return as < bs ? -1 : 1;
    return 0;
  };

  /** One transport's counters; `render` writes them into its panel. */
  function tracker(name) {
    return {
      name,
      state: "connecting",
      events: 0,
      bids: 0,
      bytes: 0, // of bid events
      latencies: [],
      ids: [], // event ids received in order (bounded)
      idSet: new Set(),
      firstId: null,
      lastId: null,
      resumeId: null, // the newest id seen, `init`'s included: where to resume
      duplicates: 0,
      outOfOrder: 0,
      drops: 0,
      droppedAt: null,
      recoveries: [], // ms
      log: [], // every recovery: {reconnect, firstEvent, missed, repeated}
      pending: null, // the recovery waiting for its first event
      missed: 0,
      gaveUp: 0, // EventSource closed for good (an error answer)
    };
  }
  const sse = tracker("sse");
  const ws = tracker("ws");

  /** Books one event; `bytes` is its encoded size on the wire. */
  function record(t, kind, id, payload, bytes, resumeId) {
    if (resumeId && (!t.resumeId || compareIds(resumeId, t.resumeId) > 0)) t.resumeId = resumeId;
    t.events += 1;
    if (kind === "bid") {
      // Bids are what fan-out repeats to every watcher: their size is the cost.
      t.bids += 1;
      t.bytes += bytes;
    }
    if (id) {
      if (t.idSet.has(id)) t.duplicates += 1;
      else if (t.lastId && compareIds(id, t.lastId) < 0) t.outOfOrder += 1;
      if (!t.idSet.has(id)) {
        t.ids.push(id);
        t.idSet.add(id);
        if (t.ids.length > IDS_KEPT) t.idSet.delete(t.ids.shift());
      }
      if (!t.firstId) t.firstId = id;
      if (!t.lastId || compareIds(id, t.lastId) > 0) t.lastId = id;
    }
    if (kind === "bid" && payload && payload.placed_at) {
      t.latencies.push(Math.max(0, Date.now() - payload.placed_at));
      if (t.latencies.length > LATENCIES_KEPT) t.latencies.shift();
    }
    countMissed();
    if (t.pending && t.pending.firstEvent === null) {
      t.pending.firstEvent = Math.round(performance.now() - t.pending.at);
    }
    render();
  }

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

  function dropped(t) {
    if (t.pending) settle(t);
    t.mark = { missed: t.missed, repeated: t.duplicates + t.outOfOrder };
    t.drops += 1;
    t.droppedAt = performance.now();
    t.state = "reconnecting";
    render();
  }

  function reopened(t) {
    if (t.droppedAt !== null) {
      const reconnect = Math.round(performance.now() - t.droppedAt);
      t.recoveries.push(reconnect);
      t.pending = { at: t.droppedAt, reconnect, firstEvent: null };
      t.log.push(t.pending);
      t.droppedAt = null;
    }
    t.state = "connected";
    render();
  }

  // --- SSE ------------------------------------------------------------------

  const sseBase = `/auctions/${encodeURIComponent(auctionId)}/events`;
  let source = null;

  function sseFrameBytes(event) {
    const text = `${event.lastEventId ? `id: ${event.lastEventId}\n` : ""}event: ${event.type}\ndata: ${event.data}\n\n`;
    return encoder.encode(text).length;
  }

  function openSse() {
    const url = sse.resumeId
      ? `${sseBase}?demo=${client}&lastEventId=${encodeURIComponent(sse.resumeId)}`
      : `${sseBase}?demo=${client}`;
    source = new EventSource(url);
    source.addEventListener("open", () => reopened(sse));
    for (const kind of ["init", "bid", "closed", "opened"]) {
      source.addEventListener(kind, (event) => {
        let payload = null;
        try { payload = JSON.parse(event.data); } catch (_) { return; }
        record(sse, kind, kind === "init" ? null : event.lastEventId, payload, sseFrameBytes(event), event.lastEventId);
      });
    }
    source.addEventListener("error", () => {
      // CONNECTING: the browser's own reconnection has begun.
      if (source.readyState === EventSource.CONNECTING && sse.droppedAt === null) dropped(sse);
      if (source.readyState === EventSource.CLOSED) {
        // EventSource gives up for good on an error answer (a 503 from a
        // full, draining or refusing edge): this page starts it again
        // itself, after a backoff.
        if (sse.droppedAt === null) dropped(sse);
        sse.gaveUp += 1;
        sse.state = "gave-up";
        render();
        setTimeout(openSse, 1000 + Math.random() * 1000);
      }
    });
  }

  /** Books what a recovery cost once the next drop comes (or now). */
  function settle(t) {
    if (!t.pending || !t.mark) return;
    t.pending.missed = t.missed - t.mark.missed;
    t.pending.repeated = t.duplicates + t.outOfOrder - t.mark.repeated;
    t.pending = null;
  }

  // --- WebSocket ----------------------------------------------------------------

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let socket = null;
  let attempt = 0;

  function wsFrameBytes(text) {
    const length = encoder.encode(text).length;
    return length + (length <= 125 ? 2 : length <= 0xffff ? 4 : 10);
  }

  function openWs() {
    socket = new WebSocket(`${scheme}://${location.host}/ws?demo=${client}`);
    socket.addEventListener("open", () => {
      attempt = 0;
      const message = { type: "subscribe", auction: auctionId };
      if (ws.resumeId) message.last_id = ws.resumeId;
      socket.send(JSON.stringify(message));
      reopened(ws);
    });
    socket.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (_) { return; }
      if (!["init", "bid", "closed", "opened"].includes(message.type)) return;
      record(ws, message.type, message.type === "init" ? null : message.id, message.payload, wsFrameBytes(event.data), message.id);
    });
    socket.addEventListener("close", () => {
      if (ws.droppedAt === null) dropped(ws);
      const ceiling = Math.min(10000, 250 * 2 ** attempt);
      attempt += 1;
      setTimeout(openWs, Math.random() * ceiling);
    });
  }

  // --- demo controls: drops and refusals made by the edges ----------------------

  const say = (text) => { document.getElementById("demo-status").textContent = text; };

  /** Asks the edges (through the load balancer) to end this page's
   *  connections: each replica acts only on those it holds, so ask again
   *  until one ended some. */
  async function serverDrop(transport, how) {
    for (let attempt = 0; attempt < 8; attempt += 1) {
      const answer = await fetch(`/demo/${transport}/drop?client=${client}&how=${how}`, { method: "POST" });
      if (answer.status === 404) { say("The demo controls are off on this server (AUCTION_DEMO_CONTROLS)."); return 0; }
      const body = await answer.json().catch(() => ({}));
      if (body.ended > 0) { say(`${transport}: ${how} by replica ${body.replica}`); return body.ended; }
    }
    say(`${transport}: no replica held this page's connection`);
    return 0;
  }

  /** Makes every replica of both edges refuse new streams for `seconds`:
   *  round robin reaches each in turn. */
  async function serverRefuse(seconds) {
    const replicas = new Set();
    for (const transport of ["sse", "ws"]) {
      for (let attempt = 0; attempt < 6; attempt += 1) {
        const answer = await fetch(`/demo/${transport}/refuse?seconds=${seconds}`, { method: "POST" });
        if (answer.status === 404) { say("The demo controls are off on this server (AUCTION_DEMO_CONTROLS)."); return; }
        const body = await answer.json().catch(() => ({}));
        if (body.replica) replicas.add(`${transport}:${body.replica}`);
      }
    }
    say(`${replicas.size} edge replicas refuse new streams for ${seconds} s`);
  }

  // --- figures ------------------------------------------------------------------

  function percentile(values, p) {
    if (!values.length) return null;
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
  }

  const STATES = { connecting: "Connecting", connected: "Live", reconnecting: "Reconnecting…", stopped: "Stopped", "gave-up": "EventSource gave up; the page retries" };

  function render() {
    for (const t of [sse, ws]) {
      const panel = document.getElementById(`panel-${t.name}`);
      const median = percentile(t.latencies, 50);
      const p95 = percentile(t.latencies, 95);
      const lastRecovery = t.recoveries.at(-1);
      const rows = [
        ["state", "Connection", STATES[t.state] || t.state],
        ["events", "Events received", String(t.events)],
        ["latency", "Latency, median / p95", median === null ? "—" : `${median} ms / ${p95} ms`],
        ["bytes", "Bytes per bid event (average)", t.bids ? `${Math.round(t.bytes / t.bids)} B` : "—"],
        ["drops", "Drops", String(t.drops)],
        ["recovery", "Last recovery", lastRecovery === undefined ? "—" : `${lastRecovery} ms`],
        ["gaveup", "EventSource gave up (restarted by the page)", t.name === "sse" ? String(t.gaveUp) : "—"],
        ["missed", "Events missed", String(t.missed)],
        ["duplicates", "Duplicates / out of order", `${t.duplicates} / ${t.outOfOrder}`],
      ];
      panel.dataset.state = t.state;
      panel.dataset.events = String(t.events);
      panel.dataset.drops = String(t.drops);
      panel.dataset.recoveries = String(t.recoveries.length);
      panel.dataset.missed = String(t.missed);
      panel.dataset.duplicates = String(t.duplicates + t.outOfOrder);
      panel.dataset.lastId = t.lastId || "";
      panel.dataset.gaveUp = String(t.gaveUp);
      const log = panel.querySelector("ol.recoveries");
      if (log) {
        log.replaceChildren(...t.log.map((r) => {
          const li = document.createElement("li");
          li.textContent = `reconnected after ${r.reconnect} ms, first event after ${r.firstEvent === null ? "—" : `${r.firstEvent} ms`}` +
            (r.missed === undefined ? "" : `, ${r.missed} missed, ${r.repeated} repeated`);
          return li;
        }));
      }
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

  const median = (values) => percentile(values, 50);

  /** What the figures say, in words. */
  function conclude() {
    const s = median(sse.recoveries);
    const w = median(ws.recoveries);
    const parts = [];
    if (s !== null) parts.push(`SSE came back in ${s} ms (median of ${sse.recoveries.length}): EventSource waits its retry delay (retry: from the server, 2 s by default) before it reconnects.`);
    if (w !== null) parts.push(`The WebSocket came back in ${w} ms (median of ${ws.recoveries.length}): this page's backoff, 0.25 s doubling, decides.`);
    if (sse.gaveUp) parts.push(`EventSource gave up ${sse.gaveUp} time(s) on an error answer; only the page's own code brought it back.`);
    if (sse.bids && ws.bids) parts.push(`SSE spent ${Math.round(sse.bytes / sse.bids)} B per bid, the WebSocket ${Math.round(ws.bytes / ws.bids)} B.`);
    if (parts.length) parts.push(`Missed: SSE ${sse.missed}, WebSocket ${ws.missed}; repeated: SSE ${sse.duplicates}, WebSocket ${ws.duplicates}.`);
    const element = document.getElementById("conclusion");
    if (element) element.textContent = parts.length ? parts.join(" ") : "Drop or refuse the connections to compare how each recovers.";
  }
  setInterval(conclude, 1000);

  /** For tests and the curious: every id each transport received. */
  window.comparison = {
    ids: (name) => [...(name === "sse" ? sse : ws).ids],
    recoveries: (name) => [...(name === "sse" ? sse : ws).recoveries],
    log: (name) => (name === "sse" ? sse : ws).log.map((r) => ({ ...r })),
    client,
  };

  document.getElementById("auction-name").textContent = auctionId;
  document.getElementById("drop-sse").addEventListener("click", () => serverDrop("sse", "reset"));
  document.getElementById("drop-ws").addEventListener("click", () => serverDrop("ws", "reset"));
  document.getElementById("drop-both").addEventListener("click", () => { serverDrop("sse", "reset"); serverDrop("ws", "reset"); });
  document.getElementById("drain-both").addEventListener("click", () => { serverDrop("sse", "drain"); serverDrop("ws", "drain"); });
  document.getElementById("refuse").addEventListener("click", () => serverRefuse(10));
  render();
  openSse();
  openWs();
})();
