//! The WriterActor: the single owner of the SQLite write connection, with group commit.
//!
//! It runs on an Arbiter (thread) of its own. Writes arrive as `Call<Commit<Op>>`; each handler
//! only queues the write and, if none is scheduled, schedules a flush. actix drains the whole
//! mailbox before it runs scheduled items, so every write that queued up while the previous
//! transaction ran is committed in the next single transaction: one `BEGIN`, one savepoint per
//! write (a failing write rolls back alone and never fails the others), one `COMMIT`. A write of
//! one statement ([`WriteOp::ONE_STATEMENT`]) needs no savepoint: SQLite undoes a failed
//! statement alone. Each write is acknowledged only after that commit.
//!
//! After a panic, `reset` reopens the connection (an open transaction rolls back when the old
//! connection drops); writes of the group being committed are answered -32001 and were not
//! committed; writes still queued are committed by the restarted actor.

use std::path::PathBuf;

use actix::prelude::*;
use rusqlite::Connection;

use crate::error::ActorError;
use crate::store::WriterConfig;
use crate::store::{self, ExecCached, WriteOp};
use crate::supervise::{ActorRequest, Handle, Reply, Supervise, Supervision, supervised};

/// A write to commit: any [`WriteOp`].
pub struct Commit<O>(pub O);

impl<O: WriteOp> ActorRequest for Commit<O> {
    type Output = O::Output;
}

/// Commit everything queued before this message, then answer (used by a graceful stop).
pub struct Drain;

impl ActorRequest for Drain {
    type Output = ();
}

struct Flush;

impl ActorRequest for Flush {
    type Output = ();
}

/// A queued write, type-erased: runs its op and returns whether to keep its changes, with the
/// answer to send once the group's commit has succeeded (`None`) or failed (`Some`). Given an
/// error instead of a connection, it does not run, and answers with that error.
struct Job {
    /// [`WriteOp::ONE_STATEMENT`]: needs no savepoint.
    one_statement: bool,
    run: RunWrite,
}

/// Runs a write on the connection, or answers it with the error that kept it from running.
type RunWrite = Box<dyn FnOnce(Result<&Connection, &ActorError>) -> Applied + Send>;

impl Job {
    /// Answer without running: the write was not made, for this reason.
    fn refuse(self, why: &ActorError) {
        ((self.run)(Err(why)).reply)(None);
    }
}

struct Applied {
    ok: bool,
    reply: DeferredReply,
}

/// Sends a write's answer once its group's commit is known: `None` committed, `Some` failed.
type DeferredReply = Box<dyn FnOnce(Option<&ActorError>) + Send>;

pub struct WriterActor {
    sup: Supervision,
    path: PathBuf,
    cfg: WriterConfig,
    conn: Option<Connection>,
    pending: Vec<Job>,
    flush_scheduled: bool,
}

supervised!(WriterActor);

impl WriterActor {
    /// Open the database (migrating it) before the actor starts, so that a bad database is a
    /// start-up error rather than a failed actor.
    pub fn new(sup: Supervision, path: PathBuf, cfg: WriterConfig) -> anyhow::Result<Self> {
        let conn = store::open_writer(&path, &cfg)?;
        Ok(WriterActor {
            sup,
            path,
            cfg,
            conn: Some(conn),
            pending: Vec::new(),
            flush_scheduled: false,
        })
    }

    fn flush(&mut self) {
        self.flush_scheduled = false;
        while !self.pending.is_empty() {
            let take = self.pending.len().min(self.cfg.max_batch);
            let jobs: Vec<Job> = self.pending.drain(..take).collect();
            let untried = self.commit_group(jobs);
            // Writes the group never reached go first into the next one. Each group answers at
            // least the write it stopped at, so this ends.
            self.pending.splice(0..0, untried);
        }
    }

