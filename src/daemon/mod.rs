//! The daemon's lifecycle: `run` is the daemon process (`boot`), `start`, `connect_or_start` and
//! `stop` drive it from the CLI (`control`), `logs` prints its log; `handshake` is what `start`
//! and `run` say to each other.

mod boot;
mod control;
mod handshake;
mod logs;

pub use boot::run;
pub use control::{How, connect_or_start, start, stop};
pub use handshake::OVERRIDES_ENV;
pub use logs::logs;
