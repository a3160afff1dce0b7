//! Ctrl-C and SIGTERM: they stop a measurement early, so that a daemon ccd-bench started is
//! still stopped and its temporary home removed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

/// Set by the first SIGINT or SIGTERM.
static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// Makes SIGINT/SIGTERM stop the measurement early so that a daemon ccd-bench started is
/// still stopped and its temporary home removed; a second one gives up on cleaning up and
/// exits at once with status 130.
pub(crate) fn install_interrupt_handler() {
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the signal before this one left it.
        let _ = flag::register_conditional_shutdown(signal, 130, Arc::clone(&INTERRUPTED));
        let _ = flag::register(signal, Arc::clone(&INTERRUPTED));
    }
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub(crate) fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted by signal");
    }
    Ok(())
}

/// Sleeps for `d`, or less when a signal comes.
pub(crate) fn sleep_interruptible(d: Duration) {
    let end = Instant::now() + d;
    while !interrupted() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}
