//! Rate limiting per key (global, per model, per project) with three algorithms that may be
//! combined on one key: a token bucket (governor's GCRA), an exact sliding window, and a
//! concurrency limit whose permits are held for a query's whole life.
//!
//! The accounting lives in [`LimiterCore`], shared by `Arc` between the limiter actor and every
//! [`Permit`]; a permit gives its slot back when dropped, whatever ends the query (finish,
//! cancel, timeout, executor crash, client disconnect). A restart of the limiter actor keeps the
//! core, so it can neither leak permits nor hand out extra ones.
//!
//! Time comes from tokio's clock (`tokio::time::Instant`), so tests run the algorithms on a
//! paused clock, deterministically.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

pub use ccd_protocol::types::{KeyStatus, LimitSpec};

/// governor's clock, read from tokio's (which tests can pause and advance).
#[derive(Debug, Clone, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

struct KeyState {
    spec: LimitSpec,
    bucket: Option<Bucket>,
    window: VecDeque<Instant>,
    in_flight: u32,
    waiting: u32,
    throttled: u64,
    admitted: u64,
    /// Tokens left after the bucket's last decision, and when it was made.
    last_remaining: Option<(u32, Instant)>,
    /// When a query last asked for it.
    last_used: Instant,
}

impl KeyState {
    /// Nothing running or waiting, its window empty and its bucket full again: forgetting it
    /// changes no decision.
    fn at_rest(&self, now: Instant) -> bool {
        let window = Duration::from_millis(self.spec.window_ms);
        self.in_flight == 0
            && self.waiting == 0
            && self
                .window
                .back()
                .is_none_or(|t| now.duration_since(*t) >= window)
            && (self.bucket.is_none()
                || available_tokens(&self.spec, self.last_remaining, now) >= self.spec.burst.max(1))
    }

    fn new(spec: LimitSpec) -> Self {
        KeyState {
            bucket: bucket(&spec),
            spec,
            window: VecDeque::new(),
            in_flight: 0,
            waiting: 0,
            throttled: 0,
            admitted: 0,
            last_remaining: None,
            last_used: Instant::now(),
        }
    }
}

fn bucket(spec: &LimitSpec) -> Option<Bucket> {
    if spec.rate_per_s <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / spec.rate_per_s).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(spec.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)?.allow_burst(burst);
    Some(
        RateLimiter::direct_with_clock(quota, TokioClock)
            .with_middleware::<StateInformationMiddleware>(),
    )
}

/// Why an acquisition must wait: at the earliest after `retry_after` (a concurrency limit can
/// also free up sooner, on a release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    pub concurrency: bool,
    /// The key whose limit sets `retry_after` (e.g. `global`, `model:opus`).
    pub key: String,
}

#[derive(Default)]
pub struct LimiterCore {
    keys: Mutex<HashMap<String, KeyState>>,
    released: tokio::sync::Notify,
}

/// How many keys are kept before those at rest are forgotten.
const MAX_KEYS: usize = 1024;

