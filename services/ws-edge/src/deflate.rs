//! permessage-deflate (RFC 7692): its negotiation, the compression of an
//! event's message (once per event, at the codec) and the inflating of
//! the client's compressed messages before tungstenite reads them.
//!
//! The server keeps its context across messages unless the client asks it
//! not to (`server_no_context_takeover`), and compresses each event twice
//! at most, never once per socket: alone, a frame right on any socket, and
//! chained to its feed's previous event, a frame right only on a socket
//! whose last compressed message was that event, where it refers back into
//! that message (which the client's inflater still holds). The chained
//! frame of a bid event is a fifth of its plain size, the lone one two
//! thirds (`bid_event_sizes`). The frames are the same for every socket;
//! which one a socket gets is `fanout::AltWindow`'s to say. The server asks
//! the client for no context (`client_no_context_takeover`, which a server
//! may answer unoffered, 7.1.1.2): a socket keeps no inflate state between
//! the client's messages.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;
use std::io;

/// The tail a sync flush ends with, taken off each message (7.2.1) and put
/// back before inflating one (7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// An accepted offer: what the 101 answers, and how events are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The client keeps its context across the server's messages: events
    /// may be written chained to the message before them.
    pub chains: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the 101.
    pub fn response(&self) -> &'static str {
        match self.chains {
            true => "permessage-deflate; client_no_context_takeover",
            false => "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        }
    }
}

/// The first offer in `Sec-WebSocket-Extensions` this server accepts: a
/// `permessage-deflate` whose parameters it can honour. It compresses with
/// a 32 KiB window and names no window size, so an offer with
/// `server_max_window_bits` (which the answer would have to repeat,
/// 7.1.2.1) is declined; the client's window may be anything (a smaller
/// window inflates the same). `None`: no offer it accepts.
pub fn negotiate(header: &str) -> Option<Agreed> {
    header.split(',').find_map(|offer| {
        let mut parts = offer.split(';').map(str::trim);
        if !parts
            .next()
            .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
        {
            return None;
        }
        let mut seen = Vec::new();
        let honoured = parts.all(|param| {
            let (name, value) = match param.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                None => (param, None),
            };
            let name = name.to_ascii_lowercase();
            // RFC 7692 7.1: a parameter given twice declines the offer.
            if seen.contains(&name) {
                return false;
            }
            let honoured = match name.as_str() {
                "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
                "client_max_window_bits" => value.is_none_or(is_window_bits),
                _ => false,
            };
            seen.push(name);
            honoured
        });
        honoured.then(|| Agreed {
            chains: !seen.iter().any(|name| name == "server_no_context_takeover"),
        })
    })
}

fn is_window_bits(value: &str) -> bool {
    value
        .parse::<u8>()
        .is_ok_and(|bits| (8..=15).contains(&bits))
}

/// The compressor's window: 512 bytes (the least raw DEFLATE allows), room
/// for an event and the one before it. A bigger window would find nothing
/// more in messages this short, and costs more to reset.
const WINDOW_BITS: u8 = 9;

thread_local! {
    /// One compressor per thread, reset for each message (a new one per
    /// event would cost allocating its tables).
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new_with_window_bits(Compression::best(), false, WINDOW_BITS));
}

/// The final, unmasked, compressed text frame (RSV1 set) of `text` on its
/// own, or `None` if compressing does not make it smaller (a compressed
/// socket is then sent the plain frame: a message may go uncompressed,
/// 6.1).
pub fn compressed_text_frame(text: &str) -> Option<Bytes> {
    compressed_frame_after(b"", text)
}

/// The compressed text frame of `text` as the message after `previous`
/// (the text of the socket's last compressed message): it may refer back
/// into `previous`, so it is right only on a socket whose inflater was
/// last given that message. `None` if it is no smaller than `text`.
pub fn compressed_text_frame_after(previous: &[u8], text: &str) -> Option<Bytes> {
    compressed_frame_after(previous, text)
}

