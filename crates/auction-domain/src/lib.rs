//! The auction domain: what an auction, a bid and an event id are, and the
//! rules that decide whether input is acceptable. Pure logic, no I/O, so every
//! service and the Redis scripts' callers agree on one definition.

pub mod clock;
mod event;
mod event_id;
mod model;
mod validate;

pub use event::Event;
pub use event_id::EventId;
pub use model::{Auction, AuctionStatus, Bid, BidSource, EventKind, Seller};
pub use validate::{
    AuctionId, BidRequest, Bidder, BidderId, BidderName, CreateAuctionRequest, IdempotencyKey,
    ImageUrl, InputError, MAX_AMOUNT, MAX_BIDDER_ID_LEN, MAX_DESCRIPTION_CHARS, MAX_DURATION_MS,
    MAX_IMAGE_URL_CHARS, MAX_NAME_CHARS, MAX_SOFT_CLOSE_MS, MAX_TERMS_CHARS, parse_bid_request,
    parse_create_request,
};
