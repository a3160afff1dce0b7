//! The handshake between `ccd daemon start` and the `ccd daemon run` it spawns: the lines the
//! daemon reports on its stdout, and the variable that carries the `--set` values.

/// What the foreground daemon reports to a `ccd daemon start` waiting on its stdout.
pub const READY: &str = "READY";
pub const ALREADY: &str = "ALREADY";
pub const ERROR: &str = "ERROR";
/// A warning for the user, before READY (any number of them).
pub const WARN: &str = "WARN";

/// How `daemon start` hands its `--set` values to the `daemon run` it spawns: a JSON array of
/// `[key, value]` pairs.
pub const OVERRIDES_ENV: &str = "CCD_SET";
