// The comparison page (web/compare.html) as an experiment, in Chromium
// against the real services behind the project's nginx: drops and a 503
// period made by the edges' demo controls through the page's own buttons,
// read back from the page's list of recoveries, held against what each
// transport promises (SSE no sooner than the `retry:` the edge sent, a
// WebSocket within the library's backoff), and the page's counts against
// the edges' own metrics. It prints the figures it measured; the README's
// "SSE or WebSocket?" section quotes them.
//
// The page is reached through a counting proxy in front of nginx
// (wire.mjs), which measures the WebSocket's bid events on the wire,
// compressed as Chromium negotiates them: a page cannot see that.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { Stack, waitFor, launchChromium } from "./stack.mjs";
import { countingProxy, plainFrameBytes } from "./wire.mjs";

// The auction the page follows, bid on by a simulator of its own (stopped
// before the counts are compared, so that nothing moves meanwhile).
const AUCTION = "cmp";
// An auction nobody bids on: a stream of it, read for its `retry:`, is
// sent no event the edges would count.
const STILL = "still";
const SIM_INTERVAL_MS = 250;
// How much later than due a timer may fire on a loaded machine: the
// WebSocket's new try must start within its backoff bound plus this.
const TIMER_SLACK_MS = 250;
const REFUSE_S = 10;
// Every phase waits for its condition, at most this long.
const PHASE_MS = 30000;
const artifacts = resolve(import.meta.dirname, "../../artifacts/screenshots");

let stack;
let browser;
let proxy;

