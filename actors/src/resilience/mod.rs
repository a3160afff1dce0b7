//! Resilience in front of every agent run: the RateLimiterActor (`limiter`), the BreakerActor
//! (`breaker`), and retry with exponential backoff and full jitter.
//!
//! A query goes: limiter acquire → breaker check → execute → breaker record → retry when the
//! error class allows, every attempt passing limiter and breaker again, never past the query's
//! deadline. The actors' accounting lives in shared cores ([`limiter::LimiterCore`],
//! [`breaker::BreakerCore`]) that a restart of either actor keeps.

pub mod breaker;
pub mod limiter;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::eventbus::Bus;
use crate::supervise::{ActorRequest, Handle, Reply, Supervise, Supervision, supervised};
use breaker::{BreakerCore, BreakerSpec, BreakerStatus, Outcome, Transition};
use ccd_protocol::types::EventKind;
use limiter::{KeyStatus, LimitSpec, LimiterCore, Permit, Throttled, WaitingGuard};

/// `[limiter]`: limits on the global key, each model's key and each project's key. Every
/// algorithm is off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimiterConfig {
    pub global_rate_per_s: f64,
    pub global_burst: u32,
    pub global_window_max: u32,
    pub global_window_ms: u64,
    pub global_concurrency: u32,
    pub model_rate_per_s: f64,
    pub model_burst: u32,
    pub model_window_max: u32,
    pub model_window_ms: u64,
    pub model_concurrency: u32,
    pub project_rate_per_s: f64,
    pub project_burst: u32,
    pub project_window_max: u32,
    pub project_window_ms: u64,
    pub project_concurrency: u32,
}

pub use ccd_protocol::types::Scope;

impl Default for LimiterConfig {
    fn default() -> Self {
        let off = LimitSpec {
            rate_per_s: 0.0,
            burst: 1,
            window_max: 0,
            window_ms: 60_000,
            concurrency: 0,
        };
        let mut c = LimiterConfig {
            global_rate_per_s: 0.0,
            global_burst: 0,
            global_window_max: 0,
            global_window_ms: 0,
            global_concurrency: 0,
            model_rate_per_s: 0.0,
            model_burst: 0,
            model_window_max: 0,
            model_window_ms: 0,
            model_concurrency: 0,
            project_rate_per_s: 0.0,
            project_burst: 0,
            project_window_max: 0,
            project_window_ms: 0,
            project_concurrency: 0,
        };
        for scope in [Scope::Global, Scope::Model, Scope::Project] {
            c.set(scope, off);
        }
        c
    }
}

impl LimiterConfig {
    pub fn spec(&self, scope: Scope) -> LimitSpec {
        let spec = self.raw_spec(scope);
        LimitSpec {
            burst: spec.burst.max(1),
            ..spec
        }
    }

    /// The scope's values as configured (`spec` makes an unset burst 1).
    fn raw_spec(&self, scope: Scope) -> LimitSpec {
        let s = match scope {
            Scope::Global => (
                self.global_rate_per_s,
                self.global_burst,
                self.global_window_max,
                self.global_window_ms,
                self.global_concurrency,
            ),
            Scope::Model => (
                self.model_rate_per_s,
                self.model_burst,
                self.model_window_max,
                self.model_window_ms,
                self.model_concurrency,
            ),
            Scope::Project => (
                self.project_rate_per_s,
                self.project_burst,
                self.project_window_max,
                self.project_window_ms,
                self.project_concurrency,
            ),
        };
        LimitSpec {
            rate_per_s: s.0,
            burst: s.1,
            window_max: s.2,
            window_ms: s.3,
            concurrency: s.4,
        }
    }