impl LimiterCore {
    pub fn new() -> Arc<Self> {
        Arc::new(LimiterCore::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, KeyState>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit one query under every `(key, spec)` at once, or say how long to wait.
    /// Keys whose spec is off are skipped. A changed spec replaces the key's algorithms.
    pub fn try_acquire(
        self: &Arc<Self>,
        keys: &[(String, LimitSpec)],
    ) -> Result<Permit, Throttled> {
        self.try_acquire_in(&mut self.lock(), keys, true)
    }

    /// As [`Self::try_acquire`], for a query already waiting (already counted as throttled):
    /// a refusal is not counted again, so `throttled` counts queries, not polls.
    pub fn try_acquire_again(
        self: &Arc<Self>,
        keys: &[(String, LimitSpec)],
    ) -> Result<Permit, Throttled> {
        self.try_acquire_in(&mut self.lock(), keys, false)
    }

    /// As [`Self::try_acquire`], and when refused, count the caller as waiting on these keys
    /// while the returned guard lives, under the same lock: no other acquisition can make room
    /// by forgetting a key between the refusal and the count that keeps it.
    pub fn try_acquire_or_wait(
        self: &Arc<Self>,
        keys: &[(String, LimitSpec)],
    ) -> Result<Permit, (Throttled, WaitingGuard)> {
        let mut map = self.lock();
        self.try_acquire_in(&mut map, keys, true)
            .map_err(|throttled| {
                let names: Vec<String> = keys
                    .iter()
                    .filter(|(_, s)| !s.is_off())
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &names {
                    if let Some(s) = map.get_mut(k) {
                        s.waiting += 1;
                    }
                }
                let guard = WaitingGuard {
                    core: self.clone(),
                    keys: names,
                };
                (throttled, guard)
            })
    }

    /// `count`: a refusal adds one to each key's `throttled` (a query's first refusal, not
    /// its later polls).
    fn try_acquire_in(
        self: &Arc<Self>,
        map: &mut HashMap<String, KeyState>,
        keys: &[(String, LimitSpec)],
        count: bool,
    ) -> Result<Permit, Throttled> {
        let now = Instant::now();
        let active: Vec<&(String, LimitSpec)> = keys.iter().filter(|(_, s)| !s.is_off()).collect();
        // A key per model, and the model is the client's: past MAX_KEYS, keys at rest make room.
        if active.iter().any(|(k, _)| !map.contains_key(k)) {
            // Never one of the keys this very call asks for; past those at rest, one with
            // nothing in flight or waiting (its bucket and window start over, as for a new
            // model).
            let asked = |k: &String| active.iter().any(|(a, _)| a == k);
            super::make_room(
                map,
                MAX_KEYS,
                |k, s| !asked(k) && s.at_rest(now),
                |k, s| !asked(k) && s.in_flight == 0 && s.waiting == 0,
                |s| s.last_used,
            );
        }
        for (key, spec) in &active {
            let state = map
                .entry(key.clone())
                .or_insert_with(|| KeyState::new(*spec));
            state.last_used = now;
            if state.spec != *spec {
                // New algorithms; what runs and what waits under the key stays counted.
                let (in_flight, waiting) = (state.in_flight, state.waiting);
                *state = KeyState {
                    in_flight,
                    waiting,
                    ..KeyState::new(*spec)
                };
            }
        }
        // Checks that consume nothing first: concurrency and the sliding window.
        let mut wait: Option<Throttled> = None;
        for (key, spec) in &active {
            let Some(state) = map.get_mut(key) else {
                continue;
            };
            if spec.concurrency > 0 && state.in_flight >= spec.concurrency {
                wait = Some(longest(
                    wait,
                    Throttled {
                        retry_after: Duration::from_millis(50),
                        concurrency: true,
                        key: key.clone(),
                    },
                ));
            }
            if spec.window_max > 0 {
                let window = Duration::from_millis(spec.window_ms);
                while state
                    .window
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= window)
                {
                    state.window.pop_front();
                }
                if state.window.len() >= spec.window_max as usize
                    && let Some(oldest) = state.window.front()
                {
                    let retry_after = (*oldest + window)
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(1));
                    wait = Some(longest(
                        wait,
                        Throttled {
                            retry_after,
                            concurrency: false,
                            key: key.clone(),
                        },
                    ));
                }
            }
        }
        if let Some(w) = wait {
            if count {
                for (key, _) in &active {
                    if let Some(s) = map.get_mut(key) {
                        s.throttled += 1;
                    }
                }
            }
            return Err(w);
        }
        // Token buckets, in key order. One refusing after another admitted costs the earlier
        // one a token: the limiter may under-admit then, never over-admit.
        for (key, _) in &active {
            let Some(state) = map.get_mut(key) else {
                continue;
            };
            if let Some(b) = &state.bucket {
                match b.check() {
                    Ok(snapshot) => {
                        state.last_remaining =
                            Some((snapshot.remaining_burst_capacity(), Instant::now()))
                    }
                    Err(not_until) => {
                        state.last_remaining = Some((0, Instant::now()));
                        let retry_after = not_until
                            .wait_time_from(TokioClock.now())
                            .max(Duration::from_millis(1));
                        if count {
                            for (key, _) in &active {
                                if let Some(s) = map.get_mut(key) {
                                    s.throttled += 1;
                                }
                            }
                        }
                        return Err(Throttled {
                            retry_after,
                            concurrency: false,
                            key: key.clone(),
                        });
                    }
                }
            }
        }
        let mut held = Vec::new();
        for (key, spec) in &active {
            let Some(state) = map.get_mut(key) else {
                continue;
            };
            state.admitted += 1;
            if spec.window_max > 0 {
                state.window.push_back(now);
            }
            state.in_flight += 1;
            held.push(key.clone());
        }
        Ok(Permit {
            core: self.clone(),
            keys: held,
        })
    }

