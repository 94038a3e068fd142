// What a subscriber (WebSocket or SSE) checks about the events it receives.
//
// The run's only bidder posts starting_price, then + min_increment each time
// (lib.js postNextBid), so a subscriber knows exactly which amount must come
// next: after its baseline (the auction's current bid in `init`), every `bid`
// event must be exactly one increment above the one before. A larger step
// means events were lost (events_missing), an amount not above the last one
// means an event came twice or out of order (events_duplicated). The auction
// closes shortly after the bids stop; its single `closed` event carries the
// final bid, so a subscriber also notices bids lost at the very end, and then
// knows it is done without waiting on a timer.
import { check } from "k6";
import { Counter, Trend } from "k6/metrics";

export const eventsReceived = new Counter("events_received");
export const eventsMissing = new Counter("events_missing");
export const eventsDuplicated = new Counter("events_duplicated");
/** `placed_at` (Redis's clock) to arrival at the subscriber, ms. */
export const deliveryLatency = new Trend("delivery_latency", true);
export const streamsFinished = new Counter("streams_finished");
export const streamsUnfinished = new Counter("streams_unfinished");

/**
 * Thresholds every subscriber script shares.
 * @param {number} p95Ms @param {number} p99Ms
 */
export function deliveryThresholds(p95Ms, p99Ms) {
  return {
    events_received: ["count>0"],
    events_missing: ["count==0"],
    events_duplicated: ["count==0"],
    streams_unfinished: ["count==0"],
    delivery_latency: [`p(95)<${p95Ms}`, `p(99)<${p99Ms}`],
  };
}

/** Makes the counters appear in the summary even when they stay at zero. */
export function touchCounters() {
  for (const counter of [eventsReceived, eventsMissing, eventsDuplicated, streamsFinished, streamsUnfinished]) {
    counter.add(0);
  }
}

export class Tracker {
  /** @param {import("./lib.js").Plan} plan */
  constructor(plan) {
    this.increment = plan.increment;
    this.startingPrice = plan.startingPrice;
    /** Amount of the last bid seen (or the baseline); null before init. @type {number | null} */
    this.last = null;
    /** Stream id of the newest event seen: the resume point. @type {string | null} */
    this.lastId = null;
    this.finished = false;
    /** Unix ms of the latest (re)subscription: events placed before it are replays. */
    this.liveSince = 0;
  }

  /** Call when a subscription is about to be sent. */
  subscribing() {
    this.liveSince = Date.now();
  }

  /**
   * `init`: the auction as the edge saw it when the subscription began.
   * @param {import("./lib.js").Auction} auction
   * @param {string | undefined} id  newest event the init reflects
   */
  init(auction, id) {
    if (id) this.lastId = id;
    const current = auction.current ? auction.current.amount : this.startingPrice - this.increment;
    if (this.last === null) {
      this.last = current; // bids before the first subscription are history, not events
    } else if (current > this.last) {
      // An init on a resume means the edge could not replay (reset): what
      // lies between was never delivered as events.
      eventsMissing.add(Math.round((current - this.last) / this.increment));
      this.last = current;
    }
    if (auction.status === "closed") this.close(auction);
  }

  /**
   * A `bid` event.
   * @param {import("./lib.js").Bid} bid
   * @param {string | undefined} id
   */
  bid(bid, id) {
    eventsReceived.add(1);
    const now = Date.now();
    if (bid.placed_at >= this.liveSince) deliveryLatency.add(now - bid.placed_at);
    if (id) this.lastId = id;
    if (this.last === null) {
      // The contract sends init first; without it there is no baseline.
      check(bid, { "init before the first bid": () => false });
      this.last = bid.amount;
      return;
    }
    const steps = (bid.amount - this.last) / this.increment;
    check(steps, { "bid amount on the run's increment grid": (s) => Number.isInteger(s) });
    if (steps <= 0) {
      eventsDuplicated.add(1);
      return;
    }
    if (steps > 1) eventsMissing.add(Math.round(steps) - 1);
    this.last = bid.amount;
  }

  /**
   * The `closed` event (or an init of a closed auction): the final bid is
   * known, so anything after the last one seen was lost.
   * @param {import("./lib.js").Auction} auction
   * @param {string} [id]
   */
  close(auction, id) {
    if (this.finished) {
      eventsDuplicated.add(1);
      return;
    }
    if (id) this.lastId = id;
    const final = auction.current ? auction.current.amount : this.startingPrice - this.increment;
    if (this.last !== null && final > this.last) {
      eventsMissing.add(Math.round((final - this.last) / this.increment));
      this.last = final;
    }
    this.finished = true;
    streamsFinished.add(1);
  }

  /** The subscriber gave up before `closed` (deadline). */
  abandon() {
    if (this.finished) return;
    this.finished = true;
    streamsUnfinished.add(1);
  }
}
