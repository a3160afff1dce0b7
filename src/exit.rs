//! Exit codes (README.md and docs/operations.md list them), and which errors map to which.

use ccd_protocol::{ErrorCode, RpcError};

use crate::client::CallError;

pub const OK: u8 = 0;
pub const ERROR: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_RUNNING: u8 = 3;
pub const REFUSED: u8 = 4;
pub const AGENT_FAILED: u8 = 5;

/// A usage error found after parsing (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code an error maps to.
pub fn code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(call) = cause.downcast_ref::<CallError>() {
            return match call {
                CallError::NotRunning(_) | CallError::NoAnswer(_) => NOT_RUNNING,
                CallError::Rpc(rpc) => rpc_code(rpc),
                CallError::Other(_) => ERROR,
            };
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return USAGE;
        }
    }
    ERROR
}

/// The exit code for an error answered by the daemon.
pub fn rpc_code(e: &RpcError) -> u8 {
    match e.kind() {
        Some(ErrorCode::RateLimited | ErrorCode::CircuitOpen) => REFUSED,
        Some(ErrorCode::AgentFailed) => AGENT_FAILED,
        _ => ERROR,
    }
}
