//! ccd's wire protocol, shared by the daemon and every client.
//!
//! ccd speaks JSON-RPC 2.0 over a Unix socket, one JSON text per `\n`-terminated line
//! (NDJSON). This crate holds everything both sides must agree on, and nothing else:
//!
//! - [`jsonrpc`]: the envelope (ids, requests, responses, notifications) and batch parsing;
//! - [`codec`]: the NDJSON framing codec with its size limit;
//! - [`error`]: the one table of error codes;
//! - [`methods`]: every method as a typed marker ([`Method`]) plus the registry that
//!   `system.describe` and `rpc.discover` publish;
//! - [`types`]: the params and results of those methods;
//! - [`routing`]: routing rules and decisions (which agent takes a task);
//! - [`stream_json`]: the agent CLI's stream-json messages, parsed defensively.
//!
//! Architecture invariant: this crate knows nothing about actix, SQLite or sockets. Its types
//! are the API boundary, and the daemon also uses them as its own records (the store returns
//! `Session` and `Turn`, the event bus carries `EventKind`) so that what is kept and what is
//! answered cannot drift apart; the daemon's actor messages are its own types, and its errors
//! become `RpcError` in one place (`ActorError` in ccd-actors).
//!
//! ```
//! use ccd_protocol::{Method, methods::SystemPing, parse_params};
//! assert_eq!(SystemPing::NAME, "system.ping");
//! assert!(parse_params::<SystemPing>(None).is_ok());
//! ```

#![forbid(unsafe_code)]

pub mod codec;
pub mod error;
pub mod jsonrpc;
pub mod methods;
pub mod routing;
pub mod stream_json;
pub mod types;

pub use codec::{DEFAULT_MAX_MESSAGE_BYTES, FrameError, NdjsonCodec, to_line};
pub use error::{ErrorCode, RpcError};
pub use jsonrpc::{
    DEFAULT_MAX_BATCH, Id, Incoming, Notification, Payload, RawNumber, RawResponse, Request,
    Response, parse_incoming,
};
pub use methods::{Method, method_info, openrpc_document, parse_params, registry};

/// The wire protocol's version, reported by `system.version`.
pub const PROTOCOL_VERSION: u32 = 1;
