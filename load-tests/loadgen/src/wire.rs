//! Byte-level parsing of what the clients read: SSE messages and
//! WebSocket frames, without allocating per event.

/// A masked client frame (RFC 6455 §5.2). The mask key is zero: masking
/// is mandatory, its unpredictability only matters to proxies on the path.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A complete unmasked server frame at the start of `buffer`: (opcode,
/// payload start, payload end), or `None` if more bytes are needed.
pub fn server_frame(buffer: &[u8]) -> Option<(u8, usize, usize)> {
    let opcode = buffer.first()? & 0x0f;
    let short = buffer.get(1)? & 0x7f;
    let (len, start) = match short {
        126 => (
            u16::from_be_bytes([*buffer.get(2)?, *buffer.get(3)?]) as usize,
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buffer.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes) as usize, 10)
        }
        len => (len as usize, 2),
    };
    (buffer.len() >= start + len).then_some((opcode, start, start + len))
}

pub fn field_text<'a>(message: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(message, key)? + key.len();
    let end = message[at..].iter().position(|b| *b == b'"')?;
    Some(&message[at..at + end])
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of the message's last line with `prefix`: in SSE the last
/// field of a name wins (a stream of several auctions writes the auction's
/// own `id:` first and the stream's id last, the one to resume from).
pub fn line_value<'a>(message: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    message
        .split(|b| *b == b'\n')
        .rev()
        .find_map(|line| line.strip_prefix(prefix))
}

pub fn field_number(message: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(message, key)? + key.len();
    let digits = message[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value = 0u64;
    let mut any = false;
    for digit in digits {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame as an unmasked encoder would write it.
    fn unmasked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = client_frame(opcode, payload);
        frame[1] &= 0x7f; // clear the mask bit
        let key_at = match payload.len() {
            0..=125 => 2,
            126..=0xffff => 4,
            _ => 10,
        };
        frame.drain(key_at..key_at + 4); // the (zero) mask key
        frame
    }

    #[test]
    fn frames_of_every_length_class_parse_back() {
        for len in [0, 1, 125, 126, 127, 0xffff, 0x10000] {
            let payload = vec![b'x'; len];
            let frame = unmasked(0x1, &payload);
            assert_eq!(
                server_frame(&frame),
                Some((0x1, frame.len() - len, frame.len()))
            );
            assert_eq!(server_frame(&frame[..frame.len() - 1]), None, "incomplete");
        }
    }

    #[test]
    fn fields_are_found_without_parsing_the_json() {
        let bid =
            br#"{"type":"bid","auction":"a","id":"17-3","payload":{"amount":1042,"placed_at":9}}"#;
        assert_eq!(field_text(bid, b"\"id\":\""), Some(&b"17-3"[..]));
        assert_eq!(field_number(bid, b"\"amount\":"), Some(1042));
        assert_eq!(field_number(b"\"amount\":x", b"\"amount\":"), None);
        assert_eq!(
            field_number(b"\"amount\":99999999999999999999999", b"\"amount\":"),
            None,
            "overflow is no number"
        );
        let message = b"event: bid\nid: 1795618958:4\ndata: {}";
        assert_eq!(line_value(message, b"id: "), Some(&b"1795618958:4"[..]));
        assert_eq!(line_value(message, b"retry: "), None);
        let several = b"id: 17-0\nevent: bid\ndata: {}\nid: m1.a.x~0";
        assert_eq!(
            line_value(several, b"id: "),
            Some(&b"m1.a.x~0"[..]),
            "the last wins"
        );
    }
}
