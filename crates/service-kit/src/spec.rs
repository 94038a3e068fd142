//! The settings spec of every binary: which settings each reads, with the
//! binaries' own settings declared here. Shared settings are declared where
//! they are read ([`crate::process`], [`crate::connections`],
//! [`crate::edge`], `identity`) and listed per binary below. `--help`,
//! `--print-config`, the check against unknown settings and docs/settings.md's
//! table all come from [`ALL`].

use crate::{client_address, connections, edge, process};
use settings::{Kind, Setting, Spec};

const fn number(
    key: &'static str,
    default: &'static str,
    min: u64,
    max: u64,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        kind: Kind::Number { min, max },
        default: Some(default),
        help,
        secret: false,
    }
}

const fn text(key: &'static str, default: Option<&'static str>, help: &'static str) -> Setting {
    Setting {
        key,
        kind: Kind::Text,
        default,
        help,
        secret: false,
    }
}

/// The bidder's own settings.
pub mod bidder {
    use super::number;
    use settings::{Kind, Setting};

    pub const REDIS_MIN_REPLICAS_ACK: Setting = number(
        "redis_min_replicas_ack",
        "0",
        0,
        16,
        "replicas that must hold an accepted bid before it is answered 201 (`WAIT`); 0 \
         answers on the primary's word. See [Redis Cluster](operations.md#redis-cluster) for the trade-off",
    );
    /// Below the Redis response timeout (2 s), so a slow replica is
    /// reported as such, not as an unreachable Redis.
    pub const REDIS_ACK_TIMEOUT_MS: Setting = number(
        "redis_ack_timeout_ms",
        "500",
        1,
        1500,
        "how long a bid waits for those replicas (1 to 1500); past it, 503 `not_replicated`",
    );
    pub const SIMULATE: Setting = Setting {
        key: "simulate",
        kind: Kind::Flag,
        default: Some("true"),
        help: "run the simulator",
        secret: false,
    };
    pub const SIM_AUCTIONS: Setting = Setting {
        key: "sim_auctions",
        kind: Kind::List,
        default: Some("1234"),
        help: "comma list of simulated auctions",
        secret: false,
    };
    pub const SIM_INTERVAL_MS: Setting = number(
        "sim_interval_ms",
        "2000",
        1,
        3_600_000,
        "one simulated bid per auction per interval, whatever the number of bidder replicas (intervals of Redis's clock: the replicas take turns through Redis)",
    );
    /// Up to `auction_domain::MAX_DURATION_MS`.
    pub const SIM_DURATION_MS: Setting = number(
        "sim_duration_ms",
        "180000",
        1000,
        30 * 24 * 3600 * 1000,
        "length of a simulated round",
    );
    /// Up to 10^12: amounts stay integers well below 2^53 in the scripts.
    pub const SIM_LIMIT_RANGE_CENTS: Setting = number(
        "sim_limit_range_cents",
        "100000",
        0,
        1_000_000_000_000,
        "each simulated bidder bids up to a limit of its own, drawn each round between the starting price ($100) and this many cents above it; once every limit is passed the simulator waits for the next round, so a person who keeps bidding wins",
    );
    pub const SIM_PAUSE_MS: Setting = number(
        "sim_pause_ms",
        "15000",
        0,
        3_600_000,
        "a closed simulated round stays closed this long past its end before the next opens",
    );
    pub const STREAM_MAXLEN: Setting = number(
        "stream_maxlen",
        "10000",
        10,
        10_000_000,
        "approximate events kept per auction (the resume window)",
    );
    /// `event_log::DEFAULT_RETENTION_MS` by default.
    pub const RETENTION_MS: Setting = number(
        "retention_ms",
        "259200000",
        0,
        365 * 24 * 3600 * 1000,
        "a closed auction's state and stream expire this long after its close (set \
         atomically by the close; a simulated round that reopens is kept again); then \
         `GET /auctions/{id}` is 404, its id leaves the listing, and the edges tell its \
         watchers `gone`. `0` keeps closed auctions forever; the default is 3 days",
    );
    pub const RATE_LIMIT_PER_S: Setting = number(
        "rate_limit_per_s",
        "50",
        1,
        1_000_000,
        "bids and auctions per second per bidder",
    );
    pub const RATE_LIMIT_BURST: Setting = number(
        "rate_limit_burst",
        "100",
        1,
        1_000_000,
        "burst allowance of the rate limit",
    );
    pub const LIST_RATE_LIMIT_PER_S: Setting = number(
        "list_rate_limit_per_s",
        "5",
        1,
        1_000_000,
        "`GET /auctions` pages per second per client address",
    );
    pub const LIST_RATE_LIMIT_BURST: Setting = number(
        "list_rate_limit_burst",
        "20",
        1,
        1_000_000,
        "burst allowance of the listing's rate limit",
    );
    pub const ADDRESS_RATE_LIMIT_PER_S: Setting = number(
        "address_rate_limit_per_s",
        "200",
        1,
        1_000_000,
        "bids and auctions per second per client address, all identities from it together, \
         and refused tokens",
    );
    pub const ADDRESS_RATE_LIMIT_BURST: Setting = number(
        "address_rate_limit_burst",
        "400",
        1,
        1_000_000,
        "burst allowance of the per-address limit",
    );
    pub const SESSION_RATE_LIMIT_PER_S: Setting = number(
        "session_rate_limit_per_s",
        "2",
        1,
        1_000_000,
        "`POST /sessions` per second per client address",
    );
    pub const SESSION_RATE_LIMIT_BURST: Setting = number(
        "session_rate_limit_burst",
        "30",
        1,
        1_000_000,
        "burst allowance of the sessions' limit",
    );
    /// Never in a deployment: shows that closing does not follow the
    /// process's clock.
    pub const TEST_CLOCK_BEHIND_MS: Setting = number(
        "test_clock_behind_ms",
        "0",
        0,
        3_600_000,
        "for tests only, never in a deployment: the process's clock reads this much behind \
         (0 to 3600000), to show that closing does not depend on it (due auctions are picked \
         by Redis's `TIME`)",
    );
    pub const CLOSE_CHECK_MS: Setting = number(
        "close_check_ms",
        "250",
        10,
        60_000,
        "how often to look for auctions past their end",
    );
    /// Up to `auction_domain::MAX_SOFT_CLOSE_MS`.
    pub const SOFT_CLOSE_MS: Setting = number(
        "soft_close_ms",
        "0",
        0,
        3_600_000,
        "soft close of auctions created without `soft_close_ms`: a bid within this many ms of \
         the end moves the end this much later (0: none). See [Auction rules](api.md#auction-rules)",
    );
    pub const CORS_ALLOWED_ORIGINS: Setting = Setting {
        key: "cors_allowed_origins",
        kind: Kind::List,
        default: Some(""),
        help: "comma list of origins (`scheme://host[:port]`, exactly as browsers send \
               `Origin`) whose pages may call the API cross-origin; `*` allows any. Empty: \
               none, which is what the pages need behind nginx (one origin for pages and API)",
        secret: false,
    };
    pub const SETTINGS: &[Setting] = &[
        REDIS_MIN_REPLICAS_ACK,
        REDIS_ACK_TIMEOUT_MS,
        SIMULATE,
        SIM_AUCTIONS,
        SIM_INTERVAL_MS,
        SIM_DURATION_MS,
        SIM_LIMIT_RANGE_CENTS,
        SIM_PAUSE_MS,
        STREAM_MAXLEN,
        RETENTION_MS,
        RATE_LIMIT_PER_S,
        RATE_LIMIT_BURST,
        LIST_RATE_LIMIT_PER_S,
        LIST_RATE_LIMIT_BURST,
        ADDRESS_RATE_LIMIT_PER_S,
        ADDRESS_RATE_LIMIT_BURST,
        SESSION_RATE_LIMIT_PER_S,
        SESSION_RATE_LIMIT_BURST,
    ];
    /// Listed after the identity settings.
    pub const MORE_SETTINGS: &[Setting] = &[
        CLOSE_CHECK_MS,
        SOFT_CLOSE_MS,
        CORS_ALLOWED_ORIGINS,
        TEST_CLOCK_BEHIND_MS,
    ];
}

