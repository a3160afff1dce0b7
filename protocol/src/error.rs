//! The error object and the one table of error codes (JSON-RPC's own and ccd's -32000..-32099).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every error code ccd answers with. The table in `ErrorCode::ALL` is the single source for the
/// documentation and `system.describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    InternalError,
    Unavailable,
    RateLimited,
    CircuitOpen,
    NotFound,
    Conflict,
    Timeout,
    AgentFailed,
    Cancelled,
    Overloaded,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::ParseError,
        ErrorCode::InvalidRequest,
        ErrorCode::MethodNotFound,
        ErrorCode::InvalidParams,
        ErrorCode::InternalError,
        ErrorCode::Unavailable,
        ErrorCode::RateLimited,
        ErrorCode::CircuitOpen,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Timeout,
        ErrorCode::AgentFailed,
        ErrorCode::Cancelled,
        ErrorCode::Overloaded,
    ];

    pub const fn code(self) -> i64 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::InternalError => -32603,
            ErrorCode::Unavailable => -32001,
            ErrorCode::RateLimited => -32002,
            ErrorCode::CircuitOpen => -32003,
            ErrorCode::NotFound => -32004,
            ErrorCode::Conflict => -32005,
            ErrorCode::Timeout => -32006,
            ErrorCode::AgentFailed => -32007,
            ErrorCode::Cancelled => -32008,
            ErrorCode::Overloaded => -32009,
        }
    }

    /// A short machine-friendly name, as used in docs and `system.describe`.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "parse_error",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::MethodNotFound => "method_not_found",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::CircuitOpen => "circuit_open",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Timeout => "timeout",
            ErrorCode::AgentFailed => "agent_failed",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Overloaded => "overloaded",
        }
    }

    pub const fn description(self) -> &'static str {
        match self {
            ErrorCode::ParseError => "the line is not valid JSON",
            ErrorCode::InvalidRequest => {
                "not a valid JSON-RPC 2.0 request, an empty batch, or a message over the size limit"
            }
            ErrorCode::MethodNotFound => {
                "no such method (debug.* exists only with CCD_FAULT_INJECTION=1)"
            }
            ErrorCode::InvalidParams => {
                "params do not match the method; the message names the parameter"
            }
            ErrorCode::InternalError => "a bug or an unexpected I/O failure inside the daemon",
            ErrorCode::Unavailable => {
                "the subsystem is restarting or failed; data: actor, state, reason"
            }
            ErrorCode::RateLimited => "refused by the rate limiter; data: retry_after_ms",
            ErrorCode::CircuitOpen => {
                "refused by an open circuit breaker; data: retry_after_ms, key"
            }
            ErrorCode::NotFound => "the named object does not exist",
            ErrorCode::Conflict => "the object already exists",
            ErrorCode::Timeout => "the operation did not finish in time",
            ErrorCode::AgentFailed => "the agent run failed; data: class, detail",
            ErrorCode::Cancelled => "the operation was cancelled",
            ErrorCode::Overloaded => {
                "too many connections, too many requests in flight, or a full queue"
            }
        }
    }

    pub fn from_code(code: i64) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// The longest message of an error that quotes a client's value ([`RpcError::quoting`]);
/// longer ones are cut, saying how long they were.
pub const MAX_MESSAGE_BYTES: usize = 4096;

fn clip(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let total = message.len();
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(&format!("… (cut: {total} bytes in all)"));
    }
    message
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code: code.code(),
            message: message.into(),
            data: None,
        }
    }

    /// An error whose message quotes what a client sent (which can be megabytes long): cut at
    /// [`MAX_MESSAGE_BYTES`]. Invalid params, not found and conflict errors are made so.
    pub fn quoting(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError::new(code, clip(message.into()))
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn kind(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::quoting(ErrorCode::InvalidParams, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        RpcError::new(ErrorCode::InternalError, message)
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.code()), "duplicate {}", c.code());
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            let app = (-32099..=-32000).contains(&c.code());
            let std = (-32768..=-32600).contains(&c.code()) || c.code() == -32700;
            assert!(app || std, "{} out of range", c.code());
        }
    }

    #[test]
    fn a_message_quoting_a_huge_value_is_cut() {
        let short = RpcError::invalid_params("`name`: bad");
        assert_eq!(short.message, "`name`: bad");
        let name = "é".repeat(100_000);
        let full = format!("`name`: `{name}` is not valid");
        let long = RpcError::invalid_params(full.clone());
        assert!(
            long.message.len() < MAX_MESSAGE_BYTES + 64,
            "{}",
            long.message.len()
        );
        assert!(long.message.starts_with("`name`: `éé"));
        let said = format!("(cut: {} bytes in all)", full.len());
        assert!(long.message.ends_with(&said), "{}", long.message);
    }
}
