// TLS and HTTP/2 at the front (docs/operations.md: "TLS and HTTP/2"): the project's nginx
// with a certificate made for the run (deploy/nginx/dev-cert.sh), the real
// services behind it, Debian's chromium told to accept that certificate.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect as h2connect } from "node:http2";
import { connect as netConnect } from "node:net";
import { chromium } from "playwright-core";
import { Stack, waitFor } from "./stack.mjs";

let stack;
let browser;
const TABS = 10;

/** The base64 SHA-256 of a certificate's public key, as Chromium's
 *  --ignore-certificate-errors-spki-list takes it. */
function spkiHash(certFile) {
  const pub = execFileSync("openssl", ["x509", "-in", certFile, "-noout", "-pubkey"]);
  const der = execFileSync("openssl", ["pkey", "-pubin", "-outform", "der"], { input: pub });
  return execFileSync("openssl", ["dgst", "-sha256", "-binary"], { input: der }).toString("base64");
}

async function createAuction(id, title) {
  const created = await stack.api("/auctions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ id, title, starting_price: 10000, min_increment: 100, duration_ms: 3600000 }),
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
}

before(async () => {
  stack = new Stack({ tls: true });
  await stack.start();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // Accept this run's certificate, and only it (by its public key).
      `--ignore-certificate-errors-spki-list=${spkiHash(`${stack.tlsDir}/tls.crt`)}`,
    ],
  });
  for (let i = 0; i < TABS; i++) await createAuction(`tab${i}`, `Lot ${i} of ten`);
  await createAuction("wss", "Brass sextant");
});

after(async () => {
  await browser?.close();
  stack?.stop();
});

const isLive = () => ["connected", "resumed"].includes(document.getElementById("connection")?.dataset.state);

/** The protocol the page's own document came over ("h2", "http/1.1"). */
const navigationProtocol = (page) =>
  page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);

test("over TLS with HTTP/2, ten SSE pages in one browser all show Live within 5 s and each places an accepted bid", async () => {
  const context = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  const pages = [];
  for (let i = 0; i < TABS; i++) pages.push(await context.newPage());
  // Every page opens at once, each with its own EventSource; over HTTP/1.1
  // the seventh would wait for one of six connections that never frees up.
  const started = Date.now();
  const liveAt = await Promise.all(pages.map(async (page, i) => {
    await page.goto(`${stack.url}/?auction=tab${i}`);
    await page.waitForFunction(isLive, null, { timeout: 5000 });
    return Date.now() - started;
  }));
  const slowest = Math.max(...liveAt);
  console.log(`ten SSE pages over h2: all Live after ${slowest} ms (each: ${liveAt.join(", ")} ms)`);
  assert.ok(slowest < 5000, `all ten Live within 5 s, the last after ${slowest} ms`);

  for (const page of pages) {
    assert.equal(await navigationProtocol(page), "h2", "the page came over HTTP/2");
    assert.equal(await page.evaluate(() => location.protocol), "https:");
  }

  // A bid from each of the ten, every EventSource still open: each is
  // accepted (in the auction's stream, shown in its history, no error).
  await Promise.all(pages.map(async (page, i) => {
    const name = `Bidder in tab ${i}`;
    await page.fill("#bidder-name", name);
    await page.click("#raise-min");
    await page.click("#bid-submit");
    await page.waitForFunction((n) => document.querySelector("#history li")?.dataset.bidder === n, name, { timeout: 10000 });
    assert.equal(await page.textContent("#bid-error"), "", `tab ${i}: no error`);
  }));
  for (let i = 0; i < TABS; i++) {
    const bids = stack.stream(`tab${i}`).filter((e) => e.kind === "bid");
    assert.deepEqual(bids.map((e) => e.data.bidder), [`Bidder in tab ${i}`], `tab${i}: the bid is in the stream`);
    assert.equal(await pages[i].evaluate(isLive), true, `tab ${i} still Live`);
  }
  // The bids and the streams went over the same HTTP/2 connection(s) as the
  // page (Resource Timing lists the bid's POST and the page's assets).
  for (const page of pages) {
    const protocols = await page.evaluate(() =>
      performance.getEntriesByType("resource").filter((e) => e.nextHopProtocol).map((e) => [new URL(e.name).pathname, e.nextHopProtocol]));
    assert.ok(protocols.some(([path]) => path.endsWith("/bids")), `the bid's POST is listed: ${JSON.stringify(protocols)}`);
    for (const [path, protocol] of protocols) assert.equal(protocol, "h2", `${path} over HTTP/2`);
  }
  await context.close();
});

