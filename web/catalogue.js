// The catalogue: the open auctions (GET /auctions) with their current
// prices, kept live over ONE WebSocket subscribed to every listed auction.
// On a dropped socket it reconnects with backoff and resubscribes each
// auction from its last event id, like the auction page.
"use strict";

(() => {
  const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
  /** ws-edge allows 64 subscriptions per socket (AUCTION_WS_MAX_SUBSCRIPTIONS). */
  const MAX_LISTED = 60;
  const REFRESH_MS = 30_000;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const lots = new Map(); // auction id -> {auction, lastId, element}
  let socket = null;
  let attempt = 0;

  const $ = (id) => document.getElementById(id);
  const format = (cents) => money.format(Number(cents) / 100);

  function setConnection(state, text) {
    $("connection").dataset.state = state;
    $("connection").textContent = text;
  }

  function lotElement(auction) {
    const li = document.createElement("li");
    li.className = "card";
    li.dataset.auction = auction.id;
    if (auction.image_url) {
      const image = document.createElement("img");
      image.src = auction.image_url;
      image.alt = "";
      li.append(image);
    }
    const title = document.createElement("a");
    title.href = `/?auction=${encodeURIComponent(auction.id)}`;
    title.className = "lot-title";
    title.textContent = auction.title;
    const label = document.createElement("span");
    label.className = "lot-label muted";
    const price = document.createElement("span");
    price.className = "lot-price";
    const ends = document.createElement("span");
    ends.className = "lot-ends muted";
    li.append(title, label, price, ends);
    return li;
  }

  function render(lot) {
    const { auction, element } = lot;
    const current = auction.current;
    element.dataset.status = auction.status;
    element.dataset.amount = String(current ? current.amount : auction.starting_price);
    element.querySelector(".lot-label").textContent = auction.status === "closed"
      ? (current ? "Sold for" : "Ended without bids")
      : (current ? "Current bid" : "Starting price");
    element.querySelector(".lot-price").textContent = format(current ? current.amount : auction.starting_price);
    tick(lot);
  }

  function tick(lot) {
    const { auction, element } = lot;
    const left = auction.ends_at - Date.now();
    element.querySelector(".lot-ends").textContent = auction.status === "closed"
      ? "Ended"
      : left < 60_000 ? "Ending in under a minute" : `Ends in ${Math.ceil(left / 60_000)} min`;
  }

  function subscribe(lot) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const message = { type: "subscribe", auction: lot.auction.id };
    if (lot.lastId) message.last_id = lot.lastId;
    socket.send(JSON.stringify(message));
  }

  /** Lists the open auctions; new ones are added and subscribed. */
  async function refresh() {
    let list;
    try {
      // One page of the newest auctions is plenty: at most MAX_LISTED show.
      const response = await fetch("/auctions?limit=100");
      if (!response.ok) throw new Error(String(response.status));
      list = (await response.json()).auctions || [];
    } catch (_) {
      return; // the next refresh tries again
    }
    for (const auction of list.filter((a) => a.status === "open").slice(0, MAX_LISTED)) {
      if (lots.size >= MAX_LISTED || lots.has(auction.id)) continue;
      const lot = { auction, lastId: null, element: lotElement(auction) };
      lots.set(auction.id, lot);
      $("lots").append(lot.element);
      render(lot);
      subscribe(lot);
    }
    $("empty").hidden = lots.size > 0;
    $("catalogue").dataset.phase = "ready";
  }

  function onMessage(message) {
    const lot = lots.get(message.auction);
    if (!lot) return;
    if (message.id) lot.lastId = message.id;
    switch (message.type) {
      case "init":
      case "closed":
      case "opened":
        lot.auction = message.payload.auction;
        break;
      case "bid":
        lot.auction.current = message.payload;
        break;
      default:
        return;
    }
    render(lot);
  }

  function connect() {
    setConnection(attempt ? "reconnecting" : "connecting", attempt ? "Reconnecting…" : "Connecting");
    socket = new WebSocket(`${scheme}://${location.host}/ws`);
    socket.addEventListener("open", () => {
      attempt = 0;
      setConnection("connected", "Live");
      for (const lot of lots.values()) subscribe(lot);
    });
    socket.addEventListener("message", (event) => {
      try { onMessage(JSON.parse(event.data)); } catch (_) { /* not ours */ }
    });
    socket.addEventListener("close", () => {
      // Exponential backoff with full jitter: 0.25 s doubling to 10 s.
      const ceiling = Math.min(10000, 250 * 2 ** attempt);
      attempt += 1;
      setConnection("reconnecting", "Reconnecting…");
      setTimeout(connect, Math.random() * ceiling);
    });
  }

  connect();
  refresh();
  setInterval(refresh, REFRESH_MS);
  setInterval(() => lots.forEach(tick), 1000);
})();
