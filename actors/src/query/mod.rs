//! The query path: from `query.run` params to an agent run through the executor pool, and
//! back to a recorded turn of a session. Also the `session.*` methods.
//!
//! A query belongs to a session (a new one unless `session` names an open one); the session
//! keeps the agent's own session id, which the next query resumes with `--resume=`. Each query
//! is cancellable by id (`query.cancel`) and is cancelled when its client disconnects.
//!
//! This module holds the service and its registry of running queries (`query.list`,
//! `query.cancel`); `run` is `query.run` step by step, `place` decides where and how the agent
//! runs, `attempts` runs it under the limiter and the breaker with retries, and `sessions`
//! serves `session.*`.

mod attempts;
mod place;
mod run;
mod sessions;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use ccd_protocol::RpcError;
use ccd_protocol::types::{QueryCancelled, QueryState};
use tokio_util::sync::CancellationToken;

use crate::agents::AgentService;
use crate::error::ActorError;
use crate::eventbus::Bus;
use crate::executor::ExecutorConfig;
use crate::executor::{ExecutorPool, SharedProbe};
use crate::reader::Reader;
use crate::resilience::limiter::LimiterCore;
use crate::resilience::{BreakerActor, LimiterActor, RetryConfig};
use crate::store::{self, WriteOp};
use crate::supervise::ask;
use crate::writer::{Commit, WriterActor};

/// What runs the agent: its configuration, the resolved command, where queries without a
/// place run.
pub struct AgentSetup {
    pub cfg: ExecutorConfig,
    pub probe: SharedProbe,
    pub default_cwd: PathBuf,
    /// The imported definitions, which every run is offered as subagents (as many as their
    /// `agents.expose` says).
    pub definitions: AgentService,
}

/// What guards every agent run.
#[derive(Clone)]
pub struct Resilience {
    pub limiter: Addr<LimiterActor>,
    /// The limiter's accounting, to wait for a released permit without polling.
    pub limiter_core: Arc<LimiterCore>,
    pub breaker: Addr<BreakerActor>,
    pub retry: RetryConfig,
}

