//! The query path: from `query.run` params to an agent run through the executor pool, and
//! back to a recorded turn of a session. Also the `session.*` methods.
//!
//! A query belongs to a session (a new one unless `session` names an open one); the session
//! keeps the agent's own session id, which the next query resumes with `--resume=`. Each query
//! is cancellable by id (`query.cancel`) and is cancelled when its client disconnects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use ccd_protocol::types::{
    EventKind, QueryCancelled, QueryEvent, QueryResult, QueryRun, Session, SessionCleanupResult,
    SessionCreate, SessionDetail, SessionList, SessionListParams,
};
use ccd_protocol::{ErrorCode, Notification, RpcError, to_line};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::blocking::off_loop;
use crate::conn::ConnCtx;
use crate::error::ActorError;
use crate::eventbus::Bus;
use crate::executor::ExecutorConfig;
use crate::executor::{
    AgentFailure, AgentOptions, AgentSpec, ErrorClass, ExecutorPool, FailureKind, OnMessage,
    PoolStatus, Run, RunResult, SharedProbe, Submit, Transcript, agent_args,
};
use crate::reader::Reader;
use crate::resilience::breaker::Outcome;
use crate::resilience::limiter::{LimiterCore, Permit, WaitingGuard};
use crate::resilience::{
    Allow, BreakerActor, LimiterActor, Peek, RecordOutcome, RetryConfig, TryAcquire,
};
use crate::store::{self, WriteOp};
use crate::supervise::{Call, ask, mailbox_closed};
use crate::validate;
use crate::writer::{Write, WriterActor};
use ccd_protocol::agent::{AgentMessage, ContentBlock};

/// Longest accepted per-query deadline (24 hours).
const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Linux's limit on one argument to a program (MAX_ARG_STRLEN, 32 pages), less its NUL.
const MAX_ARG_BYTES: usize = 128 * 1024 - 1;
/// What all of a query's own options may add to the agent's arguments, well inside the
/// kernel's limit for arguments and environment together (a quarter of the 8 MiB stack).
const MAX_ARGS_BYTES: usize = 1024 * 1024;

/// What runs the agent: its configuration, the resolved command, where queries without a
/// place run.
pub struct AgentSetup {
    pub cfg: ExecutorConfig,
    pub probe: SharedProbe,
    pub default_cwd: PathBuf,
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

fn stage_name(stage: u8) -> &'static str {
    match stage {
        STAGE_WAITING => "waiting",
        STAGE_QUEUED | STAGE_STARTING => "queued",
        _ => "running",
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
        ask(&self.writer, "writer", Write(op)).await
    }

    /// `query.run`, step by step: check the params, claim the session it continues, place it,
    /// refuse it if the breaker is open, open its session, build the agent's spec, run it
    /// (each attempt under the limiter and the breaker), record the turn, publish what happened,
    /// and reply.
    pub async fn run(self, mut p: QueryRun, conn: ConnCtx) -> Result<QueryResult, ActorError> {
        let limits = self.check(&mut p).await?;
        // Held until the reply: no other query runs in this session meanwhile.
        let (mut _busy, existing) = self.claim_session(&mut p).await?;
        let place = self.place_agent(&p, existing.as_ref()).await?;
        let model = p
            .model
            .clone()
            .or_else(|| existing.as_ref().and_then(|s| s.model.clone()));
        let breaker_key = format!(
            "{}|{}",
            self.cfg.command,
            model.as_deref().unwrap_or("default")
        );
        if let Some(error) = self.refusal_if_open(&breaker_key).await {
            return Err(self.refuse(error, p, existing, &place, model).await);
        }
        let session = self.open_session(existing, &p, &place, &mut _busy).await?;
        let project = place.placement.project.clone();
        let turn_cwd = place.placement.cwd.to_string_lossy().into_owned();
        let spec = self.build_spec(&p, &session, model.clone(), place, &limits);
        let ran = self
            .run_guarded(
                &p,
                &session,
                &project,
                model.clone(),
                breaker_key,
                spec,
                &limits,
                &conn,
            )
            .await;
        let recorded = self
            .record_turn(&ran, &session, p.prompt, model, turn_cwd)
            .await;
        self.publish_outcome(&ran, &session, &project, &recorded);
        reply(ran, session, recorded.turn)
    }

