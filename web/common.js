// Shared by the SSE and WebSocket auction pages: state, rendering, the bid
// form, the guest session. No framework, no build step. The connection,
// sign-in and bids go through the auction client library
// (auction-client.js), wired by auction-page.js, which calls `Auction.*`.
//
// Rules the page keeps (a person bids real money here):
// - the amount field holds what the person typed or picked; the page never
//   writes it on its own (only the quick-amount buttons do, when pressed),
//   except to empty it when a new round opens: an amount typed for the
//   last round means nothing in the next;
// - an error or a note describes the state as it is now: it is re-worded
//   or cleared whenever that state changes (a new minimum, being outbid,
//   the close, a new round);
// - while the connection is down the price may be out of date: it is
//   marked so and bidding waits until the page is live again;
// - only a new bid is announced to screen readers, never the whole list.
"use strict";

const Auction = (() => {
  const config = readConfig();
  const auctionId = new URLSearchParams(location.search).get("auction") || "1234";
  const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
  const MAX_HISTORY = 30;
  /** A bid more than this many increments above the minimum asks first. */
  const CONFIRM_STEPS = 10;
  const URGENT_MS = 60_000;
  const SESSION_KEY = "auction.session";

  let auction = null; // the contract's Auction
  let history = []; // bids of this round, newest first
  const seen = new Set(); // event ids already shown
  let lastId = null;
  let error = null; // {code, amount?, text?}: worded from the state at render time
  // The result of this page's last bid while it still holds: {kind:
  // "checking", "bid" or "max", amount, leading} (see renderNote).
  let note = null;
  let submitting = false; // a bid is on its way
  // Whether the connection is live: the page then shows the auction as it
  // is; otherwise it may be out of date.
  let live = false;
  let notFound = false; // the auction does not exist: nothing to watch
  let confirmed = null; // the amount the person confirmed, if any
  let sawSimulated = false;
  let session = loadSession(); // {token, bidder_id, name, expires_at} or null
  const sessionListeners = [];
  let client = null; // the auction client library's client (signIn)
  // The signed-in bidder's standing (GET /auctions/{id}/me), one request
  // at a time.
  let standing = null;
  let standingBusy = false;
  let standingAgain = false;

  const $ = (id) => document.getElementById(id);

  /** The page's settings, in data attributes of <html> (no inline script:
   *  the Content-Security-Policy allows none). */
  function readConfig() {
    const data = document.documentElement.dataset;
    return { bidderUrl: data.bidderUrl || "", transport: data.transport || "sse" };
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

  /** "351.00", "351" or "$1,351.5" to cents, by string parsing: no float maths. */
  function parseCents(text) {
    const match = /^\s*\$?\s*(\d{1,10})(?:[.,](\d{1,2}))?\s*$/.exec(text.replace(/,(?=\d{3}\b)/g, ""));
    if (!match) return null;
    const cents = BigInt(match[1]) * 100n + BigInt((match[2] || "0").padEnd(2, "0"));
    return cents > 0n ? Number(cents) : null;
  }

  /** Cents to the plain number typed in the field: 123456 -> "1234.56". */
  function centsToField(cents) {
    return `${Math.floor(cents / 100)}.${String(cents % 100).padStart(2, "0")}`;
  }

  function minNext() {
    if (!auction) return null;
    return auction.current ? auction.current.amount + auction.min_increment : auction.starting_price;
  }

  /** A quick amount: the minimum and `steps` increments above it. */
  function quickAmount(steps) {
    const min = minNext();
    return min === null ? null : min + steps * auction.min_increment;
  }

  // --- the guest session (identity) ---------------------------------------

  function loadSession() {
    try {
      const stored = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
      if (stored && stored.token && stored.bidder_id && stored.expires_at > Date.now() + 60_000) return stored;
    } catch (_) { /* unreadable: start again */ }
    localStorage.removeItem(SESSION_KEY);
    return null;
  }

  function setSession(value) {
    session = value;
    if (value) localStorage.setItem(SESSION_KEY, JSON.stringify(value));
    else localStorage.removeItem(SESSION_KEY);
    standing = null;
    renderSession();
    renderAuction();
    rebuildHistory();
    refreshStanding();
    for (const listener of sessionListeners) listener(session);
  }

  /** Signs in as a guest with `name` (POST /sessions). Resolves to the
   *  session, or to `{error}` when refused; `null` when the bidder has no
   *  sessions (an older deployment: bids then carry the name). */
  async function signIn(name) {
    const signedIn = await client.signIn(name);
    if (!signedIn || signedIn.error) return signedIn;
    setSession(signedIn);
    return session;
  }

  function renderSession() {
    const box = $("session");
    if (!box) return;
    $("name-field").hidden = Boolean(session);
    if (!session) {
      box.replaceChildren();
      return;
    }
    const who = document.createElement("span");
    who.textContent = `Bidding as ${session.name}`;
    who.id = "signed-in-as";
    const out = document.createElement("button");
    out.type = "button";
    out.className = "link";
    out.textContent = "Sign out";
    out.addEventListener("click", () => setSession(null));
    box.replaceChildren(who, " ", out);
  }

  const isMine = (bid) => Boolean(session && bid && bid.bidder_id && bid.bidder_id === session.bidder_id);

  // --- rendering ------------------------------------------------------------

  function relative(ms) {
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ago`;
    return `${Math.floor(minutes / 60)} h ago`;
  }

  function countdownText(left) {
    const s = Math.floor(left / 1000);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? `${h}h ` : "") + `${String(m).padStart(2, "0")}m ${String(sec).padStart(2, "0")}s`;
  }

  function rememberId(id) {
    if (!id) return;
    if (!lastId || compareIds(id, lastId) > 0) lastId = id;
    document.body.dataset.lastEventId = lastId;
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  function renderAuction() {
    if (!auction) return;
    const main = $("auction-page");
    const open = auction.status === "open";
    main.dataset.phase = auction.status;
    $("title").textContent = auction.title;
    document.title = `${auction.title} · live auction`;
    for (const id of ["item", "summary", "bids"]) show(id, true);

    const image = $("item-image");
    if (auction.image_url) {
      if (image.getAttribute("src") !== auction.image_url) image.src = auction.image_url;
      image.alt = `Picture of ${auction.title}`;
    }
    image.hidden = !auction.image_url;
    $("item-description").textContent = auction.description || "";
    show("item-description", Boolean(auction.description));
    // The seller and the terms only when the auction has them (older
    // auctions and the simulator's have neither).
    const seller = auction.seller && auction.seller.name;
    $("item-seller").textContent = seller ? `Sold by ${seller}` : "";
    show("item-seller", Boolean(seller));
    $("item-terms-text").textContent = auction.terms || "";
    show("item-terms", Boolean(auction.terms));
    show("demo-note", sawSimulated);

    const current = auction.current;
    $("current-amount").textContent = formatCents(current ? current.amount : auction.starting_price);
    $("current-label").textContent = open
      ? (current ? "Current bid" : "Starting price")
      : (current ? "Winning bid" : "Starting price");
    $("current-bidder").textContent = current ? `by ${isMine(current) ? "you" : current.bidder}` : "No bids yet";
    show("ends", open);
    show("result", !open);
    // The reserve itself is never sent: only whether the price meets it.
    const unsold = current && auction.sold === false;
    $("result-text").textContent = auction.status === "cancelled"
      ? "Cancelled: no winner"
      : unsold
        ? `Reserve not met: not sold (highest bid ${formatCents(current.amount)})`
        : current
          ? `Sold to ${isMine(current) ? "you" : current.bidder} for ${formatCents(current.amount)}`
          : "Ended without bids";
    if (unsold) $("current-label").textContent = "Highest bid";
    show("reserve", open && auction.reserve_met === false);
    renderYou();

    show("bidding", open);
    const min = minNext();
    $("min-next").textContent = `Minimum bid ${formatCents(min)}, in steps of ${formatCents(auction.min_increment)}.`;
    $("bid-amount").placeholder = centsToField(min);
    for (const button of document.querySelectorAll("[data-steps]")) {
      const steps = Number(button.dataset.steps);
      const amount = quickAmount(steps);
      const label = document.createElement("span");
      label.className = "steps";
      label.textContent = steps === 0 ? "minimum" : `min + ${steps} steps`;
      button.replaceChildren(`${formatCents(amount)} `, label);
      button.dataset.amount = String(amount);
    }
    renderError();
    renderNote();
    renderConfirm();
    renderLive();
    tick();
  }

  /** Whether a bid can be sent now: the auction is open, the page is live
   *  (its price is the real one) and no other bid is on its way. */
  function canBid() {
    return Boolean(auction && auction.status === "open" && live && !submitting);
  }

  /** Live or not: while the connection is down the price is marked as
   *  possibly out of date and bidding is paused, with the reason. */
  function renderLive() {
    const stale = Boolean(auction) && !live && !notFound;
    $("summary").dataset.stale = String(stale);
    $("stale").textContent = stale ? "Connection lost: this price may be out of date." : "";
    show("stale", stale);
    const paused = stale && auction.status === "open";
    $("bid-paused").textContent = paused
      ? "Bidding is paused until the connection is back."
      : "";
    show("bid-paused", paused);
    $("bid-submit").disabled = !canBid();
    $("confirm-yes").disabled = !canBid();
  }

  /** Your standing: winning, outbid, won or lost, your last bid and your
   *  maximum, all from the server (`GET /auctions/{id}/me`), never from the
   *  visible history, which keeps only the last 30 bids: it holds over any
   *  number of bids and a reload. Nothing is said until the server has. */
  function renderYou() {
    const element = $("you");
    const mine = session && auction && standing && standing.auction === auction.id ? standing : null;
    let state = mine ? { leading: "winning", outbid: "outbid", won: "won", lost: "lost" }[mine.status] || "none" : "none";
    // A close the server has not answered for yet: no "winning" any more.
    if (state === "winning" && auction.status !== "open") state = "none";
    const open = Boolean(auction && auction.status === "open");
    const max = mine && open ? mine.max_amount : null;
    $("your-max").textContent = max
      ? `Your maximum: ${formatCents(max)} (${state === "winning" ? "leading" : "outbid"}); only you see it.`
      : "";
    show("your-max", Boolean(max));
    const last = mine && state !== "none" ? mine.last_bid : null;
    $("your-bids").textContent = last ? `Your last bid: ${formatCents(last)}.` : "";
    show("your-bids", Boolean(last));
    element.dataset.you = state;
    element.textContent = {
      none: "",
      winning: "You are winning.",
      outbid: "You have been outbid.",
      won: "You won this auction.",
      lost: auction && auction.status === "cancelled"
        ? "This auction was cancelled: nobody won it."
        : auction && auction.sold === false && isMine(auction.current)
          ? "The reserve was not met: nobody won this auction."
          : "You lost this auction: you were outbid.",
    }[state];
    element.hidden = state === "none";
  }

  function historyItem(bid) {
    const li = document.createElement("li");
    li.dataset.id = bid.id || "";
    li.dataset.amount = String(bid.amount);
    li.dataset.bidder = bid.bidder;
    li.dataset.placedAt = String(bid.placed_at);
    if (isMine(bid)) li.dataset.mine = "true";
    const amount = document.createElement("span");
    amount.className = "amount";
    amount.textContent = formatCents(bid.amount);
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = relative(bid.placed_at);
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = isMine(bid) ? `${bid.bidder} (you)` : bid.bidder;
    li.append(amount, when, who);
    return li;
  }

  /** The whole list, after `init`, a new round or a change of session. */
  function rebuildHistory() {
    $("history").replaceChildren(...history.map(historyItem));
    $("history-empty").hidden = history.length > 0;
  }

  /** One new bid on top; the oldest beyond the limit goes. Nothing else in
   *  the list is touched, so assistive technology sees one addition. */
  function prependHistory(bid) {
    const list = $("history");
    list.prepend(historyItem(bid));
    while (list.children.length > MAX_HISTORY) list.lastElementChild.remove();
    $("history-empty").hidden = true;
    $("announce").textContent =
      `New bid: ${formatCents(bid.amount)} by ${isMine(bid) ? "you" : bid.bidder}.`;
  }

  function tick() {
    if (auction && auction.status === "open") {
      const left = Math.max(0, auction.ends_at - Date.now());
      $("countdown").textContent = countdownText(left);
      $("ends").dataset.urgent = String(left < URGENT_MS);
      $("ends").firstChild.textContent = left < URGENT_MS ? "Ending soon: " : "Ends in ";
    }
    for (const li of $("history").children) {
      li.querySelector(".when").textContent = relative(Number(li.dataset.placedAt));
    }
  }

  // --- your standing, from the server ---------------------------------------

  /** `GET /auctions/{id}/me`: leading or not, your maximum, your last bid.
   *  One request at a time; asked again after it if something changed. */
  async function refreshStanding() {
    if (!session || !session.token) {
      standing = null;
      return;
    }
    if (standingBusy) {
      standingAgain = true;
      return;
    }
    standingBusy = true;
    const token = session.token;
    try {
      const response = await fetch(`${config.bidderUrl || ""}/auctions/${encodeURIComponent(auctionId)}/me`, {
        headers: { Authorization: `Bearer ${token}` },
      });
      const body = response.status === 200 ? await response.json() : null;
      if (!session || session.token !== token) {
        // Signed out or in as someone else meanwhile: not theirs.
      } else if (body) {
        standing = body;
      } else if (response.status === 401) {
        setSession(null); // a token the bidder no longer takes: the next bid signs in again
      }
    } catch (_) {
      /* kept as it was; the next event asks again */
    } finally {
      standingBusy = false;
    }
    renderYou();
    if (standingAgain) {
      standingAgain = false;
      refreshStanding();
    }
  }

  // --- events from the transport --------------------------------------------

  /** `init`: replace everything. History entries from init carry no id. */
  function onInit(payload, id) {
    // After a drop, `init` may bring the next round (missed while away).
    if (auction && isNewRound(auction, payload.auction)) startRound();
    auction = payload.auction;
    history = (payload.history || []).slice(0, MAX_HISTORY).map((bid) => ({ ...bid }));
    sawSimulated = sawSimulated || history.some((bid) => bid.source === "simulated");
    seen.clear();
    rememberId(id);
    renderAuction();
    rebuildHistory();
    refreshStanding();
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
    if (bid.source === "simulated") sawSimulated = true;
    if (auction) {
      auction.current = bid;
      // An auction with a reserve: each bid says whether it meets it.
      if (typeof bid.reserve_met === "boolean") auction.reserve_met = bid.reserve_met;
      else if (auction.reserve_met === undefined) auction.reserve_met = true;
    }
    renderAuction();
    prependHistory({ ...bid, id });
    refreshStanding();
  }

  /** `extended`: a bid near the end moved it (soft close). */
  function onExtended(payload, id) {
    if (id) {
      if (seen.has(id) || (lastId && compareIds(id, lastId) <= 0)) return;
      seen.add(id);
    }
    rememberId(id);
    if (!auction || auction.status !== "open") return;
    auction.ends_at = payload.ends_at;
    $("announce").textContent = "A late bid extended the auction.";
    renderAuction();
  }

  /** `closed` or `opened` (a new round): the auction state changes. */
  function onAuction(kind, payload, id) {
    if (id && lastId && compareIds(id, lastId) <= 0) return;
    rememberId(id);
    auction = payload.auction;
    if (kind === "opened") {
      startRound();
      history = [];
      rebuildHistory();
    }
    renderAuction();
    refreshStanding();
  }

  /** Whether `next` is a later round than `previous`, the same auction as
   *  this page last drew it: a closed one open again, or its price lower
   *  (in a round the price only goes up). */
  function isNewRound(previous, next) {
    if (!next || previous.id !== next.id) return false;
    if (previous.status !== "open" && next.status === "open") return true;
    return Boolean(previous.current && (!next.current || next.current.amount < previous.current.amount));
  }

  /** A new round: what the page said or held for the last one goes (its
   *  error, note and confirmation, the amount typed for it, and your
   *  standing in it until the server gives the new one). */
  function startRound() {
    error = null;
    note = null;
    confirmed = null;
    standing = null;
    $("bid-amount").value = "";
    $("confirm").hidden = true;
  }

  /** An admin acted on the auction (`admin` event): say who did what, in
   *  plain words, and show the auction as it now is. A deletion ends the
   *  page (`gone` follows). */
  function onAdmin(payload, id) {
    if (id && lastId && compareIds(id, lastId) <= 0) return;
    rememberId(id);
    const by = (payload.by && payload.by.name) || "an admin";
    const reason = payload.reason ? ` (${payload.reason})` : "";
    const ends = payload.auction && new Date(payload.auction.ends_at);
    const text = {
      close: `Closed early by ${by}${reason}.`,
      extend: `Extended by ${by} to ${ends ? ends.toLocaleString() : "later"}${reason}.`,
      cancel: `Cancelled by ${by}${reason}: no winner.`,
      delete: `Removed by ${by}${reason}.`,
    }[payload.action] || `Changed by ${by}${reason}.`;
    const notice = $("admin-notice");
    notice.textContent = text;
    notice.dataset.action = payload.action || "";
    notice.hidden = false;
    $("announce").textContent = text;
    if (payload.action === "delete") {
      onNotFound();
      $("title").textContent = "Auction removed";
      return;
    }
    // A close is followed by its `closed` event; the others change the
    // auction here.
    if (payload.action !== "close" && payload.auction) {
      auction = payload.auction;
      renderAuction();
    }
  }

  /** The bidder of this page was suspended by an admin. */
  function onSuspended(suspended) {
    const notice = $("admin-notice");
    notice.textContent = suspended
      ? "An admin suspended your bidding: your bids are refused."
      : "An admin lifted your suspension: you may bid again.";
    notice.dataset.action = suspended ? "suspend" : "reinstate";
    notice.hidden = false;
  }

  /** The auction does not exist: say so, and offer no form. */
  function onNotFound() {
    auction = null;
    $("auction-page").dataset.phase = "not-found";
    $("title").textContent = "Auction not found";
    document.title = "Auction not found";
    for (const id of ["item", "summary", "bidding", "bids", "updates"]) show(id, false);
    show("not-found", true);
    $("bid-submit").disabled = true;
    notFound = true;
    // Nothing is watched any more: the status line says so, not
    // "Disconnected" or "retrying".
    setConnection("not-found");
  }

  /** Asks the bidder whether the auction exists (the transports only see a
   *  refusal); 404 shows the not-found state. */
  async function checkExists() {
    try {
      const response = await fetch(`${config.bidderUrl || ""}/auctions/${encodeURIComponent(auctionId)}`);
      if (response.status === 404) onNotFound();
      return response.status !== 404;
    } catch (_) {
      return true; // unknown: keep trying to connect
    }
  }

  const STATES = {
    connecting: "Connecting",
    connected: "Live",
    reconnecting: "Reconnecting…",
    resumed: "Live again, nothing missed",
    reset: "Live, reloaded from the latest state",
    stopped: "Disconnected",
  };
  /** The states in which the page shows the auction as it is now. */
  const LIVE_STATES = ["connected", "resumed", "reset"];

  /** How many people watch this auction, over every edge replica. */
  function onViewers(count) {
    const element = $("viewers");
    element.textContent = count === 1 ? "1 watching" : `${count} watching`;
    element.dataset.count = String(count);
    element.hidden = !(count > 0);
  }

  /** The connection's state; `over` the transport in use ("sse" or "ws":
   *  the WebSocket page falls back to SSE where WebSockets are refused). */
  function setConnection(state, detail, over) {
    // An auction that does not exist is not watched: nothing connects or
    // retries, whatever the transport reports while it winds down.
    if (notFound && state !== "not-found") return;
    const element = $("connection");
    element.dataset.state = state;
    element.dataset.transport = over || element.dataset.transport || config.transport;
    const transport = element.dataset.transport === "ws" ? "WebSocket" : "Server-Sent Events";
    element.textContent = state === "not-found"
      ? "Not watching: no such auction"
      : `${STATES[state] || state} · ${transport}${detail ? ` · ${detail}` : ""}`;
    live = LIVE_STATES.includes(state);
    renderLive();
  }

  // --- the form ------------------------------------------------------------

  /** The error, worded from the state as it is now. */
  function renderError() {
    const element = $("bid-error");
    let text = "";
    if (error) {
      if (auction && auction.status !== "open") {
        text = "This auction has ended.";
      } else if (error.code === "bid_too_low") {
        text = `${formatCents(error.amount)} is too low: the minimum bid is now ${formatCents(minNext())}.`;
        if (minNext() !== null && error.amount >= minNext()) text = "";
      } else {
        text = error.text;
      }
    }
    if (element.textContent !== text) element.textContent = text;
    if (text) note = null;
    renderNote();
  }

  function setNote(value) {
    note = value;
    renderNote();
  }

  /** The result of this page's last bid, while it holds. "Your bid of $X
   *  is in" (or "your maximum is set; you are leading") goes once another
   *  bidder's bid is above it: in a round a later bid is always higher, so
   *  that means outbid, whichever came first, the answer or the event. A
   *  close or a new round clears it. */
  function renderNote() {
    if (note && (!auction || auction.status !== "open")) note = null;
    const current = auction && auction.current;
    if (note && note.leading && current && !isMine(current) && current.amount > note.amount) note = null;
    let text = "";
    if (note) {
      const amount = formatCents(note.amount);
      text = {
        checking: `Checking whether your bid of ${amount} went in…`,
        bid: note.leading ? `Your bid of ${amount} is in.` : `Your bid of ${amount} is in, but another bidder's maximum is higher.`,
        max: `Your maximum of ${amount} is set; ${note.leading ? "you are leading" : "another bidder's maximum is higher"}.`,
      }[note.kind];
    }
    const element = $("bid-note");
    if (element.textContent !== text) element.textContent = text;
  }

  function setError(value) {
    error = value;
    renderError();
  }

  function describeError(body) {
    switch (body && body.error) {
      case "bid_too_low":
        return { code: "bid_too_low", amount: body.amount };
      case "auction_closed":
        return { code: "auction_closed", text: "This auction has ended." };
      case "max_not_raised":
        return { code: body.error, text: `Your maximum is already ${formatCents(body.max_amount)}; a new one must be higher.` };
      case "bidder_suspended":
        return { code: "bidder_suspended", text: "An admin suspended your bidding: your bids are refused." };
      case "rate_limited":
        return { code: "rate_limited", text: "Too many bids at once; wait a moment and try again." };
      case "redis_unavailable":
      case "bidder_unavailable":
        return { code: "unavailable", text: "Bidding is briefly unavailable; try again in a moment." };
      case "bid_outcome_unknown":
      case "not_replicated":
        return {
          code: "unavailable",
          text: "Your bid could not be confirmed yet. Bid the same amount again to check: it will not be placed twice.",
        };
      case "missing_token":
      case "invalid_token":
      case "token_expired":
        return { code: body.error, text: "Your sign-in has expired; enter your name to bid again." };
      case "invalid_name":
      case "invalid_bidder":
        return { code: body.error, text: "Use a name of 1 to 40 letters, digits or punctuation." };
      default:
        return { code: "other", text: (body && body.message) || "The bid was not accepted." };
    }
  }

  /** The confirmation for a bid well above the minimum, kept up to date. */
  function renderConfirm() {
    const box = $("confirm");
    if (box.hidden) return;
    const amount = parseCents($("bid-amount").value);
    if (amount === null || !auction || auction.status !== "open") {
      box.hidden = true;
      return;
    }
    const steps = Math.floor((amount - minNext()) / auction.min_increment);
    $("confirm-text").textContent =
      `${formatCents(amount)} is ${steps} steps above the minimum of ${formatCents(minNext())}. Place this bid?`;
  }

  function needsConfirmation(amount) {
    return amount > minNext() + CONFIRM_STEPS * auction.min_increment && confirmed !== amount;
  }

  /** Wires the form; `send({amount, bidder, token, key, max}, onRetry)`
   *  returns a promise of `{ok, body, key, unsettled}` (the library's bid:
   *  sent again with the same key while its outcome is unknown, `onRetry`
   *  called before each retry). The page updates from the stream. */
  function setupForm(send) {
    // The bid the user means to place and its Idempotency-Key, kept until
    // an answer says what became of it: bidding the same amount again is
    // then the same bid, never a second one.
    let intended = null;
    const name = $("bidder-name");
    const amountField = $("bid-amount");
    name.value = (session && session.name) || localStorage.getItem("auction.bidder") || "";
    renderSession();

    for (const button of document.querySelectorAll("[data-steps]")) {
      button.addEventListener("click", () => {
        if (!button.dataset.amount) return;
        amountField.value = centsToField(Number(button.dataset.amount));
        $("confirm").hidden = true;
        setError(null);
      });
    }
    amountField.addEventListener("input", () => {
      $("confirm").hidden = true;
      if (error && error.code !== "unavailable") setError(null);
    });
    $("confirm-no").addEventListener("click", () => {
      $("confirm").hidden = true;
      amountField.focus();
    });
    $("confirm-yes").addEventListener("click", () => {
      confirmed = parseCents(amountField.value);
      $("confirm").hidden = true;
      $("bid-form").requestSubmit();
    });

    $("bid-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!canBid()) return;
      const bidder = session ? session.name : name.value.trim();
      const amount = parseCents(amountField.value);
      const max = $("bid-max").checked;
      if (!bidder) return setError({ code: "name", text: "Enter your name to bid." });
      if (amount === null) {
        return setError({ code: "amount", text: `Enter an amount such as ${centsToField(minNext())}, or pick a quick amount.` });
      }
      if (amount < minNext()) return setError({ code: "bid_too_low", amount });
      if (!max && needsConfirmation(amount)) {
        $("confirm").hidden = false;
        renderConfirm();
        $("confirm-yes").focus();
        return;
      }
      confirmed = null;
      setError(null);
      setNote(null);
      submitting = true;
      renderLive();
      try {
        if (!session) {
          localStorage.setItem("auction.bidder", bidder);
          const signedIn = await signIn(bidder);
          if (signedIn && signedIn.error) return setError(describeError(signedIn.error));
        }
        const token = session && session.token;
        if (!intended || intended.amount !== amount || intended.token !== token || intended.max !== max) {
          intended = { amount, token, max, key: null };
        }
        const onRetry = () => setNote({ kind: "checking", amount });
        const result = await send({ amount, bidder, token, key: intended.key, max }, onRetry);
        intended.key = result.key || intended.key;
        if (!result.unsettled) intended = null;
        if (result.ok && max) refreshStanding();
        if (!result.ok && result.body && ["invalid_token", "token_expired"].includes(result.body.error)) {
          setSession(null); // the next bid signs in again
        }
        if (result.ok) {
          // Over HTTP the answer says whether this bid leads; a WebSocket
          // `ack` does not (the stream will say, see renderNote).
          const leading = !(result.body && result.body.leading === false);
          setNote({ kind: max ? "max" : "bid", amount, leading });
        } else {
          setNote(null);
          setError(describeError({ ...result.body, amount }));
        }
      } catch (_) {
        setNote(null);
        setError({ code: "unavailable", text: "Could not reach the bid service; try again." });
      } finally {
        submitting = false;
        renderLive();
      }
    });
  }

  /** The origin's shared connection: a port to the SharedWorker
   *  (assets/shared-stream.js) that holds one connection per transport for
   *  every auction tab of this browser, watching this page's auction.
   *  `onMessage` gets the worker's messages. Null where the browser has no
   *  SharedWorker or it cannot start one: the page then opens its own
   *  connection (`fallback` is called if the worker fails after this
   *  returned). */
  function sharedConnection(onMessage, fallback) {
    // An id no edge takes would have the shared stream refused for all:
    // such a page asks on its own (and shows its not-found state).
    if (typeof SharedWorker !== "function" || !/^[A-Za-z0-9_-]{1,64}$/.test(auctionId)) return null;
    let worker;
    try {
      worker = new SharedWorker("assets/shared-stream.js", { type: "module", name: "auction-client" });
    } catch (_) {
      return null;
    }
    const port = worker.port;
    let failed = false;
    const alone = () => {
      if (failed) return;
      failed = true;
      fallback();
    };
    worker.addEventListener("error", alone);
    port.addEventListener("message", (event) => {
      if (failed) return;
      if (event.data && event.data.type === "alone") alone();
      else onMessage(event.data || {});
    });
    port.start();
    const watch = () => port.postMessage({ type: "watch", transport: config.transport, auction: auctionId });
    watch();
    // Leaving: the worker stops sending here (and drops the auction from
    // the connection when no other tab watches it). Back from the
    // back/forward cache: watch again, from a fresh `init`.
    addEventListener("pagehide", () => port.postMessage({ type: "leave" }));
    addEventListener("pageshow", (event) => { if (event.persisted) watch(); });
    return port;
  }

  setInterval(tick, 1000);

  return {
    config, auctionId, compareIds, formatCents, parseCents,
    onInit, onBid, onAuction, onExtended, onAdmin, onSuspended, onNotFound, onViewers, checkExists, setConnection, setupForm,
    sharedConnection,
    useClient(value) { client = value; },
    get lastId() { return lastId; },
    get session() { return session; },
    onSessionChange(listener) { sessionListeners.push(listener); },
    signOut() { setSession(null); },
  };
})();
