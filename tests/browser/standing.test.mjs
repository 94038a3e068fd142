// What the auction page tells a bidder (docs/pages.md: "Pages"), in a real
// browser against the real services behind nginx.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Stack, waitFor, launchChromium } from "./stack.mjs";

const PAGES = { sse: "/?auction=", ws: "/ws.html?auction=" };
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
const dollars = (cents) => money.format(cents / 100);

let stack;
let browser;

before(async () => {
  stack = new Stack();
  await stack.start();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  stack?.stop();
});

async function create(fields) {
  const created = await stack.api("/auctions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ title: "Lot", starting_price: 5000, min_increment: 100, duration_ms: 3600000, ...fields }),
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return created.body;
}

/** A bid of `cents` on `auction` by another bidder, through the API. */
async function bidByApi(auction, cents, token) {
  const placed = await stack.api(`/auctions/${auction}/bids`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ amount: cents }),
  });
  assert.equal(placed.status, 201, JSON.stringify(placed.body));
  return placed.body;
}

async function minNextOf(auction) {
  const { body } = await stack.api(`/auctions/${auction}`);
  return body.current ? body.current.amount + body.min_increment : body.starting_price;
}

const isLive = () => ["connected", "resumed", "reset"].includes(document.getElementById("connection").dataset.state);

/** A page of `kind` on `auction`, live, in a browser context of its own
 *  (or in `context`, sharing its storage: its session). */
async function open(kind, auction, { viewport = DESKTOP, context = null } = {}) {
  context = context || await browser.newContext({ viewport });
  const page = await context.newPage();
  await page.goto(`${stack.url}${PAGES[kind]}${auction}`);
  await page.waitForFunction(isLive, null, { timeout: 20000 });
  return page;
}

/** Bids `amount` (dollars, as typed) from the page, signing in as `name`
 *  first when signed out; resolves once the page says the bid is in. */
async function bidFromPage(page, name, amount) {
  if (await page.isVisible("#bidder-name")) await page.fill("#bidder-name", name);
  await page.fill("#bid-amount", amount);
  await page.click("#bid-submit");
  await page.waitForFunction(() => /is in|is set/.test(document.getElementById("bid-note").textContent)
    || document.getElementById("bid-error").textContent !== "", null, { timeout: 15000 });
  assert.equal(await page.textContent("#bid-error"), "");
}

/** The element's box, and whether it lies wholly inside the viewport. */
const box = (page, selector) => page.$eval(selector, (element) => {
  const r = element.getBoundingClientRect();
  return {
    top: Math.round(r.top), bottom: Math.round(r.bottom), left: Math.round(r.left), right: Math.round(r.right),
    inView: r.width > 0 && r.height > 0 && r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth,
  };
});

async function assertInView(page, selectors, where) {
  for (const selector of selectors) {
    const b = await box(page, selector);
    assert.ok(b.inView, `${where}: ${selector} is out of the viewport: ${JSON.stringify(b)}`);
  }
}

test("the bid result shows by the bid button: result and form in the viewport at 390×844 and 1280×800", async () => {
  for (const [size, viewport, kind] of [["phone", PHONE, "sse"], ["desktop", DESKTOP, "ws"]]) {
    const id = `view-${size}`;
    await create({
      id, title: "Folding camera with its leather case",
      description: "A 1950s folding camera.\nBellows intact, shutter working, with its original leather case and strap.",
      image_url: "/assets/lot-camera.svg",
    });
    const page = await open(kind, id, { viewport });
    await page.waitForFunction(() => document.getElementById("item-image").naturalWidth > 0);
    const where = `${size} ${viewport.width}×${viewport.height}`;
    // As it opens, without scrolling: the price, the countdown and the form.
    assert.equal(await page.evaluate(() => scrollY), 0);
    await assertInView(page, ["#current-amount", "#ends", "#bid-amount", "#raise-10", "#bid-submit"], `${where}, as opened`);
    if (size === "phone") {
      // One column: price, countdown and form before the picture,
      // description and history.
      const form = await box(page, "#bidding");
      const summary = await box(page, "#summary");
      assert.ok(summary.bottom <= form.top, `${where}: the price comes before the form`);
      for (const later of ["#item", "#item-description", "#bids"]) {
        assert.ok((await box(page, later)).top >= form.bottom, `${where}: ${later} comes after the form`);
      }
    }
    // A too-low bid: the error right under the button, both in view.
    await page.fill("#bidder-name", `Viewer ${size}`);
    await page.fill("#bid-amount", "1.00");
    await page.click("#bid-submit");
    await page.waitForFunction(() => document.getElementById("bid-error").textContent !== "");
    await assertInView(page, ["#bid-amount", "#bid-submit", "#bid-error"], `${where}, refused`);
    // An accepted bid: "Your bid of $X is in." under the button, in view
    // with the form and the new price.
    await page.click("#raise-min");
    const amount = Math.round(Number(await page.inputValue("#bid-amount")) * 100);
    await page.click("#bid-submit");
    await page.waitForFunction((text) => document.getElementById("bid-note").textContent === text,
      `Your bid of ${dollars(amount)} is in.`, { timeout: 15000 });
    await page.waitForFunction((text) => document.getElementById("current-amount").textContent === text, dollars(amount));
    await assertInView(page, ["#current-amount", "#bid-amount", "#bid-submit", "#bid-note"], `${where}, placed`);
    const [button, note] = [await box(page, "#bid-submit"), await box(page, "#bid-note")];
    assert.ok(note.top >= button.bottom && note.top - button.bottom <= 40, `${where}: the result is right under the button`);
    await page.context().close();
  }
});

