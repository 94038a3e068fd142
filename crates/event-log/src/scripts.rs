//! The Lua scripts, each with `lua/prelude.lua` (the helpers they share)
//! prepended.

use crate::connection::RedisConnection;
use redis::Script;
use std::sync::LazyLock;

/// One script in its two forms: publishing its notices with `PUBLISH` (one
/// node) or `SPUBLISH` (a cluster).
pub(crate) struct Scripts {
    single: Script,
    cluster: Script,
}

impl Scripts {
    /// The form of the script for this deployment (which publish command).
    pub(crate) fn for_connection(&self, conn: &RedisConnection) -> &Script {
        if conn.is_cluster() {
            &self.cluster
        } else {
            &self.single
        }
    }

    /// An invocation of the script for this deployment.
    pub(crate) fn prepare_for(&self, conn: &RedisConnection) -> redis::ScriptInvocation<'_> {
        self.for_connection(conn).prepare_invoke()
    }
}

macro_rules! script {
    ($($file:literal),+) => {
        LazyLock::new(|| Scripts {
            single: Script::new(concat!(
                "local PUBLISH_COMMAND = 'PUBLISH'\n",
                include_str!("lua/prelude.lua"),
                $(include_str!(concat!("lua/", $file))),+
            )),
            cluster: Script::new(concat!(
                "local PUBLISH_COMMAND = 'SPUBLISH'\n",
                include_str!("lua/prelude.lua"),
                $(include_str!(concat!("lua/", $file))),+
            )),
        })
    };
}

pub(crate) static CREATE: LazyLock<Scripts> = script!("create.lua");
pub(crate) static ENSURE_OPEN: LazyLock<Scripts> = script!("ensure_open.lua");
/// The auction rules (`bid_rules.lua`) and the suspension check go with the
/// bid script only.
pub(crate) static PLACE_BID: LazyLock<Scripts> =
    script!("bid_rules.lua", "suspension_guard.lua", "place_bid.lua");
pub(crate) static CLOSE_IF_DUE: LazyLock<Scripts> = script!("close_if_due.lua");
/// An admin's action on an auction (`crate::admin`).
pub(crate) static ADMIN: LazyLock<Scripts> = script!("admin.lua");

/// The closer's due-selection publishes nothing: one form.
pub(crate) static DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude.lua"),
        include_str!("lua/due.lua")
    ))
});

/// The viewers report publishes nothing: one form.
pub(crate) static REPORT_VIEWERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude.lua"),
        include_str!("lua/viewers.lua")
    ))
});

/// The simulator's turn on an auction (`crate::simulation`): publishes
/// nothing, one form.
pub(crate) static SIM_TURN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude.lua"),
        include_str!("lua/sim_turn.lua")
    ))
});

/// The simulated bidders' limits in a round: publishes nothing, one form.
pub(crate) static SIM_LIMITS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude.lua"),
        include_str!("lua/sim_limits.lua")
    ))
});
