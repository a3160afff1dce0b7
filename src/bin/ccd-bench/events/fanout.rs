//! Fan-out: publishers and many subscribers at once, and the events delivered per second.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};

use super::clients::{SubControl, SubTotals, create_batch, subscriber};
use super::{DELIVERY_TARGET, EventsPlan};
use crate::client::Client;
use crate::daemon::Daemon;
use crate::fmt::group_thousands;
use crate::interrupt::{check_interrupted, interrupted};
use crate::phase::{Budget, Gate, GateState, PhaseResult, WorkerOut, wait_ready};

/// The fan-out measurement.
pub(super) struct Fanout {
    /// The publishers' `session.create` calls; `wall` is from their release to the last reply.
    pub(super) publish: PhaseResult,
    pub(super) pipeline: u32,
    pub(super) subs: SubTotals,
    /// From the release of the publishers to the last subscriber done.
    pub(super) delivery_wall: Duration,
    pub(super) queue_text: String,
}

impl Fanout {
    pub(super) fn delivered_per_s(&self) -> f64 {
        let secs = self.delivery_wall.as_secs_f64();
        if secs > 0.0 {
            self.subs.received as f64 / secs
        } else {
            0.0
        }
    }

    pub(super) fn failures(&self) -> u64 {
        self.publish.failed() + self.subs.failed
    }

    pub(super) fn verdict(&self) -> String {
        let d = self.delivered_per_s();
        let (met, cmp) = if d >= DELIVERY_TARGET {
            ("met", "≥")
        } else {
            ("NOT met", "<")
        };
        format!(
            "{met} ({} {cmp} {})",
            group_thousands(d),
            group_thousands(DELIVERY_TARGET)
        )
    }
}

/// One publisher connection of the fan-out: warm up, wait for the gate, then take batches of
/// `pipeline` calls from the shared budget.
pub(super) fn publisher(
    socket: &Path,
    plan: &EventsPlan,
    conn: u32,
    budget: &Budget,
    ready: &mpsc::Sender<()>,
    gate: &Gate,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    let mut warm = WorkerOut::default();
    let setup = (|| -> Result<Client> {
        let mut client = Client::connect(socket, plan.limits.timeout)?;
        for _ in 0..plan.limits.warmup {
            create_batch(&mut client, 1, &mut warm)?;
        }
        Ok(client)
    })();
    out.warmup_failed = warm.rpc_errors;
    for m in warm.messages {
        out.note(format!("warm-up: {m}"));
    }
    let setup = setup.with_context(|| format!("publisher {conn}"));
    // A failed setup loses the connection (not requests of the budget); the others go on.
    let Some(mut client) = out.report_ready(setup, ready, gate, 1) else {
        return out;
    };
    let deadline = Instant::now() + plan.limits.max_time;
    let pipeline = u64::from(plan.pipeline.max(1));
    while !interrupted() && Instant::now() < deadline {
        let k = budget.take(pipeline);
        if k == 0 {
            break;
        }
        let k = u32::try_from(k).unwrap_or(u32::MAX);
        let answered = out.ok + out.rpc_errors;
        if let Err(e) = create_batch(&mut client, k, &mut out) {
            out.lost += u64::from(k) - (out.ok + out.rpc_errors - answered);
            out.note(format!("{e:#}"));
            break;
        }
    }
    out.end = Some(Instant::now());
    out
}

pub(super) fn fanout(daemon: &Daemon, plan: &EventsPlan) -> Result<Fanout> {
    check_interrupted()?;
    let total = u64::from(plan.events);
    let gate = Gate::new();
    let budget = Budget::new(total);
    let ctl = SubControl::new(total, &plan.limits);
    let socket = daemon.socket.as_path();
    let label = format!("session.create ({} subscribers)", plan.subscribers);
    thread::scope(|s| {
        let run = (|| -> Result<Fanout> {
            // 1. Publishers connect and warm up (no subscriber sees those events).
            let (ptx, prx) = mpsc::channel::<()>();
            let mut pubs = Vec::with_capacity(plan.publishers as usize);
            for p in 0..plan.publishers {
                let ready = ptx.clone();
                let (gate, budget) = (&gate, &budget);
                let h = thread::Builder::new()
                    .name(format!("bench-pub{p}"))
                    .spawn_scoped(s, move || publisher(socket, plan, p, budget, &ready, gate))
                    .context("spawning a publisher thread")?;
                pubs.push(h);
            }
            drop(ptx);
            let ready = wait_ready(&prx, plan.publishers, plan.limits.max_time);
            ensure!(
                ready == plan.publishers,
                "only {ready} of {} publishers were connected and warmed up within {}",
                plan.publishers,
                humantime::format_duration(plan.limits.max_time)
            );
            // 2. Subscribers subscribe.
            let (stx, srx) = mpsc::channel::<()>();
            let mut subs = Vec::with_capacity(plan.subscribers as usize);
            for i in 0..plan.subscribers {
                let ready = stx.clone();
                let ctl = &ctl;
                let h = thread::Builder::new()
                    .name(format!("bench-sub{i}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || subscriber(socket, ctl, &ready))
                    .context("spawning a subscriber thread")?;
                subs.push(h);
            }
            drop(stx);
            let ready = wait_ready(&srx, plan.subscribers, plan.limits.max_time);
            ensure!(
                ready == plan.subscribers,
                "only {ready} of {} subscribers had subscribed within {}",
                plan.subscribers,
                humantime::format_duration(plan.limits.max_time)
            );
            check_interrupted()?;
            // 3. Publish; count.
            let start = Instant::now();
            ctl.started.store(true, Ordering::Release);
            gate.set(GateState::Open);
            let pubs = pubs
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow!("a publisher thread panicked")))
                .collect::<Result<Vec<_>>>()?;
            let mut publish = PhaseResult::from_workers(&label, plan.publishers, start, pubs);
            publish.skipped = budget.left();
            // Every successful call published exactly one event.
            ctl.published.store(publish.ok, Ordering::Release);
            let mut totals = SubTotals::default();
            for h in subs {
                let o = h
                    .join()
                    .map_err(|_| anyhow!("a subscriber thread panicked"))?;
                totals.add(o, publish.ok);
            }
            let delivery_wall = totals
                .last
                .map_or(Duration::ZERO, |t| t.duration_since(start));
            Ok(Fanout {
                publish,
                pipeline: plan.pipeline,
                subs: totals,
                delivery_wall,
                queue_text: plan.queue_text(),
            })
        })();
        // Release every thread still waiting (on an error path); the scope then joins them.
        ctl.abort.store(true, Ordering::Release);
        gate.set(GateState::Abort);
        run
    })
}