test("quick amounts bid exactly what their labels say: the minimum, and 5 and 10 steps above it", async () => {
  await create({ id: "quick", starting_price: 5000, min_increment: 100 });
  const page = await open("sse", "quick");
  const check = async (where) => {
    const minimum = await minNextOf("quick");
    for (const [button, steps] of [["#raise-min", 0], ["#raise-5", 5], ["#raise-10", 10]]) {
      const label = (await page.textContent(button)).trim();
      const amount = minimum + steps * 100;
      assert.equal(label, `${dollars(amount)} ${steps === 0 ? "minimum" : `min + ${steps} steps`}`, `${where}: ${button}`);
      await page.click(button);
      assert.equal(await page.inputValue("#bid-amount"), (amount / 100).toFixed(2), `${where}: ${button} fills what it says`);
    }
    return minimum;
  };
  await check("before any bid");
  await bidByApi("quick", 5300, stack.token("Somebody"));
  await page.waitForFunction(() => document.getElementById("current-amount").textContent === "$53.00");
  const minimum = await check("after a bid");
  // "+10 steps" is 10 steps above the minimum: placed as labelled, with no
  // confirmation (that is for more than 10).
  await page.fill("#bidder-name", "Quick Quinn");
  await page.click("#raise-10");
  await page.click("#bid-submit");
  await page.waitForFunction((text) => document.getElementById("bid-note").textContent === text,
    `Your bid of ${dollars(minimum + 1000)} is in.`, { timeout: 15000 });
  assert.equal(await page.isVisible("#confirm"), false);
  assert.equal(stack.stream("quick").at(-1).data.amount, minimum + 1000);
  await page.context().close();
});

test("a note that no longer holds is cleared: outbid, and at a new round, which also empties the amount field", async () => {
  await create({ id: "noted" });
  const page = await open("sse", "noted");
  const minimum = await minNextOf("noted");
  await bidFromPage(page, "Noted Nell", (minimum / 100).toFixed(2));
  assert.equal(await page.textContent("#bid-note"), `Your bid of ${dollars(minimum)} is in.`);
  // Outbid by another bidder: the note goes; the standing says outbid.
  await bidByApi("noted", minimum + 500, stack.token("Rival Rex"));
  await page.waitForFunction(() => document.getElementById("bid-note").textContent === "");
  await page.waitForFunction(() => document.getElementById("you").dataset.you === "outbid");
  assert.equal(await page.isVisible("#bid-note"), false);
  await page.context().close();

  // A new round of a simulated auction (the only kind that has rounds):
  // a maximum well above the simulated bidders keeps "you are leading"
  // true all round; the round closes, the next opens, and neither the
  // note nor the amount typed for the old round is left.
  await stack.addBidder("rounds", {
    AUCTION_SIM_AUCTIONS: "noted-rounds", AUCTION_SIM_INTERVAL_MS: "500",
    AUCTION_SIM_DURATION_MS: "8000", AUCTION_SIM_PAUSE_MS: "2000", AUCTION_CLOSE_CHECK_MS: "50",
  });
  await waitFor("the simulated auction", () => stack.redis("EXISTS", "auction:{noted-rounds}").trim() === "1");
  const rounds = await open("ws", "noted-rounds");
  // Bid early in a round, so that it is still open when the bid lands.
  await rounds.waitForFunction(() => {
    const left = /(\d+)m (\d+)s/.exec(document.getElementById("countdown").textContent);
    return document.getElementById("auction-page").dataset.phase === "open" && left && Number(left[1]) * 60 + Number(left[2]) >= 4;
  }, null, { timeout: 30000 });
  await rounds.fill("#bidder-name", "Round Rita");
  await rounds.fill("#bid-amount", "50000.00");
  await rounds.check("#bid-max");
  await rounds.click("#bid-submit");
  await rounds.waitForFunction(() => document.getElementById("bid-note").textContent
    === "Your maximum of $50,000.00 is set; you are leading.", null, { timeout: 15000 });
  await rounds.evaluate(() => {
    window.__openedWith = null;
    // The page as it shows the next round: the phase goes from closed to open.
    new MutationObserver((records) => {
      const reopened = records.some((record) => record.oldValue === "closed" && record.target.dataset.phase === "open");
      if (window.__openedWith === null && reopened) {
        window.__openedWith = {
          note: document.getElementById("bid-note").textContent,
          amount: document.getElementById("bid-amount").value,
          you: document.getElementById("you").dataset.you,
        };
      }
    }).observe(document.getElementById("auction-page"), { attributes: true, attributeOldValue: true, attributeFilter: ["data-phase"] });
  });
  await rounds.waitForFunction(() => document.getElementById("auction-page").dataset.phase === "closed", null, { timeout: 20000 });
  await rounds.waitForFunction(() => document.getElementById("you").dataset.you === "won");
  assert.equal(await rounds.textContent("#you"), "You won this auction.");
  await rounds.waitForFunction(() => window.__openedWith !== null, null, { timeout: 20000 });
  // As the new round showed (no note, no amount, no "You won" of the last
  // round), and after.
  assert.deepEqual(await rounds.evaluate(() => window.__openedWith), { note: "", amount: "", you: "none" });
  assert.equal(await rounds.textContent("#bid-note"), "");
  assert.equal(await rounds.inputValue("#bid-amount"), "");
  await rounds.context().close();
});