before(async () => {
  stack = new Stack();
  await stack.start();
  // Simulated bidders whose limits nobody reaches, in a round longer than
  // the test: bids flow until the test stops the simulator.
  await stack.addBidder("simulator", {
    AUCTION_SIM_AUCTIONS: AUCTION, AUCTION_SIM_INTERVAL_MS: String(SIM_INTERVAL_MS),
    AUCTION_SIM_DURATION_MS: "600000", AUCTION_SIM_LIMIT_RANGE_CENTS: "1000000000000",
  });
  await waitFor("the compared auction", () => stack.redis("EXISTS", `auction:{${AUCTION}}`).trim() === "1");
  const created = await stack.api("/auctions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ id: STILL, title: "Pine chest", starting_price: 10000, min_increment: 100, duration_ms: 3600000 }),
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  proxy = await countingProxy(stack.ports.nginx);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  proxy?.close();
  stack?.stop();
});

/** The `retry:` an SSE stream through nginx starts with, ms (the stream
 *  is closed once it is read). */
async function retrySent(auction) {
  const abort = new AbortController();
  const response = await fetch(`${stack.url}/events?auctions=${auction}`, { signal: abort.signal });
  assert.equal(response.status, 200);
  const reader = response.body.getReader();
  let text = "";
  try {
    while (!/retry: \d+\n/.test(text)) {
      const { value, done } = await reader.read();
      assert.ok(!done, `the stream ended before its retry: ${JSON.stringify(text)}`);
      text += new TextDecoder().decode(value);
    }
  } finally {
    abort.abort();
  }
  return Number(/retry: (\d+)\n/.exec(text)[1]);
}

/** Sum over `replicas` of the samples of `name` whose labels include `labels`. */
async function metric(replicas, name, labels) {
  let sum = 0;
  for (const replica of replicas) {
    const text = await (await fetch(`http://127.0.0.1:${stack.opsPorts[replica]}/metrics`)).text();
    for (const line of text.split("\n")) {
      const match = /^(\w+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
      if (!match || match[1] !== name) continue;
      const has = Object.fromEntries([...(match[2] || "").matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
      if (Object.entries(labels).every(([key, value]) => has[key] === value)) sum += Number(match[3]);
    }
  }
  return sum;
}

const EDGES = { sse: ["sse1", "sse2"], ws: ["ws1", "ws2"] };
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const ids = (auction) => stack.stream(auction)
  .filter((e) => ["bid", "closed", "opened", "extended", "admin"].includes(e.kind)).map((e) => e.id);

/** The page's figures for one transport: its panel's data and its list of
 *  recoveries as shown (each item's data and text). */
const panel = (page, name) => page.$eval(`#panel-${name}`, (el) => ({
  ...el.dataset,
  recoveryList: [...el.querySelectorAll("ol.recoveries li")].map((li) => ({ ...li.dataset, text: li.textContent })),
  stateText: el.querySelector('[data-figure="state"]').textContent,
}));

/** Waits until `name` has recovered `count` times and has received
 *  events after its latest recovery; if not, fails with what the page
 *  shows. */
async function recovered(page, name, count, timeout = PHASE_MS) {
  try {
    await page.waitForFunction(([n, c]) => {
      const el = document.getElementById(`panel-${n}`);
      const last = el.querySelectorAll("ol.recoveries li")[c - 1];
      return el.dataset.state === "connected" && last && last.dataset.firstEventMs !== "";
    }, [name, count], { timeout });
  } catch (error) {
    const shown = await panel(page, name);
    const status = await page.textContent("#demo-status");
    throw new Error(`${name} did not recover a ${count}th time: ${error.message}; the page shows ${JSON.stringify({ ...shown, status })}`);
  }
}

test("the comparison page: SSE back no sooner than its retry delay, the WebSocket within its backoff; through a 503 period EventSource gives up and the library brings it back; the counts agree with the edges' metrics", async (t) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  t.after(() => context.close());
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(`${proxy.url}/compare.html?auction=${AUCTION}`);
  await page.waitForFunction(() => ["sse", "ws"].every((name) => {
    const el = document.getElementById(`panel-${name}`);
    return el.dataset.state === "connected" && Number(el.dataset.events) >= 3;
  }), null, { timeout: PHASE_MS });
  const retryMs = await retrySent(STILL);

  // Drops made by the edges: resets (RST) and a drain (SSE: FIN; WebSocket:
  // close 1012). Each transport is dropped 4 times, one at a time or both.
  const count = { sse: 0, ws: 0 };
  // Abrupt ends (a RST) of each transport's connection: the refusal's
  // below included.
  const resets = { sse: 1, ws: 1 };
  for (const [button, dropped] of [
    ["#drop-both", ["sse", "ws"]], ["#drop-sse", ["sse"]], ["#drop-ws", ["ws"]],
    ["#drop-both", ["sse", "ws"]], ["#drain-both", ["sse", "ws"]],
  ]) {
    await page.click(button);
    for (const name of dropped) {
      count[name] += 1;
      if (button !== "#drain-both") resets[name] += 1;
      await recovered(page, name, count[name]);
    }
  }
  const plain = { sse: (await panel(page, "sse")).recoveryList, ws: (await panel(page, "ws")).recoveryList };
  assert.equal(plain.sse.length, 4);
  assert.equal(plain.ws.length, 4);
  assert.equal((await panel(page, "sse")).retryMs, String(retryMs), "the page shows the retry: the edge sent");
  for (const r of plain.sse) {
    // EventSource reconnected by itself (one try, no pause of the library's),
    // after the retry delay the edge sent, and never sooner.
    assert.equal(r.attempts, "1", r.text);
    assert.equal(r.connectMs, "", `the browser's own reconnection: ${r.text}`);
    assert.equal(r.retryMs, String(retryMs), r.text);
    assert.ok(Number(r.downMs) >= retryMs, `SSE back after ${r.downMs} ms, sooner than its retry delay of ${retryMs} ms: ${r.text}`);
    assert.match(r.text, new RegExp(`^reconnected after ${r.downMs} ms \\(retry delay ${retryMs} ms\\), first event \\d+ ms later, 0 missed, 0 repeated$`));
  }
  for (const r of plain.ws) {
    // One try, after a pause drawn within the first backoff step (the
    // socket before it had heard from the edge), started no later than
    // the bound allows.
    assert.equal(r.attempts, "1", r.text);
    assert.equal(r.pauseBoundMs, "250", r.text);
    assert.ok(Number(r.pausedMs) <= 250, r.text);
    const startedAfter = Number(r.downMs) - Number(r.connectMs);
    assert.ok(startedAfter <= 250 + TIMER_SLACK_MS, `the WebSocket's try started ${startedAfter} ms after the drop: ${r.text}`);
    assert.match(r.text, /^reconnected after \d+ ms \(the library paused \d+ ms of at most 250 ms\), first event \d+ ms later, 0 missed, 0 repeated$/);
  }

  // A 503 period: every replica refuses new streams, and both connections
  // are reset into it.
  const refusedAt = Date.now();
  await page.click("#refuse");
  await page.waitForFunction(() => /^4 edge replicas refuse new streams/.test(document.getElementById("demo-status").textContent),
    null, { timeout: PHASE_MS });
  await page.waitForFunction(() => document.getElementById("panel-sse").dataset.state === "gave-up", null, { timeout: PHASE_MS });
  const givingUp = await panel(page, "sse");
  assert.match(givingUp.stateText, /^EventSource gave up \(an error answer, such as a 503\); the library starts it again$/);
  for (const name of ["sse", "ws"]) {
    count[name] += 1;
    await recovered(page, name, count[name], PHASE_MS + REFUSE_S * 1000);
  }
  assert.ok(Date.now() - refusedAt >= REFUSE_S * 1000, "neither came back while every replica refused");
  const through = { sse: (await panel(page, "sse")).recoveryList.at(-1), ws: (await panel(page, "ws")).recoveryList.at(-1) };
  assert.ok(Number(through.sse.gaveUp) >= 1, through.sse.text);
  assert.ok(Number(through.sse.attempts) >= 2 && Number(through.sse.pausedMs) > 0, `the library started EventSource again: ${through.sse.text}`);
  assert.match(through.sse.text, /EventSource gave up \d+ times?; \d+ tries; the library paused \d+ ms of at most \d+ ms\), first event \d+ ms later, 0 missed, 0 repeated$/);
  assert.ok(Number(through.ws.attempts) >= 2, `refused upgrades, tried again: ${through.ws.text}`);
  assert.ok(Number(through.ws.pausedMs) <= Number(through.ws.pauseBoundMs), through.ws.text);
  await page.waitForFunction(() => /EventSource gave up \d+ times? on the refusals and only the library's restarts brought SSE back/.test(document.getElementById("conclusion").textContent),
    null, { timeout: 5000 });

  // Live bid events go compressed (replays do not): enough of them for the
  // figure before the simulator stops.
  const compressedBids = () => proxy.seen.frames.filter((frame) => frame.compressed && JSON.parse(frame.text).type === "bid");
  await waitFor("30 compressed bid events", () => compressedBids().length >= 30, PHASE_MS);

  // The counts against the edges' own: the simulator stops, both catch up
  // with the stream, then nothing moves.
  stack.kill("simulator");
  await waitFor("the simulator to stop", async () => {
    const before = ids(AUCTION).length;
    await new Promise((wake) => setTimeout(wake, SIM_INTERVAL_MS * 4));
    return ids(AUCTION).length === before;
  }, PHASE_MS);
  const last = ids(AUCTION).at(-1);
  await page.waitForFunction((id) => ["sse", "ws"].every((n) => document.getElementById(`panel-${n}`).dataset.lastId === id),
    last, { timeout: PHASE_MS });
  const stream = ids(AUCTION);
  const lostInFlight = {};
  for (const name of ["sse", "ws"]) {
    const figures = await panel(page, name);
    assert.equal(figures.missed, "0", `${name} missed events`);
    assert.equal(figures.repeated, "0", `${name} repeated events`);
    // What the page received is exactly the stream's run over the same range.
    const seen = await page.evaluate((n) => window.comparison.ids(n), name);
    const from = stream.indexOf(seen[0]);
    assert.ok(from >= 0, `${name}: the first id is in the stream`);
    assert.deepEqual(seen, stream.slice(from), `${name}: every event once, in order`);
    // The edges counted every event frame they wrote to this page's
    // connections (replays included), every resume as replayed (none fell
    // back to a reset init), and hold its one connection. An edge counts a
    // frame once written to the socket: a reset discards one still in
    // flight (seen once in 16 runs), which the resume then sends again, so
    // the edges may count at most one more per reset than the page got.
    const delivered = await metric(EDGES[name], "auction_events_delivered_total", { transport: name });
    const received = Number(figures.delivered);
    assert.ok(received <= delivered && delivered <= received + resets[name],
      `${name}: the page received ${received} event frames, the edges delivered ${delivered}, with ${resets[name]} resets`);
    lostInFlight[name] = delivered - received;
    const replayed = await metric(EDGES[name], "auction_resumes_total", { transport: name, outcome: "replayed" });
    assert.equal(Number(figures.recoveries), replayed, `${name}: each recovery the page lists is a resume the edges replayed`);
    assert.equal(await metric(EDGES[name], "auction_resumes_total", { transport: name, outcome: "reset" }), 0, `${name}: no resume reset`);
    assert.equal(await metric(EDGES[name], "auction_connections", { transport: name }), 1, `${name}: the page's one connection`);
  }

  // Bytes per bid event: the page's (as each edge encodes them, before any
  // compression) and the WebSocket's on the wire, compressed.
  const bytes = {};
  for (const name of ["sse", "ws"]) {
    bytes[name] = Number(/^(\d+) B/.exec(await page.textContent(`#panel-${name} [data-figure="bytes"]`))[1]);
  }
  const wsBids = proxy.seen.frames.filter((frame) => JSON.parse(frame.text).type === "bid");
  const compressed = compressedBids();
  const average = (frames, size) => frames.reduce((sum, frame) => sum + size(frame), 0) / frames.length;
  assert.equal(bytes.ws, Math.round(average(wsBids, (frame) => plainFrameBytes(frame.text))),
    "the page's WebSocket bytes per bid event are those of the frames as sent, uncompressed");
  assert.match(await page.textContent('#panel-ws [data-figure="compression"]'), /^permessage-deflate: /);
  const wire = average(compressed, (frame) => frame.wire);
  const plainOfThose = average(compressed, (frame) => plainFrameBytes(frame.text));
  assert.deepEqual(errors, [], "no error on the page");

  const conclusion = await page.textContent("#conclusion");
  const downs = (list) => list.map((r) => Number(r.downMs));
  t.diagnostic(`retry: sent by the edges ${retryMs} ms`);
  t.diagnostic(`SSE recoveries after a reset or drain, ms: ${downs(plain.sse).join(", ")} (median ${median(downs(plain.sse))})`);
  t.diagnostic(`WebSocket recoveries after a reset or drain, ms: ${downs(plain.ws).join(", ")} (median ${median(downs(plain.ws))}; pauses ${plain.ws.map((r) => r.pausedMs).join(", ")})`);
  t.diagnostic(`through ${REFUSE_S} s of 503: SSE ${through.sse.downMs} ms (${through.sse.text}); WebSocket ${through.ws.downMs} ms (${through.ws.text})`);
  t.diagnostic(`bytes per bid event: SSE ${bytes.sse} B; WebSocket ${bytes.ws} B uncompressed, ${wire.toFixed(1)} B compressed on the wire against ${plainOfThose.toFixed(1)} B for the same events plain (${(wire / plainOfThose).toFixed(2)}; ${compressed.length} events)`);
  t.diagnostic(`event frames the edges delivered and the page did not receive (lost in flight at a reset, then resent): SSE ${lostInFlight.sse}, WebSocket ${lostInFlight.ws}`);
  t.diagnostic(`the page concluded: ${conclusion}`);
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, "compare-after-the-experiment.png"), fullPage: true });
});

