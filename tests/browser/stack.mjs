// A real local stack for browser tests: redis-server, two bidders, two SSE
// edges, two WebSocket edges, and nginx (the project's template) in front,
// all on free loopback ports, all stopped by `stop()`. With `{ tls: true }`
// nginx also serves HTTPS with HTTP/2, with a certificate made for the run
// by deploy/nginx/dev-cert.sh; `url` is then the https one.
import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync, rmSync, mkdirSync, readFileSync } from "node:fs";
import { createServer, connect } from "node:net";
import { chromium } from "playwright-core";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "../..");
const bin = (name) => join(root, "target", process.env.PROFILE || "debug", name);

/** The lowest port the kernel hands out for outgoing connections. */
const EPHEMERAL_LOW = (() => {
  try {
    return Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]) || 32768;
  } catch (_) {
    return 32768;
  }
})();
const given = new Set();

/** A loopback port free a moment ago, below the kernel's range of
 *  ephemeral ports and never given before by this process. In that range
 *  a port chosen ahead (a stack picks all of its ports first) can meanwhile
 *  become the local port of some outgoing connection (a service's Redis
 *  connection, the browser's), and the service meant for it cannot start
 *  (seen: "timed out waiting for ws2"). */
export async function freePort() {
  const low = 10000;
  const high = Math.max(low + 2000, EPHEMERAL_LOW) - 1;
  for (let tries = 0; tries < 1000; tries++) {
    const port = low + Math.floor(Math.random() * (high - low + 1));
    if (given.has(port)) continue;
    if (await bindable(port)) {
      given.add(port);
      return port;
    }
  }
  throw new Error("no free loopback port below the ephemeral range");
}

function bindable(port) {
  return new Promise((ok) => {
    const server = createServer();
    server.unref();
    server.on("error", () => ok(false));
    server.listen(port, "127.0.0.1", () => server.close(() => ok(true)));
  });
}

