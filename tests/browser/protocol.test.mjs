// The protocol schema (docs/protocol.schema.json) and the client library's
// types (clients/js/auction-client.d.ts) agree: the same kinds of SSE event
// and WebSocket message, and the types check (tsc on types/usage.ts). The
// messages themselves are checked against the schema in fallback.test.mjs,
// as the running services send them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { validator } from "./schema.mjs";

const root = resolve(import.meta.dirname, "../..");
const schema = JSON.parse(readFileSync(resolve(root, "docs/protocol.schema.json"), "utf8"));
const types = readFileSync(resolve(root, "clients/js/auction-client.d.ts"), "utf8");

/** The `type` consts of a schema definition's oneOf. */
const kinds = (name) => schema.$defs[name].oneOf.map(({ $ref }) => schema.$defs[$ref.split("/").at(-1)].properties.type.const).sort();

/** The body of `export type <name> = ...;` in the declarations. */
function declared(name) {
  const match = new RegExp(`export type ${name} =([\\s\\S]*?);\\n`).exec(types);
  assert.ok(match, `${name} is declared`);
  return match[1];
}

test("the declarations name every WebSocket message and SSE event of the schema, and no other", () => {
  const withId = /type WithId = ([^;]+);/.exec(types)[1].match(/"(\w+)"/g).map((s) => s.slice(1, -1));
  const server = [...withId, ...[...declared("WsServerMessage").matchAll(/type: "(\w+)"/g)].map((m) => m[1])].sort();
  assert.deepEqual(server, kinds("ws_server_message"));
  const client = [...declared("WsClientMessage").matchAll(/type: "(\w+)"/g)].map((m) => m[1]).sort();
  assert.deepEqual(client, kinds("ws_client_message"));
  const data = /export interface EventData \{([\s\S]*?)\n\}/.exec(types)[1];
  const events = [...data.matchAll(/^\s{2}(\w+):/gm)].map((m) => m[1]).sort();
  const sse = Object.keys(schema.$defs).filter((name) => name.startsWith("sse_")).map((name) => name.slice(4)).sort();
  assert.deepEqual(events, sse);
});

test("the schema refuses what the edges never send", () => {
  const check = validator(schema);
  const bid = { auction: "a", amount: 5000, bidder: "Ada", bidder_id: "g_1", placed_at: 1, source: "user" };
  assert.deepEqual(check("ws_server_message", { type: "bid", auction: "a", id: "1-0", payload: bid }), []);
  assert.notDeepEqual(check("ws_server_message", { type: "bid", auction: "a", payload: bid }), [], "a bid without id");
  assert.notDeepEqual(check("sse_bid", { ...bid, amount: 50.5 }), [], "money is integer cents");
  assert.notDeepEqual(check("sse_bid", { ...bid, source: "robot" }), []);
  assert.notDeepEqual(check("ws_client_message", { type: "subscribe" }), [], "subscribe names an auction");
  assert.notDeepEqual(check("ws_client_message", { type: "dance" }), []);
  const auction = { id: "a", title: "Lot", status: "open", starting_price: 1, min_increment: 1, ends_at: 1, current: null };
  assert.deepEqual(check("sse_init", { auction, history: [] }), [], "no seller, no terms");
  const sold = { ...auction, seller: { id: "g_1", name: "Maison Ada" }, terms: "Collection only." };
  assert.deepEqual(check("sse_init", { auction: sold, history: [] }), []);
  assert.notDeepEqual(check("sse_init", { auction: { ...sold, seller: "Maison Ada" }, history: [] }), [], "a seller is {id, name}");
  assert.notDeepEqual(check("sse_init", { auction: { ...sold, seller: { id: "g_1" } }, history: [] }), [], "a seller has a name");
});

test("the library's declarations type-check an application's use of it (tsc)", () => {
  execFileSync(resolve(import.meta.dirname, "node_modules/.bin/tsc"), ["-p", resolve(import.meta.dirname, "types")], { stdio: "pipe" });
});