/// sse-edge's own settings.
pub mod sse_edge {
    use super::{number, text};
    use settings::Setting;

    pub const SSE_KEEPALIVE_MS: Setting = number(
        "sse_keepalive_ms",
        "15000",
        100,
        3_600_000,
        "comment line interval: every stream gets `: keepalive` at least this often (each \
         auction's streams on their own schedule, so a replica's keepalives spread over the \
         interval; an auction with events at least every half interval carries it in front \
         of an event, in the same write, and never needs a write of its own)",
    );
    pub const SSE_RETRY_MS: Setting = number(
        "sse_retry_ms",
        "2000",
        0,
        3_600_000,
        "`retry:` sent at connect",
    );
    pub const SSE_MAX_AUCTIONS_PER_STREAM: Setting = number(
        "sse_max_auctions_per_stream",
        "100",
        1,
        1000,
        "auctions one `/events?auctions=` stream may carry (1–1000)",
    );
    pub const BIDDER_PUBLIC_URL: Setting = text(
        "bidder_public_url",
        Some(""),
        "where the page posts bids (empty: same origin); an `http(s)://` URL, whose origin \
         the pages' `connect-src` names. The bidder must then allow the pages' origin in \
         `AUCTION_CORS_ALLOWED_ORIGINS`",
    );
    pub const SETTINGS: &[Setting] = &[
        SSE_KEEPALIVE_MS,
        SSE_RETRY_MS,
        SSE_MAX_AUCTIONS_PER_STREAM,
        BIDDER_PUBLIC_URL,
    ];
}