test("the comparison page after a crash of both serving edges: both come back, SSE no sooner than its retry delay, and every event arrives once", async (t) => {
  const context = await browser.newContext();
  t.after(() => context.close());
  const page = await context.newPage();
  // The stack's own simulated auction, bid on every 400 ms.
  await page.goto(`${stack.url}/compare.html?auction=live`);
  await page.waitForFunction(() => ["sse", "ws"].every((name) => {
    const el = document.getElementById(`panel-${name}`);
    return el.dataset.state === "connected" && Number(el.dataset.events) >= 3;
  }), null, { timeout: PHASE_MS });
  const retryMs = await retrySent(STILL);
  // The first test's page is gone: the serving replicas are this page's.
  await waitFor("the first page's connections to end", async () =>
    (await metric(EDGES.sse, "auction_connections", { transport: "sse" })) === 1
    && (await metric(EDGES.ws, "auction_connections", { transport: "ws" })) === 1, PHASE_MS);
  const crashed = [await stack.serving(EDGES.sse, "sse"), await stack.serving(EDGES.ws, "ws")];
  for (const name of crashed) stack.kill(name);
  for (const name of ["sse", "ws"]) await recovered(page, name, 1);
  for (const name of crashed) await stack.restart(name);
  const sse = (await panel(page, "sse")).recoveryList[0];
  const ws = (await panel(page, "ws")).recoveryList[0];
  assert.ok(Number(sse.downMs) >= retryMs, `SSE back after ${sse.downMs} ms, sooner than its retry delay of ${retryMs} ms`);
  // Both catch up to the same event, then compare with the stream.
  await page.waitForFunction(() => {
    const last = ["sse", "ws"].map((n) => document.getElementById(`panel-${n}`).dataset.lastId);
    return last[0] && last[0] === last[1];
  }, null, { timeout: PHASE_MS });
  for (const name of ["sse", "ws"]) {
    const figures = await panel(page, name);
    assert.equal(figures.missed, "0", `${name} missed events`);
    assert.equal(figures.repeated, "0", `${name} repeated events`);
    const seen = await page.evaluate((n) => window.comparison.ids(n), name);
    // Read after the page's: the stream has every event the page has.
    const stream = ids("live");
    const from = stream.indexOf(seen[0]);
    assert.ok(from >= 0, `${name}: the first id is in the stream`);
    assert.deepEqual(seen, stream.slice(from, from + seen.length), `${name}: nothing missed or repeated`);
    assert.match(await page.textContent(`#panel-${name} [data-figure="latency"]`), /^\d+ ms \/ \d+ ms$/);
  }
  t.diagnostic(`after a crash (SIGKILL) of the serving edges: SSE back in ${sse.downMs} ms, WebSocket in ${ws.downMs} ms (${ws.text})`);
});