/** Debian's Chromium, headless, as every browser test starts it: without
 *  its background networking, which this machine's closed network refuses. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

export async function waitFor(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch (_) { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ready = (port, path = "/readyz") => async () => (await fetch(`http://127.0.0.1:${port}${path}`)).status === 200;

export class Stack {
  constructor({ tls = false } = {}) {
    this.tls = tls;
    this.dir = mkdtempSync(join(tmpdir(), "auction-browser-"));
    this.children = new Map(); // name -> {child, env, binary}
  }

  run(name, binary, args, env = {}) {
    const child = spawn(binary, args, {
      env: { ...process.env, RUST_LOG: "warn", ...env },
      stdio: ["ignore", "ignore", process.env.TEST_SHOW_LOGS ? "inherit" : "ignore"],
    });
    this.children.set(name, { child, binary, args, env });
    return child;
  }

  async start() {
    this.redisPort = await freePort();
    this.run("redis", "redis-server", [
      "--port", String(this.redisPort), "--bind", "127.0.0.1", "--save", "",
      "--appendonly", "no", "--dir", this.dir,
    ]);
    await waitFor("redis", () => this.redis("PING").trim() === "PONG");
    const redisUrl = `redis://127.0.0.1:${this.redisPort}`;
    this.ports = {};
    // Each service's ops listener (/healthz, /readyz, /metrics): never its
    // public port, which nginx proxies to.
    this.opsPorts = {};
    for (const name of ["bidder1", "bidder2", "sse1", "sse2", "ws1", "ws2", "nginx", "nginxTls"]) {
      this.ports[name] = await freePort();
      if (!name.startsWith("nginx")) this.opsPorts[name] = await freePort();
    }
    // One guest-session secret for every bidder and ws-edge: each accepts
    // the tokens the others mint.
    this.secret = randomBytes(32).toString("hex");
    const common = { AUCTION_REDIS_URL: redisUrl, AUCTION_SESSION_SECRET: this.secret, AUCTION_VIEWERS_INTERVAL_MS: "500" };
    const bidder = { ...common, AUCTION_TRUST_FORWARDED_FOR: "true", AUCTION_RATE_LIMIT_PER_S: "1000", AUCTION_LIST_RATE_LIMIT_PER_S: "1000" };
    // The "live" auction takes bids for as long as the tests run: one long
    // round, simulated bidders whose limits are never reached.
    this.service("bidder1", "bidder", {
      ...bidder, AUCTION_SIM_AUCTIONS: "live", AUCTION_SIM_INTERVAL_MS: "400",
      AUCTION_SIM_DURATION_MS: "600000", AUCTION_SIM_LIMIT_RANGE_CENTS: "1000000000000",
    });
    this.service("bidder2", "bidder", { ...bidder, AUCTION_SIMULATE: "false" });
    // Every browser and load script here is one client address (but for
    // `urlFrom`'s), so the cap is out of the way. Behind nginx, as in a
    // deployment, the edges take the client's address from nginx.
    // Demo controls on: the comparison page drops and refuses through them.
    const edge = {
      ...common,
      AUCTION_MAX_CONNECTIONS_PER_ADDRESS: "100000",
      AUCTION_TRUST_FORWARDED_FOR: "true",
      AUCTION_DEMO_CONTROLS: "true",
    };
    for (const name of ["sse1", "sse2"]) {
      this.service(name, "sse-edge", { ...edge, AUCTION_SSE_RETRY_MS: "500" });
    }
    this.service("ws1", "ws-edge", { ...edge, AUCTION_BIDDER_URL: `http://127.0.0.1:${this.ports.bidder1}` });
    this.service("ws2", "ws-edge", { ...edge, AUCTION_BIDDER_URL: `http://127.0.0.1:${this.ports.bidder2}` });
    for (const name of ["bidder1", "bidder2", "sse1", "sse2", "ws1", "ws2"]) {
      await waitFor(name, ready(this.opsPorts[name]));
    }
    // nginx with the project's own template, upstreams on our ports.
    const prefix = join(this.dir, "nginx");
    mkdirSync(prefix);
    const upstream = (a, b) => `server 127.0.0.1:${this.ports[a]}; server 127.0.0.1:${this.ports[b]};`;
    let tlsEnv = {};
    if (this.tls) {
      // A local CA and a certificate for localhost/127.0.0.1 it signs.
      this.tlsDir = join(this.dir, "tls");
      execFileSync(join(root, "deploy/nginx/dev-cert.sh"), [this.tlsDir], { stdio: "ignore" });
      this.caFile = join(this.tlsDir, "dev-ca.crt");
      tlsEnv = {
        TLS_LISTEN: `127.0.0.1:${this.ports.nginxTls}`,
        TLS_CERT: join(this.tlsDir, "tls.crt"),
        TLS_KEY: join(this.tlsDir, "tls.key"),
      };
    }
    this.nginxEnv = {
      ...process.env,
      BIDDER_UPSTREAMS: upstream("bidder1", "bidder2"),
      SSE_UPSTREAMS: upstream("sse1", "sse2"),
      WS_UPSTREAMS: upstream("ws1", "ws2"),
      LISTEN: `127.0.0.1:${this.ports.nginx}`,
      ...tlsEnv,
    };
    this.nginxConf = join(prefix, "nginx.conf");
    this.renderNginx(false);
    this.run("nginx", "nginx", ["-p", `${prefix}/`, "-c", join(prefix, "nginx.conf"), "-e", "stderr", "-g", "daemon off;"]);
    // /nginx-health: with TLS on, "/" over plain HTTP is a redirect.
    await waitFor("nginx", ready(this.ports.nginx, "/nginx-health"));
    this.plainUrl = `http://127.0.0.1:${this.ports.nginx}`;
    this.url = this.tls ? `https://127.0.0.1:${this.ports.nginxTls}` : this.plainUrl;
    // Node's fetch does not know the run's CA: with TLS the operator's
    // calls go to the first bidder directly.
    this.apiUrl = this.tls ? `http://127.0.0.1:${this.ports.bidder1}` : this.url;
    await waitFor("the simulated auction", () => this.redis("EXISTS", "auction:{live}").trim() === "1");
  }

  renderNginx(refuseUpgrades) {
    const conf = execFileSync(join(root, "deploy/nginx/render.sh"), {
      env: { ...this.nginxEnv, WS_REFUSE_UPGRADES: String(refuseUpgrades) },
    });
    writeFileSync(this.nginxConf, conf);
  }

  /** Whether nginx lets WebSocket upgrades through on `/ws`: false makes
   *  it answer 403, as a proxy that refuses them. Reloads nginx (open
   *  connections stay) and resolves once the new configuration answers. */
  async allowWsUpgrades(allowed) {
    this.renderNginx(!allowed);
    this.children.get("nginx").child.kill("SIGHUP");
    await waitFor(`nginx to ${allowed ? "allow" : "refuse"} upgrades`, async () => {
      const response = await fetch(`${this.plainUrl}/ws`);
      // ws-edge answers a plain GET 426 upgrade_required; nginx refusing, 403.
      return (response.status === 403) === !allowed;
    });
  }

  /** One more bidder process (e.g. simulating its own auctions), stopped by
   *  `stop()` with the rest. */
  async addBidder(name, env) {
    this.ports[name] ??= await freePort();
    this.opsPorts[name] ??= await freePort();
    this.service(name, "bidder", {
      AUCTION_REDIS_URL: `redis://127.0.0.1:${this.redisPort}`, AUCTION_SESSION_SECRET: this.secret,
      AUCTION_RATE_LIMIT_PER_S: "1000", ...env,
    });
    await waitFor(name, ready(this.opsPorts[name]));
  }

  /** One more edge (`sse-edge` or `ws-edge`) on the stack's Redis, outside
   *  nginx (reached on its own port), stopped by `stop()` with the rest. A
   *  port already in `ports[name]` is kept. */
  async addEdge(name, binary, env) {
    this.ports[name] ??= await freePort();
    this.opsPorts[name] ??= await freePort();
    this.service(name, binary, {
      AUCTION_REDIS_URL: `redis://127.0.0.1:${this.redisPort}`, AUCTION_SESSION_SECRET: this.secret,
      AUCTION_MAX_CONNECTIONS_PER_ADDRESS: "100000", ...env,
    });
    await waitFor(name, ready(this.opsPorts[name]));
  }

  service(name, binary, env) {
    this.run(name, bin(binary), [], {
      ...env,
      AUCTION_LISTEN: `127.0.0.1:${this.ports[name]}`,
      AUCTION_OPS_LISTEN: `127.0.0.1:${this.opsPorts[name]}`,
    });
  }

  /** SIGKILL, as a crash would. */
  kill(name) {
    this.children.get(name).child.kill("SIGKILL");
  }

  /** Starts a killed service again on the same port. */
  async restart(name) {
    const { binary, args, env } = this.children.get(name);
    this.run(name, binary, args, env);
    await waitFor(`${name} again`, ready(this.opsPorts[name]));
  }

  /** The replica among `names` that has a client connected. */
  async serving(names, transport) {
    let found = null;
    await waitFor(`a ${transport} connection`, async () => {
      for (const name of names) {
        const text = await (await fetch(`http://127.0.0.1:${this.opsPorts[name]}/metrics`)).text();
        const line = text.split("\n").find((l) => l.startsWith(`auction_connections{transport="${transport}"}`));
        if (line && Number(line.split(" ")[1]) > 0) { found = name; return true; }
      }
      return false;
    });
    return found;
  }

  redis(...args) {
    return execFileSync("redis-cli", ["-p", String(this.redisPort), ...args], { encoding: "utf8" });
  }

  /** The auction's stream: [{id, kind, data}] oldest first. */
  stream(auction) {
    // Read inside Redis and returned as JSON, so the entries' fields (kind,
    // data, prev, at, tp...) can change without this parser knowing.
    const script = "local out = {} " +
      "for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do " +
      "local f = {} for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end " +
      "out[#out + 1] = {id = e[1], kind = f.kind, data = f.data} end " +
      "if #out == 0 then return '[]' end return cjson.encode(out)";
    const raw = JSON.parse(this.redis("EVAL", script, "1", `auction:{${auction}}:events`));
    return raw.map((e) => ({ id: e.id, kind: e.kind, data: e.data ? JSON.parse(e.data) : null }));
  }

  /**
   * A guest token for `name` with `roles`, minted by `bidder token` with the
   * stack's secret (as an operator would).
   */
  token(name, roles = [], ttlS) {
    const args = ["token", "--name", name, ...roles.flatMap((role) => ["--role", role])];
    if (ttlS !== undefined) args.push("--ttl-s", String(ttlS));
    return execFileSync(bin("bidder"), args, {
      encoding: "utf8",
      env: { ...process.env, AUCTION_SESSION_SECRET: this.secret },
    }).trim();
  }

  /**
   * `fetch` of `path` through nginx (with TLS on: straight to a bidder). Sent as the stack's operator (a seller
   * token) unless `options.headers` carry an authorization of their own.
   */
  async api(path, options = {}) {
    this.operatorToken ??= this.token("operator", ["seller"]);
    const headers = { ...(options.headers || {}) };
    if (!Object.keys(headers).some((name) => name.toLowerCase() === "authorization")) {
      headers.authorization = `Bearer ${this.operatorToken}`;
    }
    const response = await fetch(`${this.apiUrl}${path}`, { ...options, headers });
    return { status: response.status, body: await response.json() };
  }

  /** The site (plain HTTP, through nginx) as a client at another address
   *  sees it: a relay to nginx whose connections leave from `address` (a
   *  loopback address other than 127.0.0.1), so that nginx, and the edges
   *  behind it, see another person. Resolves to the relay's base URL. */
  async urlFrom(address) {
    const port = await freePort();
    const relay = createServer((client) => {
      const upstream = connect({ host: "127.0.0.1", port: this.ports.nginx, localAddress: address });
      client.pipe(upstream);
      upstream.pipe(client);
      const close = () => { client.destroy(); upstream.destroy(); };
      for (const end of [client, upstream]) {
        end.on("error", close);
        end.on("close", close);
      }
    });
    await new Promise((listening) => relay.listen(port, "127.0.0.1", listening));
    (this.relays ??= []).push(relay);
    return `http://127.0.0.1:${port}`;
  }

  stop() {
    for (const relay of this.relays ?? []) relay.close();
    for (const [name, { child }] of this.children) {
      // nginx's master stops its workers on SIGTERM; SIGKILL would orphan them.
      child.kill(name === "nginx" ? "SIGTERM" : "SIGKILL");
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
