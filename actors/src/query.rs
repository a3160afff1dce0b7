//! The query path: from `query.run` params to an agent run through the executor pool, and
//! back to a recorded turn of a session. Also the `session.*` methods.
//!
//! A query belongs to a session (a new one unless `session` names an open one); the session
//! keeps the agent's own session id, which the next query resumes with `--resume=`. Each query
//! is cancellable by id (`query.cancel`) and is cancelled when its client disconnects.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use ccd_protocol::types::{
    QueryCancelled, QueryEvent, QueryResult, QueryRun, Session, SessionCleanupResult,
    SessionCreate, SessionDetail, SessionList, SessionListParams,
};
use ccd_protocol::{ErrorCode, Notification, RpcError, to_line};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::ExecutorConfig;
use crate::error::ActorError;
use crate::executor::{
    AgentFailure, AgentOptions, AgentSpec, ExecutorPool, FailureKind, Run, Submit, Transcript,
    agent_args,
};
use crate::gateway::{ConnCtx, validate};
use crate::reader::Reader;
use crate::store::{self, WriteOp};
use crate::supervise::Call;
use crate::writer::{Write, WriterActor};

/// Longest accepted per-query deadline (24 hours).
const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

#[derive(Clone)]
pub struct QueryService {
    writer: Addr<WriterActor>,
    reader: Reader,
    pool: Addr<ExecutorPool>,
    cfg: ExecutorConfig,
    /// Where queries without a project or cwd run.
    default_cwd: PathBuf,
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

impl QueryService {
    pub fn new(
        writer: Addr<WriterActor>,
        reader: Reader,
        pool: Addr<ExecutorPool>,
        cfg: ExecutorConfig,
        default_cwd: PathBuf,
    ) -> Self {
        QueryService {
            writer,
            reader,
            pool,
            cfg,
            default_cwd,
            running: Default::default(),
        }
    }

    pub fn pool(&self) -> &Addr<ExecutorPool> {
        &self.pool
    }

    async fn write<O: WriteOp>(&self, op: O) -> Result<O::Output, ActorError> {
        self.writer
            .send(Call(Write(op)))
            .await
            .unwrap_or_else(|_| Err(ActorError::internal("writer", "mailbox closed")))
    }

    /// `query.run`.
    pub async fn run(self, p: QueryRun, conn: ConnCtx) -> Result<QueryResult, ActorError> {
        if p.prompt.trim().is_empty() {
            return Err(invalid("`prompt`: must not be empty"));
        }
        if p.new_session && p.session.is_some() {
            return Err(invalid("give `session` or `new_session`, not both"));
        }
        let timeout_ms = p.timeout_ms.unwrap_or(self.cfg.timeout_ms);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid(&format!(
                "`timeout_ms`: must be between 1 and {MAX_TIMEOUT_MS}"
            )));
        }

        // Where it runs, and with which environment.
        let (cwd, env, project) = match (&p.project, &p.cwd) {
            (Some(_), Some(_)) => return Err(invalid("give `project` or `cwd`, not both")),
            (Some(name), None) => {
                let lookup = name.clone();
                let project = self
                    .reader
                    .read("reading the project", move |c| store::project(c, &lookup))
                    .await?
                    .ok_or_else(|| ActorError::NotFound(format!("no project named `{name}`")))?;
                (
                    PathBuf::from(&project.path),
                    project.env.clone(),
                    Some(project.name),
                )
            }
            (None, Some(dir)) => (
                PathBuf::from(validate::dir("cwd", dir)?),
                BTreeMap::new(),
                None,
            ),
            (None, None) => (self.default_cwd.clone(), BTreeMap::new(), None),
        };

