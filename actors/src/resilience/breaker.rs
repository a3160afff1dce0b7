//! Circuit breakers, one per key (default: agent command + model), configured as resilience4j
//! does: a count-based sliding window of outcomes, a failure-rate and a slow-call-rate
//! threshold, and a number of consecutive failures, any of which opens the breaker; OPEN for a
//! wait duration; HALF_OPEN admits a few trial calls; CLOSED again when they all succeed, OPEN
//! again on a failure.
//!
//! Errors of class `retryable` and `unavailable` are failures; `non_retryable` ones (a bad
//! request, a missing login) say nothing about the dependency's health and are only counted.

use super::ceil_millis;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    /// Off: every call is admitted and nothing is recorded.
    pub enabled: bool,
    /// This many failures in a row open the breaker.
    pub consecutive_failures: u32,
    /// How many of the latest outcomes the rates are computed over.
    pub window_size: u32,
    /// Rates are only judged once the window holds this many outcomes.
    pub min_calls: u32,
    /// Open when failures / calls in the window reach this (0..1).
    pub failure_rate: f64,
    /// A call slower than this counts as slow (0: never).
    pub slow_call_ms: u64,
    /// Open when slow calls / calls in the window reach this (0..1).
    pub slow_call_rate: f64,
    /// How long the breaker stays open before it lets trial calls through.
    pub wait_ms: u64,
    /// Trial calls admitted in HALF_OPEN; all must succeed to close.
    pub half_open_calls: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec {
            enabled: true,
            consecutive_failures: 5,
            window_size: 20,
            min_calls: 10,
            failure_rate: 0.5,
            slow_call_ms: 0,
            slow_call_rate: 1.0,
            wait_ms: 30_000,
            half_open_calls: 1,
        }
    }
}

impl BreakerSpec {
    pub fn validate(&self) -> Result<(), String> {
        let rate_ok = |r: f64| (0.0..=1.0).contains(&r);
        if !rate_ok(self.failure_rate) || !rate_ok(self.slow_call_rate) {
            return Err(
                "`breaker.failure_rate` and `breaker.slow_call_rate` must be between 0 and 1"
                    .into(),
            );
        }
        if self.window_size == 0 || self.half_open_calls == 0 || self.consecutive_failures == 0 {
            return Err("`breaker.window_size`, `breaker.half_open_calls` and `breaker.consecutive_failures` must be at least 1".into());
        }
        Ok(())
    }
}

pub use ccd_protocol::types::{BreakerState as State, BreakerStatus};

/// How a call ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// A non_retryable error: not the dependency's fault.
    Ignored,
}

/// A state change, for logs and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub key: String,
    pub from: State,
    pub to: State,
    pub reason: String,
}

/// A state change: from, to, and why.
pub type Change = (State, State, String);

#[derive(Debug, Clone, Copy)]
struct Sample {
    failed: bool,
    slow: bool,
}

/// One breaker's state machine; pure, driven by the caller's `now`.
#[derive(Debug, Clone)]
pub struct Breaker {
    spec: BreakerSpec,
    state: State,
    open_until: Instant,
    window: VecDeque<Sample>,
    consecutive: u32,
    trials_admitted: u32,
    trials_succeeded: u32,
    rejected: u64,
    ignored: u64,
    opened: u64,
    /// When a call last asked it.
    last_used: Instant,
}

