//! Input validation. Every rejection carries a stable snake_case code and a
//! human sentence: the contract's error body, decided here once.

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;

/// The largest amount (cents) anywhere: 10^12.
pub const MAX_AMOUNT: u64 = 1_000_000_000_000;
/// The longest auction: 30 days.
pub const MAX_DURATION_MS: u64 = 30 * 24 * 3600 * 1000;
const MAX_TITLE_CHARS: usize = 200;
/// The longest display name, in characters (after trimming).
pub const MAX_NAME_CHARS: usize = 40;
/// The longest bidder id, in bytes.
pub const MAX_BIDDER_ID_LEN: usize = 128;
/// An auction's optional description and picture address.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
pub const MAX_IMAGE_URL_CHARS: usize = 500;
/// An auction's optional terms of sale (the description's character rules).
pub const MAX_TERMS_CHARS: usize = 2000;

/// Why input was refused: the contract's `{"error","message"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub code: &'static str,
    pub message: String,
}

impl InputError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        InputError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for InputError {}

/// An auction id: 1 to 64 characters of `[A-Za-z0-9_-]`. Safe to embed in
/// Redis key names, JSON strings and URLs without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuctionId(String);

impl AuctionId {
    /// The rule, as refusals state it.
    pub const RULE: &str = "auction id must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'";

