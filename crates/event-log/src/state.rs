//! An auction's state hash read back as the [`Auction`] clients see.

use crate::error::{LogError, corrupt};
use auction_domain::{Auction, AuctionStatus, Seller};
use std::collections::HashMap;

pub(crate) fn auction_from_hash(fields: &HashMap<String, String>) -> Result<Auction, LogError> {
    let text = |name: &str| -> Result<&str, LogError> {
        fields
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| corrupt(format!("auction hash lacks {name}")))
    };
    let number = |name: &str| -> Result<u64, LogError> {
        text(name)?
            .parse()
            .map_err(|_| corrupt(format!("auction field {name} is not a number")))
    };
    let status = match text("status")? {
        "open" => AuctionStatus::Open,
        "closed" => AuctionStatus::Closed,
        "cancelled" => AuctionStatus::Cancelled,
        other => return Err(corrupt(format!("auction status {other:?}"))),
    };
    let current: Option<auction_domain::Bid> = match fields.get("current").map(String::as_str) {
        None | Some("") => None,
        Some(json) => Some(
            serde_json::from_str(json).map_err(|error| corrupt(format!("current bid: {error}")))?,
        ),
    };
    // As auction_json in prelude.lua: the reserve only as met or not.
    let reserve_met = match (&current, optional_number(fields, "reserve_price")?) {
        (None, _) => None,
        (Some(_), None) => Some(true),
        (Some(bid), Some(reserve)) => Some(bid.amount >= reserve),
    };
    Ok(Auction {
        id: text("id")?.to_owned(),
        title: text("title")?.to_owned(),
        status,
        starting_price: number("starting_price")?,
        min_increment: number("min_increment")?,
        ends_at: number("ends_at")?,
        current,
        description: optional_json_string(fields, "description_json")?,
        image_url: optional_json_string(fields, "image_url_json")?,
        seller: optional_seller(fields)?,
        terms: optional_json_string(fields, "terms_json")?,
        soft_close_ms: optional_number(fields, "soft_close_ms")?.unwrap_or(0),
        buy_now_price: optional_number(fields, "buy_now_price")?,
        reserve_met,
        sold: (status == AuctionStatus::Closed).then_some(reserve_met == Some(true)),
    })
}

/// A number field, empty or missing when unset.
fn optional_number(fields: &HashMap<String, String>, name: &str) -> Result<Option<u64>, LogError> {
    match fields.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| corrupt(format!("auction field {name} is not a number"))),
    }
}

/// A field the scripts store JSON-encoded, or empty / missing when unset.
fn optional_json_string(
    fields: &HashMap<String, String>,
    name: &str,
) -> Result<Option<String>, LogError> {
    match fields.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(json) => serde_json::from_str(json)
            .map(Some)
            .map_err(|error| corrupt(format!("auction field {name}: {error}"))),
    }
}

/// The seller, stored JSON-encoded; a hash written before sellers were
/// recorded (or a simulated auction's) has none.
fn optional_seller(fields: &HashMap<String, String>) -> Result<Option<Seller>, LogError> {
    match fields.get("seller_json").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(json) => serde_json::from_str(json)
            .map(Some)
            .map_err(|error| corrupt(format!("auction field seller_json: {error}"))),
    }
}
