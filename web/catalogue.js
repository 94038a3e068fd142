// The catalogue: the open auctions (GET /auctions) with their current
// prices, kept live over ONE SSE stream of every listed auction
// (/events?auctions=...), held by the auction client library: it resumes
// every lot after a drop, and when the list grows it opens a new stream
// with the longer list from where each lot was, so no lot misses an event.
import { AuctionClient } from "./auction-client.js";

{
  const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
  /** One page of the listing; a stream carries up to 100 auctions
   *  (AUCTION_SSE_MAX_AUCTIONS_PER_STREAM's default). */
  const MAX_LISTED = 100;
  const REFRESH_MS = 30_000;
  const lots = new Map(); // auction id -> {auction, element}
  const client = new AuctionClient({ transport: "sse" });

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
    let added = false;
    for (const auction of list.filter((a) => a.status === "open").slice(0, MAX_LISTED)) {
      if (lots.size >= MAX_LISTED || lots.has(auction.id)) continue;
      const lot = { auction, element: lotElement(auction) };
      lots.set(auction.id, lot);
      $("lots").append(lot.element);
      render(lot);
      added = true;
    }
    if (added) client.watch([...lots.keys()]); // the new lots join the stream
    $("empty").hidden = lots.size > 0;
    $("catalogue").dataset.phase = "ready";
  }

  /** An event of the stream: `data.auction` is the lot's id in a bid, the
   *  auction itself in init, opened and closed. */
  client.on("event", ({ type, auction, data }) => {
    const lot = lots.get(auction);
    if (!lot) return;
    if (type === "bid") lot.auction.current = data;
    else if (["init", "opened", "closed"].includes(type)) lot.auction = data.auction;
    else return;
    render(lot);
  });
  client.on("state", ({ state }) => {
    if (state === "open") setConnection("connected", "Live");
    else if (state === "connecting") setConnection("connecting", "Connecting");
    else if (state !== "closed") setConnection("reconnecting", "Reconnecting…");
  });

  refresh();
  setInterval(refresh, REFRESH_MS);
  setInterval(() => lots.forEach(tick), 1000);
}
