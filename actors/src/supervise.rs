//! Supervision: panics are captured in one place and turned into restarts, with Erlang/OTP
//! restart intensity.
//!
//! actix does not catch panics: a panicking handler would close the actor's mailbox for good.
//! So every supervised actor receives its requests as [`Call<M>`] and the one generic handler
//! that the [`supervised!`] macro installs runs the actor's [`Handle::handle`] inside
//! [`guard`], which:
//!
//! 1. refuses at once with `Unavailable` while the actor is marked failed (except the actor's
//!    own bookkeeping, [`ActorRequest::WHILE_FAILED`]);
//! 2. runs the handler under `catch_unwind`; on a panic it answers the in-flight request with
//!    `Unavailable` (naming the actor), records the restart in the [`HealthRegistry`], and stops
//!    the actor's context. actix's `Supervisor` then restarts the same actor on the same
//!    mailbox, so queued messages are served by the restarted actor;
//! 3. more than `max_restarts` panics within `window_ms` mark the actor failed: its requests are
//!    refused with the reason, and a retry with exponential backoff brings it back.
//!
//! An actor's [`Supervise::reset`] rebuilds whatever state a panic may have left half-changed.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use ccd_protocol::types::{ActorHealth, ActorState, EventKind};
use serde::{Deserialize, Serialize};

use crate::error::ActorError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// More than this many restarts within `window_ms` marks an actor failed.
    pub max_restarts: u32,
    pub window_ms: u64,
    /// First delay before a failed actor is tried again; doubles on each failure in a row.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            max_restarts: 5,
            window_ms: 10_000,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 30_000,
        }
    }
}

/// A request an actor serves through the supervision guard.
pub trait ActorRequest: Send + 'static {
    type Output: Send + 'static;
    /// Whether the actor is handed this message even while it is failed. For an actor's own
    /// bookkeeping, never for a request from outside: refusing it would lose state the actor
    /// needs once it recovers (the pool's record of which executor is idle). It still runs
    /// under `catch_unwind`.
    const WHILE_FAILED: bool = false;
}

/// The envelope every supervised actor receives.
pub struct Call<M>(pub M);

impl<M: ActorRequest> Message for Call<M> {
    type Result = Result<M::Output, ActorError>;
}

/// The one way to call a supervised actor: send `msg` to `addr` and wait for the reply. A
/// mailbox that closed (the actor is gone for good) answers as a failed actor does:
/// `Unavailable` naming `actor` (-32001 with `data.actor`, as docs/protocol.md promises).
pub fn ask<A, M, N>(
    addr: &Addr<A>,
    actor: N,
    msg: M,
) -> impl Future<Output = Result<M::Output, ActorError>> + Send + use<A, M, N>
where
    A: Handler<Call<M>>,
    A::Context: actix::dev::ToEnvelope<A, Call<M>>,
    M: ActorRequest,
    N: AsRef<str> + Send,
{
    // Sent when first polled, as an `async` block that sends would be.
    let addr = addr.clone();
    async move {
        addr.send(Call(msg))
            .await
            .unwrap_or_else(|_| Err(mailbox_closed(actor.as_ref())))
    }
}

/// What a call to `actor` answers when its mailbox is closed.
pub fn mailbox_closed(actor: &str) -> ActorError {
    ActorError::Unavailable {
        actor: actor.into(),
        state: ActorState::Failed,
        reason: format!("the {actor}'s mailbox is closed"),
    }
}

/// A reply still to come, which a caller may await itself.
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T, ActorError>> + Send>>;

/// An actor's reply: ready now, or a future that resolves without touching the actor (run as a
/// task of the actor's thread).
pub enum Reply<T> {
    Ready(Result<T, ActorError>),
    Later(Pending<T>),
    /// A future that must stay on the actor's thread (it holds `Rc`s).
    Local(Pin<Box<dyn Future<Output = Result<T, ActorError>>>>),
    /// Answered through a [`Responder`], from whatever code ends up with the answer.
    Deferred(Arc<Mutex<Slot<T>>>),
}

/// Where a deferred answer meets its caller: whichever of the two arrives first waits there.
pub enum Slot<T> {
    Empty,
    Answer(Result<T, ActorError>),
    Caller(OneshotSender<Result<T, ActorError>>),
    Done,
}

/// The sending side of [`Reply::deferred`]: answers the request once, without a task waiting for
/// the answer. Dropped unanswered, it answers `if_dropped()`.
pub struct Responder<T> {
    slot: Option<Arc<Mutex<Slot<T>>>>,
    if_dropped: fn() -> ActorError,
}

