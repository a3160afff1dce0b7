//! ccd's actors and the supervision layer they run under.
//!
//! The daemon is a handful of actix actors exchanging typed messages:
//!
//! - [`gateway::GatewayActor`] turns JSON-RPC calls into typed actor messages; the socket side
//!   (framing, limits, connections) lives in [`server`];
//! - [`writer::WriterActor`] is the single writer of the SQLite database, on a thread of its own,
//!   committing queued writes in groups; reads go straight to the file ([`reader`], [`store`]);
//! - [`supervise`] captures panics in one place and restarts the actor on the same mailbox, with
//!   Erlang/OTP restart intensity, and keeps the health that `system.health` reports.
//!
//! Every actor runs under actix's `Supervisor`, so its address and mailbox survive a restart.
//! Architecture invariants: only the WriterActor opens a write connection; only [`server`]
//! touches the socket; actors never call each other's methods directly, only send messages.

#![forbid(unsafe_code)]

pub mod agents;
pub mod backup;
pub mod blocking;
pub mod config;
pub mod conn;
pub mod error;
pub mod eventbus;
pub mod executor;
pub mod files;
pub mod fingerprint;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod outbound;
pub mod procstat;
pub mod query;
pub mod reader;
pub mod resilience;
pub mod routing;
pub mod seal;
pub mod server;
pub mod store;
pub mod supervise;
pub mod validate;
pub mod vfs;
pub mod writer;

pub use config::Config;
pub use error::ActorError;
pub use supervise::{Call, HealthRegistry, Supervision};