    fn release(&self, keys: &[String]) {
        let mut map = self.lock();
        for key in keys {
            if let Some(state) = map.get_mut(key) {
                state.in_flight = state.in_flight.saturating_sub(1);
            }
        }
        drop(map);
        self.released.notify_waiters();
    }

    /// Wait until a release, or `limit`, whichever is first.
    pub async fn released_or(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.released.notified()).await;
    }

    pub fn status(&self) -> Vec<KeyStatus> {
        let now = Instant::now();
        let mut out: Vec<KeyStatus> = self
            .lock()
            .iter()
            .map(|(key, s)| {
                let window = Duration::from_millis(s.spec.window_ms);
                KeyStatus {
                    key: key.clone(),
                    spec: s.spec,
                    available_tokens: s
                        .bucket
                        .as_ref()
                        .map(|_| available_tokens(&s.spec, s.last_remaining, now)),
                    window_count: s
                        .window
                        .iter()
                        .filter(|t| now.duration_since(**t) < window)
                        .count() as u32,
                    in_flight: s.in_flight,
                    waiting: s.waiting,
                    throttled: s.throttled,
                    admitted: s.admitted,
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

/// Tokens in a bucket now: what its last decision left plus the whole tokens refilled since, up
/// to the burst (full when it never decided). A fraction of a token counts as none.
fn available_tokens(spec: &LimitSpec, last: Option<(u32, Instant)>, now: Instant) -> u32 {
    let burst = spec.burst.max(1);
    let Some((left, at)) = last else {
        return burst;
    };
    let refilled = now.duration_since(at).as_secs_f64() * spec.rate_per_s;
    let refilled = if refilled.is_finite() && refilled >= 0.0 {
        refilled.min(f64::from(burst)) as u32
    } else {
        0
    };
    left.saturating_add(refilled).min(burst)
}

fn longest(a: Option<Throttled>, b: Throttled) -> Throttled {
    match a {
        Some(a) if a.retry_after >= b.retry_after => Throttled {
            concurrency: a.concurrency || b.concurrency,
            ..a
        },
        Some(a) => Throttled {
            concurrency: a.concurrency || b.concurrency,
            ..b
        },
        None => b,
    }
}

/// Admission to run one query. Dropping it releases its concurrency slots.
#[derive(Debug)]
pub struct Permit {
    core: Arc<LimiterCore>,
    keys: Vec<String>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.core.release(&self.keys);
    }
}

impl std::fmt::Debug for LimiterCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimiterCore").finish_non_exhaustive()
    }
}

/// Counts a caller as waiting on its keys until dropped.
#[derive(Debug)]
pub struct WaitingGuard {
    core: Arc<LimiterCore>,
    keys: Vec<String>,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        let mut map = self.core.lock();
        for k in &self.keys {
            if let Some(s) = map.get_mut(k) {
                s.waiting = s.waiting.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn paused<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    }

    fn bucket_spec(rate: f64, burst: u32) -> LimitSpec {
        LimitSpec {
            rate_per_s: rate,
            burst,
            ..Default::default()
        }
    }

    #[test]
    fn a_bucket_too_slow_to_count_is_refused() {
        // 1e-11 per second: a token every 3,000 years; governor would panic on it.
        let err = bucket_spec(1e-11, 1).validate("limits.global").unwrap_err();
        assert!(err.contains("`limits.global.rate_per_s`"), "{err}");
        assert!(err.contains("200 years"), "{err}");
        assert!(
            bucket_spec(1e-6, 1).validate("g").is_ok(),
            "one per 11.6 days is fine"
        );
        assert!(bucket_spec(1e-6, 10_000).validate("g").is_err());
    }

    proptest! {
        #[test]
        fn every_bucket_that_validates_builds_and_checks(
            rate in prop_oneof![1e-12f64..1e-3, 1e-3f64..1e6],
            burst in prop_oneof![0u32..100, 0u32..=u32::MAX],
        ) {
            let spec = bucket_spec(rate, burst);
            if spec.validate("g").is_ok() {
                paused(async {
                    let b = bucket(&spec).expect("a positive rate makes a bucket");
                    let _ = b.check();
                    tokio::time::advance(Duration::from_secs(3600)).await;
                    let _ = b.check();
                });
            }
        }
    }

    #[test]
    fn keys_at_rest_make_room_for_new_ones() {
        paused(async {
            let core = LimiterCore::new();
            let spec = LimitSpec {
                rate_per_s: 100.0,
                burst: 1,
                concurrency: 4,
                ..Default::default()
            };
            // A key with a query in flight, then a flood of keys (one per model name) whose
            // buckets have refilled by the time the map is full.
            let busy = core
                .try_acquire(&[("model:busy".to_string(), spec)])
                .unwrap();
            for i in 0..3 * MAX_KEYS {
                let key = format!("model:m{i}");
                drop(core.try_acquire(&[(key, spec)]).unwrap());
                tokio::time::advance(Duration::from_millis(10)).await;
            }
            let status = core.status();
            assert!(status.len() <= MAX_KEYS + 1, "{} keys kept", status.len());
            let kept = status.iter().find(|k| k.key == "model:busy");
            assert_eq!(kept.map(|k| k.in_flight), Some(1), "a key in use is kept");
            // Keys whose buckets are still empty (no time passes): the least recently used
            // go instead, never the one in use.
            for i in 0..2 * MAX_KEYS {
                let key = format!("model:empty{i}");
                drop(core.try_acquire(&[(key, spec)]).unwrap());
            }
            let status = core.status();
            assert!(status.len() <= MAX_KEYS + 1, "{} keys kept", status.len());
            assert!(status.iter().any(|k| k.key == "model:busy"));
            drop(busy);
        });
    }

    #[test]
    fn making_room_never_forgets_a_key_the_same_call_asks_for() {
        paused(async {
            let core = LimiterCore::new();
            let spec = bucket_spec(0.001, 1);
            // `project:p` has used its one token, and is the least recently used key of a
            // full map whose buckets are all empty.
            let p = ("project:p".to_string(), spec);
            drop(core.try_acquire(std::slice::from_ref(&p)).unwrap());
            for i in 0..MAX_KEYS - 1 {
                // A millisecond apart, so that the least recently used is `p` (no bucket
                // refills meanwhile: a token takes 1,000 s).
                tokio::time::advance(Duration::from_millis(1)).await;
                drop(core.try_acquire(&[(format!("model:m{i}"), spec)]).unwrap());
            }
            assert_eq!(core.status().len(), MAX_KEYS);
            // Asked for again with a model never seen: still throttled, not made anew.
            let t = core
                .try_acquire(&[p, ("model:new".to_string(), spec)])
                .unwrap_err();
            assert_eq!(t.key, "project:p");
        });
    }

    #[test]
    fn a_refusal_that_waits_is_counted_at_once_and_keeps_its_key() {
        paused(async {
            let core = LimiterCore::new();
            let spec = bucket_spec(0.001, 1);
            let p = [("project:p".to_string(), spec)];
            drop(core.try_acquire(&p).unwrap());
            // Refused, and counted as waiting by the same call: nothing can forget the key
            // (and with it the spent token) before the caller waits.
            let (t, guard) = core.try_acquire_or_wait(&p).unwrap_err();
            assert_eq!(t.key, "project:p");
            let waiting = |core: &LimiterCore| {
                core.status()
                    .iter()
                    .find(|k| k.key == "project:p")
                    .map(|k| k.waiting)
            };
            assert_eq!(waiting(&core), Some(1));
            // A flood of new keys, none of them at rest: the least recently used go, not the
            // one a caller waits on.
            for i in 0..2 * MAX_KEYS {
                tokio::time::advance(Duration::from_millis(1)).await;
                drop(core.try_acquire(&[(format!("model:m{i}"), spec)]).unwrap());
            }
            assert_eq!(waiting(&core), Some(1));
            assert!(
                core.try_acquire(&p).is_err(),
                "its bucket did not start over"
            );
            drop(guard);
            assert_eq!(waiting(&core), Some(0));
        });
    }

    #[test]
    fn token_bucket_admits_burst_then_rate() {
        paused(async {
            let core = LimiterCore::new();
            let keys = [("global".to_string(), bucket_spec(10.0, 3))];
            for _ in 0..3 {
                drop(core.try_acquire(&keys).unwrap());
            }
            let t = core.try_acquire(&keys).unwrap_err();
            assert!(
                t.retry_after <= Duration::from_millis(100) && !t.concurrency,
                "{t:?}"
            );
            tokio::time::advance(Duration::from_millis(100)).await;
            assert!(core.try_acquire(&keys).is_ok());
            assert_eq!(core.status()[0].throttled, 1);
        });
    }

    #[test]
    fn status_shows_tokens_refilled_since_the_last_admission() {
        paused(async {
            let core = LimiterCore::new();
            let keys = [("global".to_string(), bucket_spec(10.0, 5))];
            assert_eq!(core.status().len(), 0);
            for _ in 0..5 {
                drop(core.try_acquire(&keys).unwrap());
            }
            assert_eq!(core.status()[0].available_tokens, Some(0));
            tokio::time::advance(Duration::from_millis(250)).await;
            assert_eq!(core.status()[0].available_tokens, Some(2));
            tokio::time::advance(Duration::from_secs(60)).await;
            assert_eq!(core.status()[0].available_tokens, Some(5));
        });
    }

    #[test]
    fn sliding_window_is_exact() {
        paused(async {
            let core = LimiterCore::new();
            let spec = LimitSpec {
                window_max: 2,
                window_ms: 1000,
                ..Default::default()
            };
            let keys = [("k".to_string(), spec)];
            drop(core.try_acquire(&keys).unwrap());
            tokio::time::advance(Duration::from_millis(400)).await;
            drop(core.try_acquire(&keys).unwrap());
            let t = core.try_acquire(&keys).unwrap_err();
            assert_eq!(t.retry_after, Duration::from_millis(600));
            tokio::time::advance(Duration::from_millis(599)).await;
            assert!(core.try_acquire(&keys).is_err());
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(core.try_acquire(&keys).is_ok());
        });
    }

    #[test]
    fn concurrency_permits_are_released_on_drop() {
        paused(async {
            let core = LimiterCore::new();
            let keys = [(
                "k".to_string(),
                LimitSpec {
                    concurrency: 2,
                    ..Default::default()
                },
            )];
            let a = core.try_acquire(&keys).unwrap();
            let _b = core.try_acquire(&keys).unwrap();
            assert!(core.try_acquire(&keys).unwrap_err().concurrency);
            assert_eq!(core.status()[0].in_flight, 2);
            drop(a);
            assert_eq!(core.status()[0].in_flight, 1);
            assert!(core.try_acquire(&keys).is_ok());
        });
    }

    #[test]
    fn a_waiting_query_is_throttled_once_however_often_it_asks() {
        paused(async {
            let core = LimiterCore::new();
            let keys = [(
                "k".to_string(),
                LimitSpec {
                    concurrency: 1,
                    ..Default::default()
                },
            )];
            let held = core.try_acquire(&keys).unwrap();
            let (_, guard) = core.try_acquire_or_wait(&keys).unwrap_err();
            for _ in 0..20 {
                assert!(core.try_acquire_again(&keys).is_err());
            }
            assert_eq!(core.status()[0].throttled, 1);
            drop(held);
            drop(core.try_acquire_again(&keys).unwrap());
            drop(guard);
            let st = &core.status()[0];
            assert_eq!((st.throttled, st.admitted), (1, 2));
            // A refusal without waiting (`no_wait`) is a throttled query too.
            let _held = core.try_acquire(&keys).unwrap();
            assert!(core.try_acquire(&keys).is_err());
            assert_eq!(core.status()[0].throttled, 2);
        });
    }

    #[test]
    fn all_keys_must_admit_and_a_refusal_holds_nothing() {
        paused(async {
            let core = LimiterCore::new();
            let keys = [
                (
                    "global".to_string(),
                    LimitSpec {
                        concurrency: 5,
                        ..Default::default()
                    },
                ),
                (
                    "model:m".to_string(),
                    LimitSpec {
                        concurrency: 1,
                        ..Default::default()
                    },
                ),
            ];
            let _held = core.try_acquire(&keys).unwrap();
            assert!(core.try_acquire(&keys).is_err());
            let st = core.status();
            assert_eq!(
                st.iter().map(|s| s.in_flight).collect::<Vec<_>>(),
                [1, 1],
                "{st:?}"
            );
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// For any arrival pattern, a token bucket admits at most burst + rate × T in any span T.
        #[test]
        fn token_bucket_never_admits_more_than_its_rate(
            rate in 1u32..50, burst in 1u32..5, gaps in proptest::collection::vec(0u64..120, 1..200)
        ) {
            let admitted: Vec<Instant> = paused(async {
                let core = LimiterCore::new();
                let keys = [("k".to_string(), bucket_spec(rate as f64, burst))];
                let mut admitted = Vec::new();
                for gap in gaps {
                    tokio::time::advance(Duration::from_millis(gap)).await;
                    if let Ok(p) = core.try_acquire(&keys) {
                        drop(p);
                        admitted.push(Instant::now());
                    }
                }
                admitted
            });
            for (i, start) in admitted.iter().enumerate() {
                for (j, end) in admitted.iter().enumerate().skip(i) {
                    let span = end.duration_since(*start).as_secs_f64();
                    let allowed = burst as f64 + rate as f64 * span + 1e-6;
                    prop_assert!((j - i + 1) as f64 <= allowed, "{} admitted in {span}s (rate {rate}, burst {burst})", j - i + 1);
                }
            }
        }

        /// A sliding window admits at most `max` in any window, exactly.
        #[test]
        fn sliding_window_never_exceeds_max(
            max in 1u32..6, window_ms in 10u64..500, gaps in proptest::collection::vec(0u64..100, 1..200)
        ) {
            let admitted: Vec<Instant> = paused(async {
                let core = LimiterCore::new();
                let keys = [("k".to_string(), LimitSpec { window_max: max, window_ms, ..Default::default() })];
                let mut admitted = Vec::new();
                for gap in gaps {
                    tokio::time::advance(Duration::from_millis(gap)).await;
                    if let Ok(p) = core.try_acquire(&keys) {
                        drop(p);
                        admitted.push(Instant::now());
                    }
                }
                admitted
            });
            for (i, start) in admitted.iter().enumerate() {
                let inside = admitted[i..].iter().take_while(|t| t.duration_since(*start) < Duration::from_millis(window_ms)).count();
                prop_assert!(inside <= max as usize);
            }
        }
    }
}