    pub fn parse(text: &str) -> Result<AuctionId, InputError> {
        let valid = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(AuctionId(text.to_owned()))
        } else {
            Err(InputError::new("invalid_auction_id", Self::RULE))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AuctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bidder's display name: trimmed, 1 to 40 characters, none of the
/// characters that let a name pass for another or break a line (see
/// [`deceptive`]), and not one that renders blank (see [`renders_blank`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BidderName(String);

impl BidderName {
    pub fn parse(text: &str) -> Result<BidderName, InputError> {
        let text = text.trim();
        let chars = text.chars().count();
        if (1..=MAX_NAME_CHARS).contains(&chars)
            && !text.chars().any(deceptive)
            && !renders_blank(text)
        {
            Ok(BidderName(text.to_owned()))
        } else {
            Err(InputError::new(
                "invalid_name",
                format!(
                    "name must be 1 to {MAX_NAME_CHARS} characters after trimming, \
                     without control, zero-width or text-direction characters"
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Characters a name or a title may not contain: controls, the bidi
/// controls, line and paragraph separators, and the Unicode
/// Default_Ignorable_Code_Point set (DerivedCoreProperties.txt), which
/// renders as nothing, but for variation selectors (they pick an emoji's
/// or a glyph's form, and show nothing alone: see [`renders_blank`]); and
/// U+FFFC, the object replacement character.
fn deceptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}' // soft hyphen
                | '\u{034F}' // combining grapheme joiner
                | '\u{061C}' // Arabic letter mark (bidi)
                | '\u{115F}'..='\u{1160}' // Hangul fillers
                | '\u{17B4}'..='\u{17B5}' // Khmer inherent vowels
                | '\u{180E}' // Mongolian vowel separator
                | '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
                | '\u{2028}'..='\u{202E}' // line/paragraph separators, bidi embeddings and overrides
                | '\u{2060}'..='\u{206F}' // word joiner, invisible operators, bidi isolates, deprecated formats
                | '\u{3164}' // Hangul filler
                | '\u{FEFF}' // zero-width no-break space
                | '\u{FFA0}' // halfwidth Hangul filler
                | '\u{FFF0}'..='\u{FFF8}' // unassigned, default-ignorable
                | '\u{FFFC}' // object replacement character
                | '\u{1BCA0}'..='\u{1BCA3}' // shorthand format controls
                | '\u{1D173}'..='\u{1D17A}' // musical formatting controls
                | '\u{E0000}'..='\u{E00FF}' // tags and their reserved block
                | '\u{E01F0}'..='\u{E0FFF}' // default-ignorable, unassigned
        )
}

/// Whether a text shows nothing: only white space, variation selectors,
/// Mongolian free variation selectors and the braille blank (U+2800).
fn renders_blank(text: &str) -> bool {
    text.chars().all(|c| {
        c.is_whitespace()
            || matches!(
                c,
                '\u{180B}'..='\u{180D}'
                    | '\u{180F}'
                    | '\u{2800}'
                    | '\u{FE00}'..='\u{FE0F}'
                    | '\u{E0100}'..='\u{E01EF}'
            )
    })
}

/// Who placed a bid, as the stream shows it: a stable id and a display
/// name. Ids are 1 to 128 visible ASCII characters (no spaces), so they can
/// be joined to other key parts with a space without ambiguity. Their
/// prefix says where they come from: `g_` guest sessions, `x_` an external
/// identity provider, `sim_` the simulator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BidderId(String);

impl BidderId {
    pub fn parse(text: &str) -> Result<BidderId, InputError> {
        let valid = !text.is_empty()
            && text.len() <= MAX_BIDDER_ID_LEN
            && text.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(BidderId(text.to_owned()))
        } else {
            Err(InputError::new(
                "invalid_bidder_id",
                format!("bidder id must be 1 to {MAX_BIDDER_ID_LEN} visible ASCII characters"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BidderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bidder: the id bids are tied to and the name they are shown with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bidder {
    pub id: BidderId,
    pub name: BidderName,
}

/// An `Idempotency-Key` header value: 1 to 128 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(bytes: &[u8]) -> Result<IdempotencyKey, InputError> {
        let valid =
            !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic);
        match std::str::from_utf8(bytes) {
            Ok(text) if valid => Ok(IdempotencyKey(text.to_owned())),
            _ => Err(InputError::new(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 128 visible ASCII characters",
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A title: 1 to `max_chars` characters, none [`deceptive`] (a bidi
/// override would show another title), not one that renders blank.
fn printable(text: &str, max_chars: usize) -> bool {
    let chars = text.chars().count();
    (1..=max_chars).contains(&chars) && !text.chars().any(deceptive) && !renders_blank(text)
}

/// A validated `POST /auctions/{id}/bids` body: exactly one of `amount`
/// (a plain bid), `max_amount` (a maximum the system bids up to for the
/// bidder) or `buy_now: true`. Who bids comes from the caller's token,
/// never from the body: a `bidder` field is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BidRequest {
    Amount(u64),
    Max(u64),
    BuyNow,
}

/// The longest soft-close window: one hour.
pub const MAX_SOFT_CLOSE_MS: u64 = 3_600_000;

/// A validated `POST /auctions` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateAuctionRequest {
    pub id: Option<AuctionId>,
    pub title: String,
    pub starting_price: u64,
    pub min_increment: u64,
    pub duration_ms: u64,
    pub description: Option<String>,
    pub image_url: Option<ImageUrl>,
    /// The seller's terms of sale.
    pub terms: Option<String>,
    /// `None`: the deployment's default.
    pub soft_close_ms: Option<u64>,
    pub reserve_price: Option<u64>,
    pub buy_now_price: Option<u64>,
}

/// Where an auction's picture is: a path under the pages' own `/assets/`
/// (e.g. `/assets/lot-keyboard.svg`) or an `https://` URL. Nothing else, so a
/// page never loads `javascript:`, `data:` or plain-HTTP content from it.
/// Only visible ASCII without quotes, angle brackets or backslashes: safe in
/// JSON, HTML attributes and CSS `url()` alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUrl(String);

impl ImageUrl {
    pub fn parse(text: &str) -> Result<ImageUrl, InputError> {
        let safe_chars = text.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'<' | b'>' | b'\\' | b'`')
        });
        let local = text.strip_prefix("/assets/").is_some_and(|rest| {
            !rest.is_empty()
                && !rest
                    .split('/')
                    .any(|segment| segment.is_empty() || segment == "." || segment == "..")
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        });
        let remote = text.strip_prefix("https://").is_some_and(|rest| {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
            !name.is_empty()
                && !host.contains('@')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        });
        if text.len() <= MAX_IMAGE_URL_CHARS && safe_chars && (local || remote) {
            Ok(ImageUrl(text.to_owned()))
        } else {
            Err(ImageUrl::invalid())
        }
    }

    fn invalid() -> InputError {
        InputError::new(
            "invalid_image_url",
            format!(
                "image_url must be a path under /assets/ or an https:// URL, at most {MAX_IMAGE_URL_CHARS} characters without spaces, quotes or angle brackets"
            ),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An optional text field: absent or null is `None`.
fn optional<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|value| !value.is_null())
}

pub fn parse_bid_request(body: &[u8]) -> Result<BidRequest, InputError> {
    let object = json_object(body)?;
    let amount = optional(&object, "amount").is_some();
    let max = optional(&object, "max_amount").is_some();
    let buy_now = optional(&object, "buy_now");
    let one_of = || {
        InputError::new(
            "invalid_bid",
            "send exactly one of amount, max_amount or buy_now: true",
        )
    };
    match (amount, max, buy_now) {
        (true, false, None) => Ok(BidRequest::Amount(money(
            &object,
            body,
            "amount",
            "invalid_amount",
        )?)),
        (false, true, None) => Ok(BidRequest::Max(money(
            &object,
            body,
            "max_amount",
            "invalid_max_amount",
        )?)),
        (false, false, Some(Value::Bool(true))) => Ok(BidRequest::BuyNow),
        (false, false, None) => Err(InputError::new(
            "missing_field",
            "the field `amount` is required",
        )),
        _ => Err(one_of()),
    }
}

/// An optional amount of money: absent or null is `None`.
fn optional_money(
    object: &Map<String, Value>,
    body: &[u8],
    field: &str,
    code: &'static str,
) -> Result<Option<u64>, InputError> {
    match optional(object, field) {
        None => Ok(None),
        Some(_) => money(object, body, field, code).map(Some),
    }
}

pub fn parse_create_request(body: &[u8]) -> Result<CreateAuctionRequest, InputError> {
    let object = json_object(body)?;
    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(AuctionId::parse(text)?),
        Some(_) => {
            return Err(InputError::new("invalid_auction_id", "id must be a string"));
        }
    };
    let title = match required(&object, "title")? {
        Value::String(text) if printable(text, MAX_TITLE_CHARS) => text.clone(),
        _ => {
            return Err(InputError::new(
                "invalid_title",
                "title must be 1 to 200 printable characters",
            ));
        }
    };
    let starting_price = money(&object, body, "starting_price", "invalid_starting_price")?;
    let min_increment = money(&object, body, "min_increment", "invalid_min_increment")?;
    let duration_ms = whole_number(required(&object, "duration_ms")?, body, "duration_ms")
        .filter(|ms| (1..=MAX_DURATION_MS).contains(ms))
        .ok_or_else(|| {
            InputError::new(
                "invalid_duration",
                format!("duration_ms must be a whole number from 1 to {MAX_DURATION_MS}"),
            )
        })?;
    let description = optional_long_text(&object, "description", MAX_DESCRIPTION_CHARS)
        .map_err(|()| {
            InputError::new(
                "invalid_description",
                format!(
                    "description must be 1 to {MAX_DESCRIPTION_CHARS} characters; no control characters but line breaks and tabs"
                ),
            )
        })?;
    let terms = optional_long_text(&object, "terms", MAX_TERMS_CHARS).map_err(|()| {
        InputError::new(
            "invalid_terms",
            format!(
                "terms must be 1 to {MAX_TERMS_CHARS} characters; no control characters but line breaks and tabs"
            ),
        )
    })?;
    let image_url = match optional(&object, "image_url") {
        None => None,
        Some(Value::String(text)) => Some(ImageUrl::parse(text)?),
        Some(_) => return Err(ImageUrl::invalid()),
    };
    let soft_close_ms = match optional(&object, "soft_close_ms") {
        None => None,
        Some(value) => Some(
            whole_number(value, body, "soft_close_ms")
                .filter(|ms| *ms <= MAX_SOFT_CLOSE_MS)
                .ok_or_else(|| {
                    InputError::new(
                        "invalid_soft_close",
                        format!(
                            "soft_close_ms must be a whole number from 0 to {MAX_SOFT_CLOSE_MS}"
                        ),
                    )
                })?,
        ),
    };
    let reserve_price = optional_money(&object, body, "reserve_price", "invalid_reserve_price")?;
    let buy_now_price = optional_money(&object, body, "buy_now_price", "invalid_buy_now_price")?;
    if let Some(buy_now) = buy_now_price
        && (buy_now < starting_price || reserve_price.is_some_and(|reserve| buy_now < reserve))
    {
        return Err(InputError::new(
            "invalid_buy_now_price",
            "buy_now_price must be at least the starting price and the reserve price",
        ));
    }
    Ok(CreateAuctionRequest {
        id,
        title,
        starting_price,
        min_increment,
        duration_ms,
        description,
        image_url,
        terms,
        soft_close_ms,
        reserve_price,
        buy_now_price,
    })
}

/// An optional text that may span lines (a description, terms): tabs and
/// line breaks allowed, a CRLF kept as one `\n`; other control characters,
/// a lone CR among them, are refused like everywhere else. Its length is
/// counted in characters, after that. Absent or null is `None`.
fn optional_long_text(
    object: &Map<String, Value>,
    field: &str,
    max_chars: usize,
) -> Result<Option<String>, ()> {
    let Some(value) = optional(object, field) else {
        return Ok(None);
    };
    let text = value.as_str().map(|text| text.replace("\r\n", "\n"));
    text.filter(|text| {
        (1..=max_chars).contains(&text.chars().count())
            && !text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    })
    .map(Some)
    .ok_or(())
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, InputError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(InputError::new(
            "malformed_json",
            "the body must be a JSON object",
        )),
        Err(error) => Err(InputError::new(
            "malformed_json",
            format!("the body is not valid JSON: {error}"),
        )),
    }
}

fn required<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a Value, InputError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(InputError::new(
            "missing_field",
            format!("the field `{field}` is required"),
        )),
        Some(value) => Ok(value),
    }
}

/// A JSON number that is a whole, non-negative integer, judged on the
/// number's text in `body`: `35000.0` and `1.5e3` count as whole;
/// `35000.5`, `117999.99999999999` (which an f64 rounds to 118000), `-1`,
/// and `"35000"` do not. No cent is ever rounded.
fn whole_number(value: &Value, body: &[u8], field: &str) -> Option<u64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(n) = number.as_u64() {
        return Some(n);
    }
    // serde_json keeps only an f64 of a number with a fraction or an
    // exponent; the exact value needs the text as sent.
    let raw = serde_json::from_slice::<HashMap<String, &RawValue>>(body).ok()?;
    exact_whole(raw.get(field)?.get())
}

/// The value of a JSON number's text when it is a whole number from 0 to
/// `MAX_AMOUNT`, computed exactly in decimal.
fn exact_whole(text: &str) -> Option<u64> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None; // a sign (negative) or not a plain number
    }
    // value = digits * 10^scale, digits without leading zeros
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let scale = exponent.checked_sub(i64::try_from(frac.len()).ok()?)?;
    if digits.is_empty() {
        return Some(0);
    }
    let (kept, dropped) = if scale >= 0 {
        (digits, "")
    } else {
        let cut = digits.len().saturating_sub(usize::try_from(-scale).ok()?);
        digits.split_at(cut)
    };
    if dropped.bytes().any(|b| b != b'0') {
        return None; // a fraction
    }
    let mut value: u64 = if kept.is_empty() {
        0
    } else {
        kept.parse().ok()?
    };
    for _ in 0..scale.max(0) {
        value = value.checked_mul(10).filter(|v| *v <= MAX_AMOUNT)?;
    }
    (value <= MAX_AMOUNT).then_some(value)
}

fn money(
    object: &Map<String, Value>,
    body: &[u8],
    field: &str,
    code: &'static str,
) -> Result<u64, InputError> {
    whole_number(required(object, field)?, body, field)
        .filter(|n| (1..=MAX_AMOUNT).contains(n))
        .ok_or_else(|| {
            InputError::new(
                code,
                format!("{field} must be a whole number of cents from 1 to {MAX_AMOUNT}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid(body: &str) -> Result<BidRequest, InputError> {
        parse_bid_request(body.as_bytes())
    }

    #[test]
    fn accepts_a_valid_bid_and_ignores_a_bidder_field() {
        let request = bid(r#"{"amount":35000,"bidder":"someone else"}"#).unwrap();
        assert_eq!(request, BidRequest::Amount(35000));
    }

    #[test]
    fn refuses_bad_amounts_with_invalid_amount() {
        for body in [
            r#"{"amount":0,"bidder":"a"}"#,
            r#"{"amount":-5,"bidder":"a"}"#,
            r#"{"amount":100.5,"bidder":"a"}"#,
            r#"{"amount":117999.99999999999}"#,
            r#"{"amount":1.00000000000000001e3}"#,
            r#"{"amount":1e-2}"#,
            r#"{"amount":-0.0}"#,
            r#"{"amount":1000000000000000,"bidder":"a"}"#,
            r#"{"amount":"100","bidder":"a"}"#,
        ] {
            assert_eq!(bid(body).unwrap_err().code, "invalid_amount", "{body}");
        }
    }

    #[test]
    fn whole_amounts_written_with_a_fraction_or_exponent_are_exact() {
        for (body, amount) in [
            (r#"{"amount":35000.0}"#, 35000),
            (r#"{"amount":1.5e3}"#, 1500),
            (r#"{"amount":15E+2}"#, 1500),
            (r#"{"amount":150000e-2}"#, 1500),
            (r#"{"amount":0.15e4}"#, 1500),
        ] {
            assert_eq!(bid(body).unwrap(), BidRequest::Amount(amount), "{body}");
        }
    }

    #[test]
    fn a_bid_is_an_amount_a_maximum_or_buy_now() {
        assert_eq!(
            bid(r#"{"max_amount":5000}"#).unwrap(),
            BidRequest::Max(5000)
        );
        assert_eq!(bid(r#"{"buy_now":true}"#).unwrap(), BidRequest::BuyNow);
        assert_eq!(
            bid(r#"{"max_amount":0}"#).unwrap_err().code,
            "invalid_max_amount"
        );
        for body in [
            r#"{"amount":100,"max_amount":200}"#,
            r#"{"amount":100,"buy_now":true}"#,
            r#"{"buy_now":false}"#,
            r#"{"buy_now":"yes"}"#,
        ] {
            assert_eq!(bid(body).unwrap_err().code, "invalid_bid", "{body}");
        }
    }

    #[test]
    fn auction_rules_are_validated() {
        let create = |extra: &str| {
            parse_create_request(
                format!(
                    r#"{{"title":"Desk","starting_price":100,"min_increment":10,"duration_ms":1000{extra}}}"#
                )
                .as_bytes(),
            )
        };
        let plain = create("").unwrap();
        assert_eq!(
            (
                plain.soft_close_ms,
                plain.reserve_price,
                plain.buy_now_price
            ),
            (None, None, None)
        );
        let full = create(r#","soft_close_ms":0,"reserve_price":500,"buy_now_price":900"#).unwrap();
        assert_eq!(
            (full.soft_close_ms, full.reserve_price, full.buy_now_price),
            (Some(0), Some(500), Some(900))
        );
        for (extra, code) in [
            (r#","soft_close_ms":3600001"#, "invalid_soft_close"),
            (r#","soft_close_ms":-1"#, "invalid_soft_close"),
            (r#","reserve_price":0"#, "invalid_reserve_price"),
            (r#","buy_now_price":50"#, "invalid_buy_now_price"),
            (
                r#","reserve_price":500,"buy_now_price":400"#,
                "invalid_buy_now_price",
            ),
        ] {
            assert_eq!(create(extra).unwrap_err().code, code, "{extra}");
        }
    }

    #[test]
    fn reports_missing_fields_and_malformed_json() {
        assert_eq!(bid(r#"{"bidder":"a"}"#).unwrap_err().code, "missing_field");
        assert_eq!(bid("{").unwrap_err().code, "malformed_json");
        assert_eq!(bid("[1]").unwrap_err().code, "malformed_json");
    }

    #[test]
    fn display_names_are_trimmed_and_refuse_deceptive_characters() {
        assert_eq!(BidderName::parse("  Ada ").unwrap().as_str(), "Ada");
        assert!(BidderName::parse("Zoë 🦀").is_ok());
        assert!(BidderName::parse(&"x".repeat(40)).is_ok());
        for bad in [
            "",
            "   ",
            "a\nb",
            "a\u{200B}b",
            "a\u{202E}b",
            "a\u{2066}b",
            "a\u{2028}b",
            "\u{FEFF}",
            &"x".repeat(41),
        ] {
            assert_eq!(
                BidderName::parse(bad).unwrap_err().code,
                "invalid_name",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bidder_ids_are_visible_ascii_without_spaces() {
        assert!(BidderId::parse("g_abc").is_ok());
        assert!(BidderId::parse("x_auth0|123").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            assert!(BidderId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auction_ids_are_restricted() {
        assert!(AuctionId::parse("abc-DEF_123").is_ok());
        for bad in ["", "a b", "a/b", "a{b}", "ä", &"x".repeat(65)] {
            assert!(AuctionId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_request_validation() {
        let ok = parse_create_request(
            br#"{"title":"Lamp","starting_price":1000,"min_increment":100,"duration_ms":60000}"#,
        )
        .unwrap();
        assert_eq!(ok.id, None);
        let bad = parse_create_request(
            br#"{"title":"Lamp","starting_price":1000,"min_increment":100,"duration_ms":0}"#,
        );
        assert_eq!(bad.unwrap_err().code, "invalid_duration");
        let bad_id = parse_create_request(
            br#"{"id":"a b","title":"Lamp","starting_price":1000,"min_increment":100,"duration_ms":5}"#,
        );
        assert_eq!(bad_id.unwrap_err().code, "invalid_auction_id");
    }

    #[test]
    fn terms_are_optional_and_follow_the_description_rules() {
        let create = |extra: &str| {
            parse_create_request(
                format!(
                    r#"{{"title":"Desk","starting_price":100,"min_increment":10,"duration_ms":1000{extra}}}"#
                )
                .as_bytes(),
            )
        };
        assert_eq!(create("").unwrap().terms, None);
        assert_eq!(create(r#","terms":null"#).unwrap().terms, None);
        let crlf = create(r#","terms":"Collection only.\r\nPay within 3 days.""#).unwrap();
        assert_eq!(
            crlf.terms.as_deref(),
            Some("Collection only.\nPay within 3 days.")
        );
        let longest = format!(r#","terms":"{}""#, "é".repeat(MAX_TERMS_CHARS));
        assert!(create(&longest).unwrap().terms.is_some());
        let long = format!(r#","terms":"{}""#, "x".repeat(MAX_TERMS_CHARS + 1));
        for bad in [
            r#","terms":"""#,
            r#","terms":"a\u0007b""#,
            r#","terms":"a\rb""#,
            r#","terms":5"#,
            &long,
        ] {
            assert_eq!(create(bad).unwrap_err().code, "invalid_terms", "{bad}");
        }
    }

    #[test]
    fn description_and_image_url_are_optional_and_validated() {
        let create = |extra: &str| {
            parse_create_request(
                format!(
                    r#"{{"title":"Desk","starting_price":100,"min_increment":10,"duration_ms":1000{extra}}}"#
                )
                .as_bytes(),
            )
        };
        let plain = create("").unwrap();
        assert_eq!((plain.description, plain.image_url), (None, None));
        let full =
            create(r#","description":"Oak.\nTwo drawers.","image_url":"/assets/lot-desk.svg""#)
                .unwrap();
        assert_eq!(full.description.as_deref(), Some("Oak.\nTwo drawers."));
        // A CRLF is a line break, kept as one `\n`; a lone CR is not.
        let crlf = create(r#","description":"Oak.\r\nTwo drawers.""#).unwrap();
        assert_eq!(crlf.description.as_deref(), Some("Oak.\nTwo drawers."));
        // The length is in characters, whatever their bytes.
        let accents = format!(r#","description":"{}""#, "é".repeat(MAX_DESCRIPTION_CHARS));
        assert_eq!(
            create(&accents)
                .unwrap()
                .description
                .map(|d| d.chars().count()),
            Some(MAX_DESCRIPTION_CHARS)
        );
        assert_eq!(full.image_url.unwrap().as_str(), "/assets/lot-desk.svg");
        let remote = create(r#","image_url":"https://img.example.com:8443/a/b.png?w=2""#).unwrap();
        assert!(remote.image_url.is_some());
        let long = format!(
            r#","description":"{}""#,
            "x".repeat(MAX_DESCRIPTION_CHARS + 1)
        );
        for bad in [
            r#","description":"""#,
            r#","description":"a\u0007b""#,
            r#","description":"a\rb""#,
            r#","description":5"#,
            &long,
        ] {
            assert_eq!(
                create(bad).unwrap_err().code,
                "invalid_description",
                "{bad}"
            );
        }
        for bad in [
            "http://img.example.com/a.png",
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "/assets/../secret",
            "/assets/",
            "/other/a.png",
            "//img.example.com/a.png",
            "https://",
            "https://user@img.example.com/a.png",
            "https://img.example.com/a b.png",
            "https://img.example.com/a\".png",
            "assets/a.png",
        ] {
            let body = format!(r#","image_url":{}"#, serde_json::to_string(bad).unwrap());
            assert_eq!(
                create(&body).unwrap_err().code,
                "invalid_image_url",
                "{bad}"
            );
        }
        assert_eq!(
            create(r#","image_url":7"#).unwrap_err().code,
            "invalid_image_url"
        );
    }
}