test("over TLS the WebSocket page connects with wss:// and its bid is accepted", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const sockets = [];
  page.on("websocket", (socket) => sockets.push(socket.url()));
  await page.goto(`${stack.url}/ws.html?auction=wss`);
  await page.waitForFunction(isLive, null, { timeout: 5000 });
  // Over a WebSocket, not the fallback to SSE: the page's own socket, or
  // the shared worker's (which Playwright does not list), counted by the
  // edges; either is wss:// to the page's origin (a ws:// there would fail
  // on the TLS port).
  assert.equal(await page.getAttribute("#connection", "data-transport"), "ws");
  assert.ok(sockets.every((url) => url === `wss://127.0.0.1:${stack.ports.nginxTls}/ws`), sockets.join(" "));
  await stack.serving(["ws1", "ws2"], "ws");
  assert.equal(await navigationProtocol(page), "h2");
  await page.fill("#bidder-name", "Wendy over wss");
  await page.click("#raise-min");
  await page.click("#bid-submit");
  await page.waitForFunction(() => document.querySelector("#history li")?.dataset.bidder === "Wendy over wss");
  assert.equal(await page.textContent("#bid-error"), "");
  assert.deepEqual(stack.stream("wss").filter((e) => e.kind === "bid").map((e) => e.data.bidder), ["Wendy over wss"]);
  await context.close();
});

/** One request over HTTP/2 with the run's CA: [ALPN protocol, headers]. */
function h2get(path) {
  return new Promise((resolve, reject) => {
    const session = h2connect(stack.url, { ca: readFileSync(stack.caFile) });
    session.on("error", reject);
    const request = session.request({ ":path": path });
    request.on("response", (headers) => {
      const protocol = session.alpnProtocol;
      request.close();
      session.close();
      resolve([protocol, headers]);
    });
    request.on("error", reject);
    request.end();
  });
}

test("HSTS is sent on every answer over TLS, verified against the run's CA over h2", async () => {
  for (const [path, status] of [["/?auction=tab0", 200], ["/auctions/tab0", 200], ["/nginx-health", 200], ["/metrics", 404]]) {
    const [protocol, headers] = await h2get(path);
    assert.equal(protocol, "h2", path);
    assert.equal(headers[":status"], status, path);
    assert.equal(headers["strict-transport-security"], "max-age=31536000", `${path}: HSTS`);
    assert.equal(headers["x-content-type-options"], "nosniff", `${path}: the other security headers stay`);
  }
});

test("plain HTTP with TLS on: pages and the API redirect to https with 308, streams stay served, no HSTS", async () => {
  const https = stack.url;
  for (const [method, path] of [["GET", "/?auction=tab1"], ["GET", "/ws.html?auction=wss"], ["GET", "/assets/app.css"],
    ["GET", "/auctions/tab1"], ["POST", "/sessions"], ["POST", "/auctions/tab1/bids"], ["GET", "/openapi.json"]]) {
    const response = await fetch(`${stack.plainUrl}${path}`, { method, redirect: "manual" });
    assert.equal(response.status, 308, `${method} ${path}`);
    assert.equal(response.headers.get("location"), `${https}${path}`, `${method} ${path}`);
    assert.equal(response.headers.get("strict-transport-security"), null, `${method} ${path}: no HSTS over plain HTTP`);
  }

  // An event stream over plain HTTP (a page loaded before TLS was turned
  // on, reconnecting): served, not redirected.
  const controller = new AbortController();
  const stream = await fetch(`${stack.plainUrl}/auctions/tab1/events`, { signal: controller.signal });
  assert.equal(stream.status, 200);
  assert.match(stream.headers.get("content-type"), /^text\/event-stream/);
  assert.equal(stream.headers.get("strict-transport-security"), null);
  const reader = stream.body.getReader();
  let received = "";
  const deadline = setTimeout(() => controller.abort(), 5000);
  while (!received.includes("event: init")) {
    const { value, done } = await reader.read();
    if (done) break;
    received += new TextDecoder().decode(value);
  }
  clearTimeout(deadline);
  assert.match(received, /event: init/, "the stream's first event arrives");
  controller.abort();

  // The WebSocket over plain HTTP: the upgrade is answered by ws-edge.
  const answer = await new Promise((resolve, reject) => {
    const socket = netConnect(stack.ports.nginx, "127.0.0.1", () => {
      socket.write("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    });
    let head = "";
    socket.on("data", (chunk) => {
      head += chunk.toString("latin1");
      if (head.includes("\r\n\r\n")) { socket.destroy(); resolve(head); }
    });
    socket.on("error", reject);
    socket.setTimeout(5000, () => { socket.destroy(); reject(new Error("no answer to the upgrade")); });
  });
  assert.match(answer, /^HTTP\/1\.1 101 /);
  assert.doesNotMatch(answer, /strict-transport-security/i);

  // A browser typing the plain address lands on the https page, Live, h2.
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${stack.plainUrl}/?auction=tab2`);
  await page.waitForFunction(isLive, null, { timeout: 5000 });
  assert.equal(page.url(), `${https}/?auction=tab2`);
  assert.equal(await navigationProtocol(page), "h2");
  await context.close();
});

test("nginx's health answers over plain HTTP with TLS on (for health checks)", async () => {
  await waitFor("health", async () => (await fetch(`${stack.plainUrl}/nginx-health`, { redirect: "manual" })).status === 200, 5000);
});
