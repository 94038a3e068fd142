// SSE clients of one auction through nginx, over HTTP/2 (streams
// multiplexed over a few TLS connections, as a browser's tabs share one),
// HTTP/1.1 over TLS (one connection per stream) or plain HTTP/1.1: what
// each costs nginx and the edge behind it, and the delivery latency.
//
//   node load-tests/h2-sse/clients.mjs --url https://127.0.0.1:8443 \
//     --protocol h2|h1 --ca dev-ca.crt --auction ID --clients 1000 \
//     --connections 10 --publish 'target/release/loadgen publish ...' \
//     [--nginx-pids P,P] [--edge-pids P] [--settle-ms 2000] [--timeout-s 120]
//
// Every client opens `/auctions/{ID}/events` (h2: `--clients` streams
// spread evenly over `--connections` sessions; h1: one connection each,
// TLS for an https URL). Once every stream answered 200, after
// `--settle-ms`, the idle RSS of nginx (master and workers, summed) and of
// the edge is taken from /proc, and `--publish` is run: `loadgen publish`,
// which prints `sent <k> <Unix µs>` just before it publishes bid k (amount
// 1000 + k; 999 is its warm-up). A client that receives amount 1000 + k
// keeps its receipt time (wall clock, µs); the latency is receipt minus
// send time, exact per delivery, and each client checks it got every k
// once. Prints `name value` lines as loadgen does. Loopback only; stops by
// itself at the deadline. No dependencies beyond Node's own modules.

import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import https from "node:https";
import { monitorEventLoopDelay, performance } from "node:perf_hooks";

const BASE = 1000;

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
      throw new Error(`expected --flag value, got ${argv[i]}`);
    }
    args[argv[i].slice(2)] = argv[i + 1];
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const url = new URL(args.url ?? "https://127.0.0.1:8443");
if (!["127.0.0.1", "localhost", "[::1]"].includes(url.hostname)) {
  throw new Error(`refusing to load ${url.hostname}: loopback targets only`);
}
const protocol = args.protocol ?? "h2";
const clients = Number(args.clients ?? 1000);
const connections = Number(args.connections ?? 10);
const auction = args.auction;
const settleMs = Number(args["settle-ms"] ?? 2000);
const deadline = Date.now() + 1000 * Number(args["timeout-s"] ?? 120);
const ca = args.ca ? readFileSync(args.ca) : undefined;
const pids = (name) => (args[name] ?? "").split(",").filter(Boolean).map(Number);
const nginxPids = pids("nginx-pids");
const edgePids = pids("edge-pids");
if (!auction || !args.publish) throw new Error("--auction and --publish are required");

// --- /proc ------------------------------------------------------------------
function cpuSeconds(list) {
  let total = 0;
  for (const pid of list) {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    total += (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ
  }
  return total;
}
function rssBytes(list) {
  let total = 0;
  for (const pid of list) {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    total += 1024 * Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
  }
  return total;
}
const mib = (bytes) => (bytes / 1048576).toFixed(1);

// --- clients ------------------------------------------------------------------
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
let connected = 0;
let events = 0; // known once the publisher is started
let received = null; // Float64Array(clients * events): receipt time, µs (0: none)
let deliveries = 0;
let duplicates = 0;
let warmed = 0;
let failures = 0;
const streams = [];

/// One client's SSE parser: messages end with a blank line; a bid's amount
/// says which event it is.
function client(index) {
  let buffer = "";
  let warm = false;
  return {
    opened() {
      connected++;
    },
    data(chunk) {
      const at = nowUs();
      buffer += chunk;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const message = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!message.startsWith("event: bid") && !message.includes("\nevent: bid")) continue;
        const match = /"amount":(\d+)/.exec(message);
        if (!match) continue;
        const k = Number(match[1]) - BASE;
        if (k === -1) {
          if (!warm) warmed++;
          warm = true;
          continue;
        }
        if (k < 0 || k >= events) continue;
        const slot = index * events + k;
        if (received[slot] > 0) {
          duplicates++;
        } else {
          received[slot] = at;
          deliveries++;
        }
      }
    },
  };
}

const path = `/auctions/${auction}/events`;
function openH2() {
  const sessions = [];
  for (let c = 0; c < connections; c++) {
    const session = http2.connect(url.origin, { ca });
    session.on("error", (error) => {
      failures++;
      console.error(`session ${c}: ${error.message}`);
    });
    sessions.push(session);
  }
  for (let i = 0; i < clients; i++) {
    const state = client(i);
    const stream = sessions[i % connections].request({
      ":path": path,
      accept: "text/event-stream",
    });
    stream.setEncoding("utf8");
    stream.on("response", (headers) => {
      if (headers[":status"] === 200) state.opened();
      else failures++;
    });
    stream.on("data", (chunk) => state.data(chunk));
    stream.on("error", () => failures++);
    streams.push(stream);
  }
  return () => sessions.forEach((session) => session.destroy());
}

function openH1() {
  const tls = url.protocol === "https:";
  const agent = new (tls ? https : http).Agent({ keepAlive: false, maxSockets: Infinity });
  for (let i = 0; i < clients; i++) {
    const state = client(i);
    const request = (tls ? https : http).request({
      host: url.hostname,
      port: url.port,
      path,
      agent,
      ca,
      ALPNProtocols: ["http/1.1"],
      headers: { accept: "text/event-stream" },
    });
    request.on("response", (response) => {
      if (response.statusCode === 200) state.opened();
      else failures++;
      response.setEncoding("utf8");
      response.on("data", (chunk) => state.data(chunk));
      response.on("error", () => failures++);
    });
    request.on("error", () => failures++);
    request.end();
    streams.push(request);
  }
  return () => streams.forEach((request) => request.destroy());
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(condition, what) {
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`deadline: ${what}`);
    await sleep(10);
  }
}

