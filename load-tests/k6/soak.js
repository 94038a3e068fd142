// soak.js: a long, gentle, mixed run, to find what only time shows (leaks,
// slow growth, stuck connections, resume drifting).
//
// setup() creates a fresh auction that stays open for the whole run. Three
// scenarios side by side:
//   subscribers  SOCKETS WebSockets on ws-edge, each checking every event as
//                ws-fanout.js does; each one also reconnects about every
//                RECONNECT_EVERY and resumes with its last event id, so the
//                run crosses many resumes, which must lose and repeat nothing;
//   bids         one VU posting the gapless bid sequence at BID_RATE;
//   readers      GET /auctions/{id} at READ_RATE, whose current bid must only
//                ever go up.
// The auction closes CLOSE_AFTER after the bids stop; its `closed` event
// ends every socket.
//
//   k6 run load-tests/k6/soak.js                                 # 30 minutes
//   k6 run -e DURATION=4h -e SOCKETS=500 -e SOCKETS_PER_VU=50 load-tests/k6/soak.js
//   k6 run -e DURATION=5s -e RECONNECT_EVERY=1s load-tests/k6/soak.js   # smoke
//
// Settings (environment, `-e NAME=value`):
//   BASE_URL         bidder API through nginx                 http://127.0.0.1:8000
//   WS_URL           ws-edge                                  BASE_URL with ws:// and /ws
//   AUCTION_ID       auction to create (must not exist)       k6-soak-<unix ms>
//   STARTING_PRICE   MIN_INCREMENT (cents)                    1000, 100
//   DURATION         how long bids are posted                 30m
//   SOCKETS          WebSockets in all                        50
//   SOCKETS_PER_VU   sockets each VU holds                    10
//   RECONNECT_EVERY  each socket resumes about this often     60s (0: never)
//   BID_RATE         bids per second                          1
//   READ_RATE        GET /auctions/{id} per second            1
//   WARMUP           sockets connect before the first bid     2s
//   CLOSE_AFTER      auction closes this long after the bids  3s
//   FINISH_TIMEOUT   a socket waits this long past the close  10s
//   LATENCY_P95_MS   threshold on delivery_latency p(95)      250
//   LATENCY_P99_MS   threshold on delivery_latency p(99)      500
//   HTTP_P95_MS      threshold on bids' and reads' p(95)      200
//   HTTP_FAILED_RATE most share of failed requests            0.01
//   CHECKS_RATE      least share of passing checks            0.99
// Targets must be loopback.
import http from "k6/http";
import { check } from "k6";
import exec from "k6/execution";
import {
  arrival, BASE_URL, body, CHECKS_RATE, count, createAuction, deliveryScenarios, dur, num, postNextBid, seconds, SUMMARY_TREND_STATS,
} from "./lib.js";
import { deliveryThresholds, touchCounters } from "./delivery.js";
import { subscribe } from "./ws-subscriber.js";

const SOCKETS = count("SOCKETS", 50);
const SOCKETS_PER_VU = count("SOCKETS_PER_VU", 10);
const RECONNECT_EVERY = seconds("RECONNECT_EVERY", "60s");
const BID_RATE = num("BID_RATE", 1);
const READ_RATE = num("READ_RATE", 1);
const DURATION = seconds("DURATION", "30m");
const WARMUP = seconds("WARMUP", "2s");
const CLOSE_AFTER = seconds("CLOSE_AFTER", "3s");
const FINISH_TIMEOUT = seconds("FINISH_TIMEOUT", "10s");
const HTTP_P95_MS = num("HTTP_P95_MS", 200);

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
    readers: {
      executor: "constant-arrival-rate",
      exec: "read",
      ...arrival(READ_RATE),
      startTime: dur(WARMUP),
      duration: dur(DURATION),
      preAllocatedVUs: 1,
      maxVUs: 5,
    },
  },
  thresholds: {
    ...deliveryThresholds(num("LATENCY_P95_MS", 250), num("LATENCY_P99_MS", 500)),
    "http_req_duration{kind:bid}": [`p(95)<${HTTP_P95_MS}`],
    "http_req_duration{kind:read}": [`p(95)<${HTTP_P95_MS}`],
    http_req_failed: [`rate<${num("HTTP_FAILED_RATE", 0.01)}`],
    checks: [`rate>=${CHECKS_RATE}`],
    bids_placed: ["count>0"],
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  return createAuction("soak", LIFETIME);
}

/** @param {import("./lib.js").Plan} plan */
export function subscribers(plan) {
  touchCounters();
  const index = exec.scenario.iterationInTest; // 0, 1, 2... (see ws-fanout.js)
  subscribe(plan, {
    sockets: Math.min(SOCKETS_PER_VU, SOCKETS - index * SOCKETS_PER_VU),
    deadlineAt: plan.endsAt + FINISH_TIMEOUT * 1000,
    rotateMs: RECONNECT_EVERY * 1000,
  });
}

/** @param {import("./lib.js").Plan} plan */
export function bids(plan) {
  postNextBid(plan);
}

/** Highest current bid this VU has read so far. */
let highestRead = 0;

/** @param {import("./lib.js").Plan} plan */
export function read(plan) {
  const res = http.get(`${BASE_URL}/auctions/${plan.auction}`, {
    tags: { name: "GET /auctions/{id}", kind: "read" },
  });
  const auction = body(res);
  const amount = auction && auction.current ? auction.current.amount : 0;
  check(res, {
    "auction readable (200)": (r) => r.status === 200 && auction !== null && auction.id === plan.auction,
    "current bid never goes down": () => amount >= highestRead,
  });
  highestRead = Math.max(highestRead, amount);
}