/// ws-edge's own settings.
pub mod ws_edge {
    use super::{number, text};
    use settings::{Kind, Setting};

    pub const BIDDER_URL: Setting = text(
        "bidder_url",
        Some("http://127.0.0.1:8080"),
        "where bids over the socket go",
    );
    pub const WS_MAX_MESSAGE: Setting = number(
        "ws_max_message",
        "4096",
        64,
        16 * 1024 * 1024,
        "largest client message, bytes (beyond: close 1009)",
    );
    pub const WS_PING_MS: Setting = number(
        "ws_ping_ms",
        "20000",
        100,
        3_600_000,
        "ping interval; no pong by the next ping closes (1008). A replica's sockets are \
         pinged in turn, in up to 256 phases spread over the interval (at least 20 ms \
         apart), so a socket's first ping comes anywhere within its first interval",
    );
    pub const WS_ALLOWED_ORIGINS: Setting = Setting {
        key: "ws_allowed_origins",
        kind: Kind::List,
        default: Some(""),
        help: "comma list of allowed `Origin` values; empty allows all",
        secret: false,
    };
    pub const WS_MAX_SUBSCRIPTIONS: Setting = number(
        "ws_max_subscriptions",
        "64",
        1,
        10_000,
        "auctions per socket",
    );
    pub const WS_RATE_PER_S: Setting = number(
        "ws_rate_per_s",
        "50",
        1,
        1_000_000,
        "client messages per second per socket",
    );
    pub const WS_RATE_BURST: Setting = number(
        "ws_rate_burst",
        "100",
        1,
        1_000_000,
        "burst allowance of that limit",
    );
    pub const WS_COMPRESSION: Setting = Setting {
        key: "ws_compression",
        kind: Kind::Flag,
        default: Some("true"),
        help: "negotiate permessage-deflate with clients that offer it (each event compressed \
               twice per replica at most, never per socket; see \"Compression \
               (permessage-deflate)\"); `false`: every socket uncompressed",
        secret: false,
    };
    pub const SETTINGS: &[Setting] = &[
        BIDDER_URL,
        WS_COMPRESSION,
        WS_MAX_MESSAGE,
        WS_PING_MS,
        WS_ALLOWED_ORIGINS,
        WS_MAX_SUBSCRIPTIONS,
        WS_RATE_PER_S,
        WS_RATE_BURST,
    ];
}

pub static BIDDER: Spec = Spec {
    binary: "bidder",
    about: "the write path: validates bids, orders them in Redis, simulates bidding and \
            closes auctions at their end",
    usage: &["bidder token --name NAME [--role ROLE]... [--ttl-s SECONDS]   mint a guest token"],
    groups: &[
        process::SETTINGS,
        connections::SETTINGS,
        bidder::SETTINGS,
        client_address::SETTINGS,
        identity::SETTINGS,
        bidder::MORE_SETTINGS,
    ],
    defaults: &[("listen", "0.0.0.0:8080"), ("ops_listen", "0.0.0.0:9080")],
};

