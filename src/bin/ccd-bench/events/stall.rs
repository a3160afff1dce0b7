//! A stalled subscriber: one that reads nothing while its queue is full, and what it costs a
//! publisher on another connection.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use super::EventsPlan;
use super::clients::{SubControl, SubOut, count_events, create_many, subscribe};
use crate::cli::Driver;
use crate::client::{Client, Expect};
use crate::daemon::Daemon;
use crate::fmt::lat_ratios;
use crate::interrupt::{check_interrupted, sleep_interruptible};
use crate::phase::{Op, Phase, PhaseResult, WorkerOut, run_phase};

/// How many events beyond its queue the stalled subscriber is sent before the measurement: they
/// fill its socket and the connection's reply channel first (about 400 events on Linux with the
/// default socket buffer).
pub(super) const PREFILL_EXTRA: u32 = 2000;

/// The pause between filling the stalled subscriber's queue and the measurement.
pub(super) const PREFILL_SETTLE: Duration = Duration::from_millis(500);

/// The publisher's latency with and without a stalled subscriber.
pub(super) struct StallRun {
    pub(super) quiet: PhaseResult,
    /// With only the reading subscriber: what a subscriber that keeps up costs.
    pub(super) reading_only: PhaseResult,
    pub(super) loaded: PhaseResult,
    /// Unmeasured calls made after the stalled subscriber subscribed, before the measurement.
    pub(super) prefill: u32,
    pub(super) prefill_failed: u64,
    /// Events published while each subscriber was subscribed.
    pub(super) published_stalled: u64,
    pub(super) published_reader: u64,
    pub(super) stalled: SubOut,
    pub(super) reader: SubOut,
}

/// 1 when a subscriber did not receive (or hear it missed) exactly the events published.
pub(super) fn sub_failed(s: &SubOut, published: u64) -> u64 {
    u64::from(s.error.is_some() || !s.complete || s.received + s.missed != published)
}

pub(super) fn describe_sub(s: &SubOut, published: u64) -> String {
    let mut t = format!(
        "received {}, missed {} ({} lagged events), of {published} published",
        s.received, s.missed, s.lagged
    );
    if let Some(e) = &s.error {
        let _ = write!(t, "; FAILED: {e}");
    } else if !s.complete {
        t.push_str("; FAILED: stopped before every event arrived");
    } else if s.received + s.missed != published {
        t.push_str("; FAILED: received + missed is not the published count");
    }
    t
}

/// Successful calls of a closed-loop phase, its warm-up included (each published one event).
pub(super) fn calls_ok(p: &PhaseResult, warmup: u32) -> u64 {
    u64::from(warmup).saturating_sub(p.warmup_failed) + p.ok
}

impl StallRun {
    pub(super) fn failures(&self) -> u64 {
        self.quiet.failed()
            + self.reading_only.failed()
            + self.loaded.failed()
            + self.prefill_failed
            + sub_failed(&self.stalled, self.published_stalled)
            + sub_failed(&self.reader, self.published_reader)
    }

    /// With the stalled and the reading subscriber / with none: (p50, p99).
    pub(super) fn vs_quiet(&self) -> (Option<f64>, Option<f64>) {
        lat_ratios(self.loaded.lat.as_ref(), self.quiet.lat.as_ref())
    }

    /// With the stalled and the reading subscriber / with the reading one only: the stall alone.
    pub(super) fn vs_reading(&self) -> (Option<f64>, Option<f64>) {
        lat_ratios(self.loaded.lat.as_ref(), self.reading_only.lat.as_ref())
    }
}

pub(super) fn stall_run(daemon: &Daemon, plan: &EventsPlan) -> Result<StallRun> {
    check_interrupted()?;
    let phase = |label: &str| Phase {
        label: label.to_string(),
        socket: daemon.socket.clone(),
        op: Op::SessionCreate,
        expect: Expect::Result(None),
        connections: 1,
        requests: plan.requests,
        limits: plan.limits.clone(),
        driver: Driver::Threads,
    };
    let warmup = plan.limits.warmup;
    let timeout = plan.limits.timeout;
    let quiet = run_phase(&phase("session.create, no subscribers"))?;
    check_interrupted()?;

    // A subscriber that reads (in a thread of its own) until the end of the measurement.
    let mut reading = subscribe(&daemon.socket, timeout).context("the reading subscriber")?;
    let ctl = SubControl::new(u64::MAX, &plan.limits);
    ctl.started.store(true, Ordering::Release);
    let prefill = plan.queue().saturating_add(PREFILL_EXTRA);
    thread::scope(|s| -> Result<StallRun> {
        let ctl = &ctl;
        let reader = thread::Builder::new()
            .name("bench-reader".into())
            .spawn_scoped(s, move || {
                let mut out = SubOut::default();
                count_events(&mut reading, ctl, &mut out);
                out
            })
            .context("spawning the reading subscriber thread")?;
        let run = (|| -> Result<(PhaseResult, Client, u64, WorkerOut, PhaseResult)> {
            let reading_only = run_phase(&phase("session.create, 1 reading subscriber"))?;
            check_interrupted()?;
            // A subscriber that reads its subscription reply and then never reads again.
            let stalled = subscribe(&daemon.socket, timeout).context("the stalled subscriber")?;
            // Fill its socket, its connection's reply channel and its queue.
            let mut filler = Client::connect(&daemon.socket, timeout)?;
            let mut fill = WorkerOut::default();
            let filled = create_many(&mut filler, prefill, &mut fill)
                .context("filling the stalled subscriber's queue")?;
            drop(filler);
            // Let the reading subscriber catch up and the event log write those events (every
            // `events.flush_interval_ms`, 200 ms by default), so that the measurement pays for
            // neither.
            sleep_interruptible(PREFILL_SETTLE);
            check_interrupted()?;
            let loaded = run_phase(&phase("session.create, 1 stalled + 1 reading subscriber"))?;
            Ok((reading_only, stalled, filled, fill, loaded))
        })();
        let (reading_only, mut stalled, filled, fill, loaded) = match run {
            Ok(v) => v,
            Err(e) => {
                ctl.abort.store(true, Ordering::Release);
                return Err(e);
            }
        };
        let published_stalled = filled + calls_ok(&loaded, warmup);
        let published_reader = calls_ok(&reading_only, warmup) + published_stalled;
        ctl.published.store(published_reader, Ordering::Release);
        let reader = reader
            .join()
            .map_err(|_| anyhow!("the reading subscriber thread panicked"))?;
        // Now read what the stalled subscriber was sent: the events its socket held, a `lagged`
        // for those its queue dropped, and the newest ones.
        let drain = SubControl::new(published_stalled, &plan.limits);
        drain.started.store(true, Ordering::Release);
        drain.published.store(published_stalled, Ordering::Release);
        let mut st = SubOut::default();
        count_events(&mut stalled, &drain, &mut st);
        let mut fill_failed = fill.rpc_errors;
        if let Some(m) = fill.messages.first() {
            eprintln!("ccd-bench: filling the stalled subscriber's queue: {m}");
            fill_failed = fill_failed.max(1);
        }
        Ok(StallRun {
            quiet,
            reading_only,
            loaded,
            prefill,
            prefill_failed: fill_failed,
            published_stalled,
            published_reader,
            stalled: st,
            reader,
        })
    })
}