test("stale marking while disconnected: the price is marked, bidding paused with the reason, until live again", async () => {
  await create({ id: "cutoff" });
  const pages = { sse: await open("sse", "cutoff"), ws: await open("ws", "cutoff") };
  for (const page of Object.values(pages)) {
    assert.equal(await page.getAttribute("#summary", "data-stale"), "false");
    assert.equal(await page.isVisible("#stale"), false);
    assert.equal(await page.isEnabled("#bid-submit"), true);
  }
  // Every edge goes (the WebSocket page would otherwise fall back to SSE):
  // the pages' connections drop for real.
  const edges = ["sse1", "sse2", "ws1", "ws2"];
  for (const name of edges) stack.kill(name);
  for (const [kind, page] of Object.entries(pages)) {
    await page.waitForFunction(() => document.getElementById("summary").dataset.stale === "true", null, { timeout: 15000 });
    assert.equal(await page.textContent("#stale"), "Connection lost: this price may be out of date.", kind);
    assert.equal(await page.isVisible("#stale"), true, kind);
    assert.equal(await page.isEnabled("#bid-submit"), false, `${kind}: bidding paused`);
    assert.match(await page.textContent("#bid-paused"), /^Bidding is paused until the connection is back/, kind);
    assert.equal(await page.isVisible("#bid-paused"), true, kind);
    assert.notEqual(await page.getAttribute("#connection", "data-state"), "connected", kind);
  }
  // Meanwhile a bid the pages cannot see yet.
  const minimum = await minNextOf("cutoff");
  await bidByApi("cutoff", minimum, stack.token("Away Ann"));
  for (const name of edges) await stack.restart(name);
  // nginx counts the killed edges as failed for a while (its fail_timeout):
  // wait until it routes to them again, for the pages and the tests after.
  await waitFor("nginx to route to the edges again", async () =>
    (await fetch(`${stack.url}/`)).status === 200 && (await fetch(`${stack.url}/ws.html`)).status === 200, 30000);
  for (const [kind, page] of Object.entries(pages)) {
    await page.waitForFunction(() => document.getElementById("summary").dataset.stale === "false", null, { timeout: 45000 });
    assert.equal(await page.evaluate(isLive), true, kind);
    assert.equal(await page.isVisible("#stale"), false, kind);
    assert.equal(await page.isVisible("#bid-paused"), false, kind);
    assert.equal(await page.isEnabled("#bid-submit"), true, `${kind}: bidding again`);
    await page.waitForFunction((text) => document.getElementById("current-amount").textContent === text, dollars(minimum));
  }
  // And a bid from a page goes in.
  await bidFromPage(pages.ws, "Back Bea", ((minimum + 100) / 100).toFixed(2));
  for (const page of Object.values(pages)) await page.context().close();
});

