// A TCP proxy in front of Redis that can freeze pub/sub delivery: on the
// connections that subscribed, it stops passing published messages (RESP2
// `message` / `pmessage` / `smessage` arrays) while every other reply
// (subscription confirmations, PONGs, command replies) still flows. The
// edge behind it then looks healthy (Redis answers, probes pass) while no
// event reaches it: the silent failure AuctionDeliveryStalled is for.
import { createServer, connect } from "node:net";

const PUSHES = new Set(["message", "pmessage", "smessage"]);

/** The end offset of the RESP2 value at `offset`, and its first element
 *  when it is an array of bulk strings; null while incomplete. */
function value(buffer, offset) {
  const lineEnd = buffer.indexOf("\r\n", offset);
  if (lineEnd < 0) return null;
  const type = String.fromCharCode(buffer[offset]);
  const header = buffer.toString("latin1", offset + 1, lineEnd);
  let end = lineEnd + 2;
  if (type === "$") {
    const length = Number(header);
    if (length < 0) return { end, first: null };
    end += length + 2;
    return end <= buffer.length ? { end, text: buffer.toString("latin1", lineEnd + 2, lineEnd + 2 + length) } : null;
  }
  if (type === "*") {
    const count = Number(header);
    let first = null;
    for (let i = 0; i < count; i++) {
      const element = value(buffer, end);
      if (!element) return null;
      if (i === 0) first = element.text ?? null;
      end = element.end;
    }
    return { end, first };
  }
  return { end }; // +, -, :
}

export class PubSubFreeze {
  constructor(redisPort) {
    this.redisPort = redisPort;
    this.frozen = false;
    this.dropped = 0;
    this.sockets = new Set();
  }

  async listen() {
    this.server = createServer((client) => this.serve(client));
    await new Promise((ok) => this.server.listen(0, "127.0.0.1", ok));
    this.port = this.server.address().port;
    return this.port;
  }

  serve(client) {
    const redis = connect(this.redisPort, "127.0.0.1");
    this.sockets.add(client).add(redis);
    let subscribed = false;
    let pending = Buffer.alloc(0);
    client.on("data", (chunk) => {
      if (/SUBSCRIBE/i.test(chunk.toString("latin1"))) subscribed = true;
      redis.write(chunk);
    });
    redis.on("data", (chunk) => {
      if (!subscribed) return client.write(chunk);
      pending = Buffer.concat([pending, chunk]);
      let offset = 0;
      for (;;) {
        const next = value(pending, offset);
        if (!next) break;
        const drop = this.frozen && PUSHES.has(next.first);
        if (drop) this.dropped += 1;
        else client.write(pending.subarray(offset, next.end));
        offset = next.end;
      }
      pending = pending.subarray(offset);
    });
    const close = () => { client.destroy(); redis.destroy(); };
    client.on("error", close).on("close", close);
    redis.on("error", close).on("close", close);
  }

  close() {
    for (const socket of this.sockets) socket.destroy();
    this.server?.close();
  }
}
