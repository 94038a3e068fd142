// The auction client library (/assets/auction-client.js) and the WebSocket
// page behind a proxy that refuses WebSocket upgrades: the project's nginx
// with `/ws` answering 403 (render.sh's WS_REFUSE_UPGRADES), reloaded
// between phases. The "auto" transport falls back to SSE and HTTP POST and
// returns to a WebSocket once upgrades pass again, with nothing lost or
// repeated across either switch. Every message the library saw is checked
// against docs/protocol.schema.json.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Stack, waitFor, launchChromium } from "./stack.mjs";
import { validator } from "./schema.mjs";

const schema = JSON.parse(readFileSync(resolve(import.meta.dirname, "../../docs/protocol.schema.json"), "utf8"));
const LIVE = ["connected", "resumed"];

let stack;
let browser;

before(async () => {
  stack = new Stack();
  await stack.start();
  browser = await launchChromium();
});

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

/** The ids of `auction`'s stream entries after `from` up to `to`
 *  (inclusive), `<ms>-<seq>`. */
function streamIds(auction, from, to) {
  const after = (a, b) => {
    const [am, as] = a.split("-").map(BigInt);
    const [bm, bs] = b.split("-").map(BigInt);
    return am > bm || (am === bm && as > bs);
  };
  return stack.stream(auction).map((e) => e.id).filter((id) => (!from || after(id, from)) && !after(id, to));
}

/** Asserts that `events` (the library's, in order) hold every event of
 *  `auction` after its first `init`, each once, in the stream's order. */
function assertComplete(events, auction) {
  const mine = events.filter((e) => e.auction === auction && e.type !== "viewers");
  assert.equal(mine[0].type, "init", "the first event is the init");
  assert.equal(mine.filter((e) => e.type === "init").length, 1, `one init only: ${mine.map((e) => e.type).join(" ")}`);
  const delivered = mine.slice(1).map((e) => e.id);
  const expected = streamIds(auction, mine[0].id, delivered.at(-1));
  assert.deepEqual(delivered, expected, `${auction}: every event once, in order`);
}

test("auto client: with upgrades refused it is live over SSE within 3 s and bids by HTTP; allowed again, it returns to a WebSocket; nothing lost or repeated; every message matches the protocol schema", async () => {
  await stack.allowWsUpgrades(false);
  await createAuction("fallback-lib");
  const page = await (await newContext()).newPage();
  // A page of the origin (its CSP allows modules from /assets).
  await page.goto(`${stack.url}/catalogue.html`);
  await page.evaluate(async () => {
    const { AuctionClient } = await import("/assets/auction-client.js");
    const log = { events: [], states: [], transports: [], messages: [], sent: [], fallbacks: [] };
    window.log = log;
    const client = new AuctionClient({ transport: "auto", wsRetryMs: 1000 });
    window.client = client;
    const started = performance.now();
    client.on("event", (event) => log.events.push({ ...event, data: undefined }));
    client.on("state", (state) => log.states.push({ ...state, at: performance.now() - started }));
    client.on("transport", ({ transport }) => log.transports.push(transport));
    client.on("fallback", ({ reason }) => log.fallbacks.push(reason));
    client.on("message", (message) => log.messages.push(message));
    client.on("send", (message) => log.sent.push(message));
    client.watch(["live", "fallback-lib"]);
  });
  // Live over SSE within 3 s of the first watch.
  await page.waitForFunction(() => log.states.some((s) => s.state === "open"), null, { timeout: 3000 });
  const first = await page.evaluate(() => log.states.find((s) => s.state === "open"));
  assert.equal(first.transport, "sse", "the refused WebSocket fell back to SSE");
  assert.ok(first.at < 3000, `live after ${first.at} ms`);
  assert.deepEqual(await page.evaluate(() => log.fallbacks.slice(0, 1)), ["refused"]);
  await page.waitForFunction(() => log.events.filter((e) => e.type === "init").length === 2);

  // Sign in and bid: over HTTP, as the socket is refused.
  const placed = await page.evaluate(async () => {
    await client.signIn("Ada Fallback");
    return client.bid("fallback-lib", { amount: 10000 });
  });
  assert.equal(placed.ok, true, JSON.stringify(placed));
  assert.equal(await page.evaluate(() => log.sent.filter((m) => m.message.type === "bid").length), 0);
  // Simulated bids keep coming over SSE meanwhile.
  const before = await page.evaluate(() => log.events.filter((e) => e.auction === "live" && e.type === "bid").length);
  await page.waitForFunction((n) => log.events.filter((e) => e.auction === "live" && e.type === "bid").length >= n + 3, before);

  // Upgrades pass again: the client returns to a WebSocket by itself.
  await stack.allowWsUpgrades(true);
  await page.waitForFunction(() => log.transports.at(-1) === "ws" && client.socketOpen, null, { timeout: 10000 });
  const onWs = await page.evaluate(() => log.events.filter((e) => e.auction === "live" && e.type === "bid").length);
  await page.waitForFunction((n) => log.events.filter((e) => e.auction === "live" && e.type === "bid" && e.transport === "ws").length >= 3, onWs);
  // A bid now goes over the socket, signed in there.
  const again = await page.evaluate(() => client.bid("fallback-lib", { amount: 10100 }));
  assert.equal(again.ok, true, JSON.stringify(again));
  await page.waitForFunction(() => log.events.some((e) => e.auction === "fallback-lib" && e.type === "bid" && e.transport === "ws"));
  assert.equal(await page.evaluate(() => log.sent.filter((m) => m.message.type === "bid").length), 1, "the second bid went over the socket");

  // And refused again: the next reconnect falls back to SSE, resuming.
  await stack.allowWsUpgrades(false);
  const ws = await stack.serving(["ws1", "ws2"], "ws");
  stack.kill(ws);
  await page.waitForFunction(() => log.transports.at(-1) === "sse" && log.states.at(-1).state === "open", null, { timeout: 10000 });
  const sse = await page.evaluate(() => log.events.filter((e) => e.auction === "live" && e.transport === "sse").length);
  await page.waitForFunction((n) => log.events.filter((e) => e.auction === "live" && e.type === "bid" && e.transport === "sse").length >= n + 3, sse);
  await stack.restart(ws);

  const log = await page.evaluate(() => log);
  assertComplete(log.events, "live");
  assertComplete(log.events, "fallback-lib");
  assert.deepEqual(log.transports.filter((t, i, all) => t !== all[i - 1]), ["ws", "sse", "ws", "sse"]);

  // Every message seen and sent matches the protocol schema.
  const check = validator(schema);
  let counted = 0;
  const all = [
    ...log.messages.map((m) => (m.transport === "sse" ? [`sse_${m.event}`, m.data] : ["ws_server_message", m.message])),
    ...log.sent.map((m) => ["ws_client_message", m.message]),
  ];
  for (const [definition, value] of all) {
    const errors = check(definition, value);
    assert.deepEqual(errors, [], `${definition}: ${JSON.stringify(value)}`);
    counted += 1;
  }
  const kinds = new Set(log.messages.map((m) => (m.transport === "sse" ? `sse ${m.event}` : `ws ${m.message.type}`)));
  for (const kind of ["sse init", "sse bid", "sse viewers", "ws init", "ws bid", "ws viewers", "ws authenticated", "ws ack"]) {
    assert.ok(kinds.has(kind) || kind === "ws init", `saw ${kind} (${[...kinds].join(", ")})`);
  }
  assert.ok(counted > 20);
});