impl Breaker {
    /// Closed with nothing against it (forgetting it loses only a run of successes), or open
    /// with its wait over and no call since to try it.
    fn at_rest(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => {
                self.consecutive == 0 && self.window.iter().all(|s| !s.failed && !s.slow)
            }
            State::Open => now >= self.open_until,
            State::HalfOpen => false,
        }
    }

    pub fn new(spec: BreakerSpec) -> Self {
        Breaker {
            spec,
            state: State::Closed,
            open_until: Instant::now(),
            window: VecDeque::new(),
            consecutive: 0,
            trials_admitted: 0,
            trials_succeeded: 0,
            rejected: 0,
            ignored: 0,
            opened: 0,
            last_used: Instant::now(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The state as a call arriving at `now` would find it: an OPEN breaker whose wait has
    /// passed is HALF_OPEN (the next call is a trial), though it moves there only when that call
    /// comes.
    pub fn state_at(&self, now: Instant) -> State {
        match self.state {
            State::Open if now >= self.open_until => State::HalfOpen,
            state => state,
        }
    }

    /// May a call go through now? `Err(retry_after)` when open (or HALF_OPEN is full).
    pub fn allow(&mut self, now: Instant) -> (Result<(), Duration>, Option<Change>) {
        self.last_used = now;
        let mut change = None;
        if self.state == State::Open && now >= self.open_until {
            change = Some(self.to(State::HalfOpen, "the wait duration passed".into(), now));
        }
        let verdict = match self.state {
            State::Closed => Ok(()),
            State::Open => Err(self
                .open_until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1))),
            State::HalfOpen if self.trials_admitted < self.spec.half_open_calls => {
                self.trials_admitted += 1;
                Ok(())
            }
            State::HalfOpen => Err(Duration::from_millis(self.spec.wait_ms.clamp(1, 1000))),
        };
        if verdict.is_err() {
            self.rejected += 1;
        }
        (verdict, change)
    }

    /// An admitted HALF_OPEN trial that ended without an outcome (cancelled): free its slot.
    pub fn abandon(&mut self) {
        if self.state == State::HalfOpen {
            self.trials_admitted = self.trials_admitted.saturating_sub(1);
        }
    }

    /// Record how an admitted call ended. Returns the state change it caused, if any.
    pub fn record(&mut self, outcome: Outcome, duration: Duration, now: Instant) -> Option<Change> {
        let slow =
            self.spec.slow_call_ms > 0 && duration >= Duration::from_millis(self.spec.slow_call_ms);
        let failed = match outcome {
            Outcome::Ignored => {
                self.ignored += 1;
                self.abandon();
                return None;
            }
            Outcome::Failure => true,
            Outcome::Success => false,
        };
        match self.state {
            State::HalfOpen => {
                if failed {
                    return Some(self.to(State::Open, "a trial call failed".into(), now));
                }
                self.trials_succeeded += 1;
                if self.trials_succeeded >= self.spec.half_open_calls {
                    return Some(self.to(
                        State::Closed,
                        format!("{} trial calls succeeded", self.trials_succeeded),
                        now,
                    ));
                }
                None
            }
            // An outcome of a call admitted before the breaker opened changes nothing.
            State::Open => None,
            State::Closed => {
                self.window.push_back(Sample { failed, slow });
                while self.window.len() > self.spec.window_size as usize {
                    self.window.pop_front();
                }
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                if self.consecutive >= self.spec.consecutive_failures {
                    return Some(self.to(
                        State::Open,
                        format!("{} failures in a row", self.consecutive),
                        now,
                    ));
                }
                let calls = self.window.len() as u32;
                if calls >= self.spec.min_calls.max(1) {
                    let (fail_rate, slow_rate) = self.rates();
                    if fail_rate >= self.spec.failure_rate {
                        return Some(self.to(
                            State::Open,
                            format!(
                                "failure rate {:.0}% over the last {calls} calls",
                                fail_rate * 100.0
                            ),
                            now,
                        ));
                    }
                    if self.spec.slow_call_ms > 0 && slow_rate >= self.spec.slow_call_rate {
                        return Some(self.to(
                            State::Open,
                            format!(
                                "slow-call rate {:.0}% over the last {calls} calls",
                                slow_rate * 100.0
                            ),
                            now,
                        ));
                    }
                }
                None
            }
        }
    }

    fn rates(&self) -> (f64, f64) {
        let n = self.window.len().max(1) as f64;
        let failed = self.window.iter().filter(|s| s.failed).count() as f64;
        let slow = self.window.iter().filter(|s| s.slow).count() as f64;
        (failed / n, slow / n)
    }

    fn to(&mut self, to: State, reason: String, now: Instant) -> Change {
        let from = self.state;
        self.state = to;
        self.trials_admitted = 0;
        self.trials_succeeded = 0;
        match to {
            State::Open => {
                self.opened += 1;
                self.open_until = now + Duration::from_millis(self.spec.wait_ms);
            }
            State::Closed => {
                self.window.clear();
                self.consecutive = 0;
            }
            State::HalfOpen => {}
        }
        (from, to, reason)
    }
}