    pub fn set(&mut self, scope: Scope, spec: LimitSpec) {
        let slots = match scope {
            Scope::Global => (
                &mut self.global_rate_per_s,
                &mut self.global_burst,
                &mut self.global_window_max,
                &mut self.global_window_ms,
                &mut self.global_concurrency,
            ),
            Scope::Model => (
                &mut self.model_rate_per_s,
                &mut self.model_burst,
                &mut self.model_window_max,
                &mut self.model_window_ms,
                &mut self.model_concurrency,
            ),
            Scope::Project => (
                &mut self.project_rate_per_s,
                &mut self.project_burst,
                &mut self.project_window_max,
                &mut self.project_window_ms,
                &mut self.project_concurrency,
            ),
        };
        *slots.0 = spec.rate_per_s;
        *slots.1 = spec.burst;
        *slots.2 = spec.window_max;
        *slots.3 = spec.window_ms;
        *slots.4 = spec.concurrency;
    }

    /// Errors name the configuration's own keys (`limiter.global_rate_per_s`), so that the
    /// loader can add each one's value and where it came from.
    pub fn validate(&self) -> Result<(), String> {
        for (name, scope) in [
            ("global", Scope::Global),
            ("model", Scope::Model),
            ("project", Scope::Project),
        ] {
            let key = |field: &str| format!("limiter.{name}_{field}");
            let spec = self.raw_spec(scope);
            // A bucket of no tokens would admit nothing; 0 used to be read as 1, silently.
            if spec.rate_per_s > 0.0 && spec.burst == 0 {
                return Err(format!(
                    "`{}` must be at least 1 when `{}` is set (0 would admit nothing)",
                    key("burst"),
                    key("rate_per_s")
                ));
            }
            spec.validate_keys(key)?;
        }
        Ok(())
    }
}

/// `[retry]`: exponential backoff with full jitter, for `retryable` errors only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt (0: no retry).
    pub max_retries: u32,
    pub base_delay_ms: u64,
    pub factor: f64,
    pub max_delay_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            base_delay_ms: 1_000,
            factor: 2.0,
            max_delay_ms: 30_000,
        }
    }
}

