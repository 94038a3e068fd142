// The origin's one connection per transport, shared by every auction page
// of the browser (a module SharedWorker). A browser allows six HTTP/1.1
// connections per origin and an EventSource holds one: without this, a
// seventh auction tab never loads. Here every tab's auction goes on ONE
// client of the auction client library (auction-client.js) per transport:
// for "sse" one `/events?auctions=...` stream, for "ws" (the library's
// "auto": a WebSocket, or SSE and HTTP POST where WebSockets are refused)
// one socket. Each tab gets the events of its own auction, as from a
// connection of its own.
//
// Tabs post: {type: "watch", transport, auction}, {type: "unwatch"},
// {type: "leave"} (pagehide), {type: "token", token} and {type: "bid", id,
// auction, request, key, token, bidder, bidderUrl}. The worker posts: {type: "alone"}
// (no room for another auction: the tab connects by itself), {type:
// "state", state, transport} (the library's), {type: "event", event} (the
// library's, with the auction's own id), {type: "refused", auction, error},
// {type: "session", session}, and for a bid {type: "retry", id} while its
// outcome is unsettled and {type: "bid", id, result}.
import { AuctionClient } from "./auction-client.js";

/** The most auctions one stream carries (the edge's
 *  AUCTION_SSE_MAX_AUCTIONS_PER_STREAM default). */
const MAX_AUCTIONS = 100;

/** port -> {mode, auction}: what each tab watches. */
const tabs = new Map();
/** mode ("sse" or "auto") -> {client, audience: auction -> Map(port -> ready), state}. */
const shared = new Map();

function group(mode) {
  if (shared.has(mode)) return shared.get(mode);
  const client = new AuctionClient({ transport: mode });
  const entry = { client, audience: new Map(), state: null };
  const everyone = () => {
    const all = new Set();
    for (const ports of entry.audience.values()) for (const port of ports.keys()) all.add(port);
    return all;
  };
  client.on("state", (state) => {
    entry.state = state;
    for (const port of everyone()) port.postMessage({ type: "state", ...state });
  });
  client.on("event", (event) => {
    const ports = entry.audience.get(event.auction);
    if (!ports) return;
    // A tab gets nothing of its auction before that auction's `init`.
    for (const [port, ready] of ports) {
      if (event.type === "init") ports.set(port, true);
      else if (!ready) continue;
      port.postMessage({ type: "event", event });
    }
    if (event.type === "gone") {
      // That auction's watch has ended; its tabs ask again.
      for (const port of [...ports.keys()]) unwatch(port);
    }
  });
  client.on("refused", ({ auction, error }) => {
    for (const port of [...(entry.audience.get(auction)?.keys() || [])]) {
      port.postMessage({ type: "refused", auction, error });
      unwatch(port);
    }
  });
  client.on("session", (session) => {
    for (const port of everyone()) port.postMessage({ type: "session", session });
  });
  shared.set(mode, entry);
  return entry;
}

function watch(port, mode, auction) {
  unwatch(port);
  const entry = group(mode);
  if (!entry.audience.has(auction) && entry.audience.size >= MAX_AUCTIONS) {
    // One stream cannot take another auction: this tab connects by itself.
    port.postMessage({ type: "alone" });
    return;
  }
  tabs.set(port, { mode, auction });
  const known = entry.audience.has(auction);
  if (!known) entry.audience.set(auction, new Map());
  entry.audience.get(auction).set(port, false);
  if (entry.state && entry.state.state !== "connecting") port.postMessage({ type: "state", ...entry.state });
  // A tab joining a watched auction gets a fresh `init` (so do the others).
  entry.client.watch(auction, { fresh: known });
}

function unwatch(port) {
  const tab = tabs.get(port);
  if (!tab) return;
  tabs.delete(port);
  const entry = shared.get(tab.mode);
  const ports = entry.audience.get(tab.auction);
  if (!ports) return;
  ports.delete(port);
  if (ports.size === 0) {
    entry.audience.delete(tab.auction);
    entry.client.unwatch(tab.auction);
  }
}

async function bid(port, { id, auction, request, key, token, bidder, bidderUrl }) {
  const tab = tabs.get(port);
  const entry = group(tab ? tab.mode : "sse");
  const result = await entry.client.bid(auction, request, {
    key, token, bidder, bidderUrl: bidderUrl || "", onRetry: () => port.postMessage({ type: "retry", id }),
  });
  port.postMessage({ type: "bid", id, result });
}

self.addEventListener("connect", (event) => {
  const port = event.ports[0];
  port.addEventListener("message", ({ data }) => {
    switch (data && data.type) {
      case "watch":
        watch(port, data.transport === "ws" ? "auto" : "sse", String(data.auction));
        break;
      case "unwatch":
      case "leave":
        unwatch(port);
        break;
      case "token": {
        const tab = tabs.get(port);
        if (tab && data.token) group(tab.mode).client.setToken(data.token);
        break;
      }
      case "bid":
        bid(port, data);
        break;
    }
  });
  port.start();
  port.postMessage({ type: "hello" });
});
