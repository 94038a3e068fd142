// Types of auction-client.js and of the messages it reads and sends. The
// messages are those of docs/protocol.schema.json (the browser tests check
// real messages against that schema, and these types against its kinds).

// --- the protocol --------------------------------------------------------------

/** An auction's own event id, `<ms>-<seq>`. */
export type EventId = string;
/** Money: integer cents. */
export type Cents = number;

export interface Bid {
  auction: string;
  amount: Cents;
  /** The display name. */
  bidder: string;
  bidder_id?: string;
  /** Unix milliseconds. */
  placed_at: number;
  source: "user" | "simulated" | "proxy";
  reserve_met?: boolean;
}

export interface Seller {
  id: string;
  /** The display name. */
  name: string;
}

export interface Auction {
  id: string;
  title: string;
  status: "open" | "closed";
  starting_price: Cents;
  min_increment: Cents;
  ends_at: number;
  current: Bid | null;
  description?: string;
  image_url?: string;
  /** Who sells it: the creating token's bidder id and display name. Absent
   *  on auctions created before sellers were recorded, and on simulated ones. */
  seller?: Seller;
  /** The terms of sale; absent when unset. */
  terms?: string;
  soft_close_ms?: number;
  buy_now_price?: Cents;
  reserve_met?: boolean;
  sold?: boolean;
}

/** Payloads by event kind: the data of an SSE event, the `payload` of a
 *  WebSocket message (`viewers` and `gone`: the message's own fields). */
export interface EventData {
  init: { auction: Auction; history: Bid[]; reset?: boolean };
  bid: Bid;
  closed: { auction: Auction; sold?: boolean; reserve_met?: boolean };
  opened: { auction: Auction };
  extended: { auction: string; ends_at: number };
  admin: {
    action: "close" | "extend" | "cancel" | "delete";
    by: { id: string; name: string };
    reason?: string | null;
    at: number;
    auction?: Auction | string | null;
  };
  viewers: { auction: string; count: number };
  gone: { auction: string };
}
export type EventType = keyof EventData;

/** The kinds of auction event that carry an event id (as the envelope's `id`). */
type WithId = "init" | "bid" | "closed" | "opened" | "extended" | "admin";

/** A message of ws-edge. */
export type WsServerMessage =
  | { [K in WithId]: { type: K; auction: string; id?: EventId; payload: EventData[K] } }[WithId]
  | { type: "viewers"; auction: string; count: number }
  | { type: "gone"; auction: string }
  | { type: "authenticated"; bidder_id: string; name: string }
  | { type: "reinstated"; message?: string }
  | { type: "ack"; ref: string; id: EventId }
  | { type: "error"; ref?: string; error: string; message: string; current?: Cents; min_next?: Cents };

/** A message a client sends to ws-edge. */
export type WsClientMessage =
  | { type: "subscribe"; auction: string; last_id?: EventId }
  | { type: "unsubscribe"; auction: string }
  | { type: "auth"; token: string }
  | { type: "bid"; auction: string; amount: number; ref: string; idempotency_key?: string };

// --- the client ----------------------------------------------------------------------

export type Transport = "sse" | "ws";
export type TransportMode = Transport | "auto";
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "stopped" | "closed";

export interface ClientOptions {
  /** "auto" (default): a WebSocket, falling back to SSE and HTTP POST. */
  transport?: TransportMode;
  /** The edges' origin, e.g. "https://auctions.example" (default: the page's). */
  baseUrl?: string;
  /** The bidder API's origin for sign-in and HTTP bids (default: baseUrl). */
  bidderUrl?: string | null;
  /** The WebSocket URL (default: ws(s)://<baseUrl's host>/ws). */
  wsUrl?: string | null;
  /** A bearer token to bid with (from `signIn` or an identity provider). */
  token?: string | null;
  /** "auto": a socket not open within this is given up (ms, default 2500). */
  upgradeTimeoutMs?: number;
  /** "auto": after a WebSocket failed, SSE serves this long before a WebSocket is tried again (ms, default 60000). */
  wsRetryMs?: number;
  /** Reconnect backoff, full jitter: random up to min(max, base * 2^attempt) (ms, defaults 250 and 10000). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Tries of one bid while its outcome is unsettled, and the pause between (defaults 8 and 1000 ms). */
  bidAttempts?: number;
  bidRetryMs?: number;
  authWaitMs?: number;
  sseDebounceMs?: number;
  /** Query parameters added to every stream and socket URL, e.g. `{ demo: "<client id>" }` for the edges' demo controls. */
  connectionParams?: Record<string, string> | null;
}

