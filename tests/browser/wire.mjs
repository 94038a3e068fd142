// What crosses the wire, for the browser tests that count bytes: the
// DevTools protocol reports WebSocket frames decoded, not their size on
// the wire.
import { createServer, connect } from "node:net";
import { inflateRawSync, constants } from "node:zlib";
import { freePort } from "./stack.mjs";

/**
 * A pass-through TCP proxy to `port` on loopback that records, for the
 * WebSocket connections through it (those opened with `GET /ws`), the
 * 101's head and every data frame the server sent: its bytes on the wire
 * (header included), whether it was compressed, its text and which
 * connection through the proxy carried it (numbered from 1). It reads
 * the server's frames as they pass (they are unmasked) and inflates the
 * compressed ones itself as the browser does: after the connection's
 * compressed messages before it (their last 32 KiB, the window a message
 * may refer back into), or alone if the 101 said
 * server_no_context_takeover. Other connections (pages, streams, API calls) pass untouched.
 * A connection's end on one side is passed on to the other.
 */
export async function countingProxy(port) {
  const seen = { head: null, frames: [] };
  let connections = 0;
  const server = createServer((client) => {
    const connection = (connections += 1);
    const upstream = connect(port, "127.0.0.1");
    client.pipe(upstream);
    let isWebSocket = null; // then false once an upgrade is refused
    let buffer = Buffer.alloc(0);
    let inHead = true;
    // What the connection's compressed messages inflated to, as far back
    // as the server may refer (null: each inflates alone).
    let window = Buffer.alloc(0);
    client.once("data", (chunk) => { isWebSocket = /^GET \/ws[ ?]/.test(chunk.toString("latin1")); });
    upstream.on("data", (chunk) => {
      if (!client.destroyed) client.write(chunk);
      if (!isWebSocket) return;
      buffer = Buffer.concat([buffer, chunk]);
      if (inHead) {
        const end = buffer.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buffer.subarray(0, end).toString("latin1");
        buffer = buffer.subarray(end + 4);
        inHead = false;
        // A refused upgrade (a 503 while refusing) has a body, not frames.
        isWebSocket = head.startsWith("HTTP/1.1 101");
        if (!isWebSocket) return;
        seen.head = head;
        if (/server_no_context_takeover/i.test(head)) window = null;
      }
      for (;;) {
        if (buffer.length < 2) return;
        let length = buffer[1] & 0x7f;
        let start = 2;
        if (length === 126) { if (buffer.length < 4) return; length = buffer.readUInt16BE(2); start = 4; }
        else if (length === 127) { if (buffer.length < 10) return; length = Number(buffer.readBigUInt64BE(2)); start = 10; }
        if (buffer.length < start + length) return;
        const first = buffer[0];
        const payload = buffer.subarray(start, start + length);
        buffer = buffer.subarray(start + length);
        if ((first & 0x0f) !== 0x1) continue; // pings and the like
        const compressed = (first & 0x40) !== 0;
        let text = payload.toString("utf8");
        if (compressed) {
          const options = { finishFlush: constants.Z_SYNC_FLUSH };
          if (window?.length) options.dictionary = window;
          const inflated = inflateRawSync(Buffer.concat([payload, Buffer.from([0, 0, 0xff, 0xff])]), options);
          if (window) window = Buffer.concat([window, inflated]).subarray(-32 * 1024);
          text = inflated.toString("utf8");
        }
        seen.frames.push({ wire: start + length, compressed, text, connection });
      }
    });
    // An end is passed on as an end, after what was written before it (the
    // client's by pipe); a failure or a close of one side closes the other.
    upstream.on("end", () => client.end());
    const closeBoth = () => { client.destroy(); upstream.destroy(); };
    client.on("error", closeBoth);
    upstream.on("error", closeBoth);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => { if (!client.writableEnded) client.destroy(); });
  });
  const listen = await freePort();
  await new Promise((ok) => server.listen(listen, "127.0.0.1", ok));
  return { url: `http://127.0.0.1:${listen}`, seen, close: () => server.close() };
}

/** The UTF-8 bytes of a server's uncompressed WebSocket text frame of
 *  `text`: the text and its header (server frames are not masked). */
export function plainFrameBytes(text) {
  const length = Buffer.byteLength(text, "utf8");
  return length + (length <= 125 ? 2 : length <= 0xffff ? 4 : 10);
}