impl<T> Responder<T> {
    pub fn send(mut self, answer: Result<T, ActorError>) {
        if let Some(slot) = self.slot.take() {
            deliver(&slot, answer);
        }
    }
}

impl<T> Drop for Responder<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            deliver(&slot, Err((self.if_dropped)()));
        }
    }
}

/// Give a deferred reply's answer to `tx`, now if it is known, else once it is.
pub fn attach<T>(slot: &Mutex<Slot<T>>, tx: OneshotSender<Result<T, ActorError>>) {
    meet(slot, Slot::Caller(tx));
}

fn deliver<T>(slot: &Mutex<Slot<T>>, answer: Result<T, ActorError>) {
    meet(slot, Slot::Answer(answer));
}

/// The answer or the caller arrives at the slot: the first waits there, the second completes the
/// reply.
fn meet<T>(slot: &Mutex<Slot<T>>, arriving: Slot<T>) {
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *slot = match (std::mem::replace(&mut *slot, Slot::Done), arriving) {
        (Slot::Empty, arriving) => arriving,
        (Slot::Answer(answer), Slot::Caller(tx)) | (Slot::Caller(tx), Slot::Answer(answer)) => {
            let _ = tx.send(answer);
            Slot::Done
        }
        // Each side arrives once; anything else finds the reply done.
        _ => Slot::Done,
    };
}

impl<T> Reply<T> {
    pub fn ok(value: T) -> Self {
        Reply::Ready(Ok(value))
    }

    pub fn err(e: impl Into<ActorError>) -> Self {
        Reply::Ready(Err(e.into()))
    }

    pub fn later(fut: impl Future<Output = Result<T, ActorError>> + Send + 'static) -> Self {
        Reply::Later(Box::pin(fut))
    }

    pub fn local(fut: impl Future<Output = Result<T, ActorError>> + 'static) -> Self {
        Reply::Local(Box::pin(fut))
    }

    /// A reply given later through the returned [`Responder`] (`if_dropped` answers if it is
    /// dropped unanswered).
    pub fn deferred(if_dropped: fn() -> ActorError) -> (Self, Responder<T>) {
        let slot = Arc::new(Mutex::new(Slot::Empty));
        let responder = Responder {
            slot: Some(slot.clone()),
            if_dropped,
        };
        (Reply::Deferred(slot), responder)
    }
}

impl<A, M, T> MessageResponse<A, M> for Reply<T>
where
    A: Actor,
    M: Message<Result = Result<T, ActorError>>,
    T: 'static,
{
    fn handle(self, _: &mut A::Context, tx: Option<OneshotSender<M::Result>>) {
        match self {
            Reply::Ready(r) => {
                if let Some(tx) = tx {
                    let _ = tx.send(r);
                }
            }
            Reply::Later(fut) => spawn_reply(fut, tx),
            Reply::Local(fut) => spawn_reply(fut, tx),
            Reply::Deferred(slot) => {
                if let Some(tx) = tx {
                    attach(&slot, tx);
                }
            }
        }
    }
}

/// Run a reply's future as a task of the actor's thread and send its result to the caller.
fn spawn_reply<T: 'static>(
    fut: Pin<Box<dyn Future<Output = Result<T, ActorError>>>>,
    tx: Option<OneshotSender<Result<T, ActorError>>>,
) {
    actix_rt::spawn(async move {
        let r = fut.await;
        if let Some(tx) = tx {
            let _ = tx.send(r);
        }
    });
}

/// What a supervised actor tells the supervision layer about itself.
pub trait Supervise: Actor<Context = Context<Self>> {
    fn supervision(&self) -> &Supervision;

    /// Rebuild state after a panic (reopen a connection, drop half-done work). An error keeps
    /// the actor failed, and it is tried again after a backoff.
    fn reset(&mut self, _ctx: &mut Context<Self>) -> anyhow::Result<()> {
        Ok(())
    }

    /// Called every time the actor (re)starts and is healthy.
    fn on_started(&mut self, _ctx: &mut Context<Self>) {}
}

/// A supervised actor's handler for request `M`, run inside [`guard`].
pub trait Handle<M: ActorRequest>: Supervise {
    fn handle(&mut self, msg: M, ctx: &mut Context<Self>) -> Reply<M::Output>;
}

/// `debug.crash`: panic inside the actor's own handler (fault injection).
pub struct Crash;