test("A bidder whose bid has scrolled out of the history still sees 'you were outbid' and, at the close, 'you lost'; after a reload too", async () => {
  await create({ id: "scrolled" });
  const page = await open("sse", "scrolled");
  const mine = await minNextOf("scrolled");
  await bidFromPage(page, "Early Eve", (mine / 100).toFixed(2));
  await page.waitForFunction(() => document.getElementById("you").dataset.you === "winning");
  // 35 bids by others: the history keeps 30, so Eve's bid leaves it.
  const rival = stack.token("Rival Ray");
  for (let i = 1; i <= 35; i++) await bidByApi("scrolled", mine + i * 100, rival);
  const top = dollars(mine + 3500);
  await page.waitForFunction((text) => document.getElementById("current-amount").textContent === text, top);
  assert.equal(await page.$$eval("#history li", (items) => items.length), 30);
  assert.equal(await page.$$eval("#history li[data-mine]", (items) => items.length), 0, "Eve's bid is out of the history");
  const outbid = async (where) => {
    await page.waitForFunction(() => document.getElementById("you").dataset.you === "outbid", null, { timeout: 10000 });
    assert.equal(await page.textContent("#you"), "You have been outbid.", where);
    assert.equal(await page.textContent("#your-bids"), `Your last bid: ${dollars(mine)}.`, where);
  };
  await outbid("live");
  await page.reload();
  await page.waitForFunction(isLive);
  await outbid("after a reload");
  // Closed (by an admin, now): Eve lost.
  const closed = await stack.api("/admin/auctions/scrolled/close", {
    method: "POST", headers: { authorization: `Bearer ${stack.token("Olive", ["admin"])}` },
  });
  assert.equal(closed.status, 200, JSON.stringify(closed.body));
  const lost = async (on, where) => {
    await on.waitForFunction(() => document.getElementById("you").dataset.you === "lost", null, { timeout: 10000 });
    assert.equal(await on.textContent("#you"), "You lost this auction: you were outbid.", where);
    assert.equal(await on.textContent("#your-bids"), `Your last bid: ${dollars(mine)}.`, where);
    assert.equal(await on.textContent("#result-text"), `Sold to Rival Ray for ${top}`, where);
  };
  await lost(page, "at the close");
  // A reload, on the WebSocket page this time (the same session).
  const again = await open("ws", "scrolled", { context: page.context() });
  await lost(again, "after a reload");
  await page.context().close();
});

for (const kind of ["sse", "ws"]) {
  test(`${kind}: an unknown auction says so plainly, links to the catalogue, and claims no retry it does not make`, async () => {
    // Through the tabs' shared connection (a SharedWorker, whose requests
    // the test cannot see) and through the page's own (no SharedWorker),
    // whose streams and sockets it counts.
    for (const shared of [true, false]) {
      const where = `${kind}, ${shared ? "shared connection" : "own connection"}`;
      const context = await browser.newContext({ viewport: DESKTOP });
      const page = await context.newPage();
      await page.addInitScript((withWorker) => {
        if (!withWorker) delete window.SharedWorker;
        // Every text the connection line shows, from the start.
        window.__said = [];
        new MutationObserver(() => {
          const text = document.getElementById("connection")?.textContent;
          if (text && window.__said.at(-1) !== text) window.__said.push(text);
        }).observe(document, { subtree: true, childList: true, characterData: true });
      }, shared);
      const connections = [];
      page.on("request", (request) => {
        if (new URL(request.url()).pathname === "/events") connections.push(request.url());
      });
      page.on("websocket", (socket) => connections.push(socket.url()));
      await page.goto(`${stack.url}${PAGES[kind]}no-such-lot`);
      await page.waitForFunction(() => document.getElementById("auction-page").dataset.phase === "not-found");
      assert.equal(await page.textContent("#not-found h2"), "No such auction", where);
      assert.equal(await page.getAttribute("#not-found a", "href"), "catalogue.html", where);
      assert.equal(await page.isVisible("#bid-form"), false, where);
      if (!shared) assert.equal(connections.length, 1, `${where}: one stream or socket: ${connections.join(" ")}`);
      // Longer than the client's first retry pause (at most 1 s after a
      // refusal): a page that retried would have asked again by then.
      await page.waitForTimeout(3000);
      assert.equal(await page.textContent("#connection"), "Not watching: no such auction", where);
      const said = await page.evaluate(() => window.__said);
      assert.ok(said.every((text) => !/retrying|Reconnecting/i.test(text)), `${where}: ${said.join(" | ")}`);
      if (!shared) assert.equal(connections.length, 1, `${where}: no new stream or socket: ${connections.join(" ")}`);
      await context.close();
    }
  });
}