test("the WebSocket page with upgrades refused is live over SSE within 3 s and its bid goes through; allowed again, the next reconnect returns to the WebSocket with no gap and no repeat", async () => {
  await stack.allowWsUpgrades(false);
  await createAuction("fallback-page");
  const page = await (await newContext()).newPage();
  await page.addInitScript(() => {
    window.__states = [];
    new MutationObserver(() => {
      const element = document.getElementById("connection");
      const state = element && `${element.dataset.state} ${element.dataset.transport}`;
      if (state && window.__states.at(-1) !== state) window.__states.push(state);
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state", "data-transport"] });
  });
  const started = Date.now();
  await page.goto(`${stack.url}/ws.html?auction=live`);
  await page.waitForFunction((live) => live.includes(document.getElementById("connection").dataset.state), LIVE, { timeout: Math.max(1, 3000 - (Date.now() - started)) });
  assert.equal(await page.getAttribute("#connection", "data-transport"), "sse");
  assert.match(await page.textContent("#connection"), /Live · Server-Sent Events/);

  // A bid from the page, over HTTP.
  const bidContext = await newContext();
  const bidPage = await bidContext.newPage();
  await bidPage.goto(`${stack.url}/ws.html?auction=fallback-page`);
  await bidPage.waitForFunction((live) => live.includes(document.getElementById("connection").dataset.state), LIVE, { timeout: 3000 });
  await bidPage.fill("#bidder-name", "Grace Fallback");
  await bidPage.click("#raise-min");
  await bidPage.click("#bid-submit");
  await bidPage.waitForFunction(() => document.querySelector("#history li")?.dataset.bidder === "Grace Fallback" && document.getElementById("bid-error").textContent === "", null, { timeout: 10000 });
  assert.equal(stack.stream("fallback-page").filter((e) => e.kind === "bid").length, 1);
  await bidContext.close();

  // Upgrades pass again; the SSE edge serving the page goes down: the
  // reconnect is a WebSocket, resuming from the page's last event.
  await stack.allowWsUpgrades(true);
  const mark = await page.evaluate(() => window.__states.length);
  const edge = await stack.serving(["sse1", "sse2"], "sse");
  stack.kill(edge);
  await page.waitForFunction(() => {
    const element = document.getElementById("connection");
    return ["connected", "resumed"].includes(element.dataset.state) && element.dataset.transport === "ws";
  }, null, { timeout: 10000 }).catch(async (error) => {
    throw new Error(`${error.message}; shown: ${(await page.evaluate(() => window.__states)).join(" → ")}`);
  });
  await stack.restart(edge);
  // More bids arrive over the socket; the page's history is the stream's.
  const count = stack.stream("live").length;
  await waitFor("simulated bids after the switch", () => stack.stream("live").length >= count + 3, 15000);
  let shown;
  let expected;
  await waitFor("the history to match the stream", async () => {
    shown = await page.$$eval("#history li", (items) => items.map((li) => Number(li.dataset.amount)));
    const round = [];
    for (const entry of stack.stream("live").reverse()) {
      if (entry.kind === "opened") break;
      if (entry.kind === "bid") round.push(entry.data.amount);
    }
    // The page knows the round's newest bids from its init (10) and every
    // bid since: its history is the round's newest, with no gap, at least
    // as many as the init gave.
    expected = round.slice(0, Math.min(30, Math.max(shown.length, Math.min(10, round.length))));
    return shown.length > 0 && JSON.stringify(shown) === JSON.stringify(expected);
  }, 5000).catch(() => assert.deepEqual(shown, expected));
  assert.equal(new Set(shown).size, shown.length, "no duplicates");
  const states = (await page.evaluate(() => window.__states)).slice(mark);
  assert.ok(!states.some((s) => s.startsWith("connected") || s.startsWith("reset")), `resumed, not reloaded: ${states.join(" → ")}`);
});
