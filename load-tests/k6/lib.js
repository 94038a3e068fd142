// Shared settings and helpers of the k6 scripts in this directory.
//
// Every setting is an environment variable, read through __ENV: pass it with
// `k6 run -e NAME=value script.js` (or export it; k6 passes the process
// environment through by default). Each script lists, at its top, the ones it
// reads and their defaults there. The common ones:
//
//   BASE_URL        bidder API and SSE streams           http://127.0.0.1:8000 (nginx of scripts/run)
//   WS_URL          ws-edge endpoint                     BASE_URL with ws:// and path /ws
//   AUCTION_ID      id of the auction setup() creates    k6-<script>-<unix ms>
//   STARTING_PRICE  of that auction, cents               1000
//   MIN_INCREMENT   of that auction, cents               100
//   DURATION        how long bids are posted             per script ("30s", "500ms", "30m", "1h", "90" = seconds)
//   BID_RATE        bids posted per second               per script (fractions allowed)
//   CHECKS_RATE     threshold: least share of checks that must pass   0.99
//   AUCTION_TOKEN   bearer token for creating the auction and bidding (required):
//                   a seller's, minted with the deployment's secret:
//                   AUCTION_SESSION_SECRET=... bidder token --name k6 --role seller
//
// Targets are restricted to loopback (127.0.0.0/8, localhost, [::1]): these
// scripts are for a stack on this machine, never for someone else's host.
import http from "k6/http";
import { check, fail, sleep } from "k6";
import { Counter } from "k6/metrics";

/**
 * @typedef {object} Bid
 * @property {string} auction
 * @property {number} amount
 * @property {string} bidder
 * @property {string} bidder_id
 * @property {number} placed_at
 * @property {string} source
 *
 * @typedef {object} Auction
 * @property {string} id
 * @property {string} title
 * @property {"open" | "closed"} status
 * @property {number} starting_price
 * @property {number} min_increment
 * @property {number} ends_at
 * @property {Bid | null} current
 *
 * What setup() hands every VU: the auction the run created and its prices.
 * @typedef {object} Plan
 * @property {string} auction
 * @property {number} startingPrice
 * @property {number} increment
 * @property {number} createdAt   Unix ms, the k6 machine's clock
 * @property {number} endsAt      Unix ms, the auction's end as the bidder set it
 */

// ----------------------------------------------------------------- settings --

/** @param {string} name */
function raw(name) {
  const value = __ENV[name];
  return value === undefined || value === "" ? undefined : value;
}

/** @param {string} name @param {string} fallback */
export function str(name, fallback) {
  return raw(name) ?? fallback;
}

/** A non-negative number. @param {string} name @param {number} fallback */
export function num(name, fallback) {
  const value = raw(name);
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name}=${value}: not a non-negative number`);
  return n;
}

/** A whole number of at least 1. @param {string} name @param {number} fallback */
export function count(name, fallback) {
  const n = num(name, fallback);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name}=${n}: not a whole number of at least 1`);
  return n;
}

const UNIT_S = /** @type {Record<string, number>} */ ({ ms: 0.001, s: 1, m: 60, h: 3600 });

/**
 * A duration in seconds. Accepts "90" (seconds), "500ms", "10s", "30m",
 * "1h", and sums such as "1m30s".
 * @param {string} name @param {string} fallback
 */
export function seconds(name, fallback) {
  const text = str(name, fallback).trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  let total = 0;
  const rest = text.replace(/(\d+(?:\.\d+)?)(ms|s|m|h)/g, (_, n, unit) => {
    total += Number(n) * UNIT_S[unit];
    return "";
  });
  if (rest !== "" || text === "") throw new Error(`${name}=${text}: not a duration (e.g. 10s, 500ms, 30m, 1m30s)`);
  return total;
}

/** k6's duration syntax for a number of seconds. @param {number} s */
export function dur(s) {
  return `${Math.max(0, Math.round(s * 1000))}ms`;
}