impl ActorRequest for Crash {
    type Output = ();
}

/// Install the supervision glue for an actor type: its `Actor` and `Supervised` impls, the
/// guarded handler for every `Call<M>` it `Handle`s, and `Crash`.
macro_rules! supervised {
    ($actor:ty) => {
        impl ::actix::Actor for $actor {
            type Context = ::actix::Context<Self>;
            fn started(&mut self, ctx: &mut Self::Context) {
                $crate::supervise::started(self, ctx)
            }
        }
        impl ::actix::Supervised for $actor {
            fn restarting(&mut self, ctx: &mut Self::Context) {
                $crate::supervise::restarting(self, ctx)
            }
        }
        impl<M: $crate::supervise::ActorRequest> ::actix::Handler<$crate::supervise::Call<M>>
            for $actor
        where
            $actor: $crate::supervise::Handle<M>,
        {
            type Result = $crate::supervise::Reply<M::Output>;
            fn handle(
                &mut self,
                msg: $crate::supervise::Call<M>,
                ctx: &mut Self::Context,
            ) -> Self::Result {
                $crate::supervise::guard(self, ctx, msg.0)
            }
        }
        impl $crate::supervise::Handle<$crate::supervise::Crash> for $actor {
            fn handle(
                &mut self,
                _: $crate::supervise::Crash,
                _: &mut Self::Context,
            ) -> $crate::supervise::Reply<()> {
                panic!(
                    "debug.crash: injected panic in {}",
                    self.supervision().name()
                );
            }
        }
    };
}
pub(crate) use supervised;

/// Run one request through the actor's handler, turning a panic into a restart.
pub fn guard<A, M>(act: &mut A, ctx: &mut Context<A>, msg: M) -> Reply<M::Output>
where
    A: Handle<M>,
    M: ActorRequest,
{
    let sup = act.supervision().clone();
    if !M::WHILE_FAILED
        && let Some(refusal) = sup.refusal()
    {
        return Reply::Ready(Err(refusal));
    }
    match panic::catch_unwind(AssertUnwindSafe(|| act.handle(msg, ctx))) {
        Ok(reply) => reply,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            let state = sup.record_panic(&message);
            tracing::error!(
                actor = sup.name(),
                state = state.as_str(),
                "actor panicked: {message}"
            );
            ctx.stop();
            Reply::Ready(Err(ActorError::Unavailable {
                actor: sup.name().to_string(),
                state,
                reason: format!(
                    "{} panicked while handling this request: {message}",
                    sup.name()
                ),
            }))
        }
    }
}

/// `Supervised::restarting`: rebuild the actor's state after a panic.
pub fn restarting<A: Supervise>(act: &mut A, ctx: &mut Context<A>) {
    let sup = act.supervision().clone();
    tracing::warn!(actor = sup.name(), "restarting");
    if let Err(reason) = try_reset(act, ctx) {
        sup.mark_failed(&reason);
    }
}

/// `Actor::started`: mark running, or schedule the recovery of a failed actor.
pub fn started<A: Supervise>(act: &mut A, ctx: &mut Context<A>) {
    let sup = act.supervision().clone();
    match sup.state() {
        ActorState::Failed => schedule_recovery(ctx, &sup),
        _ => {
            sup.mark_running();
            act.on_started(ctx);
        }
    }
}

fn schedule_recovery<A: Supervise>(ctx: &mut Context<A>, sup: &Supervision) {
    let delay = sup.backoff();
    tracing::warn!(actor = sup.name(), "failed; retrying in {delay:?}");
    ctx.run_later(delay, |act, ctx| {
        let sup = act.supervision().clone();
        match try_reset(act, ctx) {
            Ok(()) => {
                tracing::info!(actor = sup.name(), "recovered");
                sup.recover();
                act.on_started(ctx);
            }
            Err(reason) => {
                sup.mark_failed(&reason);
                schedule_recovery(ctx, &sup);
            }
        }
    });
}

fn try_reset<A: Supervise>(act: &mut A, ctx: &mut Context<A>) -> Result<(), String> {
    match panic::catch_unwind(AssertUnwindSafe(|| act.reset(ctx))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("could not restart: {e:#}")),
        Err(payload) => Err(format!(
            "panicked while restarting: {}",
            panic_message(payload.as_ref())
        )),
    }
}

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Health registry

/// Every supervised actor's health, shared by the actors and `system.health`.
/// Where health changes are published (the event bus), once it exists.
type Publish = Box<dyn Fn(EventKind) + Send + Sync>;

