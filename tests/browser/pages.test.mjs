// The auction pages in a real browser (Debian's chromium via playwright-core)
// against the real services behind the project's nginx configuration.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { Stack } from "./stack.mjs";

const artifacts = resolve(import.meta.dirname, "../../artifacts/screenshots");
const PAGES = { sse: "/?auction=", ws: "/ws.html?auction=" };
const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });

let stack;
let browser;

before(async () => {
  stack = new Stack();
  await stack.start();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // Headless, with a fresh profile (Playwright makes one per launch);
    // no background traffic: this machine has no network but loopback.
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  // A quiet auction (no simulator) for the bid tests.
  const created = await stack.api("/auctions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ id: "quiet", title: "Walnut writing desk", starting_price: 25000, min_increment: 500, duration_ms: 3600000 }),
  });
  assert.equal(created.status, 201);
});

after(async () => {
  await browser?.close();
  stack?.stop();
});

async function open(kind, auction, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  // Record every connection state the page shows, to see transitions that
  // last only a moment.
  await page.addInitScript(() => {
    window.__states = [];
    new MutationObserver(() => {
      const element = document.getElementById("connection");
      const state = element && element.dataset.state;
      if (state && window.__states.at(-1) !== state) window.__states.push(state);
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state"] });
  });
  await page.goto(`${stack.url}${PAGES[kind]}${auction}`);
  await page.waitForFunction(() => ["connected", "resumed"].includes(document.getElementById("connection").dataset.state));
  return page;
}

const historyAmounts = (page) =>
  page.$$eval("#history li", (items) => items.map((li) => Number(li.dataset.amount)));

/** The amounts of the current round's bids in the stream, newest first. */
function streamRound(auction) {
  const round = [];
  for (const entry of stack.stream(auction).reverse()) {
    if (entry.kind === "opened") break;
    if (entry.kind === "bid") round.push(entry.data.amount);
  }
  return round;
}

for (const kind of ["sse", "ws"]) {
  test(`${kind} page shows simulated bids live, matching the bidder's current bid`, async () => {
    const page = await open(kind, "live");
    const first = await historyAmounts(page);
    await page.waitForFunction((n) => document.querySelectorAll("#history li").length >= n + 2, first.length);
    const amounts = await historyAmounts(page);
    assert.ok(amounts.length >= first.length + 2, "new bids arrived without a reload");
    for (let i = 1; i < amounts.length; i++) assert.ok(amounts[i - 1] > amounts[i], "newest first, increasing");
    // The page and the bidder agree (retry across a bid arriving in between).
    let agreed = false;
    for (let attempt = 0; attempt < 20 && !agreed; attempt++) {
      const { body } = await stack.api("/auctions/live");
      const shown = await page.textContent("#current-amount");
      agreed = shown === money.format(body.current.amount / 100);
      if (!agreed) await page.waitForTimeout(100);
    }
    assert.ok(agreed, "the current bid matches GET /auctions/live");
    await page.context().close();
  });
}

test("a bid placed from a page appears in the history of both pages", async () => {
  const sse = await open("sse", "quiet");
  const ws = await open("ws", "quiet");
  for (const [from, name] of [[sse, "Ada from SSE"], [ws, "Grace from WS"]]) {
    await from.fill("#bidder-name", name);
    const minimum = await from.inputValue("#bid-amount"); // prefilled with min next
    await from.click("#bid-submit");
    for (const page of [sse, ws]) {
      await page.waitForFunction((n) => document.querySelector("#history li")?.dataset.bidder === n, name);
    }
    assert.equal(await sse.textContent("#current-amount"), money.format(Number(minimum)));
    assert.equal(await from.textContent("#bid-error"), "");
  }
  // The name is remembered by the browser.
  await sse.reload();
  assert.equal(await sse.inputValue("#bidder-name"), "Ada from SSE");
  await sse.context().close();
  await ws.context().close();
});

test("a too-low bid shows the error inline and changes nothing else", async () => {
  for (const kind of ["sse", "ws"]) {
    const page = await open(kind, "quiet");
    const before = { history: await page.innerHTML("#history"), current: await page.textContent("#current-amount") };
    const { body } = await stack.api("/auctions/quiet");
    const minNext = body.current ? body.current.amount + body.min_increment : body.starting_price;
    await page.fill("#bidder-name", "Low baller");
    await page.fill("#bid-amount", "1.00");
    await page.click("#bid-submit");
    await page.waitForFunction(() => document.getElementById("bid-error").textContent !== "");
    assert.equal(await page.textContent("#bid-error"), `Bid too low: the minimum is ${money.format(minNext / 100)}.`);
    assert.equal(await page.innerHTML("#history"), before.history);
    assert.equal(await page.textContent("#current-amount"), before.current);
    await page.context().close();
  }
});

for (const [kind, replicas, transport] of [["sse", ["sse1", "sse2"], "sse"], ["ws", ["ws1", "ws2"], "ws"]]) {
  test(`${kind} page survives its edge being killed, with no gap and no duplicate`, async () => {
    const page = await open(kind, "live");
    await page.waitForFunction(() => document.querySelectorAll("#history li").length >= 3);
    const serving = await stack.serving(replicas, transport);
    stack.kill(serving);
    await page.waitForFunction(() => window.__states.includes("reconnecting"), null, { timeout: 15000 });
    await page.waitForFunction(
      () => ["connected", "resumed"].includes(document.getElementById("connection").dataset.state),
      null, { timeout: 20000 },
    );
    // Bids keep flowing; let a few more arrive through the other replica.
    const count = (await historyAmounts(page)).length;
    await page.waitForFunction((n) => document.querySelectorAll("#history li").length >= Math.min(n + 3, 50), count);
    const states = await page.evaluate(() => window.__states);
    assert.ok(states.indexOf("reconnecting") < states.lastIndexOf("resumed") || states.at(-1) === "connected", states.join(" → "));
    // The page's history equals the stream's (current round, newest first),
    // as far as the page keeps it.
    let shown;
    let expected;
    for (let attempt = 0; attempt < 20; attempt++) {
      shown = await historyAmounts(page);
      expected = streamRound("live").slice(0, shown.length);
      if (JSON.stringify(shown) === JSON.stringify(expected)) break;
      await page.waitForTimeout(100); // a bid between the two reads
    }
    assert.deepEqual(shown, expected);
    assert.equal(new Set(shown).size, shown.length, "no duplicates");
    await stack.restart(serving);
    await page.context().close();
  });
}

test("screenshots of both pages, desktop and phone width", async () => {
  mkdirSync(artifacts, { recursive: true });
  for (const kind of ["sse", "ws"]) {
    for (const [size, viewport] of [["desktop", { width: 1280, height: 900 }], ["phone", { width: 390, height: 844 }]]) {
      const page = await open(kind, "live", viewport);
      await page.waitForFunction(() => document.querySelectorAll("#history li").length >= 3);
      // Phone width: nothing overflows horizontally.
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      assert.ok(overflow <= 0, `${kind} ${size}: horizontal overflow of ${overflow}px`);
      await page.screenshot({ path: join(artifacts, `${kind}-${size}.png`), fullPage: true });
      await page.context().close();
    }
  }
});
