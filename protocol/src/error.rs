//! The error object and the one table of error codes (JSON-RPC's own and ccd's -32000..-32099).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The one table of error codes: one line per code (variant, number, name, description).
macro_rules! error_codes {
    ($($variant:ident = $code:literal, $name:literal, $description:literal;)+) => {
        /// Every error code ccd answers with. This table is the single source for the
        /// documentation and `system.describe`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($variant,)+
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            pub const fn code(self) -> i64 {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }

            /// A short machine-friendly name, as used in docs and `system.describe`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)+
                }
            }

            pub const fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $description,)+
                }
            }
        }
    };
}

#[rustfmt::skip]
error_codes! {
    ParseError     = -32700, "parse_error",      "the line is not valid JSON";
    InvalidRequest = -32600, "invalid_request",  "not a valid JSON-RPC 2.0 request, an empty batch, or a message over the size limit";
    MethodNotFound = -32601, "method_not_found", "no such method (debug.* exists only with CCD_FAULT_INJECTION=1)";
    InvalidParams  = -32602, "invalid_params",   "params do not match the method; the message names the parameter";
    InternalError  = -32603, "internal_error",   "a bug or an unexpected I/O failure inside the daemon";
    Unavailable    = -32001, "unavailable",      "the subsystem is restarting or failed; data: actor, state, reason";
    RateLimited    = -32002, "rate_limited",     "refused by the rate limiter; data: retry_after_ms";
    CircuitOpen    = -32003, "circuit_open",     "refused by an open circuit breaker; data: retry_after_ms, key";
    NotFound       = -32004, "not_found",        "the named object does not exist";
    Conflict       = -32005, "conflict",         "the object already exists";
    Timeout        = -32006, "timeout",          "the operation did not finish in time";
    AgentFailed    = -32007, "agent_failed",     "the agent run failed; data: class, detail";
    Cancelled      = -32008, "cancelled",        "the operation was cancelled";
    Overloaded     = -32009, "overloaded",       "too many connections, too many requests in flight, or a full queue";
}

impl ErrorCode {
    pub fn from_code(code: i64) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.code() == code)
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
        for &c in ErrorCode::ALL {
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