const rssBefore = [rssBytes(nginxPids), rssBytes(edgePids)];
const close = protocol === "h2" ? openH2() : openH1();
await until(() => connected === clients, `${connected} of ${clients} streams open`);
await sleep(settleMs);
const rssIdle = [rssBytes(nginxPids), rssBytes(edgePids)];

// --- events -------------------------------------------------------------------
const sent = [];
const publisherOut = [];
const [command, ...commandArgs] = args.publish.split(" ").filter(Boolean);
events = Number(commandArgs[commandArgs.indexOf("--events") + 1]);
received = new Float64Array(clients * events);
const cpuBefore = [cpuSeconds(nginxPids), cpuSeconds(edgePids)];
const ownBefore = process.cpuUsage();
// How late the client's own event loop ran: latency it added itself.
const loopDelay = monitorEventLoopDelay({ resolution: 1 });
loopDelay.enable();
const peak = [0, 0];
const sampler = setInterval(() => {
  peak[0] = Math.max(peak[0], rssBytes(nginxPids));
  peak[1] = Math.max(peak[1], rssBytes(edgePids));
}, 100);
const publisher = spawn(command, commandArgs, { stdio: ["ignore", "pipe", "inherit"] });
let partial = "";
publisher.stdout.setEncoding("utf8");
publisher.stdout.on("data", (chunk) => {
  const lines = (partial + chunk).split("\n");
  partial = lines.pop();
  for (const line of lines) {
    const [word, k, us] = line.split(" ");
    if (word === "sent") sent[Number(k)] = Number(us);
    else publisherOut.push(line);
  }
});
const published = new Promise((resolve) => publisher.on("exit", resolve));
const expected = clients * events;
await until(() => deliveries >= expected || failures > 0, `${deliveries} of ${expected} deliveries`).catch(
  (error) => console.error(error.message),
);
const code = await published;
const cpuAfter = [cpuSeconds(nginxPids), cpuSeconds(edgePids)];
const own = process.cpuUsage(ownBefore);
loopDelay.disable();
clearInterval(sampler);
const rssAfter = [rssBytes(nginxPids), rssBytes(edgePids)];
close();

// --- figures --------------------------------------------------------------------
const latencies = [];
for (let i = 0; i < clients; i++) {
  for (let k = 0; k < events; k++) {
    const at = received[i * events + k];
    if (at > 0 && sent[k] > 0) latencies.push((at - sent[k]) / 1000);
  }
}
latencies.sort((a, b) => a - b);
const quantile = (q) =>
  latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))].toFixed(3) : "?";
const perClientKib = (after, before) => ((after - before) / 1024 / clients).toFixed(2);
const cpu = [cpuAfter[0] - cpuBefore[0], cpuAfter[1] - cpuBefore[1]];
const lines = [
  ["scenario", `sse ${protocol}${url.protocol === "https:" ? " tls" : ""}`],
  ["clients", clients],
  ["connections", protocol === "h2" ? connections : clients],
  ["events", events],
  ["publisher_exit", code],
  ["expected_deliveries", expected],
  ["deliveries", deliveries],
  ["missing", expected - deliveries],
  ["duplicates", duplicates],
  ["failures", failures],
  ["latency_p50_ms", quantile(0.5)],
  ["latency_p99_ms", quantile(0.99)],
  ["latency_p999_ms", quantile(0.999)],
  ["latency_max_ms", latencies.length ? latencies[latencies.length - 1].toFixed(3) : "?"],
  ["nginx_rss_idle_mib", mib(rssIdle[0])],
  ["nginx_rss_peak_mib", mib(Math.max(peak[0], rssAfter[0]))],
  ["nginx_rss_per_client_kib", perClientKib(rssIdle[0], rssBefore[0])],
  ["edge_rss_idle_mib", mib(rssIdle[1])],
  ["edge_rss_peak_mib", mib(Math.max(peak[1], rssAfter[1]))],
  ["edge_rss_per_client_kib", perClientKib(rssIdle[1], rssBefore[1])],
  ["nginx_cpu_s", cpu[0].toFixed(2)],
  ["edge_cpu_s", cpu[1].toFixed(2)],
  ["nginx_cpu_s_per_1m", ((cpu[0] / Math.max(deliveries, 1)) * 1e6).toFixed(2)],
  ["edge_cpu_s_per_1m", ((cpu[1] / Math.max(deliveries, 1)) * 1e6).toFixed(2)],
  ["clients_cpu_s", ((own.user + own.system) / 1e6).toFixed(2)],
  ["clients_loop_delay_p99_ms", (loopDelay.percentile(99) / 1e6).toFixed(3)],
  ["load_average_1m", readFileSync("/proc/loadavg", "utf8").split(" ")[0]],
];
for (const [name, value] of lines) console.log(`${name.padEnd(26)}${value}`);
if (publisherOut.length) console.error(publisherOut.join("\n"));
process.exit(deliveries === expected && duplicates === 0 && code === 0 ? 0 : 1);
