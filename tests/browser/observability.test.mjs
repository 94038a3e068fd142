// Every Grafana panel's query returns data when Debian's Prometheus scrapes
// the running services (pages open in Chromium keep events flowing).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { writeFileSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { Stack, freePort } from "./stack.mjs";

const root = resolve(import.meta.dirname, "../..");
let stack;
let browser;
let prometheus;
let promUrl;

before(async () => {
  stack = new Stack();
  await stack.start();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  for (const path of ["/?auction=live", "/ws.html?auction=live"]) {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${stack.url}${path}`);
  }
  // A resume, so the resume counters move too.
  const last = stack.stream("live").at(-1).id;
  const controller = new AbortController();
  const response = await fetch(`${stack.url}/auctions/live/events`, { headers: { "Last-Event-ID": last }, signal: controller.signal });
  assert.equal(response.status, 200);
  setTimeout(() => controller.abort(), 3000);

  const targets = (names) => names.map((name) => `"127.0.0.1:${stack.ports[name]}"`).join(", ");
  const dir = join(stack.dir, "prometheus");
  mkdirSync(dir);
  writeFileSync(join(dir, "prometheus.yml"), `
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: bidder
    static_configs: [{ targets: [${targets(["bidder1", "bidder2"])}] }]
  - job_name: sse-edge
    static_configs: [{ targets: [${targets(["sse1", "sse2"])}] }]
  - job_name: ws-edge
    static_configs: [{ targets: [${targets(["ws1", "ws2"])}] }]
`);
  const port = await freePort();
  promUrl = `http://127.0.0.1:${port}`;
  prometheus = spawn("prometheus", [
    `--config.file=${join(dir, "prometheus.yml")}`,
    `--storage.tsdb.path=${join(dir, "data")}`,
    `--web.listen-address=127.0.0.1:${port}`,
  ], { stdio: "ignore" });
});

after(async () => {
  prometheus?.kill("SIGKILL");
  await browser?.close();
  stack?.stop();
});

async function ready() {
  const deadline = Date.now() + 30000;
  for (;;) {
    try {
      if ((await fetch(`${promUrl}/-/ready`)).status === 200) return;
    } catch (_) { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error("Prometheus did not become ready");
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function query(expr) {
  const response = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
  const body = await response.json();
  if (body.status !== "success") throw new Error(`${expr}: ${body.error}`);
  return body.data.result;
}

test("every dashboard query returns data from the live services", async () => {
  const queries = execFileSync(join(root, "scripts/dashboard-queries"), { encoding: "utf8" })
    .split("\n").filter((line) => line.trim());
  assert.ok(queries.length >= 7, "the dashboards have their panels");
  await ready();
  const pending = new Set(queries);
  const deadline = Date.now() + 60000;
  while (pending.size && Date.now() < deadline) {
    for (const expr of [...pending]) {
      // A query that errors fails at once; an empty one is retried.
      if ((await query(expr)).length > 0) pending.delete(expr);
    }
    if (pending.size) await new Promise((r) => setTimeout(r, 500));
  }
  assert.deepEqual([...pending], [], "queries that returned nothing");
  const up = await query('sum(up{job=~"bidder|sse-edge|ws-edge"})');
  assert.equal(Number(up[0].value[1]), 6, "all six replicas scraped");
});
