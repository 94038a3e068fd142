// The auction rules on the pages (docs/api.md: "Auction rules"), against the real
// binaries behind nginx: soft close moves the countdown on an SSE and a
// WebSocket page, a reserve that is not met is said so (and never shown),
// a bidder's maximum is shown to them alone, and a lot's seller and terms
// of sale are shown when it has them.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Stack, launchChromium } from "./stack.mjs";

const PAGES = { sse: "/?auction=", ws: "/ws.html?auction=" };
const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });

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

async function create(body) {
  const created = await stack.api("/auctions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ title: "Lot", starting_price: 1000, min_increment: 100, ...body }),
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return created.body;
}

async function open(kind, auction) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${stack.url}${PAGES[kind]}${auction}`);
  await page.waitForFunction(() => ["connected", "resumed"].includes(document.getElementById("connection").dataset.state));
  return page;
}

/** The countdown a page shows, in seconds. */
const secondsLeft = (page) => page.$eval("#countdown", (element) => {
  const match = /(?:(\d+)h )?(\d+)m (\d+)s/.exec(element.textContent);
  return match ? Number(match[1] || 0) * 3600 + Number(match[2]) * 60 + Number(match[3]) : -1;
});

async function bid(token, auction, body) {
  return stack.api(`/auctions/${auction}/bids`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
}

test("soft close: a bid 2 s before the end moves the countdown on both pages, and it wins at the new end", async () => {
  const auction = await create({ id: "soft", duration_ms: 6000, soft_close_ms: 10000 });
  const sse = await open("sse", "soft");
  const ws = await open("ws", "soft");
  // 2 s before the end (by this host's clock, which the stack shares).
  await sse.waitForFunction((end) => Date.now() >= end - 2000, auction.ends_at, { timeout: 10000 });
  for (const page of [sse, ws]) assert.ok(await secondsLeft(page) <= 3);
  const placed = await bid(stack.token("Late Bidder"), "soft", { amount: 1500 });
  assert.equal(placed.status, 201, JSON.stringify(placed.body));
  // Both countdowns move out by the window.
  for (const page of [sse, ws]) {
    await page.waitForFunction(() => {
      const match = /(\d+)m (\d+)s/.exec(document.getElementById("countdown").textContent);
      return match && Number(match[1]) * 60 + Number(match[2]) >= 9;
    }, null, { timeout: 5000 });
  }
  const stream = stack.stream("soft");
  const extended = stream.find((entry) => entry.kind === "extended");
  assert.equal(extended.data.ends_at, auction.ends_at + 10000);
  // It closes at the new end, not the old one, with the late bid winning.
  for (const page of [sse, ws]) {
    await page.waitForFunction(() => document.getElementById("auction-page").dataset.phase === "closed", null, { timeout: 20000 });
    assert.equal(await page.textContent("#result-text"), `Sold to Late Bidder for ${money.format(15)}`);
  }
  const closed = stack.stream("soft").find((entry) => entry.kind === "closed");
  assert.equal(closed.data.auction.ends_at, extended.data.ends_at);
  assert.ok(Number(closed.id.split("-")[0]) >= extended.data.ends_at, "closed at the new end");
  assert.equal(closed.data.auction.current.bidder, "Late Bidder");
  await sse.context().close();
  await ws.context().close();
});

test("reserve: below it the pages say 'Reserve not met' and, once closed, name no winner", async () => {
  await create({ id: "reserve", duration_ms: 4000, reserve_price: 90000 });
  const sse = await open("sse", "reserve");
  const ws = await open("ws", "reserve");
  const placed = await bid(stack.token("Hopeful"), "reserve", { amount: 2000 });
  assert.equal(placed.status, 201);
  for (const page of [sse, ws]) {
    await page.waitForFunction(() => !document.getElementById("reserve").hidden);
    assert.equal(await page.textContent("#reserve"), "Reserve not met");
  }
  for (const page of [sse, ws]) {
    await page.waitForFunction(() => document.getElementById("auction-page").dataset.phase === "closed", null, { timeout: 20000 });
    const result = await page.textContent("#result-text");
    assert.match(result, /^Reserve not met: not sold/);
    assert.doesNotMatch(result, /Sold to/);
    // The reserve itself is nowhere on the page.
    assert.doesNotMatch(await page.content(), /900\.00|90000/);
  }
  await sse.context().close();
  await ws.context().close();
});

for (const kind of ["sse", "ws"]) {
  test(`${kind}: a maximum set from the page is shown to its bidder only, and survives a reload`, async () => {
    await create({ id: `max-${kind}`, duration_ms: 3600000 });
    const mine = await open(kind, `max-${kind}`);
    const other = await open(kind, `max-${kind}`);
    await mine.fill("#bidder-name", "Proxy Pat");
    await mine.fill("#bid-amount", "77.00");
    await mine.check("#bid-max");
    await mine.click("#bid-submit");
    await mine.waitForFunction(() => !document.getElementById("your-max").hidden);
    assert.match(await mine.textContent("#your-max"), /\$77\.00/);
    // The public price is the starting price; the maximum is not in it.
    await other.waitForFunction(() => document.querySelector("#history li")?.dataset.bidder === "Proxy Pat");
    assert.equal(await other.textContent("#current-amount"), money.format(10));
    // Another bidder's bid is answered by the maximum, one step over.
    const placed = await bid(stack.token("Rival"), `max-${kind}`, { amount: 2000 });
    assert.equal(placed.status, 201);
    assert.equal(placed.body.leading, false);
    await other.waitForFunction(() => document.getElementById("current-amount").textContent === "$21.00");
    assert.doesNotMatch(await other.content(), /77\.00|7700/);
    // From the server: still leading, maximum shown, after a reload too.
    await mine.reload();
    await mine.waitForFunction(() => !document.getElementById("your-max").hidden);
    assert.match(await mine.textContent("#your-max"), /\$77\.00 \(leading\)/);
    assert.equal(await mine.getAttribute("#you", "data-you"), "winning");
    await mine.context().close();
    await other.context().close();
  });
}

test("seller and terms: both pages show who sells the lot and its terms when it has them, and nothing when not", async () => {
  const terms = "Collection only, within 7 days.\nPayment by bank transfer. <b>No returns</b>.";
  const created = await stack.api("/auctions", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${stack.token("Maison Ada", ["seller"])}` },
    body: JSON.stringify({ id: "terms", title: "Oak desk", starting_price: 1000, min_increment: 100, duration_ms: 3600000, terms }),
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  // An auction stored before sellers were recorded: no seller, no terms.
  await create({ id: "no-terms", duration_ms: 3600000 });
  stack.redis("HDEL", "auction:{no-terms}", "seller_json", "terms_json");
  assert.equal((await stack.api("/auctions/no-terms", { method: "GET" })).body.seller, undefined);
  for (const kind of ["sse", "ws"]) {
    const page = await open(kind, "terms");
    await page.waitForFunction(() => !document.getElementById("item-seller").hidden);
    assert.equal(await page.textContent("#item-seller"), "Sold by Maison Ada");
    assert.equal(await page.isVisible("#item-terms"), true, kind);
    // Folded until asked for: the summary shows, the text does not.
    assert.equal(await page.textContent("#item-terms summary"), "Terms of sale");
    assert.equal(await page.isVisible("#item-terms-text"), false, kind);
    await page.click("#item-terms summary");
    assert.equal(await page.isVisible("#item-terms-text"), true, kind);
    // The seller's text as text: no markup of theirs reaches the page.
    assert.equal(await page.textContent("#item-terms-text"), terms);
    assert.equal(await page.$("#item-terms-text b"), null, kind);
    await page.context().close();

    // That one, and a simulated lot, show neither.
    for (const auction of ["no-terms", "live"]) {
      const plain = await open(kind, auction);
      await plain.waitForFunction(() => !document.getElementById("item").hidden);
      for (const id of ["#item-seller", "#item-terms"]) {
        assert.equal(await plain.isVisible(id), false, `${kind} ${auction} ${id}`);
      }
      assert.doesNotMatch(await plain.innerText("#item"), /Sold by|Terms of sale/);
      await plain.context().close();
    }
  }
});