    /// Params beyond their types: the prompt, options that exclude each other, the deadline,
    /// the environment, the agent's arguments, and the extra directories (made canonical).
    async fn check(&self, p: &mut QueryRun) -> Result<Limits, ActorError> {
        const M: &str = "query.run";
        if p.prompt.trim().is_empty() {
            return Err(invalid(M, "`prompt`: must not be empty"));
        }
        if p.new_session && p.session.is_some() {
            return Err(invalid(M, "give `session` or `new_session`, not both"));
        }
        if p.project.is_some() && p.cwd.is_some() {
            return Err(invalid(M, "give `project` or `cwd`, not both"));
        }
        if p.session.is_some() && p.tags.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(invalid(
                M,
                "`tags`: tags a new session; `session` continues one, whose tags stay as they are",
            ));
        }
        let timeout_ms = p.timeout_ms.unwrap_or(self.cfg.timeout_ms);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid(
                M,
                &format!("`timeout_ms`: must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        if let Some(env) = &p.env
            && let Some(bad) = env.iter().find(|(k, v)| {
                k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0')
            })
        {
            return Err(invalid(
                M,
                &format!(
                    "`env`: `{}`: a name must be non-empty without `=` or NUL, a value without NUL",
                    bad.0.escape_debug()
                ),
            ));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        agent_args_fit(
            M,
            &[
                (
                    "append_system_prompt",
                    "--append-system-prompt",
                    p.append_system_prompt.as_slice(),
                    false,
                ),
                ("mcp_config", "--mcp-config", p.mcp_config.as_slice(), false),
                ("model", "--model", p.model.as_slice(), false),
                (
                    "allowed_tools",
                    "--allowedTools",
                    p.allowed_tools.as_deref().unwrap_or_default(),
                    true,
                ),
                (
                    "disallowed_tools",
                    "--disallowedTools",
                    p.disallowed_tools.as_deref().unwrap_or_default(),
                    true,
                ),
                (
                    "add_dirs",
                    "--add-dir",
                    p.add_dirs.as_deref().unwrap_or_default(),
                    false,
                ),
            ],
        )?;
        // Each directory the agent may also use: existing and absolute (the daemon's own
        // directory is not the client's), passed on canonical.
        if let Some(dirs) = p.add_dirs.take() {
            let mut checked = Vec::with_capacity(dirs.len());
            for dir in dirs {
                checked.push(checked_dir("add_dirs", dir).await?);
            }
            p.add_dirs = Some(checked);
        }
        Ok(Limits {
            timeout_ms,
            deadline,
        })
    }

    /// The session the query continues, if any, claimed and read (it must be open).
    ///
    /// One query at a time per session: two would resume the same conversation at once and the
    /// later turn would silently drop the other's branch of it. Claimed before the session is
    /// read, so that what is read is what the last run left.
    async fn claim_session(
        &self,
        p: &mut QueryRun,
    ) -> Result<(Option<SessionBusy>, Option<Session>), ActorError> {
        if let Some(prefix) = &p.session {
            p.session = Some(self.resolve_session(prefix).await?);
        }
        let busy = match &p.session {
            Some(id) => Some(SessionBusy::claim(&self.busy_sessions, id)?),
            None => None,
        };
        // An existing session to continue, if any: its project is the default place to run.
        let existing = match &p.session {
            Some(id) => {
                let lookup = id.clone();
                let s = self
                    .reader
                    .read("reading the session", move |c| store::session(c, &lookup))
                    .await?
                    .ok_or_else(|| ActorError::NotFound(format!("no session `{id}`")))?;
                if s.status != "open" {
                    return Err(ActorError::Conflict(format!(
                        "session `{id}` is {}; start a new one",
                        s.status
                    )));
                }
                Some(s)
            }
            None => None,
        };
        Ok((busy, existing))
    }

    /// Where the agent runs, with which environment and program: refused here, before
    /// anything runs or counts against a breaker, when that place is gone.
    async fn place_agent(
        &self,
        p: &QueryRun,
        existing: Option<&Session>,
    ) -> Result<AgentPlace, ActorError> {
        let mut placement = self.place(p, existing).await?;
        let (env_remove, env) = self.agent_env(p.env.as_ref(), std::mem::take(&mut placement.env));
        let program = {
            let probe = self.agent.clone();
            off_loop("resolving the agent command", move || {
                crate::executor::agent_program(&probe)
            })
            .await?
        };
        Ok(AgentPlace {
            placement,
            env_remove,
            env,
            program,
        })
    }

    /// An open breaker refuses the query before it costs anything: no session to wait for,
    /// no permit, no agent.
    async fn refusal_if_open(&self, breaker_key: &str) -> Option<ActorError> {
        let peek = Peek {
            key: breaker_key.to_string(),
        };
        let retry_after = ask(&self.breaker, "breaker", peek).await.ok().flatten()?;
        Some(ActorError::CircuitOpen {
            key: breaker_key.to_string(),
            retry_after_ms: crate::resilience::ceil_millis(retry_after),
        })
    }

    /// Refuse the query with `error` (an open breaker); its refused turn is recorded.
    ///
    /// Recorded after the answer, in the background, while the prompts waiting to be recorded
    /// so take at most REFUSAL_BACKLOG_BYTES; past that, before the answer, so that the
    /// connection's in-flight limit bounds what a client that keeps asking holds.
    async fn refuse(
        &self,
        error: ActorError,
        p: QueryRun,
        existing: Option<Session>,
        place: &AgentPlace,
        model: Option<String>,
    ) -> ActorError {
        let bytes = u32::try_from(p.prompt.len().max(1))
            .unwrap_or(u32::MAX)
            .min(REFUSAL_BACKLOG_BYTES);
        let record = self.clone().record_refusal(Refusal {
            existing,
            create: store::CreateSession {
                id: uuid::Uuid::new_v4().to_string(),
                project: place.placement.project.clone(),
                cwd: Some(place.placement.cwd.to_string_lossy().into_owned()),
                tags: p.tags.unwrap_or_default(),
                model: p.model.clone(),
            },
            model,
            prompt: p.prompt,
            error: error.to_string(),
        });
        match self.refusal_backlog.clone().try_acquire_many_owned(bytes) {
            Ok(held) => {
                actix_rt::spawn(async move {
                    record.await;
                    drop(held);
                });
            }
            Err(_) => record.await,
        }
        error
    }

    /// The session the turn goes into: the one it continues, else a new one (claimed as busy
    /// before anyone can learn of it, since its creation is published).
    async fn open_session(
        &self,
        existing: Option<Session>,
        p: &QueryRun,
        place: &AgentPlace,
        busy: &mut Option<SessionBusy>,
    ) -> Result<Session, ActorError> {
        if let Some(s) = existing {
            return Ok(s);
        }
        let id = uuid::Uuid::new_v4().to_string();
        *busy = Some(SessionBusy::claim(&self.busy_sessions, &id)?);
        let s = self
            .write(store::CreateSession {
                id,
                project: place.placement.project.clone(),
                cwd: Some(place.placement.cwd.to_string_lossy().into_owned()),
                tags: p.tags.clone().unwrap_or_default(),
                model: p.model.clone(),
            })
            .await?;
        self.bus.publish(EventKind::SessionCreated {
            session_id: s.id.clone(),
            project: s.project.clone(),
        });
        Ok(s)
    }

    /// What the executor runs: the agent's arguments (resuming the session's conversation),
    /// place, environment, prompt and limits.
    fn build_spec(
        &self,
        p: &QueryRun,
        session: &Session,
        model: Option<String>,
        place: AgentPlace,
        limits: &Limits,
    ) -> AgentSpec {
        let options = AgentOptions {
            resume: session.agent_session_id.clone(),
            model,
            max_turns: p.max_turns,
            append_system_prompt: p.append_system_prompt.clone(),
            permission_mode: p.permission_mode,
            allowed_tools: p.allowed_tools.clone().unwrap_or_default(),
            disallowed_tools: p.disallowed_tools.clone().unwrap_or_default(),
            mcp_config: p.mcp_config.clone(),
            add_dirs: p.add_dirs.clone().unwrap_or_default(),
        };
        AgentSpec {
            command: place.program.to_string_lossy().into_owned(),
            args: agent_args(&options),
            cwd: place.placement.cwd,
            env_remove: place.env_remove,
            env: place.env,
            prompt: p.prompt.clone(),
            deadline: limits.deadline,
            timeout: Duration::from_millis(limits.timeout_ms),
            kill_grace: Duration::from_millis(self.cfg.kill_grace_ms),
            max_line_bytes: self.cfg.max_line_bytes,
            cli_retry_limit: self.cfg.cli_retry_limit,
        }
    }

    /// Run the query's attempts, listed as running (`query.list`, `query.cancel`) meanwhile;
    /// publishes `turn.started`.
    #[allow(clippy::too_many_arguments)]
    async fn run_guarded(
        &self,
        p: &QueryRun,
        session: &Session,
        project: &Option<String>,
        model: Option<String>,
        breaker_key: String,
        spec: AgentSpec,
        limits: &Limits,
        conn: &ConnCtx,
    ) -> Ran {
        let query_id = uuid::Uuid::new_v4().to_string();
        // Cancelled by query.cancel, or when the client goes away.
        let cancel = conn.closed.child_token();
        let stage = Arc::new(std::sync::atomic::AtomicU8::new(STAGE_WAITING));
        let started_at_ms = store::now_ms();
        let started = std::time::Instant::now();
        {
            let mut running = self.lock_running();
            // A query that gets here after a stop's `cancel_all` is cancelled at once.
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                cancel.cancel();
            }
            running.insert(
                query_id.clone(),
                Running {
                    cancel: cancel.clone(),
                    session_id: session.id.clone(),
                    project: project.clone(),
                    model: model.clone(),
                    started_at_ms,
                    started,
                    stage: stage.clone(),
                },
            );
        }
        tracing::info!(query_id, session = %session.id, "query started");
        self.bus.publish(EventKind::TurnStarted {
            session_id: session.id.clone(),
            query_id: query_id.clone(),
            project: project.clone(),
            model: model.clone(),
        });
        let guarded = Guarded {
            query_id: query_id.clone(),
            session_id: session.id.clone(),
            model,
            project: project.clone(),
            breaker_key,
            deadline: limits.deadline,
            no_wait: p.no_wait,
            stage,
            wait_ends_ms: Default::default(),
        };
        // A streaming client that has waited a second is told what for.
        let notices = p
            .stream
            .then(|| wait_notices(&guarded, conn, self.pool.clone(), cancel.clone()));
        let outcome = self
            .run_attempts(&guarded, spec, &cancel, p.stream, &query_id, conn)
            .await;
        self.lock_running().remove(&query_id);
        if let Some(n) = notices {
            n.abort();
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        let (transcript, failure, attempts, spent) = match outcome {
            Attempts::Done {
                result,
                attempts,
                spent,
            } => match *result {
                Ok(t) => (t, None, attempts, spent),
                Err(f) => (
                    f.transcript.clone(),
                    Some(Failure::Agent(f)),
                    attempts,
                    spent,
                ),
            },
            Attempts::Refused {
                error,
                attempts,
                spent,
            } => (
                Transcript::default(),
                Some(Failure::Refused(error)),
                attempts,
                spent,
            ),
        };
        Ran {
            query_id,
            transcript,
            failure,
            attempts,
            spent,
            started_at_ms,
            duration_ms,
        }
    }

    /// Record the query's turn (an error is logged here, and fails only a reply that would
    /// have been a success).
    async fn record_turn(
        &self,
        ran: &Ran,
        session: &Session,
        prompt: String,
        model: Option<String>,
        turn_cwd: String,
    ) -> Recorded {
        let Ran {
            query_id,
            transcript,
            failure,
            ..
        } = ran;
        let result = transcript.result.clone();
        let (status, error_class, error) = match failure {
            None => ("ok", None, None),
            Some(Failure::Agent(f)) => (
                match f.kind {
                    FailureKind::Agent => "error",
                    FailureKind::Timeout => "timeout",
                    FailureKind::Cancelled => "cancelled",
                },
                Some(f.class.as_str().to_string()),
                Some(f.detail.clone()),
            ),
            Some(Failure::Refused(e)) => ("refused", None, Some(e.to_string())),
        };
        let turn = store::RecordTurn {
            session_id: session.id.clone(),
            query_id: query_id.clone(),
            prompt,
            result: result
                .as_ref()
                .and_then(|r| r.result.clone())
                .or_else(|| non_empty(&transcript.text)),
            status,
            error_class,
            error,
            usage: ran.spent.usage,
            cost_usd: ran.spent.cost_usd,
            duration_ms: ran.duration_ms,
            num_turns: result.as_ref().map(|r| r.num_turns).unwrap_or(0),
            attempts: ran.attempts,
            model: transcript.model.clone().or(model),
            started_at_ms: ran.started_at_ms,
            agent_session_id: transcript.agent_session_id(),
            cwd: Some(turn_cwd),
        };
        let model = turn.model.clone();
        let turn = self.write(turn).await;
        if let Err(e) = &turn {
            tracing::error!(query_id, "recording the turn: {e}");
        }
        Recorded {
            status,
            model,
            turn,
        }
    }

    /// The events of a finished query: tokens used, cost, an error, and `turn.completed`.
    fn publish_outcome(
        &self,
        ran: &Ran,
        session: &Session,
        project: &Option<String>,
        recorded: &Recorded,
    ) {
        let (usage, cost) = (ran.spent.usage, ran.spent.cost_usd);
        let model_used = recorded.model.clone();
        let (sid, qid) = (session.id.clone(), ran.query_id.clone());
        if usage.total() > 0 {
            self.bus.publish(EventKind::TokensUsed {
                session_id: sid.clone(),
                query_id: qid.clone(),
                project: project.clone(),
                model: model_used.clone(),
                usage,
            });
        }
        if cost > 0.0 {
            self.bus.publish(EventKind::CostIncurred {
                session_id: sid.clone(),
                query_id: qid.clone(),
                project: project.clone(),
                model: model_used.clone(),
                cost_usd: cost,
            });
        }
        if let Some(f) = &ran.failure {
            let (class, detail) = match f {
                Failure::Agent(f) => (f.class.as_str().to_string(), f.detail.clone()),
                Failure::Refused(e) => ("refused".to_string(), e.to_string()),
            };
            self.bus.publish(EventKind::SessionError {
                session_id: sid.clone(),
                query_id: qid.clone(),
                project: project.clone(),
                class,
                detail,
            });
        }
        self.bus.publish(EventKind::TurnCompleted {
            session_id: sid,
            query_id: qid,
            project: project.clone(),
            model: model_used,
            status: recorded.status.to_string(),
            duration_ms: ran.duration_ms,
            attempts: ran.attempts,
        });
    }

    /// Record a query the breaker refused before it started: its session (a new one unless it
    /// continues one: `create` when it does not; its `project` is where the query would have
    /// run), a `refused` turn, and the events a refused query publishes.
    async fn record_refusal(self, r: Refusal) {
        let Refusal {
            existing,
            create,
            model,
            prompt,
            error,
        } = r;
        let started_at_ms = store::now_ms();
        let project = create.project.clone();
        let session_id = match existing {
            Some(s) => s.id,
            None => {
                let created = self.write(create).await;
                match created {
                    Ok(s) => {
                        self.bus.publish(EventKind::SessionCreated {
                            session_id: s.id.clone(),
                            project: s.project.clone(),
                        });
                        s.id
                    }
                    Err(e) => {
                        tracing::error!("recording a refused query's session: {e}");
                        return;
                    }
                }
            }
        };
        let query_id = uuid::Uuid::new_v4().to_string();
        let turn = store::RecordTurn {
            session_id: session_id.clone(),
            query_id: query_id.clone(),
            prompt,
            result: None,
            status: "refused",
            error_class: None,
            error: Some(error.clone()),
            usage: Default::default(),
            cost_usd: 0.0,
            duration_ms: 0,
            num_turns: 0,
            attempts: 0,
            model: model.clone(),
            started_at_ms,
            agent_session_id: None,
            cwd: None,
        };
        if let Err(e) = self.write(turn).await {
            tracing::error!(query_id, "recording a refused query: {e}");
        }
        self.bus.publish(EventKind::SessionError {
            session_id: session_id.clone(),
            query_id: query_id.clone(),
            project: project.clone(),
            class: "refused".into(),
            detail: error,
        });
        self.bus.publish(EventKind::TurnCompleted {
            session_id,
            query_id,
            project,
            model,
            status: "refused".into(),
            duration_ms: 0,
            attempts: 0,
        });
    }

    /// Attempts of one query: limiter → breaker → run → record → retry while the error is
    /// retryable, attempts remain and the deadline allows the backoff.
    async fn run_attempts(
        &self,
        g: &Guarded,
        spec: AgentSpec,
        cancel: &CancellationToken,
        stream: bool,
        query_id: &str,
        conn: &ConnCtx,
    ) -> Attempts {
        let mut spent = Spent::default();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let permit = match self.acquire(g, cancel).await {
                Ok(p) => p,
                Err(error) => {
                    return Attempts::Refused {
                        error,
                        attempts: attempt - 1,
                        spent,
                    };
                }
            };
            match ask(
                &self.breaker,
                "breaker",
                Allow {
                    key: g.breaker_key.clone(),
                },
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(retry_after)) => {
                    let error = ActorError::CircuitOpen {
                        key: g.breaker_key.clone(),
                        retry_after_ms: crate::resilience::ceil_millis(retry_after),
                    };
                    return Attempts::Refused {
                        error,
                        attempts: attempt - 1,
                        spent,
                    };
                }
                Err(e) => {
                    return Attempts::Refused {
                        error: e,
                        attempts: attempt - 1,
                        spent,
                    };
                }
            }
            // Queued when every executor is busy (a notice tells a waiting client so).
            let full = matches!(
                ask(&self.pool, "executor", PoolStatus).await,
                Ok(p) if p.busy >= p.size
            );
            g.stage.store(
                if full { STAGE_QUEUED } else { STAGE_STARTING },
                std::sync::atomic::Ordering::Relaxed,
            );
            let t0 = std::time::Instant::now();
            let (on_message, relay) = streamer(stream, g, conn, self.bus.clone());
            let run = Run {
                spec: spec.clone(),
                cancel: cancel.clone(),
                on_message,
            };
            let result = match self.pool.send(Call(Submit(run))).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    self.breaker.do_send(Call(RecordOutcome {
                        key: g.breaker_key.clone(),
                        outcome: None,
                        duration: t0.elapsed(),
                    }));
                    return Attempts::Refused {
                        error: e,
                        attempts: attempt - 1,
                        spent,
                    };
                }
                // A closed mailbox records no outcome: the run never reached an executor.
                Err(_) => {
                    return Attempts::Refused {
                        error: mailbox_closed("executor"),
                        attempts: attempt - 1,
                        spent,
                    };
                }
            };
            // This attempt's events are on their way to the client before whatever follows
            // (a retry notice, the reply).
            if let Some(relay) = relay {
                let _ = relay.await;
            }
            drop(permit);
            let transcript = match &result {
                Ok(t) => t,
                Err(f) => &f.transcript,
            };
            spent.add(transcript);
            let outcome = match &result {
                Ok(_) => Some(Outcome::Success),
                Err(f) if f.kind == FailureKind::Cancelled => None,
                Err(f) if f.class == ErrorClass::NonRetryable => Some(Outcome::Ignored),
                Err(_) => Some(Outcome::Failure),
            };
            self.breaker.do_send(Call(RecordOutcome {
                key: g.breaker_key.clone(),
                outcome,
                duration: t0.elapsed(),
            }));
            let f = match result {
                Ok(t) => {
                    return Attempts::Done {
                        result: Box::new(Ok(t)),
                        attempts: attempt,
                        spent,
                    };
                }
                Err(f) => f,
            };
            let retryable = f.class == ErrorClass::Retryable && f.kind == FailureKind::Agent;
            if !retryable || attempt > self.retry.max_retries {
                return Attempts::Done {
                    result: Box::new(Err(f)),
                    attempts: attempt,
                    spent,
                };
            }
            let delay = self.retry.backoff(attempt);
            if tokio::time::Instant::now() + delay >= g.deadline {
                return Attempts::Done {
                    result: Box::new(Err(f)),
                    attempts: attempt,
                    spent,
                };
            }
            tracing::info!(
                query_id,
                attempt,
                ?delay,
                "retrying after a retryable failure: {}",
                f.detail
            );
            spent.last_error = Some(f.detail.clone());
            self.bus.publish(EventKind::QueryRetried {
                session_id: g.session_id.clone(),
                query_id: g.query_id.clone(),
                project: g.project.clone(),
                attempt: attempt + 1,
                delay_ms: delay.as_millis() as u64,
                error: f.detail.clone(),
            });
            notify(
                stream,
                query_id,
                conn,
                json!({
                    "type": "ccd", "subtype": "retry", "attempt": attempt + 1,
                    "delay_ms": delay.as_millis() as u64, "error": f.detail,
                }),
            )
            .await;
            g.stage
                .store(STAGE_WAITING, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => {
                    let mut f = *f;
                    f.kind = FailureKind::Cancelled;
                    f.class = ErrorClass::NonRetryable;
                    f.detail = "stopped while waiting to retry".into();
                    return Attempts::Done { result: Box::new(Err(Box::new(f))), attempts: attempt, spent };
                }
            }
        }
    }

    /// Wait for the rate limiter's admission, up to the deadline (or refuse at once with
    /// `no_wait`).
    async fn acquire(&self, g: &Guarded, cancel: &CancellationToken) -> Result<Permit, ActorError> {
        let mut waiting: Option<WaitingGuard> = None;
        loop {
            let request = TryAcquire {
                model: g.model.clone(),
                project: g.project.clone(),
                wait: waiting.is_none() && !g.no_wait,
                again: waiting.is_some(),
            };
            let (throttled, guard) = match ask(&self.limiter, "limiter", request).await? {
                Ok(permit) => return Ok(permit),
                Err(refused) => refused,
            };
            let now = tokio::time::Instant::now();
            let refused = ActorError::RateLimited {
                retry_after_ms: crate::resilience::ceil_millis(throttled.retry_after).max(1),
                key: throttled.key.clone(),
                concurrency: throttled.concurrency,
            };
            if g.no_wait
                || (!throttled.concurrency && now + throttled.retry_after > g.deadline)
                || now >= g.deadline
            {
                return Err(refused);
            }
            g.wait_ends_ms.store(
                (store::now_ms().max(0) as u64)
                    .saturating_add(crate::resilience::ceil_millis(throttled.retry_after)),
                std::sync::atomic::Ordering::Relaxed,
            );
            g.stage
                .store(STAGE_WAITING, std::sync::atomic::Ordering::Relaxed);
            if waiting.is_none() {
                self.bus.publish(EventKind::LimiterThrottled {
                    session_id: g.session_id.clone(),
                    query_id: g.query_id.clone(),
                    project: g.project.clone(),
                    model: g.model.clone(),
                    key: throttled.key.clone(),
                    retry_after_ms: crate::resilience::ceil_millis(throttled.retry_after),
                });
                // Counted as waiting by the refusal itself, under the limiter's lock.
                waiting = guard;
            }
            let wait = throttled
                .retry_after
                .min(g.deadline.saturating_duration_since(now));
            tokio::select! {
                _ = self.limiter_core.released_or(wait) => {}
                _ = cancel.cancelled() => {
                    return Err(ActorError::Agent {
                        code: ErrorCode::Cancelled,
                        message: "query cancelled while waiting for the rate limiter".into(),
                        data: json!({ "class": "non_retryable", "detail": "cancelled" }),
                    });
                }
            }
        }
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
                state: stage_name(r.stage.load(std::sync::atomic::Ordering::Relaxed)).into(),
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

    pub async fn create_session(self, p: SessionCreate) -> Result<Session, ActorError> {
        const M: &str = "session.create";
        // The session's model becomes an argument of every agent run in it.
        agent_args_fit(M, &[("model", "--model", p.model.as_slice(), false)])?;
        if p.project.is_some() && p.cwd.is_some() {
            return Err(invalid(M, "give `project` or `cwd`, not both"));
        }
        let project = match &p.project {
            Some(name) => Some(self.find_project(name).await?.name),
            None => None,
        };
        let cwd = match p.cwd {
            Some(dir) => Some(checked_dir("cwd", dir).await?),
            None => None,
        };
        let id = uuid::Uuid::new_v4().to_string();
        let s = self
            .write(store::CreateSession {
                id,
                project,
                cwd,
                tags: p.tags.unwrap_or_default(),
                model: p.model,
            })
            .await?;
        self.bus.publish(EventKind::SessionCreated {
            session_id: s.id.clone(),
            project: s.project.clone(),
        });
        Ok(s)
    }

    /// A project by name, or by the path of its directory (any path that resolves to it).
    async fn find_project(&self, name: &str) -> Result<ccd_protocol::types::Project, ActorError> {
        let lookup = name.to_string();
        let found = self
            .reader
            .read("reading the project", move |c| {
                if let Some(p) = store::project(c, &lookup)? {
                    return Ok(Some(p));
                }
                if !lookup.starts_with('/') {
                    return Ok(None);
                }
                let Ok(canonical) = std::fs::canonicalize(&lookup) else {
                    return Ok(None);
                };
                let canonical = canonical.to_string_lossy();
                Ok(store::projects(c)?
                    .into_iter()
                    .find(|p| p.path == canonical))
            })
            .await?;
        found.ok_or_else(|| ActorError::NotFound(format!("no project named `{name}`")))
    }

    /// Where a query runs. In order: the caller's `project`, the caller's `cwd`, the
    /// session's own directory (Claude Code finds a conversation only in the directory it was
    /// started in), the session's project, the daemon's default. A place that is gone is the
    /// caller's error, named with what to do: nothing has run, and no breaker counts it.
    async fn place(
        &self,
        p: &QueryRun,
        existing: Option<&Session>,
    ) -> Result<Placement, ActorError> {
        if let Some(name) = &p.project {
            let project = self.find_project(name).await?;
            let what = format!("project `{}`", project.name);
            let fix = format!(
                "point it at a directory that exists with `ccd project set {0} --path DIR`, or \
                 remove it with `ccd project rm {0}`",
                project.name
            );
            return Ok(Placement {
                cwd: existing_dir(&project.path, &what, &fix).await?,
                env: project.env,
                project: Some(project.name),
            });
        }
        if let Some(dir) = &p.cwd {
            return Ok(Placement {
                cwd: PathBuf::from(checked_dir("cwd", dir.clone()).await?),
                env: BTreeMap::new(),
                project: None,
            });
        }
        let Some(s) = existing else {
            return Ok(Placement {
                cwd: self.default_cwd.clone(),
                env: BTreeMap::new(),
                project: None,
            });
        };
        let project = match &s.project {
            Some(name) => {
                let lookup = name.clone();
                let found = self
                    .reader
                    .read("reading the project", move |c| store::project(c, &lookup))
                    .await?;
                Some(found.ok_or_else(|| {
                    ActorError::NotFound(format!(
                        "session `{}` was started in project `{name}`, which no longer exists; \
                         give `project` or `cwd`, or start a new session",
                        s.id
                    ))
                })?)
            }
            None => None,
        };
        let dir = s
            .cwd
            .clone()
            .or_else(|| project.as_ref().map(|p| p.path.clone()))
            .unwrap_or_else(|| self.default_cwd.to_string_lossy().into_owned());
        let what = format!("session `{}`", s.id);
        let fix = "its conversation is kept by Claude Code per directory: restore the directory, \
                   or give `cwd`/`project` to run elsewhere (the agent then starts without the \
                   earlier turns), or start a new session";
        let (env, project) = match project {
            Some(p) => (p.env, Some(p.name)),
            None => (BTreeMap::new(), None),
        };
        Ok(Placement {
            cwd: existing_dir(&dir, &what, fix).await?,
            env,
            project,
        })
    }

    /// The agent's environment for a query: what to take out of the daemon's and what to set.
    /// With the caller's environment, every variable `executor.pass_env` names comes from it
    /// (or is not set, when the caller has none); a project's `env` applies on top.
    fn agent_env(
        &self,
        caller: Option<&BTreeMap<String, String>>,
        project_env: BTreeMap<String, String>,
    ) -> (Vec<String>, BTreeMap<String, String>) {
        let Some(caller) = caller else {
            return (Vec::new(), project_env);
        };
        let remove = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| self.cfg.passes_env(name))
            .collect();
        let mut env: BTreeMap<String, String> = caller
            .iter()
            .filter(|(name, _)| self.cfg.passes_env(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(project_env);
        (remove, env)
    }

    /// A session's full id from any unique prefix of it.
    pub async fn resolve_session(&self, prefix: &str) -> Result<String, ActorError> {
        let lookup = prefix.to_string();
        self.reader
            .read("finding a session", move |c| {
                Ok(store::resolve_session_id(c, &lookup))
            })
            .await?
    }

    pub async fn get_session(self, id: String) -> Result<SessionDetail, ActorError> {
        let id = self.resolve_session(&id).await?;
        let lookup = id.clone();
        let found = self
            .reader
            .read("reading a session", move |c| {
                let Some(session) = store::session(c, &lookup)? else {
                    return Ok(None);
                };
                let turns = store::turns(c, &lookup)?;
                Ok(Some(SessionDetail { session, turns }))
            })
            .await?;
        found.ok_or_else(|| ActorError::NotFound(format!("no session `{id}`")))
    }

    pub async fn list_sessions(self, p: SessionListParams) -> Result<SessionList, ActorError> {
        if let Some(s) = &p.status
            && !["open", "closed", "expired"].contains(&s.as_str())
        {
            return Err(invalid(
                "session.list",
                "`status`: must be open, closed or expired",
            ));
        }
        let limit = validate::page_limit("session.list", p.limit)?;
        let (sessions, more) = self
            .reader
            .read("listing sessions", move |c| {
                store::sessions(
                    c,
                    store::SessionFilter {
                        status: p.status.as_deref(),
                        tag: p.tag.as_deref(),
                        project: p.project.as_deref(),
                        cwd: None,
                        limit: Some(limit),
                        offset: p.offset.unwrap_or(0),
                    },
                )
            })
            .await?;
        Ok(SessionList { sessions, more })
    }

    pub async fn close_session(self, id: String) -> Result<Session, ActorError> {
        let id = self.resolve_session(&id).await?;
        let s = self.write(store::CloseSession { id }).await?;
        self.bus.publish(EventKind::SessionClosed {
            session_id: s.id.clone(),
        });
        Ok(s)
    }

    /// `session.delete`: a session and its turns, unless a query is running in it.
    pub async fn delete_session(self, id: String) -> Result<Session, ActorError> {
        let id = self.resolve_session(&id).await?;
        // Claimed while it is deleted: no query can start in it meanwhile.
        let _busy = SessionBusy::claim(&self.busy_sessions, &id)?;
        self.write(store::DeleteSession { id }).await
    }

    pub async fn cleanup_sessions(
        self,
        older_than_s: u64,
    ) -> Result<SessionCleanupResult, ActorError> {
        let cutoff = store::now_ms()
            .saturating_sub((older_than_s.min(i64::MAX as u64 / 1000) * 1000) as i64);
        let removed = self
            .write(store::CleanupSessions {
                used_before_ms: cutoff,
            })
            .await?;
        Ok(SessionCleanupResult {
            removed: removed as u64,
        })
    }
}

fn invalid(method: &str, why: &str) -> ActorError {
    ActorError::Rpc(RpcError::invalid_params(format!(
        "invalid params for {method}: {why}"
    )))
}

/// A query the breaker refused before it started, to be recorded.
struct Refusal {
    /// The session it continued; `None`: `create` makes one for it.
    existing: Option<Session>,
    create: store::CreateSession,
    /// The model it would have run with.
    model: Option<String>,
    prompt: String,
    error: String,
}

/// Where a query runs: its directory, its project's `env`, its project.
struct Placement {
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    project: Option<String>,
}

/// A client's directory parameter, checked and made canonical (off the event loop: it may be
/// on a slow mount).
async fn checked_dir(param: &'static str, dir: String) -> Result<String, ActorError> {
    off_loop("checking a directory", move || validate::dir(param, &dir))
        .await?
        .map_err(ActorError::Rpc)
}

/// `dir` if it is a directory; else a not-found error that names `what` it belongs to and the
/// `fix`.
async fn existing_dir(dir: &str, what: &str, fix: &str) -> Result<PathBuf, ActorError> {
    let path = PathBuf::from(dir);
    let probe = path.clone();
    let is_dir = off_loop("checking a directory", move || probe.is_dir()).await?;
    if is_dir {
        Ok(path)
    } else {
        Err(ActorError::NotFound(format!(
            "{what} runs in {dir}, which does not exist (or is not a directory); {fix}"
        )))
    }
}

/// The resilience inputs of one query.
struct Guarded {
    query_id: String,
    session_id: String,
    model: Option<String>,
    project: Option<String>,
    breaker_key: String,
    deadline: tokio::time::Instant,
    no_wait: bool,
    /// Where the query is, for `query.list`.
    stage: Arc<std::sync::atomic::AtomicU8>,
    /// While it waits for the rate limiter: when that wait ends (ms since the epoch).
    wait_ends_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Tokens and cost over all attempts of a query.
#[derive(Default)]
struct Spent {
    usage: ccd_protocol::types::Usage,
    cost_usd: f64,
    /// Why the last attempt that ran failed, when the query goes on to another.
    last_error: Option<String>,
}

impl Spent {
    fn add(&mut self, t: &Transcript) {
        self.usage.add(&t.usage);
        self.cost_usd += t.result.as_ref().map(|r| r.total_cost_usd).unwrap_or(0.0);
    }
}

enum Attempts {
    /// The agent ran at least once; the last attempt's outcome.
    Done {
        result: Box<RunResult>,
        attempts: u32,
        spent: Spent,
    },
    /// An attempt was refused before it ran (limiter, breaker, pool).
    Refused {
        error: ActorError,
        attempts: u32,
        spent: Spent,
    },
}

enum Failure {
    Agent(Box<AgentFailure>),
    Refused(ActorError),
}

/// A query's time limit, fixed when its params are checked.
struct Limits {
    timeout_ms: u64,
    deadline: tokio::time::Instant,
}

/// Where the agent runs, with which environment and program.
struct AgentPlace {
    placement: Placement,
    env_remove: Vec<String>,
    env: BTreeMap<String, String>,
    program: PathBuf,
}

/// A query's attempts, over: how the last one ended, and what they all cost.
struct Ran {
    query_id: String,
    transcript: Transcript,
    failure: Option<Failure>,
    attempts: u32,
    spent: Spent,
    started_at_ms: i64,
    duration_ms: u64,
}

/// A query's turn as recorded.
struct Recorded {
    status: &'static str,
    /// The model it ran with: the agent's own word, else the one asked for.
    model: Option<String>,
    turn: Result<ccd_protocol::types::Turn, ActorError>,
}

/// The reply to a finished query: its result, or the error that ended it.
fn reply(
    ran: Ran,
    session: Session,
    recorded: Result<ccd_protocol::types::Turn, ActorError>,
) -> Result<QueryResult, ActorError> {
    let Ran {
        query_id,
        transcript,
        failure,
        attempts,
        spent,
        ..
    } = ran;
    match failure {
        None => {
            let turn = recorded?;
            tracing::info!(query_id, attempts, "query finished");
            Ok(QueryResult {
                query_id,
                session_id: session.id,
                agent_session_id: transcript.agent_session_id(),
                result: turn.result,
                is_error: false,
                usage: turn.usage,
                cost_usd: turn.cost_usd,
                duration_ms: turn.duration_ms,
                num_turns: turn.num_turns,
                attempts: turn.attempts,
                model: turn.model,
            })
        }
        Some(Failure::Agent(f)) => {
            tracing::warn!(
                query_id,
                attempts,
                class = f.class.as_str(),
                "query failed: {}",
                f.detail
            );
            // What the agent said on stderr goes to the log whatever the failure.
            if !transcript.stderr_tail.is_empty() {
                tracing::warn!(
                    query_id,
                    "agent stderr (last {} lines):\n{}",
                    transcript.stderr_tail.len(),
                    transcript.stderr_tail.join("\n")
                );
            }
            Err(agent_error(
                &query_id,
                &session.id,
                &f,
                &transcript,
                attempts,
            ))
        }
        Some(Failure::Refused(e)) if attempts > 0 => {
            // Refused after the agent already ran: say how often, and why it last failed.
            let mut e = RpcError::from(e);
            let last = spent.last_error.unwrap_or_default();
            e.message = format!("{} (after {attempts} attempts; last: {last})", e.message);
            let mut data = e.data.take().unwrap_or_else(|| json!({}));
            data["attempts"] = json!(attempts);
            data["last_error"] = json!(last);
            Err(ActorError::Rpc(e.with_data(data)))
        }
        Some(Failure::Refused(e)) => Err(e),
    }
}

/// Tell a streaming client, once it has waited [`WAIT_NOTICE_AFTER`], what its query waits
/// for: `{"type":"ccd","subtype":"waiting","for":"rate_limiter","retry_after_ms":N}` or
/// `{"type":"ccd","subtype":"waiting","for":"executor","busy":N,"queued":M}`; each kind once
/// per wait. Aborted when the query ends.
fn wait_notices(
    g: &Guarded,
    conn: &ConnCtx,
    pool: Addr<ExecutorPool>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (stage, wait_ends_ms) = (g.stage.clone(), g.wait_ends_ms.clone());
    let (query_id, conn) = (g.query_id.clone(), conn.clone());
    actix_rt::spawn(async move {
        let mut told: Option<u8> = None;
        let mut since = (
            stage.load(std::sync::atomic::Ordering::Relaxed),
            tokio::time::Instant::now(),
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = cancel.cancelled() => return,
            }
            let now = stage.load(std::sync::atomic::Ordering::Relaxed);
            if now != since.0 {
                since = (now, tokio::time::Instant::now());
                told = None;
            }
            if told == Some(now) || since.1.elapsed() < WAIT_NOTICE_AFTER {
                continue;
            }
            let event = match now {
                STAGE_WAITING => {
                    let ends = wait_ends_ms.load(std::sync::atomic::Ordering::Relaxed);
                    let left = ends.saturating_sub(store::now_ms().max(0) as u64);
                    json!({"type": "ccd", "subtype": "waiting", "for": "rate_limiter", "retry_after_ms": left})
                }
                STAGE_QUEUED => {
                    let (busy, queued) = match ask(&pool, "executor", PoolStatus).await {
                        Ok(p) => (p.busy, p.queued),
                        Err(_) => (0, 0),
                    };
                    json!({"type": "ccd", "subtype": "waiting", "for": "executor", "busy": busy, "queued": queued})
                }
                _ => continue,
            };
            told = Some(now);
            notify(true, &query_id, &conn, event).await;
        }
    })
}

/// Send one `query.event` notification (when streaming), waiting for room in the client's
/// queue unless the client is gone.
async fn notify(stream: bool, query_id: &str, conn: &ConnCtx, event: serde_json::Value) {
    if !stream {
        return;
    }
    let params = QueryEvent {
        query_id: query_id.to_string(),
        event,
    };
    let note = Notification::new(
        "query.event",
        serde_json::to_value(&params).unwrap_or_default(),
    );
    tokio::select! {
        _ = conn.outbound.send(to_line(&note)) => {}
        _ = conn.closed.cancelled() => {}
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The `on_message` callback of one run, and with `stream` the task relaying its messages to
/// the client as `query.event` notifications.
///
/// The callback never blocks: the agent's stdout is always drained at once (the real CLI loses
/// the end of its output if it exits while a write to its stdout pipe is pending). Messages
/// wait in the relay's queue for a client that reads slowly, so none is lost; a client that
/// stops reading is disconnected after `ipc.write_timeout_ms`, which cancels its queries and
/// frees the queue. The relay ends once the run has dropped the callback and everything is
/// sent: awaiting it keeps the events ahead of the reply.
fn streamer(
    stream: bool,
    g: &Guarded,
    conn: &ConnCtx,
    bus: Bus,
) -> (OnMessage, Option<tokio::task::JoinHandle<()>>) {
    let query_id = g.query_id.clone();
    let session_id = g.session_id.clone();
    let project = g.project.clone();
    let stage = g.stage.clone();
    let (relay_tx, relay) = if stream {
        let (tx, mut rx) = mpsc::unbounded_channel::<bytes::Bytes>();
        let (out, closed) = (conn.outbound.clone(), conn.closed.clone());
        let relay = actix_rt::spawn(async move {
            while let Some(line) = rx.recv().await {
                tokio::select! {
                    sent = out.send(line) => if sent.is_err() { return },
                    _ = closed.cancelled() => return,
                }
            }
        });
        (Some(tx), Some(relay))
    } else {
        (None, None)
    };
    let callback = Box::new(move |parsed: &ccd_protocol::agent::Parsed| {
        stage.store(STAGE_RUNNING, std::sync::atomic::Ordering::Relaxed);
        // Tool calls and their results go to the bus whatever the client asked.
        match &parsed.message {
            AgentMessage::Assistant(a) => {
                for block in &a.message.content {
                    if let ContentBlock::ToolUse { id, name, .. } = block {
                        bus.publish(EventKind::ToolCalled {
                            session_id: session_id.clone(),
                            query_id: query_id.clone(),
                            project: project.clone(),
                            tool: name.clone(),
                            tool_use_id: id.clone(),
                        });
                    }
                }
            }
            AgentMessage::User(u) => {
                for block in &u.message.content {
                    if let ContentBlock::ToolResult {
                        tool_use_id,
                        is_error,
                        ..
                    } = block
                    {
                        bus.publish(EventKind::ToolResult {
                            session_id: session_id.clone(),
                            query_id: query_id.clone(),
                            project: project.clone(),
                            tool_use_id: tool_use_id.clone(),
                            is_error: is_error.unwrap_or(false),
                        });
                    }
                }
            }
            _ => {}
        }
        let Some(tx) = &relay_tx else {
            return;
        };
        let params = QueryEvent {
            query_id: query_id.clone(),
            event: parsed.raw.clone(),
        };
        let note = Notification::new(
            "query.event",
            serde_json::to_value(&params).unwrap_or_default(),
        );
        // An error means the relay stopped: the client is gone and its queries are cancelled.
        let _ = tx.send(to_line(&note));
    });
    (callback, relay)
}

fn agent_error(
    query_id: &str,
    session_id: &str,
    f: &AgentFailure,
    t: &Transcript,
    attempts: u32,
) -> ActorError {
    let (code, what) = match f.kind {
        FailureKind::Agent => (ErrorCode::AgentFailed, "agent failed"),
        FailureKind::Timeout => (ErrorCode::Timeout, "query timed out"),
        FailureKind::Cancelled => (ErrorCode::Cancelled, "query cancelled"),
    };
    ActorError::Agent {
        code,
        message: if attempts > 1 {
            format!("{what} after {attempts} attempts: {}", f.detail)
        } else {
            format!("{what}: {}", f.detail)
        },
        data: json!({
            "class": f.class.as_str(),
            "detail": f.detail,
            "query_id": query_id,
            "session_id": session_id,
            "agent_session_id": t.agent_session_id(),
            "stderr": t.stderr_tail,
            "attempts": attempts,
        }),
    }
}

/// Check options that become the agent's arguments, each `(name, flag, values, joined)`: a
/// value per argument, or (`joined`, the tool lists) all values in one, separated by commas;
/// each argument is `flag=value`. No value may be empty (nor, in a list, any entry): the flag
/// would then mean something else or nothing. No program can be given a NUL byte, and Linux
/// takes at most 128 KiB in one argument (and about 2 MiB in all): past that the agent could
/// not even be started, and finding out at spawn would fail the query as if the agent were
/// missing. A value that starts with `-` is fine: it is part of its `flag=value` argument.
fn agent_args_fit(method: &str, args: &[(&str, &str, &[String], bool)]) -> Result<(), ActorError> {
    for (name, _, values, joined) in args {
        if values.iter().any(String::is_empty) {
            let what = if *joined || values.len() > 1 || *name == "add_dirs" {
                "an entry must not be empty"
            } else {
                "must not be empty"
            };
            return Err(invalid(method, &format!("`{name}`: {what}")));
        }
        if values.iter().any(|v| v.contains('\0')) {
            return Err(invalid(
                method,
                &format!(
                    "`{name}`: must not contain a NUL byte (it becomes an argument of the agent)"
                ),
            ));
        }
    }
    // The length of each option's longest argument, and of all its arguments.
    let mut total = 0;
    for (name, flag, values, joined) in args {
        let all: usize = values.iter().map(String::len).sum();
        let longest = if *joined {
            all + values.len().saturating_sub(1)
        } else {
            values.iter().map(String::len).max().unwrap_or(0)
        };
        // The argument is `flag=value`.
        let room = MAX_ARG_BYTES - flag.len() - 1;
        if longest > room {
            return Err(invalid(
                method,
                &format!(
                    "`{name}`: {longest} bytes; the agent takes at most {MAX_ARG_BYTES} bytes in \
                     one argument, {room} of them for this value after `{flag}=`"
                ),
            ));
        }
        total += if *joined { longest } else { all };
    }
    if total > MAX_ARGS_BYTES {
        return Err(invalid(
            method,
            &format!(
                "the options that become the agent's arguments add up to {total} bytes; at most \
                 {MAX_ARGS_BYTES}"
            ),
        ));
    }
    Ok(())
}
