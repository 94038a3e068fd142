// The SSE page: EventSource with named events. The browser reconnects by
// itself and sends Last-Event-ID; the edge replays what was missed. Bids go
// by HTTP POST to the bidder; the page updates from the stream only.
"use strict";

(() => {
  const url = `/auctions/${encodeURIComponent(Auction.auctionId)}/events`;
  let source = null;
  let everConnected = false;
  let sawInit = false;

  function connect() {
    Auction.setConnection("connecting");
    // A fresh EventSource cannot set Last-Event-ID: the query carries it.
    const resume = Auction.lastId ? `?lastEventId=${encodeURIComponent(Auction.lastId)}` : "";
    source = new EventSource(url + resume);
    source.addEventListener("open", () => {
      // After a reconnect, no `init` means the edge replayed from our id.
      sawInit = false;
      // The first connection says "Live" only when its `init` has drawn the
      // auction: until then the page shows nothing current.
      if (everConnected) {
        setTimeout(() => { if (!sawInit) Auction.setConnection("resumed"); }, 300);
      }
      everConnected = true;
    });
    source.addEventListener("init", (event) => {
      sawInit = true;
      const payload = JSON.parse(event.data);
      Auction.onInit(payload, event.lastEventId);
      Auction.setConnection(payload.reset ? "reset" : "connected");
      if (payload.reset) setTimeout(() => Auction.setConnection("connected"), 1500);
    });
    source.addEventListener("bid", (event) => Auction.onBid(JSON.parse(event.data), event.lastEventId));
    source.addEventListener("viewers", (event) => Auction.onViewers(JSON.parse(event.data).count));
    source.addEventListener("closed", (event) => Auction.onAuction("closed", JSON.parse(event.data), event.lastEventId));
    source.addEventListener("opened", (event) => Auction.onAuction("opened", JSON.parse(event.data), event.lastEventId));
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

  Auction.setupForm(Auction.postBid);

  connect();
})();
