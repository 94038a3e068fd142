// WebSocket compression as Chromium negotiates it: permessage-deflate in
// the 101, the page live with its bids shown, each bid event smaller on the
// wire and decoded to exactly the event an uncompressed socket gets.
//
// Each page is served by its edge itself (its own transport at `/`).
// Bytes are counted on the wire, by a pass-through TCP proxy in front of
// each of two edges (one with AUCTION_WS_COMPRESSION=false; wire.mjs).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Stack, waitFor, launchChromium } from "./stack.mjs";
import { countingProxy as countingProxyTo } from "./wire.mjs";

let stack;
let browser;
const proxies = [];

before(async () => {
  stack = new Stack();
  await stack.start();
  const bidder = { AUCTION_BIDDER_URL: `http://127.0.0.1:${stack.ports.bidder1}` };
  await stack.addEdge("wsDeflate", "ws-edge", bidder);
  await stack.addEdge("wsPlain", "ws-edge", { ...bidder, AUCTION_WS_COMPRESSION: "false" });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  for (const proxy of proxies) proxy.close();
  stack?.stop();
});

/** A counting proxy in front of `port`, closed after the tests. */
async function countingProxy(port) {
  const proxy = await countingProxyTo(port);
  proxies.push(proxy);
  return proxy;
}

/** The bid events among the frames: event id -> {wire, compressed, text}. */
function bids(frames) {
  const out = new Map();
  for (const frame of frames) {
    const message = JSON.parse(frame.text);
    if (message.type === "bid") out.set(message.id, frame);
  }
  return out;
}

test("Chromium negotiates permessage-deflate: the page works, bid events cost at most 0.6 of their plain bytes and decode identically", async () => {
  const deflating = await countingProxy(stack.ports.wsDeflate);
  const plain = await countingProxy(stack.ports.wsPlain);
  const pages = [];
  for (const proxy of [deflating, plain]) {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${proxy.url}/?auction=live`);
    await page.waitForFunction(() => document.getElementById("connection").dataset.state === "connected");
    pages.push(page);
  }
  assert.match(deflating.seen.head, /^HTTP\/1\.1 101/);
  assert.match(deflating.seen.head, /\r\nSec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover(\r\n|$)/i,
    "Chromium offered permessage-deflate and the edge took it up, keeping its context");
  assert.doesNotMatch(plain.seen.head, /Sec-WebSocket-Extensions/i, "compression off: not negotiated");

  // The simulator bids every 400 ms: wait for a dozen bids both sockets got.
  const common = () => [...bids(deflating.seen.frames).keys()].filter((id) => bids(plain.seen.frames).has(id));
  await waitFor("a dozen bids on both sockets", () => common().length >= 12, 30000);
  // Both pages show them, live.
  for (const page of pages) {
    assert.equal(await page.$eval("#connection", (e) => e.dataset.state), "connected");
    await page.waitForFunction(() => document.querySelectorAll("#history li").length >= 5);
  }

  const ours = bids(deflating.seen.frames);
  const theirs = bids(plain.seen.frames);
  let wireDeflated = 0;
  let wirePlain = 0;
  for (const id of common()) {
    const [a, b] = [ours.get(id), theirs.get(id)];
    assert.ok(a.compressed, `bid ${id} compressed`);
    assert.ok(!b.compressed, `bid ${id} plain`);
    assert.equal(a.text, b.text, `bid ${id} decodes to the plain event`);
    wireDeflated += a.wire;
    wirePlain += b.wire;
  }
  const n = common().length;
  const ratio = wireDeflated / wirePlain;
  console.log(`bytes per bid event on the wire: ${(wireDeflated / n).toFixed(1)} compressed, ${(wirePlain / n).toFixed(1)} plain (${ratio.toFixed(2)}), ${n} events`);
  // The socket's first bid event is compressed alone (about 0.65 of its
  // plain bytes), each one after it chained to the one before (about
  // 0.2). See docs/protocol.md, "Compression".
  assert.ok(ratio <= 0.6, `compressed bid events cost ${ratio.toFixed(2)} of plain ones`);
  for (const page of pages) await page.context().close();
});
