// The comparison page: one auction followed over SSE and over a WebSocket
// at once, with per-transport figures (latency from `placed_at`, bytes per
// event, time to recover after a drop, events missed).
"use strict";

(() => {
  const auctionId = new URLSearchParams(location.search).get("auction") || "1234";
  const encoder = new TextEncoder();
  const LATENCIES_KEPT = 200;
  const IDS_KEPT = 5000;

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
      missed: 0,
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
    t.drops += 1;
    t.droppedAt = performance.now();
    t.state = "reconnecting";
    render();
  }

  function reopened(t) {
    if (t.droppedAt !== null) {
      t.recoveries.push(Math.round(performance.now() - t.droppedAt));
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
    const url = sse.resumeId ? `${sseBase}?lastEventId=${encodeURIComponent(sse.resumeId)}` : sseBase;
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
      if (source.readyState === EventSource.CLOSED) { sse.state = "stopped"; render(); }
    });
  }

  function dropSse() {
    source.close();
    dropped(sse);
    openSse();
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
    socket = new WebSocket(`${scheme}://${location.host}/ws`);
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

  function dropWs() {
    // The close handler books the drop and reconnects.
    if (socket && socket.readyState === WebSocket.OPEN) socket.close(4000, "dropped from the page");
  }

  // --- figures ------------------------------------------------------------------

  function percentile(values, p) {
    if (!values.length) return null;
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
  }

  const STATES = { connecting: "Connecting", connected: "Live", reconnecting: "Reconnecting…", stopped: "Stopped" };

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

  /** For tests and the curious: every id each transport received. */
  window.comparison = {
    ids: (name) => [...(name === "sse" ? sse : ws).ids],
    recoveries: (name) => [...(name === "sse" ? sse : ws).recoveries],
  };

  document.getElementById("auction-name").textContent = auctionId;
  document.getElementById("drop-sse").addEventListener("click", dropSse);
  document.getElementById("drop-ws").addEventListener("click", dropWs);
  document.getElementById("drop-both").addEventListener("click", () => { dropSse(); dropWs(); });
  render();
  openSse();
  openWs();
})();
