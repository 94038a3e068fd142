// The admin page in a real browser against the real services behind nginx:
// an admin extends and closes an auction from it, and both auction pages
// (SSE and WebSocket) say so in plain words, naming the admin.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { Stack, launchChromium } from "./stack.mjs";

// Run through the DevTools protocol, which the page's CSP does not apply to.
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
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

async function auctionPage(path) {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${stack.url}${path}`);
  await page.waitForFunction(() => document.getElementById("connection").dataset.state === "connected");
  return page;
}

test("the admin page extends and closes an auction, and both auction pages show it", async () => {
  const created = await stack.api("/auctions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ id: "gavel", title: "Oak gavel", starting_price: 1000, min_increment: 100, duration_ms: 3600000 }),
  });
  assert.equal(created.status, 201);
  const endsAt = created.body.ends_at;
  const sse = await auctionPage("/?auction=gavel");
  const ws = await auctionPage("/ws.html?auction=gavel");

  const admin = await (await browser.newContext()).newPage();
  const refused = [];
  admin.on("console", (message) => {
    if (/Content.Security.Policy/i.test(message.text())) refused.push(message.text());
  });
  await admin.goto(`${stack.url}/admin.html`);
  await admin.fill("#admin-token", stack.token("Olive", ["admin"]));
  await admin.click("#token-form button[type=submit]");
  const row = 'tr[data-auction="gavel"]';
  await admin.waitForSelector(`${row} button[data-action="extend"]`);

  await admin.fill("#extend-minutes", "30");
  await admin.fill("#reason", "bidders asked for time");
  await admin.click(`${row} button[data-action="extend"]`);
  for (const page of [sse, ws]) {
    await page.waitForFunction(() => document.getElementById("admin-notice").dataset.action === "extend");
    const notice = await page.textContent("#admin-notice");
    assert.match(notice, /^Extended by Olive to .+ \(bidders asked for time\)\.$/);
    assert.equal(await page.getAttribute("#auction-page", "data-phase"), "open");
  }
  assert.equal((await stack.api("/auctions/gavel")).body.ends_at, endsAt + 30 * 60000);

  await admin.fill("#reason", "");
  await admin.waitForSelector(`${row} button[data-action="close"]`);
  await admin.click(`${row} button[data-action="close"]`);
  for (const page of [sse, ws]) {
    await page.waitForFunction(() => document.getElementById("auction-page").dataset.phase === "closed");
    assert.equal(await page.textContent("#admin-notice"), "Closed early by Olive.");
    assert.equal(await page.textContent("#result-text"), "Ended without bids");
  }
  // The page lists what was done, newest first.
  await admin.waitForFunction(() => document.querySelectorAll("#recent li").length >= 2);
  const recent = await admin.$$eval("#recent li", (items) => items.map((li) => li.dataset.action));
  assert.deepEqual(recent.slice(0, 2), ["close", "extend"]);
  assert.equal(await admin.getAttribute(row, "data-status"), "closed");
  assert.deepEqual(refused, [], "no CSP refusals on the admin page");
  await admin.evaluate(axeSource);
  const violations = await admin.evaluate(async () => (await window.axe.run(document)).violations
    .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`));
  assert.deepEqual(violations, [], "axe-core violations on the admin page");
  for (const page of [sse, ws]) {
    await page.evaluate(axeSource);
    const found = await page.evaluate(async () => (await window.axe.run(document)).violations.map((v) => v.id));
    assert.deepEqual(found, [], "axe-core violations on an auction page with an admin notice");
  }
  // In the stream: the admin's events, then the close.
  const kinds = stack.stream("gavel").map((entry) => entry.kind);
  assert.deepEqual(kinds, ["admin", "admin", "closed"]);
});

test("a token without the admin role is told so on the admin page", async () => {
  const admin = await (await browser.newContext()).newPage();
  await admin.goto(`${stack.url}/admin.html`);
  await admin.fill("#admin-token", stack.token("Sam", ["seller"]));
  await admin.click("#token-form button[type=submit]");
  await admin.waitForFunction(() => document.getElementById("admin-status").dataset.state === "error");
  assert.match(await admin.textContent("#admin-status"), /does not have the admin role/);
});
