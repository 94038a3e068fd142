// Every Grafana panel's query and variable returns data when Debian's
// Prometheus scrapes the running services (pages open in Chromium keep
// events flowing), and the shipped alert rules, loaded into that
// Prometheus, fire when a replica dies while the dashboard turns red, and
// when an edge's pub/sub freezes while it holds a client and bids are
// placed (AuctionDeliveryStalled).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { writeFileSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { Stack, freePort } from "./stack.mjs";
import { PubSubFreeze } from "./pubsub-freeze.mjs";

const root = resolve(import.meta.dirname, "../..");
let stack;
let browser;
let prometheus;
let promUrl;

// The alert rules exactly as shipped, except every `for:` is cut to 2s and
// AuctionDeliveryStalled's 3-minute windows to 5 s, so that a test sees an
// alert fire in seconds rather than minutes.
const ALERT_FOR = "2s";
function rulesForTest() {
  const text = readFileSync(join(root, "deploy/prometheus/alerts.yml"), "utf8");
  const rendered = text.replace(/^(\s+)for: \S+$/gm, `$1for: ${ALERT_FOR}`);
  assert.notEqual(rendered, text, "alerts.yml has `for:` lines to shorten");
  const stalled = rendered.replace(/\[3m\]/g, "[5s]");
  assert.equal(rendered.match(/\[3m\]/g)?.length, 2, "AuctionDeliveryStalled's two 3m windows");
  return stalled;
}

const dashboards = readdirSync(join(root, "deploy/grafana/dashboards"))
  .filter((name) => name.endsWith(".json"))
  .map((name) => JSON.parse(readFileSync(join(root, "deploy/grafana/dashboards", name), "utf8")));

function panelsOf(dashboard) {
  const all = [];
  const walk = (panels) => { for (const p of panels || []) { all.push(p); walk(p.panels); } };
  walk(dashboard.panels);
  return all;
}

/** The panel titled `title`, with its query ready for Prometheus. */
function panel(title) {
  const found = dashboards.flatMap(panelsOf).find((p) => p.title === title);
  assert.ok(found, `a panel titled ${title}`);
  const [expr] = execFileSync(join(root, "scripts/dashboard-queries"), { encoding: "utf8" })
    .split("\n")
    .filter((line) => line === substituteAll(found.targets[0].expr));
  assert.ok(expr, `the query of ${title} among scripts/dashboard-queries' output`);
  const red = found.fieldConfig.defaults.thresholds.steps.find((step) => step.color === "red");
  return { expr, red: red.value };
}