    /// Commit `jobs` as one transaction and answer them; returns the jobs it did not try, which
    /// are still to be committed.
    fn commit_group(&mut self, jobs: Vec<Job>) -> Vec<Job> {
        let Some(conn) = self.conn.as_ref() else {
            // Only possible while a reset is failing, when requests are refused before they
            // get here; answer rather than leave the callers waiting.
            let err = ActorError::Unavailable {
                actor: "writer".into(),
                state: ccd_protocol::types::ActorState::Restarting,
                reason: "the writer has no database connection".into(),
            };
            tracing::error!("{err}");
            for job in jobs {
                job.refuse(&err);
            }
            return Vec::new();
        };
        let mut replies = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter();
        let mut untried = Vec::new();
        // A write that a failing transaction statement (SAVEPOINT) kept from running.
        let mut stopped_at = None;
        // The transaction statements are prepared once and cached: parsing `SAVEPOINT` and
        // `RELEASE` for every write (as rusqlite's `Savepoint` does) was a tenth of the
        // writer's time under load.
        let exec = |sql: &str| conn.execute_cached(sql, []).map(drop);
        let outcome = (|| -> Result<(), rusqlite::Error> {
            exec("BEGIN")?;
            while let Some(job) = jobs.next() {
                // One-statement writes need no savepoint: SQLite undoes a failed statement.
                let savepoint = !job.one_statement;
                if savepoint && let Err(e) = exec("SAVEPOINT write") {
                    stopped_at = Some(job);
                    return Err(e);
                }
                let applied = (job.run)(Ok(conn));
                let ok = applied.ok;
                // Its answer waits for the commit, and goes out even if what follows fails.
                replies.push(applied.reply);
                // A failed write is undone on its own, except on the few errors (disk full,
                // I/O) on which SQLite rolls the whole transaction back: then the group's
                // earlier writes are gone too and fail with it; the writes after this one were
                // not tried, and go to the next group.
                if !ok && conn.is_autocommit() {
                    untried.extend(jobs.by_ref());
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                        Some("a failed write rolled back the group's transaction".into()),
                    ));
                }
                if savepoint {
                    if !ok {
                        exec("ROLLBACK TO write")?;
                    }
                    exec("RELEASE write")?;
                }
            }
            exec("COMMIT")
        })();
        match outcome {
            Ok(()) => replies.into_iter().for_each(|r| r(None)),
            Err(e) => {
                if !conn.is_autocommit()
                    && let Err(rb) = conn.execute_batch("ROLLBACK")
                {
                    tracing::error!("rolling back a failed group of writes: {rb}");
                }
                let err = ActorError::Internal(format!("committing a group of writes: {e}"));
                tracing::error!("{err}");
                replies.into_iter().for_each(|r| r(Some(&err)));
                // The writes the failure kept from running (BEGIN or a SAVEPOINT failed: most
                // likely a disk or I/O error that would fail them again) get the same answer,
                // rather than be dropped and look like a writer restart.
                for job in stopped_at.into_iter().chain(jobs) {
                    job.refuse(&err);
                }
            }
        }
        untried
    }
}

impl Supervise for WriterActor {
    fn supervision(&self) -> &Supervision {
        &self.sup
    }

    fn reset(&mut self, _: &mut Context<Self>) -> anyhow::Result<()> {
        // Drop the old connection first: any transaction it had open rolls back.
        self.conn = None;
        self.flush_scheduled = false;
        self.conn = Some(store::open_writer(&self.path, &self.cfg)?);
        Ok(())
    }

    fn on_started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.cfg.max_batch);
        if !self.pending.is_empty() && !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(crate::supervise::Call(Flush));
        }
    }
}

impl<O: WriteOp> Handle<Commit<O>> for WriterActor {
    fn handle(&mut self, msg: Commit<O>, ctx: &mut Context<Self>) -> Reply<O::Output> {
        // Answered straight from the commit (no task per write waits for it); a write dropped
        // unanswered (its group was being committed when the writer panicked) says so.
        let (reply, responder) = Reply::deferred(|| ActorError::Unavailable {
            actor: "writer".into(),
            state: ccd_protocol::types::ActorState::Restarting,
            reason:
                "the writer restarted while this write was being committed; it was not committed"
                    .into(),
        });
        let op = msg.0;
        self.pending.push(Job {
            one_statement: O::ONE_STATEMENT,
            run: Box::new(move |conn: Result<&Connection, &ActorError>| {
                let result = match conn {
                    Ok(conn) => op.apply(conn),
                    Err(why) => Err(why.clone()),
                };
                Applied {
                    ok: result.is_ok(),
                    reply: Box::new(move |commit_err: Option<&ActorError>| {
                        responder.send(match (result, commit_err) {
                            (Ok(_), Some(e)) => Err(e.clone()),
                            (r, _) => r,
                        });
                    }),
                }
            }),
        });
        if self.pending.len() >= self.cfg.max_batch {
            self.flush();
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(crate::supervise::Call(Flush));
        }
        reply
    }
}

impl Handle<Flush> for WriterActor {
    fn handle(&mut self, _: Flush, _: &mut Context<Self>) -> Reply<()> {
        self.flush();
        Reply::ok(())
    }
}

