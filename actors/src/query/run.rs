//! `query.run`, as named steps: check, claim the session, place, refuse if the breaker is
//! open, open the session, build the spec, run, record the turn, publish, reply.

use std::sync::Arc;
use std::time::Duration;

use ccd_protocol::types::{
    EventKind, QueryResult, QueryRun, Session, SessionErrorClass, SessionStatus, TurnStatus,
};
use ccd_protocol::{ErrorCode, RpcError};
use serde_json::json;

use super::attempts::{Attempts, Failure, Guarded, Spent, wait_notices};
use super::place::{AgentPlace, agent_args_fit, checked_dir};
use super::{QueryService, REFUSAL_BACKLOG_BYTES, Running, STAGE_WAITING, SessionBusy, invalid};
use crate::conn::ConnCtx;
use crate::error::ActorError;
use crate::executor::{AgentFailure, AgentOptions, AgentSpec, FailureKind, Transcript, agent_args};
use crate::resilience::Peek;
use crate::store;
use crate::supervise::ask;

/// Longest accepted per-query deadline (24 hours).
const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

impl QueryService {
    /// `query.run`, step by step: check the params, claim the session it continues, place it,
    /// refuse it if the breaker is open, open the imported definitions it is offered as
    /// subagents (`agents.expose`), open its session, build the agent's spec, run it
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
        let subagents = self.definitions.cli_agents().await?.map(|v| v.to_string());
        let session = self.open_session(existing, &p, &place, &mut _busy).await?;
        let project = place.placement.project.clone();
        let turn_cwd = place.placement.cwd.to_string_lossy().into_owned();
        let spec = self.build_spec(&p, &session, model.clone(), subagents, place, &limits);
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
                if s.status != SessionStatus::Open {
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
        subagents: Option<String>,
        place: AgentPlace,
        limits: &Limits,
    ) -> AgentSpec {
        let options = AgentOptions {
            agents: subagents,
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
            None => (TurnStatus::Ok, None, None),
            Some(Failure::Agent(f)) => (
                match f.kind {
                    FailureKind::Agent => TurnStatus::Error,
                    FailureKind::Timeout => TurnStatus::Timeout,
                    FailureKind::Cancelled => TurnStatus::Cancelled,
                },
                Some(f.class),
                Some(f.detail.clone()),
            ),
            Some(Failure::Refused(e)) => (TurnStatus::Refused, None, Some(e.to_string())),
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
                Failure::Agent(f) => (f.class.into(), f.detail.clone()),
                Failure::Refused(e) => (SessionErrorClass::Refused, e.to_string()),
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
            status: recorded.status,
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
            status: TurnStatus::Refused,
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
            class: SessionErrorClass::Refused,
            detail: error,
        });
        self.bus.publish(EventKind::TurnCompleted {
            session_id,
            query_id,
            project,
            model,
            status: TurnStatus::Refused,
            duration_ms: 0,
            attempts: 0,
        });
    }
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

/// A query's time limit, fixed when its params are checked.
struct Limits {
    timeout_ms: u64,
    deadline: tokio::time::Instant,
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
    status: TurnStatus,
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
            "class": f.class,
            "detail": f.detail,
            "query_id": query_id,
            "session_id": session_id,
            "agent_session_id": t.agent_session_id(),
            "stderr": t.stderr_tail,
            "attempts": attempts,
        }),
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}
