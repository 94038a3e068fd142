//! Client messages in, server replies out (docs/protocol.md: "ws-edge").

use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Subscribe {
        auction: String,
        last_id: LastId,
    },
    Unsubscribe {
        auction: String,
    },
    /// Who the socket's user is, for their bids: a bearer token (browsers
    /// cannot set headers on a WebSocket).
    Auth {
        token: String,
    },
    /// Placed as the socket's authenticated user; a `bidder` field is
    /// ignored.
    Bid {
        auction: String,
        /// The amount's JSON text exactly as sent, forwarded as is: the
        /// bidder judges it on that text (a float would round
        /// `117999.99999999999` to 118000, and the bid would be placed
        /// for a cent more than was sent).
        amount: String,
        reference: String,
        /// The client's own key for this bid (checked when placed); without
        /// one, the socket makes one from its identity and `ref`.
        idempotency_key: Option<String>,
    },
}

/// `last_id` as sent: absent, a string, or something else (garbled).
#[derive(Debug, Clone, PartialEq)]
pub enum LastId {
    Absent,
    Text(String),
    Garbled,
}

/// Why a message was refused: an `error` reply; the socket stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reference: Option<String>,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(reference: Option<String>, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            reference,
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        error_json(self.reference.as_deref(), self.code, &self.message)
    }
}

const MAX_REF: usize = 128;

/// Why an auction id was refused.
pub const INVALID_ID: &str = auction_domain::AuctionId::RULE;

pub fn parse(text: &str) -> Result<ClientMessage, Refusal> {
    let value: Value = serde_json::from_str(text).map_err(|error| {
        Refusal::new(None, "malformed_json", format!("not valid JSON: {error}"))
    })?;
    let Value::Object(object) = value else {
        return Err(Refusal::new(
            None,
            "malformed_json",
            "a message must be a JSON object",
        ));
    };
    let reference = match object.get("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if !text.is_empty() && text.len() <= MAX_REF => {
            Some(text.clone())
        }
        Some(_) => {
            return Err(Refusal::new(
                None,
                "invalid_ref",
                "ref must be a string of 1 to 128 bytes",
            ));
        }
    };
    let field = |name: &str| -> Result<String, Refusal> {
        match object.get(name) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(Refusal::new(
                reference.clone(),
                "invalid_field",
                format!("`{name}` must be a string"),
            )),
            None => Err(Refusal::new(
                reference.clone(),
                "missing_field",
                format!("the field `{name}` is required"),
            )),
        }
    };
    let kind = field("type")?;
    match kind.as_str() {
        "subscribe" => Ok(ClientMessage::Subscribe {
            auction: field("auction")?,
            last_id: match object.get("last_id") {
                None | Some(Value::Null) => LastId::Absent,
                Some(Value::String(text)) => LastId::Text(text.clone()),
                Some(_) => LastId::Garbled,
            },
        }),
        "unsubscribe" => Ok(ClientMessage::Unsubscribe {
            auction: field("auction")?,
        }),
        "auth" => Ok(ClientMessage::Auth {
            token: field("token")?,
        }),
        "bid" => {
            let auction = field("auction")?;
            let reference = reference.clone().ok_or_else(|| {
                Refusal::new(
                    None,
                    "missing_field",
                    "the field `ref` is required for a bid",
                )
            })?;
            let missing = |name: &str| {
                Refusal::new(
                    Some(reference.clone()),
                    "missing_field",
                    format!("the field `{name}` is required"),
                )
            };
            // The text as sent; the message parsed as a whole already.
            let amount = serde_json::from_str::<HashMap<String, &RawValue>>(text)
                .ok()
                .and_then(|raw| raw.get("amount").map(|amount| amount.get().to_owned()))
                .filter(|amount| amount != "null")
                .ok_or_else(|| missing("amount"))?;
            let idempotency_key = match object.get("idempotency_key") {
                None | Some(Value::Null) => None,
                Some(_) => Some(field("idempotency_key")?),
            };
            Ok(ClientMessage::Bid {
                amount,
                auction,
                reference,
                idempotency_key,
            })
        }
        _ => Err(Refusal::new(
            reference,
            "unknown_type",
            format!("unknown message type {kind:?}"),
        )),
    }
}

pub fn error_json(reference: Option<&str>, code: &str, message: &str) -> String {
    match reference {
        Some(reference) => json!({"type":"error","ref":reference,"error":code,"message":message}),
        None => json!({"type":"error","error":code,"message":message}),
    }
    .to_string()
}

pub fn authenticated_json(bidder_id: &str, name: &str) -> String {
    json!({"type":"authenticated","bidder_id":bidder_id,"name":name}).to_string()
}

pub fn ack_json(reference: &str, id: &str) -> String {
    json!({"type":"ack","ref":reference,"id":id}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_messages() {
        assert_eq!(
            parse(r#"{"type":"subscribe","auction":"1234","last_id":"5-0"}"#).unwrap(),
            ClientMessage::Subscribe {
                auction: "1234".into(),
                last_id: LastId::Text("5-0".into())
            }
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","auction":"1234","last_id":7}"#).unwrap(),
            ClientMessage::Subscribe {
                auction: "1234".into(),
                last_id: LastId::Garbled
            }
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","auction":"1"}"#).unwrap(),
            ClientMessage::Unsubscribe {
                auction: "1".into()
            }
        );
        let bid =
            parse(r#"{"type":"bid","auction":"1","amount":5,"bidder":"b","ref":"r1"}"#).unwrap();
        assert!(matches!(bid, ClientMessage::Bid { reference, .. } if reference == "r1"));
        assert_eq!(
            parse(r#"{"type":"auth","token":"a.b.c"}"#).unwrap(),
            ClientMessage::Auth {
                token: "a.b.c".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"auth"}"#).unwrap_err().code,
            "missing_field"
        );
    }

    #[test]
    fn refusals_carry_codes_and_refs() {
        assert_eq!(parse("nope").unwrap_err().code, "malformed_json");
        assert_eq!(parse("[1]").unwrap_err().code, "malformed_json");
        assert_eq!(
            parse(r#"{"auction":"1"}"#).unwrap_err().code,
            "missing_field"
        );
        let unknown = parse(r#"{"type":"dance","ref":"x"}"#).unwrap_err();
        assert_eq!(
            (unknown.code, unknown.reference.as_deref()),
            ("unknown_type", Some("x"))
        );
        let missing = parse(r#"{"type":"bid","auction":"1","ref":"r"}"#).unwrap_err();
        assert_eq!(
            (missing.code, missing.reference.as_deref()),
            ("missing_field", Some("r"))
        );
        assert_eq!(
            parse(r#"{"type":"bid","auction":"1","amount":1}"#)
                .unwrap_err()
                .code,
            "missing_field"
        );
    }

    #[test]
    fn a_bids_amount_is_kept_as_the_text_sent() {
        for amount in [
            "117999.99999999999",
            "999999999999.99999",
            "5000",
            "5e3",
            "\"5000\"",
        ] {
            let text = format!(r#"{{"type":"bid","auction":"1","amount":{amount},"ref":"r"}}"#);
            match parse(&text).unwrap() {
                ClientMessage::Bid { amount: sent, .. } => assert_eq!(sent, amount),
                other => panic!("{other:?}"),
            }
        }
        for missing in [
            r#"{"type":"bid","auction":"1","ref":"r"}"#,
            r#"{"type":"bid","auction":"1","amount":null,"ref":"r"}"#,
        ] {
            assert_eq!(parse(missing).unwrap_err().code, "missing_field");
        }
    }
}