impl Handle<Drain> for WriterActor {
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Reply<()> {
        self.flush();
        if let Some(conn) = &self.conn
            && let Err(e) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        {
            tracing::warn!("checkpointing the WAL on drain: {e}");
        }
        Reply::ok(())
    }
}

/// A writer on a fresh database under `dir`, for tests: its address and the database's path.
#[cfg(test)]
pub(crate) fn start_for_test(dir: &std::path::Path) -> (Addr<WriterActor>, PathBuf) {
    let db = store::db_path(dir);
    let health = crate::supervise::HealthRegistry::new(Default::default());
    let writer = WriterActor::new(health.register("writer"), db.clone(), Default::default())
        .expect("opening a test database");
    (Supervisor::start(move |_| writer), db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::Call;

    /// A write that fails the way disk-full does: SQLite rolls the whole transaction back.
    /// `ONE` says whether it is a one-statement write (run without a savepoint).
    struct RollBackAndFail<const ONE: bool>;

    impl<const ONE: bool> WriteOp for RollBackAndFail<ONE> {
        type Output = ();
        const ONE_STATEMENT: bool = ONE;
        fn apply(self, conn: &Connection) -> Result<(), ActorError> {
            conn.execute_batch("ROLLBACK")
                .map_err(|e| ActorError::Internal(e.to_string()))?;
            Err(ActorError::Internal("database or disk is full".into()))
        }
    }

    /// A write that swaps the group's transaction for another under the writer, so that the
    /// statement closing its savepoint fails (as it would on an I/O error).
    struct BreakTheSavepoint;

    impl WriteOp for BreakTheSavepoint {
        type Output = ();
        fn apply(self, conn: &Connection) -> Result<(), ActorError> {
            conn.execute_batch("ROLLBACK; BEGIN")
                .map_err(|e| ActorError::Internal(e.to_string()))
        }
    }

    /// Queues a write before `failing`, and one after, together (so they are committed as
    /// one group), where `failing` rolls the whole transaction back and fails with `says`.
    async fn a_group_rolled_back_by(failing: impl WriteOp<Output = ()>, says: &str) {
        let dir = tempfile::tempdir().unwrap();
        let (writer, db) = start_for_test(dir.path());
        let upsert = |key: &str| {
            writer.send(Call(Commit(store::UpsertSetting {
                key: key.into(),
                value: "v".into(),
            })))
        };
        let before = upsert("before");
        let failing = writer.send(Call(Commit(failing)));
        let after = upsert("after");
        let (before, failing, after) = futures_util::join!(before, failing, after);
        let err = before.unwrap().unwrap_err().to_string();
        assert!(err.contains("rolled back the group"), "{err}");
        let err = failing.unwrap().unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
        assert_eq!(
            after.unwrap().unwrap().key,
            "after",
            "retried in the next group"
        );
        let reader = store::open_reader(&db).unwrap().unwrap();
        assert!(store::setting(&reader, "before").unwrap().is_none());
        assert!(store::setting(&reader, "after").unwrap().is_some());
    }

    #[actix_rt::test]
    async fn a_write_that_rolls_back_its_group_fails_the_group_and_the_rest_are_retried() {
        a_group_rolled_back_by(RollBackAndFail::<true>, "disk is full").await;
        // The same for a write of several statements (run inside a savepoint).
        a_group_rolled_back_by(RollBackAndFail::<false>, "disk is full").await;
    }

    #[actix_rt::test]
    async fn writes_a_failed_transaction_statement_stopped_get_its_error_not_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, db) = start_for_test(dir.path());
        let upsert = |key: &str| {
            writer.send(Call(Commit(store::UpsertSetting {
                key: key.into(),
                value: "v".into(),
            })))
        };
        let before = upsert("before");
        let breaking = writer.send(Call(Commit(BreakTheSavepoint)));
        let after = upsert("after");
        let (before, breaking, after) = futures_util::join!(before, breaking, after);
        for (name, r) in [
            ("before", before.map(|r| r.map(drop))),
            ("breaking", breaking),
            ("after", after.map(|r| r.map(drop))),
        ] {
            let err = r.unwrap().unwrap_err().to_string();
            assert!(
                err.contains("committing a group of writes") && !err.contains("restarted"),
                "{name}: {err}"
            );
        }
        let reader = store::open_reader(&db).unwrap().unwrap();
        assert!(store::setting(&reader, "before").unwrap().is_none());
        assert!(store::setting(&reader, "after").unwrap().is_none());
        // The writer goes on.
        let ok = upsert("later").await.unwrap().unwrap();
        assert_eq!(ok.key, "later");
    }
}