/// All breakers, shared by `Arc` so that a restart of the breaker actor loses nothing.
#[derive(Debug, Default)]
pub struct BreakerCore {
    breakers: Mutex<HashMap<String, Breaker>>,
}

/// How many breakers are kept before those at rest are forgotten.
const MAX_BREAKERS: usize = 1024;

impl BreakerCore {
    pub fn new() -> Arc<Self> {
        Arc::new(BreakerCore::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Breaker>> {
        self.breakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn allow(
        &self,
        key: &str,
        spec: BreakerSpec,
    ) -> (Result<(), Duration>, Option<Transition>) {
        if !spec.enabled {
            return (Ok(()), None);
        }
        let mut map = self.lock();
        // One breaker per agent command and model, and the model is the client's: past
        // MAX_BREAKERS, breakers at rest make room for a new one, and if none is, the one
        // asked least recently goes.
        if !map.contains_key(key) {
            let now = Instant::now();
            super::make_room(
                &mut map,
                MAX_BREAKERS,
                |_, b| b.at_rest(now),
                |_, _| true,
                |b| b.last_used,
            );
        }
        let b = map
            .entry(key.to_string())
            .or_insert_with(|| Breaker::new(spec));
        b.spec = spec;
        let (verdict, change) = b.allow(Instant::now());
        (
            verdict,
            change.map(|(from, to, reason)| Transition {
                key: key.into(),
                from,
                to,
                reason,
            }),
        )
    }

    /// How long `key`'s breaker stays open, when it is open and its wait has not passed. Counts
    /// the refusal, and changes nothing else: no move to half-open, no trial taken.
    pub fn open_for(&self, key: &str) -> Option<Duration> {
        let mut map = self.lock();
        let b = map.get_mut(key)?;
        let now = Instant::now();
        if !(b.spec.enabled && b.state == State::Open && now < b.open_until) {
            return None;
        }
        b.rejected += 1;
        Some(
            b.open_until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        )
    }

    pub fn record(&self, key: &str, outcome: Outcome, duration: Duration) -> Option<Transition> {
        let mut map = self.lock();
        let b = map.get_mut(key)?;
        b.record(outcome, duration, Instant::now())
            .map(|(from, to, reason)| Transition {
                key: key.into(),
                from,
                to,
                reason,
            })
    }

    pub fn abandon(&self, key: &str) {
        if let Some(b) = self.lock().get_mut(key) {
            b.abandon();
        }
    }

    /// Close one breaker (or all): forget their history.
    pub fn reset(&self, key: Option<&str>) -> usize {
        let mut map = self.lock();
        match key {
            Some(k) => usize::from(map.remove(k).is_some()),
            None => {
                let n = map.len();
                map.clear();
                n
            }
        }
    }

    pub fn status(&self) -> Vec<BreakerStatus> {
        let now = Instant::now();
        let mut out: Vec<BreakerStatus> = self
            .lock()
            .iter()
            .map(|(key, b)| {
                let (failure_rate, slow_call_rate) = b.rates();
                // Computed on read: a breaker whose wait has passed is shown HALF_OPEN, not
                // OPEN with nothing left to wait.
                let state = b.state_at(now);
                BreakerStatus {
                    key: key.clone(),
                    state,
                    retry_after_ms: if state == State::Open {
                        ceil_millis(b.open_until.saturating_duration_since(now))
                    } else {
                        0
                    },
                    calls_in_window: b.window.len() as u32,
                    failure_rate,
                    slow_call_rate,
                    consecutive_failures: b.consecutive,
                    rejected: b.rejected,
                    non_retryable: b.ignored,
                    times_opened: b.opened,
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn waits_are_reported_in_milliseconds_rounded_up() {
        assert_eq!(ceil_millis(Duration::ZERO), 0);
        assert_eq!(ceil_millis(Duration::from_micros(1)), 1);
        assert_eq!(ceil_millis(Duration::from_micros(1000)), 1);
        assert_eq!(ceil_millis(Duration::from_micros(1001)), 2);
    }

    fn spec() -> BreakerSpec {
        BreakerSpec {
            consecutive_failures: 3,
            window_size: 10,
            min_calls: 4,
            failure_rate: 0.5,
            wait_ms: 1000,
            half_open_calls: 2,
            ..Default::default()
        }
    }

    fn paused<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn status_shows_half_open_once_the_wait_has_passed() {
        paused(async {
            let core = BreakerCore::new();
            let spec = spec();
            for _ in 0..3 {
                assert!(core.allow("k", spec).0.is_ok());
                core.record("k", Outcome::Failure, Duration::from_millis(1));
            }
            let s = &core.status()[0];
            assert_eq!((s.state, s.retry_after_ms), (State::Open, 1000));
            tokio::time::advance(Duration::from_millis(999)).await;
            let s = &core.status()[0];
            assert_eq!((s.state, s.retry_after_ms), (State::Open, 1));
            tokio::time::advance(Duration::from_millis(1)).await;
            // No call has come since: reading alone shows where the next call would find it.
            let s = &core.status()[0];
            assert_eq!((s.state, s.retry_after_ms), (State::HalfOpen, 0));
            assert_eq!(s.rejected, 0, "reading counts nothing");
            // And the next call is indeed a trial.
            let (verdict, change) = core.allow("k", spec);
            assert!(verdict.is_ok());
            assert_eq!(change.map(|t| t.to), Some(State::HalfOpen));
        })
    }

    #[test]
    fn breakers_at_rest_make_room_for_new_keys() {
        paused(async {
            let core = BreakerCore::new();
            let spec = spec();
            // One breaker with failures against it, then a flood of keys (one per model name).
            assert!(core.allow("claude|bad", spec).0.is_ok());
            core.record("claude|bad", Outcome::Failure, Duration::from_millis(1));
            for i in 0..3 * MAX_BREAKERS {
                let key = format!("claude|model-{i}");
                assert!(core.allow(&key, spec).0.is_ok());
                core.record(&key, Outcome::Success, Duration::from_millis(1));
            }
            let status = core.status();
            assert!(
                status.len() <= MAX_BREAKERS,
                "{} breakers kept",
                status.len()
            );
            assert!(
                status.iter().any(|b| b.key == "claude|bad"),
                "a breaker with a failure is kept"
            );
            // Models whose every call fails, never asked again: still at most MAX_BREAKERS.
            for i in 0..2 * MAX_BREAKERS {
                let key = format!("claude|failing-{i}");
                assert!(core.allow(&key, spec).0.is_ok());
                for _ in 0..spec.consecutive_failures {
                    core.record(&key, Outcome::Failure, Duration::from_millis(1));
                }
            }
            assert!(core.status().len() <= MAX_BREAKERS);
        });
    }

    #[test]
    fn consecutive_failures_open_then_half_open_then_close() {
        paused(async {
            let mut b = Breaker::new(spec());
            let t0 = Instant::now();
            for _ in 0..2 {
                assert!(b.allow(t0).0.is_ok());
                assert_eq!(b.record(Outcome::Failure, Duration::ZERO, t0), None);
            }
            b.allow(t0).0.unwrap();
            let change = b.record(Outcome::Failure, Duration::ZERO, t0).unwrap();
            assert_eq!((change.0, change.1), (State::Closed, State::Open));
            assert_eq!(
                b.allow(t0 + Duration::from_millis(400)).0,
                Err(Duration::from_millis(600))
            );
            // After the wait: two trials admitted, a third refused; both succeed → closed.
            let later = t0 + Duration::from_millis(1000);
            let (v, change) = b.allow(later);
            assert!(v.is_ok());
            assert_eq!(change.map(|c| c.1), Some(State::HalfOpen));
            assert!(b.allow(later).0.is_ok());
            assert!(b.allow(later).0.is_err());
            assert_eq!(b.record(Outcome::Success, Duration::ZERO, later), None);
            assert_eq!(
                b.record(Outcome::Success, Duration::ZERO, later)
                    .map(|c| c.1),
                Some(State::Closed)
            );
        });
    }

    #[test]
    fn failure_rate_opens_and_non_retryable_is_ignored() {
        paused(async {
            let now = Instant::now();
            let mut b = Breaker::new(BreakerSpec {
                consecutive_failures: 100,
                ..spec()
            });
            use Outcome::*;
            // Counted: S S F S (25%), then F (40%): still closed; ignored ones count for nothing.
            for o in [
                Success, Success, Failure, Ignored, Ignored, Success, Failure,
            ] {
                b.allow(now).0.unwrap();
                assert_eq!(b.record(o, Duration::ZERO, now), None, "{o:?}");
            }
            b.allow(now).0.unwrap();
            // 3 failures of 6 counted calls = 50% ≥ 50%.
            assert_eq!(
                b.record(Failure, Duration::ZERO, now).map(|c| c.1),
                Some(State::Open)
            );
        });
    }

    #[test]
    fn slow_calls_open_it_too() {
        paused(async {
            let now = Instant::now();
            let mut b = Breaker::new(BreakerSpec {
                slow_call_ms: 100,
                slow_call_rate: 0.75,
                consecutive_failures: 100,
                ..spec()
            });
            let mut last = None;
            for _ in 0..4 {
                b.allow(now).0.unwrap();
                last = b.record(Outcome::Success, Duration::from_millis(150), now);
            }
            assert_eq!(last.map(|c| c.1), Some(State::Open));
        });
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        Call(Outcome),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Call(Outcome::Success)),
            Just(Step::Call(Outcome::Failure)),
            Just(Step::Call(Outcome::Ignored)),
            (0u64..1500).prop_map(Step::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

        /// For any sequence of outcomes and pauses, the breaker follows its state machine,
        /// checked against an independent model of the CLOSED-state window.
        #[test]
        fn follows_the_state_machine(steps in proptest::collection::vec(step(), 1..120)) {
            paused(async {
                let s = spec();
                let mut b = Breaker::new(s);
                let mut now = Instant::now();
                let mut opened_at = None;
                // The model: outcomes counted in CLOSED (newest last), and failures in a row.
                let mut window: Vec<bool> = Vec::new();
                let mut in_row = 0u32;
                for st in steps {
                    match st {
                        Step::Wait(ms) => now += Duration::from_millis(ms),
                        Step::Call(outcome) => {
                            let before = b.state();
                            let (verdict, change) = b.allow(now);
                            if let Some((from, to, _)) = &change {
                                // Only OPEN → HALF_OPEN happens on allow, and only after the wait.
                                prop_assert_eq!((*from, *to), (State::Open, State::HalfOpen));
                                prop_assert!(now.duration_since(opened_at.unwrap()) >= Duration::from_millis(s.wait_ms));
                            }
                            if before == State::Open && change.is_none() {
                                prop_assert!(verdict.is_err(), "an open breaker refuses");
                                continue;
                            }
                            if verdict.is_err() {
                                prop_assert_eq!(b.state(), State::HalfOpen, "only a full HALF_OPEN refuses");
                                continue;
                            }
                            let state = b.state();
                            let change = b.record(outcome, Duration::ZERO, now);
                            if outcome == Outcome::Ignored {
                                prop_assert!(change.is_none(), "non_retryable changes nothing");
                                continue;
                            }
                            match state {
                                State::HalfOpen if outcome == Outcome::Failure => {
                                    prop_assert_eq!(change.map(|c| c.1), Some(State::Open));
                                }
                                State::HalfOpen => {}
                                State::Closed => {
                                    let failed = outcome == Outcome::Failure;
                                    window.push(failed);
                                    if window.len() > s.window_size as usize {
                                        window.remove(0);
                                    }
                                    in_row = if failed { in_row + 1 } else { 0 };
                                    let rate = window.iter().filter(|f| **f).count() as f64 / window.len() as f64;
                                    let should_open = in_row >= s.consecutive_failures
                                        || (window.len() >= s.min_calls as usize && rate >= s.failure_rate);
                                    prop_assert_eq!(b.state() == State::Open, should_open, "window {:?}, {} in a row", window, in_row);
                                }
                                State::Open => prop_assert!(change.is_none()),
                            }
                            if b.state() == State::Open && state != State::Open {
                                opened_at = Some(now);
                            }
                            if b.state() == State::Closed && state == State::HalfOpen {
                                window.clear();
                                in_row = 0;
                            }
                            if b.state() == State::Open {
                                // The model restarts from an empty window when the breaker closes again.
                                window.clear();
                                in_row = 0;
                            }
                        }
                    }
                }
                Ok(())
            })?;
        }
    }
}