/**
 * rate/timeUnit of an arrival-rate executor for `perSecond` iterations per
 * second: k6 wants a whole rate, so fractions are expressed per minute
 * (or per hour).
 * @param {number} perSecond
 */
export function arrival(perSecond) {
  if (!(perSecond > 0)) throw new Error(`rate ${perSecond}: must be above 0`);
  if (Number.isInteger(perSecond)) return { rate: perSecond, timeUnit: "1s" };
  if (Number.isInteger(perSecond * 60)) return { rate: perSecond * 60, timeUnit: "1m" };
  return { rate: Math.max(1, Math.round(perSecond * 3600)), timeUnit: "1h" };
}

/**
 * The two scenarios of every script that checks delivery: `vus` subscriber
 * VUs, each running once until the auction's `closed` event (k6's
 * `maxDuration` is only a backstop), and one VU posting the bid sequence
 * (one VU: bids can't overtake each other, so accepted amounts have no gaps;
 * see postNextBid).
 * @param {{ vus: number, warmup: number, duration: number, bidRate: number, lifetime: number, finishTimeout: number }} plan seconds and rates
 * @returns {Record<string, import("k6/options").Scenario>}
 */
export function deliveryScenarios({ vus, warmup, duration, bidRate, lifetime, finishTimeout }) {
  return {
    subscribers: {
      executor: "per-vu-iterations",
      exec: "subscribers",
      vus,
      iterations: 1,
      maxDuration: dur(lifetime + finishTimeout + 10),
    },
    bids: {
      executor: "constant-arrival-rate",
      exec: "bids",
      ...arrival(bidRate),
      startTime: dur(warmup),
      duration: dur(duration),
      preAllocatedVUs: 1,
      maxVUs: 1,
    },
  };
}

const LOOPBACK_HOSTS = ["localhost", "[::1]"];

/**
 * Throws unless `url` points at this machine.
 * @param {string} name @param {string} url
 */
export function loopbackOnly(name, url) {
  const match = /^(?:https?|wss?):\/\/([^/:?#]+|\[[^\]]*\])(?::\d+)?(?:[/?#]|$)/i.exec(url);
  const host = match ? match[1].toLowerCase() : "";
  if (!LOOPBACK_HOSTS.includes(host) && !/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)) {
    throw new Error(`${name}=${url}: these load tests only target loopback (127.0.0.1, localhost, [::1])`);
  }
}

export const BASE_URL = str("BASE_URL", "http://127.0.0.1:8000").replace(/\/+$/, "");
export const WS_URL = str("WS_URL", `${BASE_URL.replace(/^http/i, "ws")}/ws`);
loopbackOnly("BASE_URL", BASE_URL);
loopbackOnly("WS_URL", WS_URL);

export const STARTING_PRICE = count("STARTING_PRICE", 1000);
export const MIN_INCREMENT = count("MIN_INCREMENT", 100);
export const CHECKS_RATE = num("CHECKS_RATE", 0.99);

/** Trend stats in the end-of-test summary (and --summary-export). */
export const SUMMARY_TREND_STATS = ["avg", "min", "med", "max", "p(90)", "p(95)", "p(99)", "count"];

const TOKEN = str("AUCTION_TOKEN", "");
/** Headers of every write: JSON, as the token's bidder (a seller, to create the auction). */
export const JSON_HEADERS = { "Content-Type": "application/json", Authorization: `Bearer ${TOKEN}` };

/**
 * The parsed JSON body, or null when there is none (k6 throws otherwise).
 * @param {import("k6/http").RefinedResponse<any>} res
 * @returns {any}
 */
export function body(res) {
  try {
    return res.json();
  } catch (_) {
    return null;
  }
}

/**
 * JSON.parse that counts a failed check instead of throwing (a throw would
 * end the VU's iteration, and with it every socket the VU holds).
 * @param {string} text
 * @returns {any}
 */
export function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    check(text, { "message is JSON": () => false });
    return null;
  }
}