fn compressed_frame_after(previous: &[u8], text: &str) -> Option<Bytes> {
    let payload = COMPRESSOR.with(|compressor| {
        let compressor = &mut compressor.borrow_mut();
        compressor.reset();
        // The window as the client's inflater holds it (its tail: what
        // fits in this compressor's window).
        if !previous.is_empty() {
            let fits = previous.len().saturating_sub(1 << WINDOW_BITS);
            compressor.set_dictionary(&previous[fits..]).ok()?;
        }
        deflate(compressor, text.as_bytes())
    })?;
    if payload.len() + 4 >= text.len() {
        return None;
    }
    let mut frame = BytesMut::with_capacity(payload.len() + 10);
    frame.put_u8(0xc1); // FIN + RSV1 + text
    put_length(&mut frame, payload.len(), 0);
    frame.put_slice(&payload);
    Some(frame.freeze())
}

/// Raw DEFLATE of one message, after whatever the compressor took before
/// it (its window), flushed and without the tail.
fn deflate(compressor: &mut Compress, input: &[u8]) -> Option<Vec<u8>> {
    let before = compressor.total_in();
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        let consumed = (compressor.total_in() - before) as usize;
        compressor
            .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        // Done once every byte went in and the flush fit (it ends with
        // the tail, with room to spare).
        if (compressor.total_in() - before) as usize == input.len()
            && out.ends_with(&TAIL)
            && out.len() < out.capacity()
        {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    out.truncate(out.len() - TAIL.len());
    Some(out)
}

/// A frame's length field (RFC 6455 §5.2), after its first byte; `mask`
/// is the MASK bit (0x80) or 0.
fn put_length(frame: &mut BytesMut, len: usize, mask: u8) {
    match len {
        0..=125 => frame.put_u8(mask | len as u8),
        126..=0xffff => {
            frame.put_u8(mask | 126);
            frame.put_u16(len as u16);
        }
        _ => {
            frame.put_u8(mask | 127);
            frame.put_u64(len as u64);
        }
    }
}

/// The client's frames as they arrive, with each compressed message
/// inflated into one plain frame: what tungstenite reads (it knows no
/// extensions, and refuses a frame with RSV1 set). Every other frame
/// passes as it came. Bounded: a compressed message whose inflated size
/// passes `max_message` (or whose compressed size does, by more than
/// deflate's overhead) is not inflated further; tungstenite is handed a
/// frame header of that oversized length instead, which it refuses as it
/// refuses any oversized message (the session closes with 1009).
pub struct Inflating {
    max_message: usize,
    /// Bytes read, not yet taken apart.
    input: BytesMut,
    /// Bytes for tungstenite.
    output: BytesMut,
    /// Payload bytes of the current plain frame still to pass through.
    passing: u64,
    /// The compressed message being gathered (unmasked), if one is.
    message: Option<Message>,
    /// An oversized message was reported: nothing more is read.
    done: bool,
}

struct Message {
    /// Text (0x1) or binary (0x2).
    opcode: u8,
    compressed: Vec<u8>,
}

impl Inflating {
    pub fn new(max_message: usize) -> Inflating {
        Inflating {
            max_message,
            input: BytesMut::new(),
            output: BytesMut::new(),
            passing: 0,
            message: None,
            done: false,
        }
    }

    /// Most compressed bytes one message may take: deflate's stored blocks
    /// add 5 bytes per 64 KiB, and a little more for a flush.
    fn max_compressed(&self) -> usize {
        self.max_message + self.max_message / 1024 + 64
    }

    /// Whether bytes for tungstenite are waiting.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Whether nothing more is read from the socket.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Moves what is ready for tungstenite into `buf`; returns how much.
    pub fn take_output(&mut self, buf: &mut [u8]) -> usize {
        let len = buf.len().min(self.output.len());
        buf[..len].copy_from_slice(&self.output[..len]);
        self.output.advance(len);
        len
    }

    /// Takes in bytes read from the socket. An error: a compressed message
    /// that does not inflate (the connection fails, RFC 6455 §7.1.7).
    pub fn push(&mut self, read: &[u8]) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        self.input.extend_from_slice(read);
        while !self.done && self.step()? {}
        Ok(())
    }

    /// Takes apart what it can of `input`; `false`: it needs more bytes.
    fn step(&mut self) -> io::Result<bool> {
        if self.passing > 0 {
            if self.input.is_empty() {
                return Ok(false);
            }
            let len = self
                .input
                .len()
                .min(usize::try_from(self.passing).unwrap_or(usize::MAX));
            self.output.extend_from_slice(&self.input.split_to(len));
            self.passing -= len as u64;
            return Ok(true);
        }
        let Some(header) = Header::parse(&self.input) else {
            return Ok(false);
        };
        let opcode = header.first & 0x0f;
        let rsv1 = header.first & 0x40 != 0;
        let compressed = match opcode {
            0x1 | 0x2 => rsv1 && self.message.is_none(),
            0x0 => self.message.is_some(),
            _ => false,
        };
        if !compressed {
            // As it came (tungstenite judges it: RSV1 on a control frame
            // or a continuation of a plain message is its protocol error).
            self.output
                .extend_from_slice(&self.input.split_to(header.size));
            self.passing = header.len;
            return Ok(true);
        }
        let gathered = self.message.as_ref().map_or(0, |m| m.compressed.len());
        let len = usize::try_from(header.len).unwrap_or(usize::MAX);
        if len > self.max_compressed().saturating_sub(gathered) {
            self.too_large(len.saturating_add(gathered));
            return Ok(false);
        }
        if self.input.len() < header.size + len {
            self.input.reserve(header.size + len - self.input.len());
            return Ok(false);
        }
        self.input.advance(header.size);
        let mut payload = self.input.split_to(len);
        if let Some(key) = header.mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        let message = self.message.get_or_insert_with(|| Message {
            opcode,
            compressed: Vec::new(),
        });
        message.compressed.extend_from_slice(&payload);
        if header.first & 0x80 == 0 {
            return Ok(true); // more fragments to come
        }
        let Some(message) = self.message.take() else {
            return Ok(true);
        };
        match inflate(&message.compressed, self.max_message)? {
            Some(text) => {
                // Masked (tungstenite wants a client's frames masked) with
                // a zero key: the payload is as it is.
                self.output.put_u8(0x80 | message.opcode);
                put_length(&mut self.output, text.len(), 0x80);
                self.output.put_slice(&[0; 4]);
                self.output.put_slice(&text);
            }
            None => self.too_large(self.max_message + 1),
        }
        Ok(true)
    }

    /// Hands tungstenite the header of a text frame `len` bytes long, past
    /// its limit: it refuses it as any oversized message, and nothing more
    /// is read.
    fn too_large(&mut self, len: usize) {
        self.output.put_u8(0x81);
        put_length(&mut self.output, len.max(self.max_message + 1), 0x80);
        self.output.put_slice(&[0; 4]);
        self.done = true;
    }
}

