// sse-fanout.js: Server-Sent Events fan-out, every event checked; the SSE
// twin of ws-fanout.js.
//
// Needs a k6 built with the xk6-sse extension (module "k6/x/sse"); the stock
// k6 answers "unknown module: k6/x/sse". With Go and git installed:
//
//   go install go.k6.io/xk6/cmd/xk6@latest
//   xk6 build --with github.com/phymbert/xk6-sse     # writes ./k6
//   K6=./k6 scripts/k6 run load-tests/k6/sse-fanout.js
//
// setup() creates a fresh auction (POST /auctions). SOCKETS streams open
// GET /auctions/{id}/events on sse-edge (through nginx); after WARMUP, one VU
// posts bids at BID_RATE for DURATION with amounts starting_price,
// + min_increment, + 2 x min_increment..., so every stream knows which
// amount must come next (named event `bid`) and counts gaps (events_missing)
// and repeats (events_duplicated); delivery_latency is measured from each
// bid's `placed_at`. The auction closes CLOSE_AFTER after the last bid; its
// `closed` event ends every stream. A stream the edge ends early is reopened
// with Last-Event-ID, as EventSource does.
//
// xk6-sse blocks the VU while a stream is open, so each VU holds one stream,
// and the deadline (FINISH_TIMEOUT past the close) is checked whenever
// something arrives, keepalive comments included (every
// AUCTION_SSE_KEEPALIVE_MS, 15 s by default); k6's maxDuration is the backstop.
//
// Settings (environment, `-e NAME=value`):
//   BASE_URL         bidder API and SSE through nginx         http://127.0.0.1:8000
//   AUCTION_ID       auction to create (must not exist)       k6-sse-fanout-<unix ms>
//   STARTING_PRICE   MIN_INCREMENT (cents)                    1000, 100
//   SOCKETS          SSE streams (one VU each)                100
//   BID_RATE         bids per second                          10
//   DURATION         how long bids are posted                 30s
//   WARMUP           streams open before the first bid        2s
//   CLOSE_AFTER      auction closes this long after the bids  3s
//   FINISH_TIMEOUT   a stream waits this long past the close  10s
//   LATENCY_P95_MS   threshold on delivery_latency p(95)      250
//   LATENCY_P99_MS   threshold on delivery_latency p(99)      500
//   CHECKS_RATE      least share of passing checks            0.99
// Thresholds also require events_received > 0 and events_missing,
// events_duplicated, streams_unfinished == 0. Targets must be loopback.
import { check, sleep } from "k6";
import { Counter } from "k6/metrics";
import sse from "k6/x/sse";
import {
  BASE_URL, CHECKS_RATE, count, createAuction, deliveryScenarios, num, parseJson, postNextBid, seconds, SUMMARY_TREND_STATS,
} from "./lib.js";
import { deliveryThresholds, touchCounters, Tracker } from "./delivery.js";

const SOCKETS = count("SOCKETS", 100);
const BID_RATE = num("BID_RATE", 10);
const DURATION = seconds("DURATION", "30s");
const WARMUP = seconds("WARMUP", "2s");
const CLOSE_AFTER = seconds("CLOSE_AFTER", "3s");
const FINISH_TIMEOUT = seconds("FINISH_TIMEOUT", "10s");

/** Seconds from setup() until the auction closes. */
const LIFETIME = WARMUP + DURATION + CLOSE_AFTER;

const sseReconnects = new Counter("sse_reconnects");

/** @type {import("k6/options").Options} */
export const options = {
  scenarios: {
    ...deliveryScenarios({
      vus: SOCKETS,
      warmup: WARMUP,
      duration: DURATION,
      bidRate: BID_RATE,
      lifetime: LIFETIME,
      finishTimeout: FINISH_TIMEOUT,
    }),
  },
  thresholds: {
    ...deliveryThresholds(num("LATENCY_P95_MS", 250), num("LATENCY_P99_MS", 500)),
    checks: [`rate>=${CHECKS_RATE}`],
    bids_placed: ["count>0"],
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  return createAuction("sse-fanout", LIFETIME);
}

/** @param {import("./lib.js").Plan} plan */
export function subscribers(plan) {
  touchCounters();
  const tracker = new Tracker(plan);
  const deadlineAt = plan.endsAt + FINISH_TIMEOUT * 1000;
  const url = `${BASE_URL}/auctions/${plan.auction}/events`;
  for (let attempt = 0; !tracker.finished && Date.now() < deadlineAt; attempt++) {
    if (attempt > 0) {
      sseReconnects.add(1);
      sleep(Math.min(2, 0.1 * 2 ** (attempt - 1))); // backoff before reopening
    }
    /** @type {Record<string, string>} */
    const headers = {};
    if (tracker.lastId) headers["Last-Event-ID"] = tracker.lastId;
    tracker.subscribing();
    const res = sse.open(url, { headers, tags: { name: "GET /auctions/{id}/events" } }, (client) => {
      client.on("event", (event) => {
        const id = event.id || undefined;
        const data = ["init", "bid", "closed"].includes(event.name) ? parseJson(event.data) : null;
        if (data) {
          if (event.name === "init") tracker.init(data.auction, id);
          else if (event.name === "bid") tracker.bid(data, id);
          else tracker.close(data.auction, id);
        } // else: keepalive comments, the retry line, "opened"
        if (tracker.finished || Date.now() >= deadlineAt) client.close();
      });
      client.on("error", (error) => console.warn(`stream error: ${error.error()}`));
    });
    check(res, { "stream opened (200)": (r) => r.status === 200 });
  }
  tracker.abandon(); // counts only when `closed` never came
}

/** @param {import("./lib.js").Plan} plan */
export function bids(plan) {
  postNextBid(plan);
}
