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
    InvalidParams(String),
    #[error("{0}")]
    Internal(String),
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
            ActorError::NotFound(m) => RpcError::new(ErrorCode::NotFound, m),
            ActorError::Conflict(m) => RpcError::new(ErrorCode::Conflict, m),
            ActorError::InvalidParams(m) => RpcError::new(ErrorCode::InvalidParams, m),
            ActorError::Internal(m) => RpcError::new(ErrorCode::InternalError, m),
            ActorError::Rpc(e) => e,
        }
    }
}

impl From<RpcError> for ActorError {
    fn from(e: RpcError) -> Self {
        ActorError::Rpc(e)
    }
}
