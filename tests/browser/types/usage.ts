// Uses the auction client library as an application would: type-checked
// (`npm run typecheck`) against clients/js/auction-client.d.ts.
import {
  AuctionClient, compareIds, encodeStreamId, decodeStreamId, UNSETTLED,
  type AuctionEvent, type BidResult, type WsServerMessage, type EventData,
} from "../../../clients/js/auction-client.js";

const client = new AuctionClient({ transport: "auto", wsRetryMs: 30_000, bidderUrl: "https://api.example" });
const prices = new Map<string, number>();

const stop = client.on("event", (event: AuctionEvent) => {
  switch (event.type) {
    case "init":
      prices.set(event.auction, event.data.auction.current?.amount ?? event.data.auction.starting_price);
      for (const bid of event.data.history) console.log(bid.bidder, bid.amount);
      // Both optional: older auctions and simulated ones have neither.
      if (event.data.auction.seller) console.log(`Sold by ${event.data.auction.seller.name}`, event.data.auction.seller.id);
      console.log(event.data.auction.terms ?? "no terms");
      break;
    case "bid":
      prices.set(event.auction, event.data.amount);
      break;
    case "closed":
    case "opened":
      console.log(event.data.auction.status, event.id);
      break;
    case "extended":
      console.log(new Date(event.data.ends_at));
      break;
    case "viewers":
      console.log(`${event.data.count} watching`);
      break;
    case "gone":
      client.unwatch(event.auction);
      break;
  }
});
client.on("state", ({ state, transport }) => console.log(state, transport));
client.on("fallback", ({ reason }) => console.log("WebSocket refused:", reason));
client.on("message", (seen) => {
  if (seen.transport === "ws") {
    const message: WsServerMessage = seen.message;
    if (message.type === "error") console.log(message.error, message.ref);
  }
});
client.on("open", ({ transport, extensions, recovery }) => {
  if (recovery) console.log(transport, recovery.downMs, recovery.attempts, recovery.pausedMs, recovery.pauseBoundMs, recovery.connectMs ?? "browser");
  if (extensions) console.log("compressed:", extensions.includes("permessage-deflate"));
});
client.on("repeat", ({ auction, id }) => console.log("repeated", auction, id));
let bytes = 0;
client.on("message", (seen) => { bytes += seen.bytes; });
const watcher = new AuctionClient({ transport: "ws", connectionParams: { demo: "page-1" } });
watcher.close();
client.watch(["1234", "lot-7"]);
client.watch("1234", { lastId: "1700000000000-0" });

async function bid(): Promise<void> {
  const session = await client.signIn("Ada");
  if (session && "token" in session) console.log(session.bidder_id);
  const result: BidResult = await client.bid("1234", { amount: 150_000 }, { onRetry: (attempt) => console.log(attempt) });
  if (result.unsettled) await client.bid("1234", { amount: 150_000 }, { key: result.key });
  await client.bid("1234", { max_amount: 200_000 });
  await client.bid("1234", { buy_now: true });
  if (!result.ok && result.body && UNSETTLED.includes(String(result.body.error))) console.log("unknown");
}
void bid();

const id = encodeStreamId([["1234", "1700000000000-1"]]);
if (id) console.log(decodeStreamId(id)?.get("1234"), compareIds("1-0", "2-0"));
const payload: EventData["init"]["history"] = [];
console.log(payload.length, prices.size, bytes);
stop();
client.close();
