//! The catalogue: one auction's state, and pages of every auction, newest
//! first, from the creation index.

use crate::connection::RedisConnection;
use crate::error::{LogError, corrupt};
use crate::keys::{self, Indexes};
use crate::state::auction_from_hash;
use auction_domain::{Auction, AuctionId};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::fmt;

/// A listing page resumes among at most this many auctions created in the
/// same millisecond as the previous page's last one.
const MAX_SAME_MS: usize = 1000;

/// Where a page of `GET /auctions` ends: the last auction's creation time
/// and id. Shown to clients as an opaque `<created_at>-<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: u64,
    pub id: AuctionId,
}

impl ListCursor {
    pub fn parse(text: &str) -> Option<ListCursor> {
        let (created_at, id) = text.split_once('-')?;
        // Only the form `Display` writes (no leading zero, at most 19
        // digits, so every one fits a u64): the OpenAPI pattern can then
        // say exactly which cursors are valid.
        let canonical = created_at == "0" || !created_at.starts_with('0');
        if !(1..=19).contains(&created_at.len())
            || !canonical
            || !created_at.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(ListCursor {
            created_at: created_at.parse().ok()?,
            id: AuctionId::parse(id).ok()?,
        })
    }
}

impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.created_at, self.id)
    }
}

/// Reads auctions as the API shows them. Cheap to clone; all clones share
/// one multiplexed connection (one per node in a cluster).
#[derive(Clone)]
pub struct Catalogue {
    conn: RedisConnection,
    indexes: Indexes,
}

impl Catalogue {
    pub fn new(conn: RedisConnection) -> Self {
        let indexes = Indexes::for_connection(&conn);
        Catalogue { conn, indexes }
    }

    pub async fn get(&self, auction: &AuctionId) -> Result<Option<Auction>, LogError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = conn.hgetall(keys::state_key(auction)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        auction_from_hash(&fields).map(Some)
    }

    /// A page of auctions, newest first: at most `limit`, after `after`
    /// (the position of the previous page's last auction). Also returns the
    /// position of this page's last auction when there may be more.
    ///
    /// Positions are (creation time, id) in the creation index, whose order
    /// is score descending, then member descending: a page resumes exactly
    /// after the previous one even when auctions are created meanwhile.
    /// Ids whose auction has expired are dropped from the index on the way.
    pub async fn list_page(
        &self,
        after: Option<&ListCursor>,
        limit: usize,
    ) -> Result<(Vec<Auction>, Option<ListCursor>), LogError> {
        let mut conn = self.conn.clone();
        let limit = limit.max(1);
        // Each partition's page after the cursor, merged: the page overall.
        let mut entries: Vec<(String, u64)> = Vec::with_capacity(limit + 1);
        for partition in self.indexes.partitions() {
            let index = self.indexes.by_creation(partition);
            let mut found: Vec<(String, u64)> = Vec::new();
            let older_than = match after {
                None => "+inf".to_owned(),
                Some(cursor) => {
                    // The rest of the auctions created in the same
                    // millisecond (few: creation is rate-limited), then
                    // the older ones.
                    let same: Vec<(String, u64)> = redis::cmd("ZRANGE")
                        .arg(&index)
                        .arg(cursor.created_at)
                        .arg(cursor.created_at)
                        .arg("BYSCORE")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(MAX_SAME_MS)
                        .arg("WITHSCORES")
                        .query_async(&mut conn)
                        .await?;
                    found.extend(
                        same.into_iter()
                            .filter(|(id, _)| id.as_str() < cursor.id.as_str())
                            .take(limit + 1),
                    );
                    format!("({}", cursor.created_at)
                }
            };
            if found.len() <= limit {
                let older: Vec<(String, u64)> = redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(&older_than)
                    .arg("-inf")
                    .arg("BYSCORE")
                    .arg("REV")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit + 1 - found.len())
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?;
                found.extend(older);
            }
            entries.extend(found);
        }
        // The index's order: creation time descending, then id descending.
        entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next = more
            .then(|| entries.last())
            .flatten()
            .and_then(|(id, created_at)| {
                Some(ListCursor {
                    created_at: *created_at,
                    id: AuctionId::parse(id).ok()?,
                })
            });
        // Not written by us: dropped from the index like an expired one.
        let (ids, foreign): (Vec<_>, Vec<_>) = entries
            .iter()
            .partition(|(id, _)| AuctionId::parse(id).is_ok());
        let ids: Vec<AuctionId> = ids
            .iter()
            .filter_map(|(id, _)| AuctionId::parse(id).ok())
            .collect();
        let replies = if ids.is_empty() {
            Vec::new()
        } else {
            self.conn
                .per_auction(&ids, |pipe, auction| {
                    pipe.cmd("HGETALL").arg(keys::state_key(auction));
                })
                .await?
        };
        let hashes: Vec<HashMap<String, String>> = replies
            .iter()
            .map(redis::from_redis_value_ref)
            .collect::<Result<_, _>>()
            .map_err(|error| corrupt(format!("list answered {error}")))?;
        let mut gone: Vec<&str> = foreign.iter().map(|(id, _)| id.as_str()).collect();
        gone.extend(
            ids.iter()
                .zip(&hashes)
                .filter(|(_, fields)| fields.is_empty())
                .map(|(id, _)| id.as_str()),
        );
        for id in gone {
            let index = match AuctionId::parse(id) {
                Ok(auction) => self
                    .indexes
                    .by_creation(self.indexes.partition_of(&auction)),
                Err(_) => self.indexes.by_creation(0),
            };
            let _: i64 = conn.zrem(index, id).await?;
        }
        let auctions = hashes
            .iter()
            .filter(|fields| !fields.is_empty())
            .map(auction_from_hash)
            .collect::<Result<_, _>>()?;
        Ok((auctions, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_cursors_read_back_what_they_show() {
        let cursor = ListCursor {
            created_at: 1_733_000_000_123,
            id: AuctionId::parse("a-b_c").unwrap(),
        };
        assert_eq!(ListCursor::parse(&cursor.to_string()), Some(cursor));
        for bad in ["", "-", "12-", "-abc", "x1-abc", "12-a b", "+1-a"] {
            assert_eq!(ListCursor::parse(bad), None, "{bad:?}");
        }
    }
}
