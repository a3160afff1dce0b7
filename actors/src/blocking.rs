//! The one way to run blocking work (file system checks, SQLite, sealing, resolving a command)
//! off the daemon's event loop: on tokio's blocking pool, a task that failed (panicked) being an
//! internal error that says what it was doing.

use crate::error::ActorError;

/// Run `work` on the blocking pool; `what` names it in the error if the task fails.
pub async fn off_loop<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ActorError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ActorError::internal(what, e))
}

/// As [`off_loop`], for work that can fail itself.
pub async fn try_off_loop<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, ActorError> + Send + 'static,
) -> Result<T, ActorError> {
    off_loop(what, work).await?
}
