// The WebSocket page: a WebSocket, bids over it; where a proxy refuses
// WebSockets, Server-Sent Events and HTTP POST until a WebSocket works again
// (the auction client library's "auto" transport, through auction-page.js).
import { start } from "./auction-page.js";

start("ws");