pub struct HealthRegistry {
    policy: SupervisorConfig,
    actors: Mutex<BTreeMap<Arc<str>, Entry>>,
    publish: std::sync::OnceLock<Publish>,
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthRegistry")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Entry {
    state: ActorState,
    restarts: u64,
    recent: VecDeque<Instant>,
    last_panic: Option<String>,
    reason: Option<String>,
    since: Instant,
    failures_in_row: u32,
}

impl HealthRegistry {
    pub fn new(policy: SupervisorConfig) -> Arc<Self> {
        Arc::new(HealthRegistry {
            policy,
            actors: Mutex::new(BTreeMap::new()),
            publish: Default::default(),
        })
    }

    /// Publish `actor.started`, `actor.restarted` and `actor.failed` through `publish` from now on.
    pub fn publish_to(&self, publish: impl Fn(EventKind) + Send + Sync + 'static) {
        let _ = self.publish.set(Box::new(publish));
    }

    fn emit(&self, kind: EventKind) {
        if let Some(p) = self.publish.get() {
            p(kind);
        }
    }

    /// Register an actor by name and get its supervision handle.
    pub fn register(self: &Arc<Self>, name: &str) -> Supervision {
        let name: Arc<str> = Arc::from(name);
        self.lock().insert(
            name.clone(),
            Entry {
                state: ActorState::Running,
                restarts: 0,
                recent: VecDeque::new(),
                last_panic: None,
                reason: None,
                since: Instant::now(),
                failures_in_row: 0,
            },
        );
        Supervision {
            name,
            registry: self.clone(),
            failed: Arc::default(),
        }
    }