        // The session: continue an open one, or start a new one.
        let session = match &p.session {
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
                s
            }
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                self.write(store::CreateSession {
                    id,
                    project: project.clone(),
                    tags: vec![],
                    model: p.model.clone(),
                })
                .await?
            }
        };

        let query_id = uuid::Uuid::new_v4().to_string();
        let model = p.model.clone().or_else(|| session.model.clone());
        let options = AgentOptions {
            resume: session.agent_session_id.clone(),
            model: model.clone(),
            max_turns: p.max_turns,
            append_system_prompt: p.append_system_prompt.clone(),
            permission_mode: p.permission_mode,
            allowed_tools: p.allowed_tools.clone().unwrap_or_default(),
            disallowed_tools: p.disallowed_tools.clone().unwrap_or_default(),
            mcp_config: p.mcp_config.clone(),
            add_dirs: p.add_dirs.clone().unwrap_or_default(),
        };
        let spec = AgentSpec {
            command: self.cfg.command.clone(),
            args: agent_args(&options),
            cwd,
            env,
            prompt: p.prompt.clone(),
            deadline: tokio::time::Instant::now() + Duration::from_millis(timeout_ms),
            kill_grace: Duration::from_millis(self.cfg.kill_grace_ms),
            max_line_bytes: self.cfg.max_line_bytes,
            cli_retry_limit: self.cfg.cli_retry_limit,
        };

        // Cancelled by query.cancel, or when the client goes away.
        let cancel = conn.closed.child_token();
        self.lock_running().insert(query_id.clone(), cancel.clone());
        let on_message = streamer(p.stream, &query_id, &conn);
        let started_at_ms = store::now_ms();
        let started = std::time::Instant::now();
        tracing::info!(query_id, session = %session.id, "query started");

        let outcome = self
            .pool
            .send(Call(Submit(Run {
                spec,
                cancel,
                on_message,
            })))
            .await;
        self.lock_running().remove(&query_id);
        let run = match outcome {
            Ok(Ok(run)) => run,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(ActorError::internal("the executor pool", e)),
        };
        let duration_ms = started.elapsed().as_millis() as u64;

        let (transcript, failure) = match run {
            Ok(t) => (t, None),
            Err(f) => {
                let f = *f;
                (f.transcript.clone(), Some(f))
            }
        };
        let result = transcript.result.clone();
        let turn = store::RecordTurn {
            session_id: session.id.clone(),
            query_id: query_id.clone(),
            prompt: p.prompt,
            result: result
                .as_ref()
                .and_then(|r| r.result.clone())
                .or_else(|| non_empty(&transcript.text)),
            status: match failure.as_ref().map(|f| f.kind) {
                None => "ok",
                Some(FailureKind::Agent) => "error",
                Some(FailureKind::Timeout) => "timeout",
                Some(FailureKind::Cancelled) => "cancelled",
            },
            error_class: failure.as_ref().map(|f| f.class.as_str().to_string()),
            error: failure.as_ref().map(|f| f.detail.clone()),
            usage: transcript.usage,
            cost_usd: result.as_ref().map(|r| r.total_cost_usd).unwrap_or(0.0),
            duration_ms: result
                .as_ref()
                .map(|r| r.duration_ms)
                .filter(|d| *d > 0)
                .unwrap_or(duration_ms),
            num_turns: result.as_ref().map(|r| r.num_turns).unwrap_or(0),
            attempts: 1,
            model: transcript.model.clone().or(model),
            started_at_ms,
            agent_session_id: transcript.agent_session_id(),
        };
        let recorded = self.write(turn).await;
        if let Err(e) = &recorded {
            tracing::error!(query_id, "recording the turn: {e}");
        }
        match failure {
            None => {
                let turn = recorded?;
                tracing::info!(query_id, "query finished");
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
            Some(f) => {
                tracing::warn!(
                    query_id,
                    class = f.class.as_str(),
                    "query failed: {}",
                    f.detail
                );
                Err(agent_error(&query_id, &session.id, &f, &transcript))
            }
        }
    }

    /// `query.cancel`: true when the query was running (or queued) and is now being stopped.
    pub fn cancel(&self, query_id: &str) -> QueryCancelled {
        let token = self.lock_running().get(query_id).cloned();
        if let Some(t) = &token {
            t.cancel();
        }
        QueryCancelled {
            query_id: query_id.to_string(),
            cancelled: token.is_some(),
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn create_session(self, p: SessionCreate) -> Result<Session, ActorError> {
        if let Some(name) = &p.project {
            let lookup = name.clone();
            self.reader
                .read("reading the project", move |c| store::project(c, &lookup))
                .await?
                .ok_or_else(|| ActorError::NotFound(format!("no project named `{name}`")))?;
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.write(store::CreateSession {
            id,
            project: p.project,
            tags: p.tags.unwrap_or_default(),
            model: p.model,
        })
        .await
    }

    pub async fn get_session(self, id: String) -> Result<SessionDetail, ActorError> {
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
            return Err(invalid("`status`: must be open, closed or expired"));
        }
        let sessions = self
            .reader
            .read("listing sessions", move |c| {
                store::sessions(
                    c,
                    p.status.as_deref(),
                    p.tag.as_deref(),
                    p.project.as_deref(),
                )
            })
            .await?;
        Ok(SessionList { sessions })
    }

    pub async fn close_session(self, id: String) -> Result<Session, ActorError> {
        self.write(store::CloseSession { id }).await
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

fn invalid(why: &str) -> ActorError {
    ActorError::Rpc(RpcError::invalid_params(format!(
        "invalid params for query.run: {why}"
    )))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The `on_message` callback: with `stream`, forward each message as a `query.event`
/// notification. Never blocks the agent: if the client has stopped reading and its queue is
/// full, the event is dropped (and counted in the log).
fn streamer(
    stream: bool,
    query_id: &str,
    conn: &ConnCtx,
) -> Box<dyn FnMut(&ccd_protocol::agent::Parsed) + Send> {
    if !stream {
        return Box::new(|_| {});
    }
    let query_id = query_id.to_string();
    let out = conn.outbound.clone();
    let mut dropped = 0u64;
    Box::new(move |parsed| {
        let params = QueryEvent {
            query_id: query_id.clone(),
            event: parsed.raw.clone(),
        };
        let note = Notification::new(
            "query.event",
            serde_json::to_value(&params).unwrap_or_default(),
        );
        if out.try_send(to_line(&note)).is_err() {
            dropped += 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    query_id,
                    dropped,
                    "client is not reading its query events; dropping some"
                );
            }
        }
    })
}

fn agent_error(query_id: &str, session_id: &str, f: &AgentFailure, t: &Transcript) -> ActorError {
    let (code, what) = match f.kind {
        FailureKind::Agent => (ErrorCode::AgentFailed, "agent failed"),
        FailureKind::Timeout => (ErrorCode::Timeout, "query timed out"),
        FailureKind::Cancelled => (ErrorCode::Cancelled, "query cancelled"),
    };
    ActorError::Agent {
        code,
        message: format!("{what}: {}", f.detail),
        data: json!({
            "class": f.class.as_str(),
            "detail": f.detail,
            "query_id": query_id,
            "session_id": session_id,
            "agent_session_id": t.agent_session_id(),
            "stderr": t.stderr_tail,
            "attempts": 1,
        }),
    }
}
