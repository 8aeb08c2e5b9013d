//! The Lua scripts and how they are called.

use super::connection::Conn;

pub(super) static PUT: &str = include_str!("lua/put.lua");
pub(super) static INVALIDATE: &str = include_str!("lua/invalidate.lua");
pub(super) static TICKET: &str = include_str!("lua/ticket.lua");
pub(super) static RELEASE_LEASE: &str = include_str!("lua/release_lease.lua");

/// A Lua script, called with `EVALSHA` and, when the server does not have it yet, with `EVAL`
/// on the same key's node. (redis-rs's `Script` sends `SCRIPT LOAD` instead, which a cluster
/// connection routes to every node: one dead node fails every script after a failover.)
pub(super) struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    pub(super) fn new(code: &'static str) -> Self {
        Lua {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// A call of this script naming `keys` keys: give them with [`LuaCall::key`] first, then
    /// the arguments. The command is built as it goes (one buffer, no copy per argument).
    pub(super) fn call(&self, keys: usize) -> LuaCall<'_> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hash).arg(keys);
        LuaCall {
            lua: self,
            cmd,
            keys,
        }
    }
}

/// One call of a [`Lua`] script: `EVALSHA <hash> <number of keys> <keys..> <args..>`.
pub(super) struct LuaCall<'a> {
    lua: &'a Lua,
    cmd: redis::Cmd,
    /// Keys still to come before the arguments.
    keys: usize,
}

impl LuaCall<'_> {
    pub(super) fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Self {
        debug_assert!(self.keys > 0, "more keys than the call was made for");
        self.keys = self.keys.saturating_sub(1);
        self.cmd.arg(key);
        self
    }

    pub(super) fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        debug_assert_eq!(self.keys, 0, "an argument before the last key");
        self.cmd.arg(arg);
        self
    }

    /// The `EVALSHA` command, to send in a pipeline (a `NOSCRIPT` answer there is the
    /// caller's to handle, e.g. by calling [`LuaCall::invoke_async`]).
    pub(super) fn cmd(&self) -> &redis::Cmd {
        &self.cmd
    }

    pub(super) async fn invoke_async<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
    ) -> redis::RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // The server has not seen the script (a restart, a new node): the same call
                // with the body, which also caches it there.
                let mut eval = redis::cmd("EVAL");
                eval.arg(self.lua.code);
                for arg in self.cmd.args_iter().skip(2) {
                    if let redis::Arg::Simple(bytes) = arg {
                        eval.arg(bytes);
                    }
                }
                eval.query_async(conn).await
            }
            other => other,
        }
    }
}