impl RetryConfig {
    /// The delay before retry number `retry` (1-based): uniformly random in
    /// `[0, min(max_delay, base × factor^(retry-1))]` ("full jitter").
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self.base_delay_ms as f64
            * self
                .factor
                .max(1.0)
                .powi(retry.saturating_sub(1).min(60) as i32);
        let cap = cap.min(self.max_delay_ms as f64).max(0.0);
        Duration::from_millis((fastrand::f64() * cap) as u64)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err("`retry.factor` must be at least 1".into());
        }
        if self.max_delay_ms < self.base_delay_ms {
            return Err("`retry.max_delay_ms` must be at least `retry.base_delay_ms`".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The limiter actor

/// Limits in force, changeable at run time by `limiter.configure`.
pub type SharedLimits = Arc<Mutex<LimiterConfig>>;

pub struct LimiterActor {
    sup: Supervision,
    core: Arc<LimiterCore>,
    limits: SharedLimits,
}

supervised!(LimiterActor);

impl LimiterActor {
    pub fn new(sup: Supervision, core: Arc<LimiterCore>, limits: SharedLimits) -> Self {
        LimiterActor { sup, core, limits }
    }
}

impl Supervise for LimiterActor {
    fn supervision(&self) -> &Supervision {
        &self.sup
    }
}

/// Try to admit a query for a model and a project.
pub struct TryAcquire {
    pub model: Option<String>,
    pub project: Option<String>,
    /// When refused, count the caller as waiting on its keys (see
    /// [`LimiterCore::try_acquire_or_wait`]): the refusal then carries the guard.
    pub wait: bool,
    /// The caller is already waiting (its first refusal was counted): a refusal is not counted
    /// as another throttled query.
    pub again: bool,
}

impl ActorRequest for TryAcquire {
    type Output = Result<Permit, (Throttled, Option<WaitingGuard>)>;
}

impl TryAcquire {
    pub fn keys(&self, limits: &LimiterConfig) -> Vec<(String, LimitSpec)> {
        let mut keys = vec![("global".to_string(), limits.spec(Scope::Global))];
        keys.push((
            format!("model:{}", self.model.as_deref().unwrap_or("default")),
            limits.spec(Scope::Model),
        ));
        if let Some(p) = &self.project {
            keys.push((format!("project:{p}"), limits.spec(Scope::Project)));
        }
        keys
    }
}

impl Handle<TryAcquire> for LimiterActor {
    fn handle(
        &mut self,
        msg: TryAcquire,
        _: &mut Context<Self>,
    ) -> Reply<Result<Permit, (Throttled, Option<WaitingGuard>)>> {
        let limits = self.limits.lock().map(|l| l.clone()).unwrap_or_default();
        let keys = msg.keys(&limits);
        Reply::ok(if msg.wait {
            self.core
                .try_acquire_or_wait(&keys)
                .map_err(|(t, guard)| (t, Some(guard)))
        } else if msg.again {
            self.core.try_acquire_again(&keys).map_err(|t| (t, None))
        } else {
            self.core.try_acquire(&keys).map_err(|t| (t, None))
        })
    }
}

pub struct LimiterStatus;

impl ActorRequest for LimiterStatus {
    type Output = (LimiterConfig, Vec<KeyStatus>);
}

impl Handle<LimiterStatus> for LimiterActor {
    fn handle(
        &mut self,
        _: LimiterStatus,
        _: &mut Context<Self>,
    ) -> Reply<(LimiterConfig, Vec<KeyStatus>)> {
        let limits = self.limits.lock().map(|l| l.clone()).unwrap_or_default();
        Reply::ok((limits, self.core.status()))
    }
}

pub struct Configure {
    pub scope: Scope,
    pub spec: LimitSpec,
}

impl ActorRequest for Configure {
    type Output = LimiterConfig;
}

impl Handle<Configure> for LimiterActor {
    fn handle(&mut self, msg: Configure, _: &mut Context<Self>) -> Reply<LimiterConfig> {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits.set(msg.scope, msg.spec);
        tracing::info!(scope = ?msg.scope, "limits changed: {:?}", msg.spec);
        Reply::ok(limits.clone())
    }
}

impl LimiterActor {
    pub fn core(&self) -> &Arc<LimiterCore> {
        &self.core
    }
}

// ---------------------------------------------------------------------------------------------
// The breaker actor

pub struct BreakerActor {
    sup: Supervision,
    core: Arc<BreakerCore>,
    spec: BreakerSpec,
    bus: Bus,
}

supervised!(BreakerActor);

impl BreakerActor {
    pub fn new(sup: Supervision, core: Arc<BreakerCore>, spec: BreakerSpec, bus: Bus) -> Self {
        BreakerActor {
            sup,
            core,
            spec,
            bus,
        }
    }

    /// Log a state change and publish it on the bus.
    fn transition(&self, t: &Transition) {
        tracing::warn!(key = %t.key, "breaker {:?} → {:?}: {}", t.from, t.to, t.reason);
        let (key, reason) = (t.key.clone(), t.reason.clone());
        self.bus.publish(match t.to {
            breaker::State::Open => EventKind::BreakerOpened { key, reason },
            breaker::State::HalfOpen => EventKind::BreakerHalfOpened { key, reason },
            breaker::State::Closed => EventKind::BreakerClosed { key, reason },
        });
    }
}

impl Supervise for BreakerActor {
    fn supervision(&self) -> &Supervision {
        &self.sup
    }
}

/// Is `key`'s breaker open? `Some(retry_after)` if so; changes nothing. Lets a query be refused
/// before it costs anything (a session, a limiter permit).
pub struct Peek {
    pub key: String,
}

impl ActorRequest for Peek {
    type Output = Option<Duration>;
}

impl Handle<Peek> for BreakerActor {
    fn handle(&mut self, msg: Peek, _: &mut Context<Self>) -> Reply<Option<Duration>> {
        Reply::ok(self.core.open_for(&msg.key))
    }
}

/// May a call under `key` go through? `Err(retry_after)` when the breaker is open.
pub struct Allow {
    pub key: String,
}

impl ActorRequest for Allow {
    type Output = Result<(), Duration>;
}

impl Handle<Allow> for BreakerActor {
    fn handle(&mut self, msg: Allow, _: &mut Context<Self>) -> Reply<Result<(), Duration>> {
        let (verdict, change) = self.core.allow(&msg.key, self.spec);
        if let Some(t) = &change {
            self.transition(t);
        }
        Reply::ok(verdict)
    }
}

/// How an admitted call ended (`None`: it never got an outcome, e.g. cancelled).
pub struct RecordOutcome {
    pub key: String,
    pub outcome: Option<Outcome>,
    pub duration: Duration,
}

impl ActorRequest for RecordOutcome {
    type Output = ();
}

impl Handle<RecordOutcome> for BreakerActor {
    fn handle(&mut self, msg: RecordOutcome, _: &mut Context<Self>) -> Reply<()> {
        if !self.spec.enabled {
            return Reply::ok(());
        }
        match msg.outcome {
            Some(outcome) => {
                if let Some(t) = self.core.record(&msg.key, outcome, msg.duration) {
                    self.transition(&t);
                }
            }
            None => self.core.abandon(&msg.key),
        }
        Reply::ok(())
    }
}

pub struct BreakerStatuses;

impl ActorRequest for BreakerStatuses {
    type Output = Vec<BreakerStatus>;
}

impl Handle<BreakerStatuses> for BreakerActor {
    fn handle(&mut self, _: BreakerStatuses, _: &mut Context<Self>) -> Reply<Vec<BreakerStatus>> {
        Reply::ok(self.core.status())
    }
}

pub struct Reset {
    pub key: Option<String>,
}

impl ActorRequest for Reset {
    type Output = usize;
}

impl Handle<Reset> for BreakerActor {
    fn handle(&mut self, msg: Reset, _: &mut Context<Self>) -> Reply<usize> {
        let n = self.core.reset(msg.key.as_deref());
        tracing::info!(key = ?msg.key, "breaker reset ({n})");
        Reply::ok(n)
    }
}

/// `d` in whole milliseconds, rounded up: a wait reported as 0 ms is over, and a "retry in N
/// ms" never asks for less than what is left.
pub fn ceil_millis(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// Keys (a breaker, a limiter key) are made from what clients send, one per model name: a map
/// of them at `max` entries makes room for one more. First those `at_rest` go (forgetting them
/// changes no decision); then, while it is still full, the least recently used of those that
/// `may_go`.
pub(crate) fn make_room<V, T: Ord>(
    map: &mut std::collections::HashMap<String, V>,
    max: usize,
    at_rest: impl Fn(&String, &V) -> bool,
    may_go: impl Fn(&String, &V) -> bool,
    last_used: impl Fn(&V) -> T,
) {
    if map.len() < max {
        return;
    }
    map.retain(|k, v| !at_rest(k, v));
    while map.len() >= max {
        let oldest = map
            .iter()
            .filter(|(k, v)| may_go(k, v))
            .min_by_key(|(_, v)| last_used(v))
            .map(|(k, _)| k.clone());
        match oldest {
            Some(key) => map.remove(&key),
            None => break,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_growing_cap() {
        let r = RetryConfig {
            max_retries: 5,
            base_delay_ms: 100,
            factor: 2.0,
            max_delay_ms: 350,
        };
        for _ in 0..200 {
            assert!(r.backoff(1) <= Duration::from_millis(100));
            assert!(r.backoff(2) <= Duration::from_millis(200));
            assert!(r.backoff(3) <= Duration::from_millis(350));
            assert!(r.backoff(30) <= Duration::from_millis(350));
        }
        let spread: std::collections::HashSet<u128> =
            (0..50).map(|_| r.backoff(3).as_millis()).collect();
        assert!(spread.len() > 5, "jitter spreads the delays");
    }

    #[test]
    fn keys_cover_global_model_and_project() {
        let cfg = LimiterConfig {
            global_concurrency: 1,
            ..Default::default()
        };
        let keys = TryAcquire {
            model: Some("m".into()),
            project: Some("p".into()),
            wait: false,
            again: false,
        }
        .keys(&cfg);
        let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["global", "model:m", "project:p"]);
        assert_eq!(keys[0].1.concurrency, 1);
        assert!(keys[1].1.is_off());
    }
}
