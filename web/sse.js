// The SSE page. Every auction tab of the browser shares one stream (the
// SharedWorker of shared-stream.js holds `/events?auctions=...` for them
// all and hands this page its auction's events); without SharedWorker the
// page opens its own EventSource. Either way the browser reconnects by
// itself and sends Last-Event-ID; the edge replays what was missed. Bids
// go by HTTP POST to the bidder; the page updates from the stream only.
"use strict";

(() => {
  const url = `/auctions/${encodeURIComponent(Auction.auctionId)}/events`;
  let source = null;
  let everConnected = false;
  let sawInit = false;

  /** The connection is open: after a reconnect, no `init` means the edge
   *  replayed from our id. */
  function onOpen() {
    sawInit = false;
    // The first connection says "Live" only when its `init` has drawn the
    // auction: until then the page shows nothing current.
    if (everConnected) {
      setTimeout(() => { if (!sawInit) Auction.setConnection("resumed"); }, 300);
    }
    everConnected = true;
  }

  /** One event of this auction: its kind, data text and event id. */
  function onEvent(kind, text, id) {
    const payload = JSON.parse(text);
    switch (kind) {
      case "init":
        sawInit = true;
        Auction.onInit(payload, id);
        Auction.setConnection(payload.reset ? "reset" : "connected");
        if (payload.reset) setTimeout(() => Auction.setConnection("connected"), 1500);
        break;
      case "bid":
        Auction.onBid(payload, id);
        break;
      case "viewers":
        Auction.onViewers(payload.count);
        break;
      case "closed":
      case "opened":
        Auction.onAuction(kind, payload, id);
        break;
      case "extended":
        Auction.onExtended(payload, id);
        break;
      case "admin":
        Auction.onAdmin(payload, id);
        break;
    }
  }

  /** This page's own EventSource (no SharedWorker). */
  function connect() {
    Auction.setConnection("connecting");
    // A fresh EventSource cannot set Last-Event-ID: the query carries it.
    const resume = Auction.lastId ? `?lastEventId=${encodeURIComponent(Auction.lastId)}` : "";
    source = new EventSource(url + resume);
    source.addEventListener("open", onOpen);
    for (const kind of ["init", "bid", "viewers", "closed", "opened", "extended", "admin"]) {
      source.addEventListener(kind, (event) => onEvent(kind, event.data, event.lastEventId));
    }
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // A non-200 answer (404 for an unknown auction, a 503 nginx could not
        // retry elsewhere) stops EventSource for good. Unless the auction is
        // gone, start a new one from our last id after a pause.
        Auction.setConnection("stopped", "retrying shortly");
        Auction.checkExists().then((exists) => {
          if (exists) setTimeout(connect, 2000 + Math.random() * 3000);
        });
      } else {
        Auction.setConnection("reconnecting");
      }
    });
  }

  /** The shared stream's messages for this page. */
  function onShared(message) {
    if (message.type === "sse") {
      if (message.kind === "gone") gone();
      else onEvent(message.kind, message.data, message.id);
    } else if (message.type === "state" && message.transport === "sse") {
      if (message.state === "open") onOpen();
      else if (message.state === "reconnecting") Auction.setConnection("reconnecting");
      else if (message.state === "stopped") {
        // Refused; the worker asks again after a pause. If this auction
        // does not exist, the page says so and stops watching it.
        Auction.setConnection("stopped", "retrying shortly");
        Auction.checkExists().then((exists) => { if (!exists) shared.postMessage({ type: "unwatch" }); });
      }
    }
  }

  /** The auction vanished from the shared stream: unless it is back, show
   *  so; if it is, watch it again. */
  function gone() {
    Auction.checkExists().then((exists) => {
      if (exists) setTimeout(() => shared.postMessage({ type: "watch", transport: "sse", auction: Auction.auctionId }), 2000);
    });
  }

  Auction.setupForm(Auction.postBid);

  const shared = Auction.sharedConnection(onShared, connect);
  if (!shared) connect();
})();