// ------------------------------------------------------------------ auction --

/**
 * Creates the run's auction (in setup()): AUCTION_ID, or a fresh
 * k6-<script>-<time> id. It must be new: the scripts check every amount, so
 * nobody else (the simulator, a previous run) may bid on it.
 * @param {string} script
 * @param {number} lifetimeS  seconds from now until the auction closes
 * @returns {Plan}
 */
export function createAuction(script, lifetimeS) {
  if (!TOKEN) fail("AUCTION_TOKEN is required: mint one with `bidder token --name k6 --role seller`");
  const id = str("AUCTION_ID", `k6-${script}-${Date.now()}`);
  const createdAt = Date.now();
  const res = http.post(
    `${BASE_URL}/auctions`,
    JSON.stringify({
      id,
      title: `k6 ${script}`,
      starting_price: STARTING_PRICE,
      min_increment: MIN_INCREMENT,
      duration_ms: Math.max(1, Math.round(lifetimeS * 1000)),
    }),
    { headers: JSON_HEADERS, tags: { name: "POST /auctions" } },
  );
  if (res.status !== 201) {
    fail(`POST ${BASE_URL}/auctions (id ${id}) answered ${res.status}: ${res.body} ` +
      "(AUCTION_ID must name an auction that does not exist yet)");
  }
  const auction = /** @type {Auction} */ (body(res));
  return {
    auction: auction.id,
    startingPrice: auction.starting_price,
    increment: auction.min_increment,
    createdAt,
    endsAt: auction.ends_at,
  };
}

// ------------------------------------------------------------- one bid --

/** Answers that do not say what became of a bid (no HTTP answer, 503
 *  `bid_outcome_unknown` or `redis_unavailable`): asked again with the same
 *  Idempotency-Key, which returns the real outcome once there is one. */
const SETTLE_ATTEMPTS = 5;

/**
 * Posts one bid under `key` until its answer is definite (at most
 * SETTLE_ATTEMPTS tries, a second apart, as Retry-After asks). Returns the
 * last response.
 * @param {string} auction
 * @param {number} amount
 * @param {string} key
 * @param {Record<string, string>} tags
 */
export function postBid(auction, amount, key, tags) {
  let res = null;
  for (let attempt = 0; attempt < SETTLE_ATTEMPTS; attempt += 1) {
    if (attempt > 0) sleep(1);
    res = http.post(
      `${BASE_URL}/auctions/${auction}/bids`,
      JSON.stringify({ amount }),
      { headers: { ...JSON_HEADERS, "Idempotency-Key": key }, tags },
    );
    if (res.status !== 0 && res.status !== 503) break;
  }
  return /** @type {import("k6/http").RefinedResponse<any>} */ (res);
}

// ------------------------------------------------------ the sequential bidder --

export const bidsPlaced = new Counter("bids_placed");

/** The next amount this VU bids; 0 before its first bid. */
let nextAmount = 0;

/**
 * Posts the next bid of a known, gapless sequence: starting_price, then + one
 * min_increment each time. Meant for a scenario with exactly one VU, so that
 * bids can't overtake each other and every accepted bid is exactly one
 * increment above the one before: that is what subscribers check.
 * A refused or failed bid is retried with the same amount on the next
 * iteration, under the same Idempotency-Key, so a bid whose answer was lost
 * is not placed twice.
 * @param {Plan} plan
 */
export function postNextBid(plan) {
  if (nextAmount === 0) nextAmount = plan.startingPrice;
  const res = postBid(plan.auction, nextAmount, `${plan.auction}:${nextAmount}`, {
    name: "POST /auctions/{id}/bids",
    kind: "bid",
  });
  const accepted = check(res, { "sequential bid accepted (201)": (r) => r.status === 201 });
  if (accepted) {
    bidsPlaced.add(1);
    nextAmount += plan.increment;
  } else {
    console.warn(`bid ${nextAmount} on ${plan.auction}: ${res.status} ${res.body || res.error}`);
  }
}
