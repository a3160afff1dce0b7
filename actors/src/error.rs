//! The error every actor reply carries, and its one mapping to JSON-RPC error objects.

use ccd_protocol::types::ActorState;
use ccd_protocol::{ErrorCode, RpcError};
use serde_json::json;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ActorError {
    /// The actor panicked on this message, is restarting, or is failed.
    #[error("{actor} is {}: {reason}", state.as_str())]
    Unavailable {
        actor: String,
        state: ActorState,
        reason: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
    /// Refused by the rate limiter: by `key`'s rate or window, for `retry_after_ms`, or
    /// (`concurrency`) by its limit on queries at once, until one of them finishes.
    #[error("{}", rate_limited(key, *concurrency, *retry_after_ms))]
    RateLimited {
        retry_after_ms: u64,
        key: String,
        concurrency: bool,
    },
    /// Refused by an open circuit breaker.
    #[error("circuit open for `{key}`: the agent keeps failing; retry in {}", wait(*retry_after_ms))]
    CircuitOpen { key: String, retry_after_ms: u64 },
    /// Too many connections, requests or queued work.
    #[error("{0}")]
    Overloaded(String),
    /// An agent run failed, timed out or was cancelled: -32007, -32006 or -32008, with the
    /// error class and details in `data`.
    #[error("{message}")]
    Agent {
        code: ErrorCode,
        message: String,
        data: serde_json::Value,
    },
    /// An error already shaped for the wire (method not found, invalid params...).
    #[error("{0}")]
    Rpc(RpcError),
}

impl ActorError {
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        ActorError::Internal(format!("{context}: {e}"))
    }
}

impl From<ActorError> for RpcError {
    fn from(e: ActorError) -> RpcError {
        match e {
            ActorError::Unavailable {
                ref actor,
                state,
                ref reason,
            } => RpcError::new(ErrorCode::Unavailable, e.to_string())
                .with_data(json!({ "actor": actor, "state": state, "reason": reason })),
            ActorError::NotFound(m) => RpcError::quoting(ErrorCode::NotFound, m),
            ActorError::Conflict(m) => RpcError::quoting(ErrorCode::Conflict, m),
            ActorError::Internal(m) => RpcError::new(ErrorCode::InternalError, m),
            ActorError::Overloaded(m) => RpcError::new(ErrorCode::Overloaded, m),
            ActorError::RateLimited {
                retry_after_ms,
                ref key,
                concurrency,
            } => RpcError::new(ErrorCode::RateLimited, e.to_string()).with_data(json!({
                "retry_after_ms": retry_after_ms,
                "key": key,
                "waits_for": if concurrency { "a running query to finish" } else { "time" },
            })),
            ActorError::CircuitOpen {
                ref key,
                retry_after_ms,
            } => RpcError::new(ErrorCode::CircuitOpen, e.to_string())
                .with_data(json!({ "retry_after_ms": retry_after_ms, "key": key })),
            ActorError::Agent {
                code,
                message,
                data,
            } => RpcError::new(code, message).with_data(data),
            ActorError::Rpc(e) => e,
        }
    }
}

impl From<RpcError> for ActorError {
    fn from(e: RpcError) -> Self {
        ActorError::Rpc(e)
    }
}

/// The message of a rate-limiter refusal. A concurrency limit frees up when a query finishes,
/// which no figure can promise: the message says so rather than quote the 50 ms the waiting
/// queries poll at.
fn rate_limited(key: &str, concurrency: bool, retry_after_ms: u64) -> String {
    if concurrency {
        format!(
            "rate limited: `{key}` already runs as many queries at once as its concurrency limit \
             allows; retry when one of them finishes"
        )
    } else {
        format!("rate limited by `{key}`: retry in {}", wait(retry_after_ms))
    }
}

/// A wait for people to read: milliseconds while short, else whole seconds (rounded up) as
/// `1m 30s`. The exact figure is in the error's `data.retry_after_ms`.
fn wait(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        humantime::format_duration(std::time::Duration::from_secs(ms.div_ceil(1000))).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_as_people_say_them() {
        assert_eq!(wait(0), "0 ms");
        assert_eq!(wait(9_999), "9999 ms");
        assert_eq!(wait(10_000), "10s");
        assert_eq!(wait(599_993), "10m");
        assert_eq!(wait(90_001), "1m 31s");
        let e = RpcError::from(ActorError::RateLimited {
            retry_after_ms: 599_993,
            key: "global".into(),
            concurrency: false,
        });
        assert_eq!(e.message, "rate limited by `global`: retry in 10m");
        let data = e.data.unwrap();
        assert_eq!(data["retry_after_ms"], 599_993);
        assert_eq!(data["key"], "global");
        assert_eq!(data["waits_for"], "time");
    }

    #[test]
    fn a_concurrency_refusal_says_what_it_waits_for() {
        let e = RpcError::from(ActorError::RateLimited {
            retry_after_ms: 50,
            key: "model:opus".into(),
            concurrency: true,
        });
        assert!(
            e.message.contains("`model:opus`")
                && e.message.contains("retry when one of them finishes")
                && !e.message.contains("50"),
            "{}",
            e.message
        );
        assert_eq!(e.data.unwrap()["waits_for"], "a running query to finish");
    }
}