/// A client frame's header, whole in the buffer.
struct Header {
    first: u8,
    mask: Option<[u8; 4]>,
    /// Payload length.
    len: u64,
    /// Header bytes.
    size: usize,
}

impl Header {
    fn parse(bytes: &[u8]) -> Option<Header> {
        let (&first, rest) = bytes.split_first()?;
        let (&second, rest) = rest.split_first()?;
        let (len, rest, mut size) = match second & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
                &rest[2..],
                4,
            ),
            127 => (
                u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
                &rest[8..],
                10,
            ),
            len => (u64::from(len), rest, 2),
        };
        let mask = if second & 0x80 != 0 {
            size += 4;
            Some(rest.get(..4)?.try_into().ok()?)
        } else {
            None
        };
        Some(Header {
            first,
            mask,
            len,
            size,
        })
    }
}

/// Inflates one message (its tail put back); `None`: it inflates to more
/// than `limit` bytes (inflating stops there). An error: not DEFLATE.
fn inflate(compressed: &[u8], limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity(limit.min(4096) + 1);
    for input in [compressed, &TAIL[..]] {
        let mut consumed = 0;
        loop {
            if out.len() > limit {
                return Ok(None);
            }
            if out.len() == out.capacity() {
                // Never room past one byte over the limit: enough to know.
                let room = (limit + 1 - out.len()).min(out.capacity().max(4096));
                out.reserve_exact(room);
            }
            let before = (inflater.total_in(), inflater.total_out());
            let status = inflater
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            consumed += (inflater.total_in() - before.0) as usize;
            if out.len() > limit {
                return Ok(None);
            }
            // A final block (the client may send one): the message ends.
            if status == Status::StreamEnd {
                return Ok(Some(out));
            }
            let progressed = (inflater.total_in(), inflater.total_out()) != before;
            let had_room = out.len() < out.capacity();
            if had_room && (consumed == input.len() || !progressed) {
                break;
            }
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_it_can_honour_are_accepted() {
        let chains = Some(Agreed { chains: true });
        let alone = Some(Agreed { chains: false });
        for (offer, agreed) in [
            ("permessage-deflate", chains),
            ("permessage-deflate; client_max_window_bits", chains),
            (
                "permessage-deflate; client_max_window_bits=10; server_no_context_takeover",
                alone,
            ),
            (
                "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
                chains,
            ),
            (
                "permessage-deflate; server_max_window_bits=10, permessage-deflate",
                chains,
            ),
            (
                "permessage-deflate; server_no_context_takeover, permessage-deflate",
                alone,
            ),
            ("", None),
            ("x-webkit-deflate-frame", None),
            ("permessage-deflate; server_max_window_bits=10", None),
            ("permessage-deflate; server_max_window_bits=15", None),
            ("permessage-deflate; client_max_window_bits=16", None),
            ("permessage-deflate; unknown", None),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                None,
            ),
        ] {
            assert_eq!(negotiate(offer), agreed, "{offer}");
        }
        assert_eq!(
            Agreed { chains: false }.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(
            Agreed { chains: true }.response(),
            "permessage-deflate; client_no_context_takeover"
        );
    }

    /// A client's inflater that keeps its context across messages, as
    /// one does unless it asked for `server_no_context_takeover`.
    struct KeptContext(Decompress);

    impl KeptContext {
        fn new() -> KeptContext {
            KeptContext(Decompress::new(false))
        }

        fn inflate(&mut self, frame: &[u8]) -> Result<String, String> {
            assert_eq!(frame[0], 0xc1);
            let start = match frame[1] {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            let mut input = frame[start..].to_vec();
            input.extend_from_slice(&TAIL);
            let mut out = Vec::with_capacity(64 * 1024);
            self.0
                .decompress_vec(&input, &mut out, FlushDecompress::Sync)
                .map_err(|error| error.to_string())?;
            String::from_utf8(out).map_err(|error| error.to_string())
        }
    }

    #[test]
    fn a_chained_frame_inflates_to_its_text_after_the_message_it_refers_to_only() {
        // Of different lengths: a frame referring back into the wrong
        // message finds other bytes at the distances it names.
        let bidders = ["ada", "grace_hopper", "linus", "barbara_liskov"];
        let texts: Vec<String> = (0..4)
            .map(|n| {
                format!(
                    r#"{{"type":"bid","auction":"lot-7","id":"1796660018{n}40-0","payload":{{"auction":"lot-7","amount":{n}1000,"bidder":"{}","placed_at":1796660018{n}39}}}}"#,
                    bidders[n]
                )
            })
            .collect();
        let alone: Vec<Bytes> = texts
            .iter()
            .map(|text| compressed_text_frame(text).unwrap())
            .collect();
        let chained: Vec<Bytes> = texts
            .windows(2)
            .map(|pair| compressed_text_frame_after(pair[0].as_bytes(), &pair[1]).unwrap())
            .collect();
        for (n, frame) in chained.iter().enumerate() {
            assert!(frame.len() * 2 < alone[n + 1].len(), "{n}: {frame:?}");
        }
        // Alone, then chained, then alone again, then chained: each right
        // after the message before it, whatever came before that.
        let mut client = KeptContext::new();
        assert_eq!(client.inflate(&alone[0]).unwrap(), texts[0]);
        assert_eq!(client.inflate(&chained[0]).unwrap(), texts[1]);
        assert_eq!(client.inflate(&alone[2]).unwrap(), texts[2]);
        assert_eq!(client.inflate(&chained[2]).unwrap(), texts[3]);
        // A chained frame after another message than its own previous is
        // not its text: why a socket's window must say what it was sent.
        let mut client = KeptContext::new();
        assert_eq!(client.inflate(&alone[0]).unwrap(), texts[0]);
        assert_ne!(client.inflate(&chained[1]), Ok(texts[2].clone()));
    }

    /// The payload of a compressed frame, inflated as a client would.
    fn client_inflate(frame: &[u8]) -> String {
        assert_eq!(frame[0], 0xc1);
        let start = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let text = inflate(&frame[start..], 1 << 20).unwrap().unwrap();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_compressed_frame_inflates_to_its_text_alone() {
        let text = format!(
            "{{\"type\":\"bid\",\"payload\":{}}}",
            "{\"amount\":100}".repeat(20)
        );
        let frame = compressed_text_frame(&text).unwrap();
        assert!(frame.len() < text.len() / 2);
        assert_eq!(client_inflate(&frame), text);
        // Again: no state is carried from one message to the next.
        assert_eq!(compressed_text_frame(&text).unwrap(), frame);
        let big = "ab".repeat(100_000);
        assert_eq!(client_inflate(&compressed_text_frame(&big).unwrap()), big);
    }

    /// How small one bid event gets, compressed alone, at each level of
    /// the DEFLATE implementation in use (`cargo test -p ws-edge --bin
    /// ws-edge -- --ignored --nocapture bid_event_sizes`). Events shaped as
    /// the simulator's, ids and times a few hundred ms apart. What it
    /// printed: plain 194.8 B per frame; compressed 132.0 (level 1), 127.8
    /// (6, the one used), 127.8 (9), 127.8 (10) B: 0.66 of plain at best
    /// (Chromium's socket measured 0.65 on live simulated bids). Other
    /// encoders, on events of the same shape outside this test: zlib 0.653
    /// at level 6 or 9, 0.644 with its filtered strategy, 0.71 with fixed
    /// Huffman codes only, and zopfli's near-optimal search (1,000
    /// iterations per message, far beyond a per-event budget) 0.624. A
    /// ratio of 0.6 needs what one message alone does not hold: a context
    /// shared across messages.
    #[test]
    #[ignore]
    fn bid_event_sizes() {
        const NAMES: [&str; 8] = [
            "sim_ada",
            "sim_grace",
            "sim_linus",
            "sim_barbara",
            "sim_ken",
            "sim_margaret",
            "sim_dennis",
            "sim_frances",
        ];
        // A fixed pseudo-random sequence (an LCG): the same events each run.
        let mut seed: u64 = 1;
        let mut next = |below: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % below
        };
        let (mut at, mut amount) = (1_796_660_018_440_u64, 10_000_u64);
        let texts: Vec<String> = (0..2_000)
            .map(|_| {
                at += 240 + next(20);
                amount += 1_000 + next(50) * 100;
                let name = NAMES[next(8) as usize];
                format!(
                    r#"{{"type":"bid","auction":"cmp","id":"{at}-0","payload":{{"auction":"cmp","amount":{amount},"bidder":"{name}","bidder_id":"{name}","placed_at":{},"source":"simulated"}}}}"#,
                    at - 1 - next(3)
                )
            })
            .collect();
        let frame_len = |payload: usize| payload + if payload <= 125 { 2 } else { 4 };
        let average = |total: usize| total as f64 / texts.len() as f64;
        let plain = average(texts.iter().map(|text| frame_len(text.len())).sum());
        println!("plain: {plain:.1} B per frame");
        for level in [1, 6, 9] {
            let mut compressor =
                Compress::new_with_window_bits(Compression::new(level), false, WINDOW_BITS);
            let mut total = 0;
            for text in &texts {
                compressor.reset();
                let payload = deflate(&mut compressor, text.as_bytes()).unwrap();
                let mut frame = vec![0xc1];
                let mut length = BytesMut::new();
                put_length(&mut length, payload.len(), 0);
                frame.extend_from_slice(&length);
                frame.extend_from_slice(&payload);
                assert_eq!(&client_inflate(&frame), text);
                total += frame.len();
            }
            let compressed = average(total);
            println!(
                "level {level}: {compressed:.1} B per frame, {:.3} of plain",
                compressed / plain
            );
        }
        // Each chained to the one before, as a socket that was sent every
        // event is written them (the first goes alone).
        let mut client = KeptContext::new();
        let mut total = 0;
        for (n, text) in texts.iter().enumerate() {
            let frame = match n {
                0 => compressed_text_frame(text),
                _ => compressed_text_frame_after(texts[n - 1].as_bytes(), text),
            };
            let frame = frame.unwrap();
            assert_eq!(&client.inflate(&frame).unwrap(), text);
            total += frame.len();
        }
        let chained = average(total);
        println!(
            "chained: {chained:.1} B per frame, {:.3} of plain",
            chained / plain
        );
    }

    #[test]
    fn a_text_that_does_not_shrink_is_not_compressed() {
        assert!(compressed_text_frame("{}").is_none());
    }

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1, 2, 3, 4];
        let mut frame = BytesMut::new();
        frame.put_u8(first);
        put_length(&mut frame, payload.len(), 0x80);
        frame.put_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        frame.to_vec()
    }

    fn deflated(text: &str) -> Vec<u8> {
        let frame = compressed_text_frame(text).unwrap();
        let start = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        frame[start..].to_vec()
    }

    fn all_output(inflating: &mut Inflating) -> Vec<u8> {
        let mut buf = vec![0; 1 << 16];
        let len = inflating.take_output(&mut buf);
        buf.truncate(len);
        buf
    }

    #[test]
    fn compressed_client_messages_become_plain_frames_byte_by_byte() {
        let text = "{\"type\":\"bid\",\"amount\":100,\"reference\":\"r1\",\"auction\":\"1\",\"auction2\":\"1\"}";
        let compressed = deflated(text);
        let (one, two) = compressed.split_at(10);
        let mut wire = masked(0x41, one); // RSV1, text, not final
        wire.extend(masked(0x89, b"hi")); // a ping between fragments
        wire.extend(masked(0x80, two)); // final continuation
        wire.extend(masked(0x81, b"plain"));
        let mut inflating = Inflating::new(4096);
        for byte in &wire {
            inflating.push(std::slice::from_ref(byte)).unwrap();
        }
        let mut expected = masked(0x89, b"hi");
        let mut plain = BytesMut::new();
        plain.put_u8(0x81);
        put_length(&mut plain, text.len(), 0x80);
        plain.put_slice(&[0; 4]);
        plain.put_slice(text.as_bytes());
        expected.extend_from_slice(&plain);
        expected.extend(masked(0x81, b"plain"));
        assert_eq!(all_output(&mut inflating), expected);
    }

    #[test]
    fn a_zip_bomb_is_reported_as_an_oversized_frame() {
        let bomb = deflated(&"0".repeat(1_000_000));
        assert!(bomb.len() < 4096);
        let mut inflating = Inflating::new(4096);
        inflating.push(&masked(0xc1, &bomb)).unwrap();
        assert!(inflating.is_done());
        let out = all_output(&mut inflating);
        // A masked text frame header claiming 4097 bytes.
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 0x10, 0x01]);
    }

    #[test]
    fn garbage_that_does_not_inflate_fails() {
        let mut inflating = Inflating::new(4096);
        assert!(inflating.push(&masked(0xc1, &[0xff; 16])).is_err());
    }
}
