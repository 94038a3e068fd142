// The SSE page: Server-Sent Events, bids by HTTP POST (auction-page.js,
// through the auction client library).
import { start } from "./auction-page.js";

start("sse");
