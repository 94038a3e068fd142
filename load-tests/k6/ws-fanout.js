// ws-fanout.js: WebSocket fan-out, every event checked.
//
// setup() creates a fresh auction (POST /auctions). SOCKETS WebSockets
// connect to ws-edge (GET /ws) and subscribe to it; after WARMUP, one VU posts
// bids at BID_RATE for DURATION with amounts starting_price, + min_increment,
// + 2 x min_increment... (each retried until accepted), so every socket knows
// which amount must come next and counts gaps (events_missing) and repeats
// (events_duplicated). Delivery latency is measured from each bid's
// `placed_at` (delivery_latency, ms; same machine, so the clocks agree). The
// auction closes CLOSE_AFTER after the last bid; its `closed` event ends every
// socket, and also shows bids lost at the very end.
//
//   k6 run load-tests/k6/ws-fanout.js                       # against scripts/run (nginx on :8000)
//   k6 run -e SOCKETS=2000 -e SOCKETS_PER_VU=50 -e BID_RATE=20 -e DURATION=2m load-tests/k6/ws-fanout.js
//
// Settings (environment, `-e NAME=value`):
//   BASE_URL         bidder API through nginx                 http://127.0.0.1:8000
//   WS_URL           ws-edge                                  BASE_URL with ws:// and /ws
//   AUCTION_ID       auction to create (must not exist)       k6-ws-fanout-<unix ms>
//   STARTING_PRICE   MIN_INCREMENT (cents)                    1000, 100
//   SOCKETS          WebSockets in all                        100
//   SOCKETS_PER_VU   sockets each VU holds                    10
//   BID_RATE         bids per second                          10
//   DURATION         how long bids are posted                 30s
//   WARMUP           sockets connect before the first bid     2s
//   CLOSE_AFTER      auction closes this long after the bids  3s
//   FINISH_TIMEOUT   a socket waits this long past the close  10s
//   LATENCY_P95_MS   threshold on delivery_latency p(95)      250
//   LATENCY_P99_MS   threshold on delivery_latency p(99)      500
//   CHECKS_RATE      least share of passing checks            0.99
// Thresholds also require events_received > 0 and events_missing,
// events_duplicated, streams_unfinished == 0. Targets must be loopback.
import exec from "k6/execution";
import { CHECKS_RATE, count, createAuction, deliveryScenarios, num, postNextBid, seconds, SUMMARY_TREND_STATS } from "./lib.js";
import { deliveryThresholds, touchCounters } from "./delivery.js";
import { subscribe } from "./ws-subscriber.js";

const SOCKETS = count("SOCKETS", 100);
const SOCKETS_PER_VU = count("SOCKETS_PER_VU", 10);
const BID_RATE = num("BID_RATE", 10);
const DURATION = seconds("DURATION", "30s");
const WARMUP = seconds("WARMUP", "2s");
const CLOSE_AFTER = seconds("CLOSE_AFTER", "3s");
const FINISH_TIMEOUT = seconds("FINISH_TIMEOUT", "10s");

/** Seconds from setup() until the auction closes. */
const LIFETIME = WARMUP + DURATION + CLOSE_AFTER;

/** @type {import("k6/options").Options} */
export const options = {
  scenarios: {
    ...deliveryScenarios({
      vus: Math.ceil(SOCKETS / SOCKETS_PER_VU),
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
  return createAuction("ws-fanout", LIFETIME);
}

/** @param {import("./lib.js").Plan} plan */
export function subscribers(plan) {
  touchCounters();
  // per-vu-iterations with one iteration each: iterationInTest numbers the
  // VUs 0, 1, 2...; the last one takes the remainder.
  const index = exec.scenario.iterationInTest;
  const sockets = Math.min(SOCKETS_PER_VU, SOCKETS - index * SOCKETS_PER_VU);
  subscribe(plan, { sockets, deadlineAt: plan.endsAt + FINISH_TIMEOUT * 1000 });
}

/** @param {import("./lib.js").Plan} plan */
export function bids(plan) {
  postNextBid(plan);
}
