// Shared by the SSE and WebSocket pages: state, rendering, the bid form.
// No framework, no build step. The transport scripts call `Auction.*`.
"use strict";

const Auction = (() => {
  const config = readConfig();
  const auctionId = new URLSearchParams(location.search).get("auction") || "1234";
  const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
  const MAX_HISTORY = 50;

  let auction = null; // the contract's Auction
  let history = []; // bids, newest first
  const seen = new Set(); // event ids already rendered
  let lastId = null;

  const $ = (id) => document.getElementById(id);

  function readConfig() {
    try {
      const parsed = JSON.parse(document.getElementById("auction-config").textContent);
      return { bidderUrl: "", transport: "sse", ...parsed };
    } catch (_) {
      return { bidderUrl: "", transport: "sse" };
    }
  }

  /** Compares two stream ids "<ms>-<seq>" as number pairs. */
  function compareIds(a, b) {
    const [am, as] = a.split("-").map(BigInt);
    const [bm, bs] = b.split("-").map(BigInt);
    if (am !== bm) return am < bm ? -1 : 1;
    if (as !== bs) return as < bs ? -1 : 1;
    return 0;
  }

  /** Integer cents to "$1,234.56" (display only). */
  function formatCents(cents) {
    return money.format(Number(cents) / 100);
  }

  /** "351.00" or "351" to 35100 cents, by string parsing: no float maths. */
  function parseCents(text) {
    const match = /^\s*\$?\s*(\d{1,10})(?:[.,](\d{1,2}))?\s*$/.exec(text.replace(/,(?=\d{3}\b)/g, ""));
    if (!match) return null;
    const cents = BigInt(match[1]) * 100n + BigInt((match[2] || "0").padEnd(2, "0"));
    return cents > 0n ? Number(cents) : null;
  }

  function minNext() {
    if (!auction) return null;
    return auction.current ? auction.current.amount + auction.min_increment : auction.starting_price;
  }

  function relative(ms) {
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ago`;
    return `${Math.floor(minutes / 60)} h ago`;
  }

  function countdown() {
    if (!auction) return "";
    if (auction.status === "closed") return "ended";
    const left = Math.max(0, auction.ends_at - Date.now());
    const s = Math.floor(left / 1000);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? `${h}h ` : "") + `${String(m).padStart(2, "0")}m ${String(sec).padStart(2, "0")}s`;
  }

  function rememberId(id) {
    if (!id) return;
    if (!lastId || compareIds(id, lastId) > 0) lastId = id;
    document.body.dataset.lastEventId = lastId;
  }

  function renderAuction() {
    if (!auction) return;
    $("title").textContent = auction.title;
    document.title = `${auction.title} · live auction`;
    const current = auction.current;
    $("current-amount").textContent = formatCents(current ? current.amount : auction.starting_price);
    $("current-label").textContent = current ? "Current bid" : "Starting price";
    $("current-bidder").textContent = current ? `by ${current.bidder}` : "no bids yet";
    $("status").textContent = auction.status;
    $("status").dataset.status = auction.status;
    $("winner").textContent = auction.status === "closed"
      ? (current ? `Won by ${current.bidder} at ${formatCents(current.amount)}` : "Closed without bids")
      : "";
    $("bid-submit").disabled = auction.status !== "open";
    const amountInput = $("bid-amount");
    if (document.activeElement !== amountInput && minNext() !== null) {
      amountInput.value = (minNext() / 100).toFixed(2);
    }
    $("min-next").textContent = minNext() !== null ? `Minimum next bid: ${formatCents(minNext())}` : "";
    tick();
  }

  function renderHistory() {
    const list = $("history");
    list.replaceChildren(...history.map((bid) => {
      const li = document.createElement("li");
      li.dataset.id = bid.id || "";
      li.dataset.amount = String(bid.amount);
      li.dataset.bidder = bid.bidder;
      li.dataset.placedAt = String(bid.placed_at);
      li.innerHTML = `<span class="amount"></span><span class="when"></span><span class="who"></span>`;
      li.querySelector(".amount").textContent = formatCents(bid.amount);
      li.querySelector(".who").textContent = bid.bidder + (bid.source === "simulated" ? " (simulated)" : "");
      li.querySelector(".when").textContent = relative(bid.placed_at);
      return li;
    }));
    $("history-empty").hidden = history.length > 0;
  }

  function tick() {
    $("countdown").textContent = countdown();
    for (const li of $("history").children) {
      li.querySelector(".when").textContent = relative(Number(li.dataset.placedAt));
    }
  }

  /** `init`: replace everything. History entries from init carry no id. */
  function onInit(payload, id) {
    auction = payload.auction;
    history = (payload.history || []).slice(0, MAX_HISTORY).map((bid) => ({ ...bid }));
    seen.clear();
    rememberId(id);
    renderAuction();
    renderHistory();
  }

  /** A live or replayed `bid`. Duplicates (by id) are ignored. */
  function onBid(bid, id) {
    if (id) {
      if (seen.has(id) || (lastId && compareIds(id, lastId) <= 0)) return;
      seen.add(id);
    }
    rememberId(id);
    history.unshift({ ...bid, id });
    history = history.slice(0, MAX_HISTORY);
    if (auction) auction.current = bid;
    renderAuction();
    renderHistory();
  }

  /** `closed` or `opened` (a new round): the auction state changes. */
  function onAuction(kind, payload, id) {
    if (id && lastId && compareIds(id, lastId) <= 0) return;
    rememberId(id);
    auction = payload.auction;
    if (kind === "opened") history = [];
    renderAuction();
    renderHistory();
  }

  const STATES = {
    connecting: "Connecting",
    connected: "Live",
    reconnecting: "Reconnecting…",
    resumed: "Live (resumed, nothing missed)",
    reset: "Live (reloaded from the latest state)",
    stopped: "Disconnected",
  };

  function setConnection(state, detail) {
    const element = $("connection");
    element.dataset.state = state;
    const transport = config.transport === "ws" ? "WebSocket" : "Server-Sent Events";
    element.textContent = `${STATES[state] || state} · ${transport}${detail ? ` · ${detail}` : ""}`;
  }

  function showError(text) {
    $("bid-error").textContent = text || "";
    if (text) $("bid-note").textContent = "";
  }

  function describeError(body) {
    switch (body && body.error) {
      case "bid_too_low":
        return `Bid too low: the minimum is ${formatCents(body.min_next)}.`;
      case "auction_closed":
        return "This auction has closed.";
      case "rate_limited":
        return "Too many bids at once; wait a moment and try again.";
      case "redis_unavailable":
      case "bidder_unavailable":
        return "Bidding is briefly unavailable; try again in a moment.";
      default:
        return (body && body.message) || "The bid was not accepted.";
    }
  }

  /** Wires the form; `send({amount, bidder})` returns a promise of
   *  `{ok: true}` or `{ok: false, body}`. The page updates from the stream. */
  function setupForm(send) {
    const name = $("bidder-name");
    name.value = localStorage.getItem("auction.bidder") || "";
    $("bid-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const bidder = name.value.trim();
      const amount = parseCents($("bid-amount").value);
      if (!bidder) return showError("Enter your name to bid.");
      if (amount === null) return showError("Enter an amount like 351.00.");
      localStorage.setItem("auction.bidder", bidder);
      showError("");
      $("bid-submit").disabled = true;
      try {
        const result = await send({ amount, bidder });
        if (result.ok) {
          $("bid-note").textContent = `Bid of ${formatCents(amount)} placed.`;
        } else {
          showError(describeError(result.body));
        }
      } catch (_) {
        showError("Could not reach the bid service; try again.");
      } finally {
        $("bid-submit").disabled = !auction || auction.status !== "open";
      }
    });
  }

  setInterval(tick, 1000);

  return {
    config, auctionId, compareIds, formatCents, parseCents,
    onInit, onBid, onAuction, setConnection, setupForm, showError,
    get lastId() { return lastId; },
  };
})();
