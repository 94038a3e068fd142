// Many auction tabs in one browser share one connection per transport (the
// pages' SharedWorker), against the real services behind the project's
// nginx (plain HTTP/1.1: six connections per origin). Without the sharing,
// six SSE tabs take every connection and a seventh never loads.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { Stack, waitFor, launchChromium } from "./stack.mjs";

const PAGES = { sse: "/?auction=", ws: "/ws.html?auction=" };
const EDGES = { sse: ["sse1", "sse2"], ws: ["ws1", "ws2"] };
const LIVE = ["connected", "resumed"];
const TABS = 10;

let stack;
let browser;

before(async () => {
  stack = new Stack();
  await stack.start();
  browser = await launchChromium();
});

/** The test's browser contexts, closed after it whatever its outcome. */
let contexts = [];
async function newContext() {
  const context = await browser.newContext();
  contexts.push(context);
  return context;
}
afterEach(async () => {
  for (const context of contexts) await context.close().catch(() => {});
  contexts = [];
});

after(async () => {
  await browser?.close();
  stack?.stop();
});

async function createAuction(id) {
  const created = await stack.api("/auctions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ id, title: `Lot ${id}`, starting_price: 10000, min_increment: 100, duration_ms: 3600000 }),
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
}

/** The open connections of `transport` over its edges, as the edges
 *  report them (`auction_connections` on their ops listeners). */
async function connections(transport) {
  let total = 0;
  for (const name of EDGES[transport]) {
    const text = await (await fetch(`http://127.0.0.1:${stack.opsPorts[name]}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith(`auction_connections{transport="${transport}"}`));
    total += line ? Number(line.split(" ")[1]) : 0;
  }
  return total;
}

/** Reads the edges' connection count until `stop()`, which gives the
 *  highest seen. */
function watchConnections(transport) {
  let highest = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      highest = Math.max(highest, await connections(transport));
      await new Promise((wake) => setTimeout(wake, 20));
    }
  })();
  return { async stop() { running = false; await loop; return highest; } };
}

/** A new tab of `context`, recording every connection state it shows and
 *  every connection the page itself opens. */
async function newTab(context) {
  const page = await context.newPage();
  page.own = [];
  page.on("request", (request) => { if (/\/events(\?|$)/.test(request.url())) page.own.push(request.url()); });
  page.on("websocket", (socket) => page.own.push(socket.url()));
  await page.addInitScript(() => {
    window.__states = [];
    new MutationObserver(() => {
      const element = document.getElementById("connection");
      const state = element && element.dataset.state;
      if (state && window.__states.at(-1) !== state) window.__states.push(state);
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state"] });
  });
  return page;
}

/** A tab of `context` on `auction`, loaded. */
async function openTab(context, kind, auction, site = stack.url) {
  const page = await newTab(context);
  await page.goto(`${site}${PAGES[kind]}${auction}`);
  return page;
}

const isLive = (page) => page.evaluate((live) => live.includes(document.getElementById("connection").dataset.state), LIVE);

/** Bids the minimum from `page` as `name`; resolves once the page shows it
 *  and the auction's stream holds it. */
async function bidFrom(page, auction, name) {
  if (await page.isVisible("#bidder-name")) await page.fill("#bidder-name", name);
  await page.click("#raise-min");
  const amount = Math.round(Number(await page.inputValue("#bid-amount")) * 100);
  await page.click("#bid-submit");
  await page.waitForFunction(
    ([n, a]) => document.querySelector("#history li")?.dataset.amount === String(a) && document.getElementById("bid-error").textContent === "",
    [name, amount], { timeout: 10000 },
  );
  const last = stack.stream(auction).filter((e) => e.kind === "bid").at(-1);
  assert.equal(last.data.amount, amount, `${auction}: the bid is in the auction's stream`);
  assert.equal(last.data.bidder, name);
}

/** The amounts of the current round's bids in the stream, newest first. */
function streamRound(auction) {
  const round = [];
  for (const entry of stack.stream(auction).reverse()) {
    if (entry.kind === "opened") break;
    if (entry.kind === "bid") round.push(entry.data.amount);
  }
  return round;
}

const historyAmounts = (page) => page.$$eval("#history li", (items) => items.map((li) => Number(li.dataset.amount)));

for (const kind of ["sse", "ws"]) {
  test(`${kind}: ten auction pages in one browser all show Live within 5 s over at most two connections, and a bid from each is accepted`, async () => {
    const auctions = Array.from({ length: TABS }, (_, i) => `ten-${kind}-${i}`);
    for (const id of auctions) await createAuction(id);
    await waitFor(`no ${kind} connection left open`, async () => (await connections(kind)) === 0, 10000);
    const context = await newContext();
    const pages = [];
    for (let i = 0; i < TABS; i++) pages.push(await newTab(context));
    const counting = watchConnections(kind);
    const started = Date.now();
    // Opened together, as a browser restoring its tabs does.
    const loads = pages.map((page, i) => page.goto(`${stack.url}${PAGES[kind]}${auctions[i]}`, { timeout: 30000 }).catch((error) => error));
    // Every tab Live within 5 s of the first being opened.
    const notLive = async () => {
      const states = await Promise.all(pages.map((page) => isLive(page).catch(() => false)));
      return auctions.filter((_, i) => !states[i]);
    };
    await waitFor("every tab to show Live", async () => (await notLive()).length === 0, Math.max(0, 5000 - (Date.now() - started)))
      .catch(async () => {
        const late = await notLive();
        await counting.stop();
        assert.fail(`not Live within 5 s: ${late.join(", ")}`);
      });
    await Promise.all(loads);
    for (const [i, page] of pages.entries()) await bidFrom(page, auctions[i], `Bidder ${i}`);
    const highest = await counting.stop();
    assert.ok(highest <= 2, `the edges saw ${highest} ${kind} connections from one browser`);
    assert.equal(await connections(kind), 1, "one connection serves every tab");
    for (const page of pages) assert.deepEqual(page.own, [], "no tab opens a connection of its own");
    await context.close();
  });

  test(`${kind}: closing the first tab, the one that opened the shared connection, interrupts no other tab and loses no bid`, async () => {
    const first = `first-${kind}`;
    const busy = `busy-${kind}`;
    await createAuction(first);
    await createAuction(busy);
    const context = await newContext();
    const opener = await openTab(context, kind, first);
    await opener.waitForFunction((live) => live.includes(document.getElementById("connection").dataset.state), LIVE);
    // Someone else, in another browser at another address (one address
    // is one viewer), watches the first tab's lot.
    const elsewhere = await openTab(await newContext(), kind, first, await stack.urlFrom("127.0.0.2"));
    const watching = (n) => elsewhere.waitForFunction((c) => document.getElementById("viewers").dataset.count === c, String(n), { timeout: 10000 });
    await watching(2);
    const others = [];
    for (const auction of ["live", "live", busy]) {
      const page = await openTab(context, kind, auction);
      await page.waitForFunction((live) => live.includes(document.getElementById("connection").dataset.state), LIVE);
      page.auction = auction;
      others.push(page);
    }
    // Bids flow on `busy` (from the API) and `live` (the simulator) while
    // the first tab closes.
    let amount = 10000;
    let bidding = true;
    const placing = (async () => {
      while (bidding) {
        const placed = await stack.api(`/auctions/${busy}/bids`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ amount, bidder: "Someone else" }),
        });
        assert.equal(placed.status, 201, JSON.stringify(placed.body));
        amount += 100;
        await new Promise((wake) => setTimeout(wake, 100));
      }
    })();
    await waitFor("bids on the busy lot", () => amount >= 10500, 10000);
    const marks = await Promise.all(others.map((page) => page.evaluate(() => window.__states.length)));
    await opener.close({ runBeforeUnload: true });
    // The shared connection let go of the closed tab's lot.
    await watching(1);
    // More bids arrive after the close, on both lots.
    const closedAt = amount;
    await waitFor("more bids after the close", () => amount >= closedAt + 1000, 15000);
    const liveNow = streamRound("live").length;
    await waitFor("simulated bids after the close", () => streamRound("live").length >= liveNow + 3, 15000);
    bidding = false;
    await placing;
    for (const [i, page] of others.entries()) {
      // Every bid of the round, as far as the page keeps them, no gap, no
      // repeat (allowing the page a moment to receive the newest).
      let shown;
      let expected;
      await waitFor(`${page.auction} tab ${i} to match its stream`, async () => {
        shown = await historyAmounts(page);
        expected = streamRound(page.auction).slice(0, 30);
        return JSON.stringify(shown) === JSON.stringify(expected);
      }, 5000).catch(() => assert.deepEqual(shown, expected, `${page.auction} tab ${i}`));
      assert.equal(new Set(shown).size, shown.length, "no duplicates");
      const states = (await page.evaluate(() => window.__states)).slice(marks[i]);
      assert.deepEqual(states, [], `${page.auction} tab ${i} stayed Live (shown: ${states.join(" → ")})`);
      assert.ok(await isLive(page));
    }
    await context.close();
  });

  test(`${kind}: a browser without SharedWorker gets a connection of its own per tab`, async () => {
    const auction = `alone-${kind}`;
    await createAuction(auction);
    await waitFor(`no ${kind} connection left open`, async () => (await connections(kind)) === 0, 10000);
    const context = await newContext();
    await context.addInitScript(() => { delete window.SharedWorker; });
    const pages = [];
    for (let i = 0; i < 2; i++) {
      const page = await openTab(context, kind, auction);
      await page.waitForFunction((live) => live.includes(document.getElementById("connection").dataset.state), LIVE);
      pages.push(page);
    }
    for (const page of pages) assert.equal(page.own.length, 1, `the page opened its own connection: ${page.own.join(" ")}`);
    await waitFor("two connections", async () => (await connections(kind)) === 2, 5000);
    await bidFrom(pages[0], auction, "Ada alone");
    await pages[1].waitForFunction(() => document.querySelector("#history li")?.dataset.bidder === "Ada alone");
    await context.close();
  });
}