/** What scripts/dashboard-queries does to a query with "All" selected. */
function substituteAll(expr) {
  return expr.split(/\s+/).join(" ")
    .replace(/\$(instance|transport)\b/g, ".*")
    .replace(/\$__(rate_interval|interval|range)\b/g, "1m");
}

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
  // A bid over HTTP (too low or not, it is answered and timed), and an
  // auction that the closer closes, so the bid latency and close lag
  // panels have data.
  const bid = await stack.api("/auctions/live/bids", {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ amount: 100 }),
  });
  assert.ok([201, 409].includes(bid.status), JSON.stringify(bid.body));
  const brief = await stack.api("/auctions", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ id: "brief", title: "Brief lot", starting_price: 100, min_increment: 10, duration_ms: 1000 }),
  });
  assert.equal(brief.status, 201);

  // Scraped on their ops listeners, where /metrics is served.
  const targets = (names) => names.map((name) => `"127.0.0.1:${stack.opsPorts[name]}"`).join(", ");
  const dir = join(stack.dir, "prometheus");
  mkdirSync(dir);
  writeFileSync(join(dir, "alerts.yml"), rulesForTest());
  writeFileSync(join(dir, "prometheus.yml"), `
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: [alerts.yml]
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

test("every dashboard variable lists the live replicas and transports", async () => {
  await ready();
  // Prometheus is picked by the data-source variable; the others query it.
  const all = dashboards.flatMap((d) => d.templating?.list || []);
  assert.deepEqual(all.filter((v) => v.type === "datasource").map((v) => [v.name, v.query]), [["datasource", "prometheus"]]);
  const variables = all.filter((v) => v.type === "query");
  assert.deepEqual(variables.map((v) => v.name).sort(), ["instance", "transport"]);
  const want = {
    instance: Object.values(stack.opsPorts).map((port) => `127.0.0.1:${port}`).sort(),
    transport: ["sse", "ws"],
  };
  for (const variable of variables) {
    const query = typeof variable.query === "string" ? variable.query : variable.query.query;
    const [, selector, label] = query.match(/^label_values\((.+),\s*(\w+)\)$/);
    let values = [];
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      const response = await fetch(`${promUrl}/api/v1/series?match[]=${encodeURIComponent(selector)}&start=${Date.now() / 1000 - 60}`);
      const body = await response.json();
      assert.equal(body.status, "success", `${query}: ${body.error}`);
      values = [...new Set(body.data.map((series) => series[label]))].sort();
      if (JSON.stringify(values) === JSON.stringify(want[variable.name])) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.deepEqual(values, want[variable.name], `values of $${variable.name}`);
  }
});

test("a killed replica fires AuctionReplicaDown and turns its panels red", async () => {
  await ready();
  const down = panel("Replicas down");
  const firing = panel("Alerts firing");
  const value = async (expr) => Number((await query(expr))[0].value[1]);
  const killed = `127.0.0.1:${stack.opsPorts.sse2}`;
  const replicaDown = async () => {
    const body = await (await fetch(`${promUrl}/api/v1/alerts`)).json();
    return body.data.alerts.filter((a) => a.labels.alertname === "AuctionReplicaDown");
  };
  // Healthy first: every replica scraped, nothing red, no alert.
  const deadline = Date.now() + 30000;
  while ((await value('sum(up{job=~"bidder|sse-edge|ws-edge"})')) !== 6) {
    assert.ok(Date.now() < deadline, "all six replicas scraped");
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.deepEqual(await replicaDown(), []);
  assert.ok(await value(down.expr) < down.red, "Replicas down is not red while all are up");

  stack.kill("sse2");
  let alert;
  const fireBy = Date.now() + 60000;
  for (;;) {
    alert = (await replicaDown()).find((a) => a.labels.instance === killed && a.state === "firing");
    if (alert) break;
    assert.ok(Date.now() < fireBy, "AuctionReplicaDown fired within 60 s of the kill");
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(alert.labels.job, "sse-edge");
  assert.equal(alert.labels.severity, "critical");
  assert.match(alert.annotations.summary, new RegExp(`sse-edge replica ${killed} is down`));
  // Only the killed replica is down.
  assert.deepEqual((await replicaDown()).map((a) => a.labels.instance), [killed]);
  assert.ok(await value(down.expr) >= down.red, "Replicas down is red");
  assert.ok(await value(firing.expr) >= firing.red, "Alerts firing is red");
});

test("an edge whose pub/sub is frozen while it holds a client and bids are placed fires AuctionDeliveryStalled", async () => {
  await ready();
  // sse2 (killed above) comes back behind a proxy that can freeze its
  // pub/sub, on the same ports, so Prometheus scrapes it as before.
  const proxy = new PubSubFreeze(stack.redisPort);
  await proxy.listen();
  try {
    const entry = stack.children.get("sse2");
    entry.env = { ...entry.env, AUCTION_REDIS_URL: `redis://127.0.0.1:${proxy.port}` };
    await stack.restart("sse2");
    const instance = `127.0.0.1:${stack.opsPorts.sse2}`;
    const stalled = async () => {
      const body = await (await fetch(`${promUrl}/api/v1/alerts`)).json();
      return body.data.alerts.filter((a) => a.labels.alertname === "AuctionDeliveryStalled");
    };
    // A client on sse2 itself, following the simulated auction.
    const controller = new AbortController();
    const response = await fetch(`http://127.0.0.1:${stack.ports.sse2}/auctions/live/events`, { signal: controller.signal });
    assert.equal(response.status, 200);
    const reader = response.body.getReader();
    let received = 0;
    (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          received += (new TextDecoder().decode(value).match(/^event: bid$/gm) || []).length;
        }
      } catch (_) { /* aborted */ }
    })();
    // Delivering: bids reach the client, and sse2 is scraped delivering.
    const delivering = Date.now() + 30000;
    const deliveredOn = async () => Number((await query(`sum(increase(auction_events_delivered_total{instance="${instance}"}[5s]))`))[0]?.value[1] || 0);
    while (received < 3 || (await deliveredOn()) === 0) {
      assert.ok(Date.now() < delivering, "sse2 delivers before the freeze");
      await new Promise((r) => setTimeout(r, 250));
    }
    // No stall while delivering: the restart itself (a client held before
    // its first delivery was scraped) may have made the alert pending, and
    // rules are evaluated every second: the next evaluations, which see the
    // deliveries, clear it.
    const quietBy = Date.now() + 15000;
    let pending = (await stalled()).filter((a) => a.labels.instance === instance);
    while (pending.length > 0) {
      assert.ok(Date.now() < quietBy, `no stall while delivering: ${JSON.stringify(pending)}`);
      await new Promise((r) => setTimeout(r, 250));
      pending = (await stalled()).filter((a) => a.labels.instance === instance);
    }

    proxy.frozen = true;
    const frozenAt = received;
    let alert;
    const fireBy = Date.now() + 60000;
    for (;;) {
      alert = (await stalled()).find((a) => a.labels.instance === instance && a.state === "firing");
      if (alert) break;
      assert.ok(Date.now() < fireBy, "AuctionDeliveryStalled fired within 60 s of the freeze");
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.equal(alert.labels.job, "sse-edge");
    assert.equal(alert.labels.transport, "sse");
    assert.equal(alert.labels.severity, "critical");
    assert.equal(alert.annotations.runbook_url, "docs/operations.md#runbook-auctiondeliverystalled");
    assert.ok(proxy.dropped > 0, "notices were held back");
    assert.equal(received, frozenAt, "the client got nothing while frozen");
    // Only the frozen edge: the healthy ones keep delivering.
    assert.deepEqual((await stalled()).filter((a) => a.state === "firing").map((a) => a.labels.instance), [instance]);
    const ready = await fetch(`http://127.0.0.1:${stack.opsPorts.sse2}/readyz`);
    assert.equal(ready.status, 200, "the frozen edge still reports ready");
    controller.abort();
  } finally {
    proxy.close();
  }
});