#[derive(Clone)]
pub struct QueryService {
    writer: Addr<WriterActor>,
    reader: Reader,
    pool: Addr<ExecutorPool>,
    limiter: Addr<LimiterActor>,
    limiter_core: Arc<LimiterCore>,
    breaker: Addr<BreakerActor>,
    retry: RetryConfig,
    bus: Bus,
    cfg: ExecutorConfig,
    /// The agent command, resolved to the program every query runs.
    agent: SharedProbe,
    /// Where queries without a project or cwd run.
    default_cwd: PathBuf,
    definitions: AgentService,
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// Sessions with a query running (see [`SessionBusy`]).
    busy_sessions: Arc<Mutex<HashSet<String>>>,
    /// Bytes of prompts of refused queries waiting to be recorded in the background.
    refusal_backlog: Arc<tokio::sync::Semaphore>,
    /// Set by [`QueryService::cancel_all`]: the daemon is stopping.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// At most this many bytes of refused queries' prompts wait to be recorded in the background.
const REFUSAL_BACKLOG_BYTES: u32 = 64 * 1024 * 1024;

/// A query from its start to its reply: how to cancel it, and what `query.list` shows.
struct Running {
    cancel: CancellationToken,
    session_id: String,
    project: Option<String>,
    model: Option<String>,
    started_at_ms: i64,
    started: std::time::Instant,
    stage: Arc<std::sync::atomic::AtomicU8>,
}

/// Where a query is: the `state` of `query.list`.
const STAGE_WAITING: u8 = 0;
const STAGE_QUEUED: u8 = 1;
const STAGE_RUNNING: u8 = 2;
/// Handed to a free executor, the agent not yet heard from (shown as `queued`).
const STAGE_STARTING: u8 = 3;

fn stage_name(stage: u8) -> QueryState {
    match stage {
        STAGE_WAITING => QueryState::Waiting,
        STAGE_QUEUED | STAGE_STARTING => QueryState::Queued,
        _ => QueryState::Running,
    }
}

/// How long a query waits (for the rate limiter, or for a free executor) before its client
/// is told so.
const WAIT_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// A session's claim by the query running in it; released when dropped.
struct SessionBusy {
    sessions: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl SessionBusy {
    fn claim(sessions: &Arc<Mutex<HashSet<String>>>, id: &str) -> Result<Self, ActorError> {
        let mut busy = sessions.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(id.to_string()) {
            return Err(ActorError::Conflict(format!(
                "session `{id}` already has a query running; wait for it to finish, or start a \
                 new session"
            )));
        }
        Ok(SessionBusy {
            sessions: sessions.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for SessionBusy {
    fn drop(&mut self) {
        let mut busy = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.id);
    }
}

impl QueryService {
    pub fn new(
        writer: Addr<WriterActor>,
        reader: Reader,
        pool: Addr<ExecutorPool>,
        resilience: Resilience,
        bus: Bus,
        agent: AgentSetup,
    ) -> Self {
        let Resilience {
            limiter,
            limiter_core,
            breaker,
            retry,
        } = resilience;
        let AgentSetup {
            cfg,
            probe: agent,
            default_cwd,
            definitions,
        } = agent;
        QueryService {
            writer,
            reader,
            pool,
            limiter,
            limiter_core,
            breaker,
            retry,
            bus,
            cfg,
            agent,
            default_cwd,
            definitions,
            running: Default::default(),
            busy_sessions: Default::default(),
            refusal_backlog: Arc::new(tokio::sync::Semaphore::new(REFUSAL_BACKLOG_BYTES as usize)),
            stopping: Default::default(),
        }
    }

    pub fn pool(&self) -> &Addr<ExecutorPool> {
        &self.pool
    }

    pub fn limiter(&self) -> &Addr<LimiterActor> {
        &self.limiter
    }

    pub fn breaker(&self) -> &Addr<BreakerActor> {
        &self.breaker
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    async fn write<O: WriteOp>(&self, op: O) -> Result<O::Output, ActorError> {
        ask(&self.writer, "writer", Commit(op)).await
    }

    /// `query.cancel`: true when the query was running (or queued) and is now being stopped.
    /// Any unique prefix of its id works; a prefix of several is an error naming them.
    pub fn cancel(&self, query_id: &str) -> Result<QueryCancelled, ActorError> {
        let running = self.lock_running();
        let (id, token) = match running.get(query_id) {
            Some(r) => (query_id.to_string(), Some(r.cancel.clone())),
            None => {
                let mut matches: Vec<&String> = running
                    .keys()
                    .filter(|id| !query_id.is_empty() && id.starts_with(query_id))
                    .collect();
                matches.sort();
                match matches.as_slice() {
                    [] => (query_id.to_string(), None),
                    [one] => ((*one).clone(), running.get(*one).map(|r| r.cancel.clone())),
                    many => {
                        let ids: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
                        return Err(invalid(
                            "query.cancel",
                            &format!(
                                "`query_id`: `{query_id}` is ambiguous: it matches {}; give more \
                                 of the id",
                                ids.join(", ")
                            ),
                        ));
                    }
                }
            }
        };
        drop(running);
        if let Some(t) = &token {
            t.cancel();
        }
        Ok(QueryCancelled {
            query_id: id,
            cancelled: token.is_some(),
        })
    }

    /// `query.list`: the queries running, queued or waiting for the rate limiter, oldest first.
    pub fn list(&self) -> ccd_protocol::types::QueryList {
        let running = self.lock_running();
        let mut queries: Vec<ccd_protocol::types::RunningQuery> = running
            .iter()
            .map(|(id, r)| ccd_protocol::types::RunningQuery {
                query_id: id.clone(),
                session_id: r.session_id.clone(),
                project: r.project.clone(),
                model: r.model.clone(),
                state: stage_name(r.stage.load(std::sync::atomic::Ordering::Relaxed)),
                started_at: store::rfc3339(r.started_at_ms),
                elapsed_ms: r.started.elapsed().as_millis() as u64,
            })
            .collect();
        queries.sort_by_key(|q| std::cmp::Reverse(q.elapsed_ms));
        ccd_protocol::types::QueryList { queries }
    }

    /// Cancel every running or queued query (the daemon is stopping): each ends as a
    /// cancelled run, its agent terminated, its turn recorded and its caller answered.
    pub fn cancel_all(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let running = self.lock_running();
        if !running.is_empty() {
            tracing::warn!(
                queries = running.len(),
                "cancelling the queries still running"
            );
        }
        for r in running.values() {
            r.cancel.cancel();
        }
    }

    /// Wait (up to `limit`) until the refused queries being recorded in the background are
    /// written: a stop calls this before it drains the writer.
    pub async fn refusals_recorded(&self, limit: Duration) {
        let all = self.refusal_backlog.acquire_many(REFUSAL_BACKLOG_BYTES);
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("refused queries still being recorded after {limit:?}");
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn invalid(method: &str, why: &str) -> ActorError {
    ActorError::Rpc(RpcError::invalid_params(format!(
        "invalid params for {method}: {why}"
    )))
}