/** How a connection came back after the one in use failed. */
export interface Recovery {
  /** From the failure (EventSource's `error`, the socket's `close`) to this connection open, ms. */
  downMs: number;
  /** Tries, this one included: each EventSource reconnection by the browser, each stream or socket the client opened. */
  attempts: number;
  /** The pauses the client waited before its own tries, ms (its backoff); 0 when only the browser retried (EventSource waits the server's `retry:` delay, which a page cannot read). */
  pausedMs: number;
  /** The most those pauses could have been (the backoff's bounds, summed), ms. */
  pauseBoundMs: number;
  /** The last try's request or handshake, from its start to open, ms; null when it was the browser's own reconnection. */
  connectMs: number | null;
}

/** One auction event, once, in order (repeats across reconnects are dropped). */
export type AuctionEvent = {
  [K in EventType]: { type: K; auction: string; id: EventId | null; data: EventData[K]; transport: Transport | null };
}[EventType];

export interface ClientEvents {
  event: AuctionEvent;
  state: { state: ConnectionState; transport: Transport | null; detail?: string };
  /** A stream or socket opened. `extensions`: the WebSocket's negotiated extensions ("" for none; null for SSE); `recovery`: null for the first connection. */
  open: { transport: Transport; extensions: string | null; recovery: Recovery | null };
  /** An event dropped because its id was not past the auction's last one (sent again, or out of order). */
  repeat: { type: EventType; auction: string; id: EventId; transport: Transport | null };
  transport: { transport: Transport };
  /** "auto" gave a WebSocket up: refused, timeout, or closed before its first message. */
  fallback: { reason: "refused" | "timeout" | "closed_before_message" };
  /** A watch the edge refused (an unknown or invalid auction). */
  refused: { auction: string; error: string };
  session: { authenticated?: { bidder_id: string; name: string }; refused?: string };
  /** Every message received, as sent (for logs and checks); `bytes`: its size as the edge encodes it, before any compression (SSE: its `event:`, `data:` and `id:` lines and blank line; WebSocket: its text and frame header). */
  message: { transport: "sse"; event: EventType; id: string | null; data: unknown; bytes: number } | { transport: "ws"; message: WsServerMessage; bytes: number };
  /** Every message sent on the socket. */
  send: { transport: "ws"; message: WsClientMessage };
}

export interface Session {
  token: string;
  bidder_id: string;
  name: string;
  expires_at: number;
}

export type BidRequest = { amount: Cents } | { max_amount: Cents } | { buy_now: true };

export interface BidOptions {
  /** The idempotency key (default: a new one). The same key is the same bid. */
  key?: string;
  token?: string | null;
  /** The name, for a deployment without sessions. */
  bidder?: string;
  /** Called before each retry of an unsettled bid. */
  onRetry?: (attempt: number, last: BidResult) => void;
  bidderUrl?: string;
}

export interface BidResult {
  ok: boolean;
  /** 201's body (`{id, bid, leading, max_amount?}`; over the socket `{id}`), or the error body. */
  body: ({ error?: string; message?: string; [field: string]: unknown }) | null;
  status?: number;
  /** The key the bid was sent with: send it again to learn an unsettled bid's outcome. */
  key: string;
  /** Whether the outcome is still unknown after every try. */
  unsettled: boolean;
}

export declare const UNSETTLED: readonly string[];
export declare const EVENT_TYPES: readonly EventType[];
export declare function compareIds(a: EventId, b: EventId): -1 | 0 | 1;
export declare function decodeStreamId(id: string): Map<string, EventId> | null;
export declare function encodeStreamId(positions: Iterable<[string, EventId]>): string | null;
export declare function newIdempotencyKey(): string;

export declare class AuctionClient {
  constructor(options?: ClientOptions);
  readonly mode: TransportMode;
  readonly transport: Transport | null;
  readonly state: ConnectionState;
  token: string | null;
  on<K extends keyof ClientEvents>(type: K, listener: (value: ClientEvents[K]) => void): () => void;
  watch(auctions: string | string[], options?: { lastId?: EventId | null; fresh?: boolean }): void;
  unwatch(auctions: string | string[]): void;
  lastId(auction: string): EventId | null;
  signIn(name: string): Promise<Session | { error: { error: string; message?: string } } | null>;
  setToken(token: string | null): void;
  bid(auction: string, request: BidRequest, options?: BidOptions): Promise<BidResult>;
  close(): void;
}
