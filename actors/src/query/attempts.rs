//! A query's attempts: each under the rate limiter and the circuit breaker, run by the
//! executor pool, retried with backoff while the error is retryable; and what a streaming
//! client is told meanwhile (`query.event` notifications, waiting notices).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use ccd_protocol::stream_json::{AgentMessage, ContentBlock};
use ccd_protocol::types::{EventKind, QueryEvent};
use ccd_protocol::{ErrorCode, Notification, to_line};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    QueryService, STAGE_QUEUED, STAGE_RUNNING, STAGE_STARTING, STAGE_WAITING, WAIT_NOTICE_AFTER,
};
use crate::conn::ConnCtx;
use crate::error::ActorError;
use crate::eventbus::Bus;
use crate::executor::{
    AgentFailure, AgentSpec, ErrorClass, ExecutorPool, FailureKind, OnMessage, PoolStatus, Run,
    RunResult, Submit, Transcript,
};
use crate::resilience::breaker::Outcome;
use crate::resilience::limiter::{Permit, WaitingGuard};
use crate::resilience::{Allow, RecordOutcome, TryAcquire};
use crate::store;
use crate::supervise::{Call, ask, mailbox_closed};

impl QueryService {
    /// Attempts of one query: limiter → breaker → run → record → retry while the error is
    /// retryable, attempts remain and the deadline allows the backoff.
    pub(super) async fn run_attempts(
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
                        data: json!({ "class": ErrorClass::NonRetryable, "detail": "cancelled" }),
                    });
                }
            }
        }
    }
}

/// The resilience inputs of one query.
pub(super) struct Guarded {
    pub(super) query_id: String,
    pub(super) session_id: String,
    pub(super) model: Option<String>,
    pub(super) project: Option<String>,
    pub(super) breaker_key: String,
    pub(super) deadline: tokio::time::Instant,
    pub(super) no_wait: bool,
    /// Where the query is, for `query.list`.
    pub(super) stage: Arc<std::sync::atomic::AtomicU8>,
    /// While it waits for the rate limiter: when that wait ends (ms since the epoch).
    pub(super) wait_ends_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Tokens and cost over all attempts of a query.
#[derive(Default)]
pub(super) struct Spent {
    pub(super) usage: ccd_protocol::types::Usage,
    pub(super) cost_usd: f64,
    /// Why the last attempt that ran failed, when the query goes on to another.
    pub(super) last_error: Option<String>,
}

impl Spent {
    fn add(&mut self, t: &Transcript) {
        self.usage.add(&t.usage);
        self.cost_usd += t.result.as_ref().map(|r| r.total_cost_usd).unwrap_or(0.0);
    }
}

pub(super) enum Attempts {
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

pub(super) enum Failure {
    Agent(Box<AgentFailure>),
    Refused(ActorError),
}

/// Tell a streaming client, once it has waited [`WAIT_NOTICE_AFTER`], what its query waits
/// for: `{"type":"ccd","subtype":"waiting","for":"rate_limiter","retry_after_ms":N}` or
/// `{"type":"ccd","subtype":"waiting","for":"executor","busy":N,"queued":M}`; each kind once
/// per wait. Aborted when the query ends.
pub(super) fn wait_notices(
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
    let callback = Box::new(move |parsed: &ccd_protocol::stream_json::Parsed| {
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
