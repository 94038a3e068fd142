// bids.js: the bid API under a steady arrival rate, with bidders racing.
//
// setup() creates a fresh auction. Bids arrive at BID_RATE per second
// (constant-arrival-rate: a slow server gets more concurrent requests, not
// fewer) at POST /auctions/{id}/bids. Amounts rise with time: the price goes
// up one min_increment per tick, a tick lasting as long as BIDS_PER_PRICE
// bids take to arrive, and every bid of a tick offers that tick's price. So
// about BIDS_PER_PRICE bidders race for each price, as in a live auction: the
// first to reach Redis gets 201, the others 409 bid_too_low. Both are
// expected answers (http.expectedStatuses(201, 409)); anything else (429,
// 5xx, timeouts, auction_closed) counts in http_req_failed.
//
//   k6 run load-tests/k6/bids.js
//   k6 run -e BID_RATE=200 -e MAX_VUS=200 -e DURATION=1m load-tests/k6/bids.js
//
// The bidder rate-limits per bidder (AUCTION_RATE_LIMIT_PER_S, 50 by
// default, burst 100) and per client address (AUCTION_ADDRESS_RATE_LIMIT_PER_S,
// 200, burst 400), and behind nginx every k6 request comes from one address:
// above those rates, raise the limits or expect 429s.
//
// Settings (environment, `-e NAME=value`):
//   BASE_URL         bidder API through nginx                 http://127.0.0.1:8000
//   AUCTION_TOKEN    a seller's token (bidder token --name k6 --role seller)   required
//   AUCTION_ID       auction to create (must not exist)       k6-bids-<unix ms>
//   STARTING_PRICE   MIN_INCREMENT (cents)                    1000, 100
//   BID_RATE         bids per second                          40
//   BIDS_PER_PRICE   bids offering each price (the race)      2
//   DURATION         how long bids are posted                 30s
//   PRE_VUS          VUs allocated up front                   10
//   MAX_VUS          most VUs k6 may add when answers slow    50
//   HTTP_P95_MS      threshold on the bids' p(95) duration    200
//   HTTP_P99_MS      threshold on the bids' p(99) duration    500
//   HTTP_FAILED_RATE most share of failed requests            0.01
//   CHECKS_RATE      least share of passing checks            0.99
// Targets must be loopback.
import http from "k6/http";
import exec from "k6/execution";
import { check } from "k6";
import { Counter } from "k6/metrics";
import { arrival, body, CHECKS_RATE, count, createAuction, dur, num, postBid, seconds, SUMMARY_TREND_STATS } from "./lib.js";

const BID_RATE = num("BID_RATE", 40);
const BIDS_PER_PRICE = num("BIDS_PER_PRICE", 2);
const DURATION = seconds("DURATION", "30s");
/** How long one price is on offer, ms. */
const TICK_MS = (1000 * BIDS_PER_PRICE) / BID_RATE;

const bidsAccepted = new Counter("bids_accepted");
const bidsTooLow = new Counter("bids_too_low");

/** @type {import("k6/options").Options} */
export const options = {
  scenarios: {
    bids: {
      executor: "constant-arrival-rate",
      exec: "bid",
      ...arrival(BID_RATE),
      duration: dur(DURATION),
      preAllocatedVUs: count("PRE_VUS", 10),
      maxVUs: count("MAX_VUS", 50),
    },
  },
  thresholds: {
    // Only the bids: setup's POST /auctions is not part of the measure.
    "http_req_duration{kind:bid}": [`p(95)<${num("HTTP_P95_MS", 200)}`, `p(99)<${num("HTTP_P99_MS", 500)}`],
    http_req_failed: [`rate<${num("HTTP_FAILED_RATE", 0.01)}`],
    checks: [`rate>=${CHECKS_RATE}`],
    bids_accepted: ["count>0"],
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

// 201 and 409 (bid_too_low) are the answers a racing bidder expects.
http.setResponseCallback(http.expectedStatuses(201, 409));

export function setup() {
  // Open for the whole run plus a margin, so late bids don't meet auction_closed.
  return createAuction("bids", DURATION + 60);
}

/** @param {import("./lib.js").Plan} plan */
export function bid(plan) {
  const tick = Math.floor((Date.now() - plan.createdAt) / TICK_MS);
  const amount = plan.startingPrice + tick * plan.increment;
  // One key per intended bid (this iteration), reused by its retries.
  const key = `${plan.auction}:${exec.scenario.iterationInTest}`;
  const res = postBid(plan.auction, amount, key, { name: "POST /auctions/{id}/bids", kind: "bid" });
  const answer = body(res);
  check(res, {
    "201 or 409": (r) => r.status === 201 || r.status === 409,
    "201 echoes the bid": (r) => r.status !== 201 || (answer && answer.bid && answer.bid.amount === amount && typeof answer.id === "string"),
    "409 is bid_too_low at or above this price": (r) =>
      r.status !== 409 || (answer && answer.error === "bid_too_low" && answer.current >= amount && answer.min_next > amount),
  });
  if (res.status === 201) bidsAccepted.add(1);
  else if (res.status === 409) bidsTooLow.add(1);
}
