//! The daemon's logging: tracing to `$CCD_HOME/logs/ccd.log` (rotated at 10 MiB, 5 files
//! kept: ccd.log.1 ... ccd.log.5) through tracing-appender's non-blocking writer, filtered by
//! `CCD_LOG` (default `info`); also to stderr when the daemon runs in the foreground.

use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::home::Home;

const MAX_LOG_BYTES: usize = 10 * 1024 * 1024;
const KEEP_FILES: usize = 5;
/// Lines queued for the log-writing thread before new ones are dropped. tracing-appender's
/// default (128,000) preallocates and touches a 4 MiB queue, a fifth of the idle daemon's
/// memory; the writer thread drains the queue as fast as the file takes it, so a few thousand
/// lines absorb any burst the daemon produces.
const LOG_QUEUE_LINES: usize = 8192;

/// Install the subscriber; keep the guard alive until exit so buffered lines are written.
pub fn init(home: &Home, to_stderr: bool) -> anyhow::Result<WorkerGuard> {
    let filter = match std::env::var("CCD_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec)
            .map_err(|e| anyhow::anyhow!("invalid CCD_LOG filter `{spec}`: {e}"))?,
        _ => EnvFilter::new("info"),
    };
    let file = FileRotate::new(
        home.log_file(),
        AppendCount::new(KEEP_FILES),
        ContentLimit::BytesSurpassed(MAX_LOG_BYTES),
        Compression::None,
        None,
    );
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(file);
    let file_layer = fmt::layer().with_writer(writer).with_ansi(false);
    // Colours only on a terminal: a redirected log must not carry escape codes.
    let stderr_layer = to_stderr.then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    Ok(guard)
}
