//! Direct reads for the daemon: a small pool of read-only connections, used on tokio's blocking
//! threads so a slow query never stalls the event loop. Reads see only committed data (WAL).
//! At most [`MAX_CONCURRENT`] reads run at once; the others wait their turn without a thread
//! or a connection, so a flood of reads (a batch of 100,000 `setting.get`) costs neither
//! hundreds of threads nor hundreds of open database files.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rusqlite::Connection;

use crate::blocking::off_loop;
use crate::error::ActorError;
use crate::store;

/// Idle connections kept for reuse.
const POOL_SIZE: usize = 4;
/// Reads running at once (each on a blocking thread with a connection of its own).
pub const MAX_CONCURRENT: usize = 8;

#[derive(Clone)]
pub struct Reader {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
    running: Arc<tokio::sync::Semaphore>,
}

impl Reader {
    pub fn new(path: PathBuf) -> Self {
        Reader {
            path,
            pool: Arc::new(Mutex::new(Vec::new())),
            running: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT)),
        }
    }

    /// Open one connection now, so the first request pays no cold-start cost.
    pub fn warm(&self) -> anyhow::Result<()> {
        let conn = self.open()?;
        self.put(conn);
        Ok(())
    }

    /// Run `f` on a read-only connection, off the event loop.
    pub async fn read<T, F>(&self, what: &'static str, f: F) -> Result<T, ActorError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    {
        // The semaphore is never closed, so acquiring only fails if it were; treat that as a
        // read that could not run rather than panic.
        let Ok(turn) = self.running.clone().acquire_owned().await else {
            return Err(ActorError::Internal(format!(
                "{what}: the read queue is closed"
            )));
        };
        let this = self.clone();
        off_loop(what, move || {
            let _turn = turn;
            let conn = this.take()?;
            let result = f(&conn);
            this.put(conn);
            result
        })
        .await?
        .map_err(|e| ActorError::Internal(format!("{what}: {e:#}")))
    }

    fn open(&self) -> anyhow::Result<Connection> {
        store::open_reader(&self.path)?
            .with_context(|| format!("database {} is not initialised", self.path.display()))
    }

    fn take(&self) -> anyhow::Result<Connection> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(c) => Ok(c),
            None => self.open(),
        }
    }

    fn put(&self, conn: Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_SIZE {
            pool.push(conn);
        }
    }
}