pub static SSE_EDGE: Spec = Spec {
    binary: "sse-edge",
    about: "fans auction events out to browsers over Server-Sent Events",
    usage: &[],
    groups: &[
        process::SETTINGS,
        connections::SETTINGS,
        sse_edge::SETTINGS,
        edge::SETTINGS,
        client_address::SETTINGS,
    ],
    defaults: &[("listen", "0.0.0.0:8081"), ("ops_listen", "0.0.0.0:9081")],
};

pub static WS_EDGE: Spec = Spec {
    binary: "ws-edge",
    about: "fans auction events out over WebSocket and takes bids on the socket",
    usage: &[],
    groups: &[
        process::SETTINGS,
        connections::SETTINGS,
        edge::SETTINGS,
        client_address::SETTINGS,
        identity::SETTINGS,
        ws_edge::SETTINGS,
    ],
    defaults: &[("listen", "0.0.0.0:8082"), ("ops_listen", "0.0.0.0:9082")],
};

/// Every binary of the project.
pub static ALL: &[&Spec] = &[&BIDDER, &SSE_EDGE, &WS_EDGE];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use settings::Settings;
    use std::collections::BTreeSet;

    const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/settings.md");

    /// `UPDATE_SETTINGS_TABLE=1 cargo test -p service-kit readme` writes the
    /// table from the spec into docs/settings.md.
    #[test]
    fn readme_settings_table_matches_the_spec() {
        let readme = std::fs::read_to_string(README).unwrap();
        if std::env::var_os("UPDATE_SETTINGS_TABLE").is_some() {
            let start = readme.find(settings::TABLE_START).unwrap() + settings::TABLE_START.len();
            let end = start + readme[start..].find(settings::TABLE_END).unwrap();
            let updated = format!(
                "{}\n{}{}",
                &readme[..start],
                settings::markdown_table(ALL),
                &readme[end..]
            );
            std::fs::write(README, updated).unwrap();
            return;
        }
        if let Err(problem) = settings::check_readme(&readme, ALL) {
            panic!(
                "{problem}\n(UPDATE_SETTINGS_TABLE=1 cargo test -p service-kit readme writes it)"
            );
        }
    }

    #[test]
    fn readme_check_fails_for_a_setting_missing_from_the_readme() {
        const NEW: &[Setting] = &[Setting {
            key: "brand_new_setting",
            kind: Kind::Flag,
            default: Some("false"),
            help: "added to the spec only",
            secret: false,
        }];
        static WITH_NEW: Spec = Spec {
            binary: "bidder",
            about: "",
            usage: &[],
            groups: &[
                process::SETTINGS,
                connections::SETTINGS,
                bidder::SETTINGS,
                identity::SETTINGS,
                bidder::MORE_SETTINGS,
                NEW,
            ],
            defaults: &[("listen", "0.0.0.0:8080"), ("ops_listen", "0.0.0.0:9080")],
        };
        let readme = std::fs::read_to_string(README).unwrap();
        let problem = settings::check_readme(&readme, &[&WITH_NEW, &SSE_EDGE, &WS_EDGE])
            .expect_err("a setting missing from docs/settings.md fails the check");
        assert!(
            problem.contains("missing or different: `AUCTION_BRAND_NEW_SETTING`"),
            "{problem}"
        );
    }

    #[test]
    fn every_default_is_valid_and_no_binary_declares_a_key_twice() {
        for spec in ALL {
            let keys: Vec<&str> = spec.settings().map(|s| s.key).collect();
            let unique: BTreeSet<&str> = keys.iter().copied().collect();
            assert_eq!(keys.len(), unique.len(), "{}: a key twice", spec.binary);
            for (key, _) in spec.defaults {
                assert!(unique.contains(key), "{}: default for {key}", spec.binary);
            }
            Settings::load(spec, ALL, None, [])
                .unwrap_or_else(|error| panic!("{}: {error}", spec.binary));
        }
    }

    #[test]
    fn shared_settings_are_the_same_declaration_everywhere() {
        for spec in ALL {
            for s in spec.settings() {
                for other in ALL {
                    if let Some(o) = other.find(s.key) {
                        assert_eq!((s.kind, s.help, s.secret), (o.kind, o.help, o.secret));
                    }
                }
            }
        }
    }
}