    pub fn snapshot(&self) -> Vec<ActorHealth> {
        self.lock()
            .iter()
            .map(|(name, e)| ActorHealth {
                name: name.to_string(),
                state: e.state,
                restarts: e.restarts,
                last_panic: e.last_panic.clone(),
                reason: e.reason.clone(),
                uptime_ms: e.since.elapsed().as_millis() as u64,
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, Entry>> {
        // A panic while holding this lock cannot leave an entry half-written (each update is a
        // few plain assignments), so a poisoned lock is still good to use.
        self.actors.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One actor's handle on the registry.
#[derive(Debug, Clone)]
pub struct Supervision {
    name: Arc<str>,
    registry: Arc<HealthRegistry>,
    /// Whether the entry's state is failed, readable without the registry's lock: every
    /// request checks it.
    failed: Arc<AtomicBool>,
}

impl Supervision {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn registry(&self) -> &Arc<HealthRegistry> {
        &self.registry
    }

    fn with<R>(&self, f: impl FnOnce(&mut Entry, &SupervisorConfig) -> R) -> R {
        let mut map = self.registry.lock();
        let entry = map
            .get_mut(&self.name)
            .expect("a Supervision is only made by register");
        let r = f(entry, &self.registry.policy);
        self.failed
            .store(entry.state == ActorState::Failed, Ordering::Release);
        r
    }

    pub fn state(&self) -> ActorState {
        self.with(|e, _| e.state)
    }

    /// `Some(error)` while the actor is failed: refuse without running the handler.
    pub fn refusal(&self) -> Option<ActorError> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.with(|e, _| {
            (e.state == ActorState::Failed).then(|| ActorError::Unavailable {
                actor: self.name.to_string(),
                state: ActorState::Failed,
                reason: e.reason.clone().unwrap_or_else(|| "failed".into()),
            })
        })
    }

    /// Count a panic; returns the state it leaves the actor in (restarting or failed).
    fn record_panic(&self, message: &str) -> ActorState {
        let state = self.record_panic_inner(message);
        let actor = self.name.to_string();
        self.registry.emit(match state {
            ActorState::Failed => EventKind::ActorFailed {
                actor,
                reason: format!("restart intensity exceeded; last panic: {message}"),
            },
            _ => EventKind::ActorRestarted {
                actor,
                reason: format!("panicked: {message}"),
            },
        });
        state
    }

    fn record_panic_inner(&self, message: &str) -> ActorState {
        self.with(|e, policy| {
            let now = Instant::now();
            let window = Duration::from_millis(policy.window_ms);
            e.restarts += 1;
            e.last_panic = Some(message.to_string());
            e.recent.push_back(now);
            while e
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > window)
            {
                e.recent.pop_front();
            }
            if e.recent.len() > policy.max_restarts as usize {
                e.state = ActorState::Failed;
                e.reason = Some(format!(
                    "restarted {} times within {} ms (limit {}); last panic: {message}",
                    e.recent.len(),
                    policy.window_ms,
                    policy.max_restarts
                ));
                tracing::error!(actor = %self.name, "restart intensity exceeded: marked failed");
            } else {
                e.state = ActorState::Restarting;
            }
            e.state
        })
    }

    fn mark_running(&self) {
        self.with(|e, _| {
            e.state = ActorState::Running;
            e.reason = None;
            e.since = Instant::now();
        });
        self.registry.emit(EventKind::ActorStarted {
            actor: self.name.to_string(),
        });
    }

    fn mark_failed(&self, reason: &str) {
        tracing::error!(actor = %self.name, "{reason}");
        self.with(|e, _| {
            e.state = ActorState::Failed;
            e.reason = Some(reason.to_string());
        });
        self.registry.emit(EventKind::ActorFailed {
            actor: self.name.to_string(),
            reason: reason.to_string(),
        });
    }

    /// The next retry delay for a failed actor: doubles with each failure in a row.
    fn backoff(&self) -> Duration {
        self.with(|e, policy| {
            let exp = e.failures_in_row.min(20);
            e.failures_in_row += 1;
            let ms = policy
                .backoff_initial_ms
                .saturating_mul(1u64 << exp)
                .min(policy.backoff_max_ms);
            Duration::from_millis(ms)
        })
    }

    fn recover(&self) {
        self.with(|e, _| {
            e.recent.clear();
            e.failures_in_row = 0;
        });
        self.mark_running();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max_restarts: u32) -> Arc<HealthRegistry> {
        HealthRegistry::new(SupervisorConfig {
            max_restarts,
            window_ms: 60_000,
            backoff_initial_ms: 10,
            backoff_max_ms: 35,
        })
    }

    #[test]
    fn intensity_marks_failed_after_max_restarts() {
        let sup = registry(2).register("x");
        assert_eq!(sup.record_panic("a"), ActorState::Restarting);
        assert_eq!(sup.record_panic("b"), ActorState::Restarting);
        assert_eq!(sup.record_panic("c"), ActorState::Failed);
        assert!(sup.refusal().is_some());
        let h = &sup.registry().snapshot()[0];
        assert_eq!((h.restarts, h.last_panic.as_deref()), (3, Some("c")));
        assert!(h.reason.as_deref().unwrap().contains("restarted 3 times"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_on_recovery() {
        let sup = registry(0).register("x");
        let delays: Vec<u64> = (0..4).map(|_| sup.backoff().as_millis() as u64).collect();
        assert_eq!(delays, [10, 20, 35, 35]);
        sup.recover();
        assert_eq!(sup.backoff().as_millis(), 10);
        assert_eq!(sup.state(), ActorState::Running);
    }

    struct Counter {
        sup: Supervision,
        n: u32,
        resets: u32,
    }

    struct Incr;
    impl ActorRequest for Incr {
        type Output = u32;
    }

    supervised!(Counter);

    impl Supervise for Counter {
        fn supervision(&self) -> &Supervision {
            &self.sup
        }
        fn reset(&mut self, _: &mut Context<Self>) -> anyhow::Result<()> {
            self.resets += 1;
            Ok(())
        }
    }

    impl Handle<Incr> for Counter {
        fn handle(&mut self, _: Incr, _: &mut Context<Self>) -> Reply<u32> {
            self.n += 1;
            Reply::ok(self.n)
        }
    }

    #[actix_rt::test]
    async fn a_panic_answers_unavailable_and_queued_messages_are_served_after_restart() {
        let reg = registry(5);
        let sup = reg.register("counter");
        let addr = Supervisor::start(move |_| Counter {
            sup,
            n: 0,
            resets: 0,
        });
        let first = addr.send(Call(Incr));
        let crash = addr.send(Call(Crash));
        let queued = addr.send(Call(Incr));
        assert_eq!(first.await.unwrap().unwrap(), 1);
        match crash.await.unwrap() {
            Err(ActorError::Unavailable { actor, .. }) => assert_eq!(actor, "counter"),
            other => panic!("expected unavailable, got {other:?}"),
        }
        // Same actor, same mailbox: the queued message is served after the restart.
        assert_eq!(queued.await.unwrap().unwrap(), 2);
        let h = &reg.snapshot()[0];
        assert_eq!((h.state, h.restarts), (ActorState::Running, 1));
    }
}
