// WebSocket subscribers for ws-fanout.js and soak.js: one VU holds several
// sockets (a VU is a whole JavaScript runtime; one per socket would cost far
// more memory than the sockets themselves), each subscribed to the run's
// auction and checked by its own Tracker (delivery.js).
//
// A socket that the edge closes (draining: 1012, slow consumer: 1013) or
// that fails to connect comes back after a short backoff and resubscribes
// with the last event id it saw, as the contract's clients do; with
// `rotateMs` every socket also does so on purpose, to exercise resume. Every
// socket ends at the auction's `closed` event, or at `deadlineAt` at the
// latest (counted in streams_unfinished).
import { check } from "k6";
import { WebSocket } from "k6/experimental/websockets";
import { Counter } from "k6/metrics";
import { setTimeout, clearTimeout } from "k6/timers";
import { parseJson, WS_URL } from "./lib.js";
import { Tracker } from "./delivery.js";

/** Reconnects after the socket failed or the edge closed it. */
export const wsReconnects = new Counter("ws_reconnects");
/** Planned reconnects (rotateMs). */
export const wsRotations = new Counter("ws_rotations");
export const wsErrorFrames = new Counter("ws_error_frames");

const BACKOFF_MS = [100, 250, 500, 1000, 2000];

/**
 * @typedef {object} SubscriberOptions
 * @property {number} sockets     how many sockets this VU opens
 * @property {number} deadlineAt  Unix ms: give up waiting for `closed`
 * @property {number} [rotateMs]  reconnect (and resume) every this many ms; 0: never
 */

/**
 * Opens the sockets; returns at once (k6 ends the iteration when the
 * last socket is closed and no timer is left).
 * @param {import("./lib.js").Plan} plan
 * @param {SubscriberOptions} options
 */
export function subscribe(plan, options) {
  wsReconnects.add(0); // listed in the summary even when it stays at 0
  wsRotations.add(0);
  for (let i = 0; i < options.sockets; i++) {
    new Subscriber(plan, options).connect();
  }
}

class Subscriber {
  /** @param {import("./lib.js").Plan} plan @param {SubscriberOptions} options */
  constructor(plan, options) {
    this.plan = plan;
    this.options = options;
    this.tracker = new Tracker(plan);
    /** @type {WebSocket | null} */
    this.ws = null;
    /** Bumped on every connect, so that events of an old socket are ignored. */
    this.session = 0;
    this.failures = 0;
    /** @type {number | null} */
    this.rotateTimer = null;
    /** @type {number | null} */
    this.retryTimer = null;
    const untilDeadline = Math.max(0, options.deadlineAt - Date.now());
    this.deadlineTimer = setTimeout(() => {
      this.tracker.abandon();
      this.stop();
    }, untilDeadline);
  }

  connect() {
    this.retryTimer = null;
    const session = ++this.session;
    const ws = new WebSocket(WS_URL);
    this.ws = ws;
    let opened = false;

    ws.onopen = () => {
      if (session !== this.session) {
        ws.close(); // stopped or replaced while connecting
        return;
      }
      opened = true;
      check(ws, { "socket connected": () => true });
      this.failures = 0;
      this.tracker.subscribing();
      /** @type {{type: string, auction: string, last_id?: string}} */
      const message = { type: "subscribe", auction: this.plan.auction };
      if (this.tracker.lastId) message.last_id = this.tracker.lastId;
      ws.send(JSON.stringify(message));
      if (this.options.rotateMs) {
        // Jittered, so that the sockets of a run don't all rotate at once.
        const after = this.options.rotateMs * (0.75 + Math.random() * 0.5);
        this.rotateTimer = setTimeout(() => this.rotate(session), after);
      }
    };

    ws.onmessage = (event) => {
      if (session !== this.session || !event) return;
      const frame = parseJson(String(event.data));
      if (frame) this.handle(frame);
    };

    ws.onerror = (event) => {
      if (session !== this.session) return;
      if (!opened) check(event, { "socket connected": () => false });
      else console.warn(`socket error: ${event && event.error}`);
      this.lost(session);
    };

    ws.onclose = () => {
      if (session !== this.session) return;
      this.lost(session);
    };
  }

  /**
   * One server frame.
   * @param {any} frame
   */
  handle(frame) {
    switch (frame.type) {
      case "init":
        check(frame, { "subscribed to the run's auction": (f) => f.auction === this.plan.auction });
        this.tracker.init(frame.payload.auction, frame.id);
        break;
      case "bid":
        this.tracker.bid(frame.payload, frame.id);
        break;
      case "closed":
        this.tracker.close(frame.payload.auction, frame.id);
        break;
      case "error":
        wsErrorFrames.add(1);
        check(frame, { "no error frame": () => false });
        console.warn(`error frame: ${JSON.stringify(frame)}`);
        break;
      default:
        break; // "opened" and frames a later edge may add
    }
    if (this.tracker.finished) this.stop();
  }

  /**
   * Planned reconnect: only once there is an event id to resume from
   * (before the first event, a resubscription would get a fresh init
   * instead of a replay).
   * @param {number} session
   */
  rotate(session) {
    this.rotateTimer = null;
    if (session !== this.session || this.tracker.finished) return;
    if (!this.tracker.lastId) {
      this.rotateTimer = setTimeout(() => this.rotate(session), 250);
      return;
    }
    wsRotations.add(1);
    this.session++; // the old socket's close must not trigger lost()
    if (this.ws) this.ws.close();
    this.connect();
  }

  /**
   * The socket failed or was closed by the other side: come back after a
   * backoff, unless the subscriber is done.
   * @param {number} session
   */
  lost(session) {
    if (session !== this.session || this.tracker.finished || this.retryTimer !== null) return;
    this.session++;
    if (this.rotateTimer !== null) clearTimeout(this.rotateTimer);
    this.rotateTimer = null;
    const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
    this.failures++;
    wsReconnects.add(1);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Closes the socket and clears every timer, so the iteration can end. */
  stop() {
    this.session++;
    for (const timer of [this.deadlineTimer, this.rotateTimer, this.retryTimer]) {
      if (timer !== null) clearTimeout(timer);
    }
    this.rotateTimer = null;
    this.retryTimer = null;
    if (this.ws) this.ws.close();
    this.ws = null;
  }
}
