//! The event bus: fan-out from publishers to many subscribers, and what a stalled subscriber
//! costs a publisher.
//!
//! `clients` has the publishers' and subscribers' connections, `fanout` and `stall` the two
//! measurements; this file plans them and reports.

mod clients;
mod fanout;
mod stall;

use std::ffi::OsString;
use std::fmt::Write as _;

use anyhow::{Context, Result};

use self::fanout::{Fanout, fanout};
use self::stall::{StallRun, describe_sub, stall_run};
use crate::cli::{DaemonOpts, Limits, check_total};
use crate::daemon::{Daemon, start_timeout};
use crate::fmt::{Out, fmt_lat, fmt_ratio, group_thousands};
use crate::interrupt::check_interrupted;

/// The event type every `session.create` publishes, and the only one the subscribers ask for.
const EVENT_TYPE: &str = "session.created";

/// The fan-out target: events delivered per second, over all subscribers together.
const DELIVERY_TARGET: f64 = 100_000.0;

/// `events.subscriber_queue` when ccd-bench does not set it (the daemon's default).
const DAEMON_SUBSCRIBER_QUEUE: u32 = 4096;

/// What one events measurement runs.
pub(crate) struct EventsPlan {
    pub(crate) subscribers: u32,
    pub(crate) events: u32,
    pub(crate) publishers: u32,
    pub(crate) pipeline: u32,
    pub(crate) requests: u32,
    pub(crate) subscriber_queue: Option<u32>,
    pub(crate) limits: Limits,
}

impl EventsPlan {
    fn queue(&self) -> u32 {
        self.subscriber_queue.unwrap_or(DAEMON_SUBSCRIBER_QUEUE)
    }

    fn daemon_env(&self) -> Vec<(String, OsString)> {
        self.subscriber_queue
            .map(|q| {
                (
                    "CCD_EVENTS_SUBSCRIBER_QUEUE".to_string(),
                    q.to_string().into(),
                )
            })
            .into_iter()
            .collect()
    }

    fn queue_text(&self) -> String {
        match self.subscriber_queue {
            Some(q) => format!("CCD_EVENTS_SUBSCRIBER_QUEUE={q}"),
            None => format!("subscriber queue {DAEMON_SUBSCRIBER_QUEUE} (the daemon's default)"),
        }
    }
}

pub(crate) struct EventsSuite {
    fanout: Fanout,
    stall: StallRun,
    daemon_text: String,
    queue: u32,
}

impl EventsSuite {
    pub(crate) fn failures(&self) -> u64 {
        self.fanout.failures() + self.stall.failures()
    }
}

pub(crate) fn events_suite(
    plan: &EventsPlan,
    opts: &DaemonOpts,
    out: &mut Out,
) -> Result<EventsSuite> {
    check_total(1, plan.events)?;
    check_total(1, plan.requests)?;
    check_interrupted()?;
    let start_timeout = start_timeout(plan.limits.timeout);

    // 1. Fan-out.
    let (daemon, _) = Daemon::start_with_env(opts, start_timeout, plan.daemon_env())
        .context("starting a daemon for the fan-out measurement")?;
    out.line(&daemon.describe());
    let daemon_text = daemon.markdown_description();
    out.line(&format!(
        "events fan-out: {} subscribers of `{EVENT_TYPE}`, {} publisher connections \
         ({} in flight each), {} `session.create` calls; {}",
        plan.subscribers,
        plan.publishers,
        plan.pipeline,
        plan.events,
        plan.queue_text()
    ));
    let fan = fanout(&daemon, plan)?;
    drop(daemon);
    out.line(&fan.publish.summary());
    out.line(&fanout_summary(&fan));
    check_interrupted()?;

    // 2. Publisher latency with a stalled subscriber.
    let (daemon, _) = Daemon::start_with_env(opts, start_timeout, plan.daemon_env())
        .context("starting a daemon for the stalled-subscriber measurement")?;
    out.line(&daemon.describe());
    let stall = stall_run(&daemon, plan)?;
    drop(daemon);
    out.line(&stall.quiet.summary());
    out.line(&stall.reading_only.summary());
    out.line(&format!(
        "  then one more subscriber, which stalls (reads its subscription reply, then never \
         reads again); {} unmeasured `session.create` calls fill its socket and overflow its \
         queue ({})",
        stall.prefill,
        plan.queue_text()
    ));
    out.line(&stall.loaded.summary());
    out.line(&stall_summary(&stall));
    Ok(EventsSuite {
        fanout: fan,
        stall,
        daemon_text,
        queue: plan.queue(),
    })
}

fn fanout_summary(f: &Fanout) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  published: {} events in {:.3} s → {} events/s",
        f.publish.ok,
        f.publish.wall.as_secs_f64(),
        group_thousands(f.publish.throughput())
    );
    let _ = writeln!(
        s,
        "  delivered: {} events to {} subscribers in {:.3} s (release of the publishers → last \
         subscriber done) → {} events/s in total; missed (lagged): {} in {} lagged events",
        f.subs.received,
        f.subs.count,
        f.delivery_wall.as_secs_f64(),
        group_thousands(f.delivered_per_s()),
        f.subs.missed,
        f.subs.lagged
    );
    if f.subs.failed > 0 {
        let _ = writeln!(
            s,
            "  FAILED: {} subscribers did not get (or hear they missed) every event",
            f.subs.failed
        );
    }
    for (msg, n) in f.subs.messages.iter().take(5) {
        let _ = writeln!(s, "  subscriber error (on {n}): {msg}");
    }
    let _ = write!(
        s,
        "  target ≥ {} events/s delivered in total: {}",
        group_thousands(DELIVERY_TARGET),
        f.verdict()
    );
    s
}

fn stall_summary(r: &StallRun) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  stalled subscriber (read afterwards): {}",
        describe_sub(&r.stalled, r.published_stalled)
    );
    if r.stalled.error.is_none() && r.stalled.missed == 0 {
        let _ = writeln!(
            s,
            "  note: the stalled subscriber's queue never overflowed (no `lagged`)"
        );
    }
    let _ = writeln!(
        s,
        "  reading subscriber: {}",
        describe_sub(&r.reader, r.published_reader)
    );
    if r.prefill_failed > 0 {
        let _ = writeln!(
            s,
            "  FAILED: {} of the unmeasured calls that filled the queue",
            r.prefill_failed
        );
    }
    let (p50, p99) = r.vs_quiet();
    let _ = writeln!(
        s,
        "  ratio, with a stalled + a reading subscriber / with none: p50 {}, p99 {}",
        fmt_ratio(p50),
        fmt_ratio(p99)
    );
    let (p50, p99) = r.vs_reading();
    let _ = write!(
        s,
        "  ratio, with a stalled + a reading subscriber / with the reading one only (the stall \
         alone): p50 {}, p99 {}",
        fmt_ratio(p50),
        fmt_ratio(p99)
    );
    s
}

/// The `### Events` section of the markdown report.
pub(crate) fn events_markdown(e: &EventsSuite) -> String {
    let mut s = String::new();
    let f = &e.fanout;
    let r = &e.stall;
    let _ = writeln!(s, "\n### Events (event bus)\n");
    let _ = writeln!(
        s,
        "- Daemons: {}, {}; a fresh one for each part. Every `session.create` publishes one \
         `{EVENT_TYPE}` event.",
        e.daemon_text, f.queue_text
    );
    let _ = writeln!(
        s,
        "- Fan-out: every subscriber is a connection and a thread of its own that subscribes to \
         `{EVENT_TYPE}` and counts the events it receives and those `lagged` events say it \
         missed. The publishers share the `session.create` calls, {} in flight per connection \
         (a publish latency is from the write of its batch to its reply). Delivered/s is the events received by all subscribers together over the time from the \
         release of the publishers to the moment the last subscriber has received (or heard it \
         missed) every event.\n",
        f.pipeline
    );
    let _ = writeln!(
        s,
        "| Subscribers | Publishers | Events | Errors | Published (events/s) | publish p50 | publish p99 | Delivered (events/s, total) | Missed (lagged) |"
    );
    let _ = writeln!(s, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let (p50, p99, _) = fmt_lat(f.publish.lat.as_ref());
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {p50} | {p99} | {} | {} |",
        f.subs.count,
        f.publish.connections,
        f.publish.requests(),
        f.failures(),
        group_thousands(f.publish.throughput()),
        group_thousands(f.delivered_per_s()),
        f.subs.missed
    );
    let _ = writeln!(
        s,
        "\nTarget ≥ {} events/s delivered in total: {}.",
        group_thousands(DELIVERY_TARGET),
        f.verdict()
    );
    let _ = writeln!(
        s,
        "\n#### Publisher latency with a stalled subscriber (`session.create`, 1 connection, closed loop)\n\n\
         First with no subscriber; then with one subscriber that reads normally (a thread of \
         its own); then with that one and one that reads its subscription reply and then never \
         reads its socket again. Before the last run, {} unmeasured calls fill the stalled \
         subscriber's socket and overflow its queue of {}, so that it is losing events \
         throughout.\n",
        r.prefill, e.queue
    );
    let _ = writeln!(
        s,
        "| Run | Requests | Errors | Throughput (req/s) | p50 | p99 | max |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|");
    for p in [&r.quiet, &r.reading_only, &r.loaded] {
        let (p50, p99, max) = fmt_lat(p.lat.as_ref());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {p50} | {p99} | {max} |",
            p.label,
            p.requests(),
            p.failed(),
            group_thousands(p.throughput())
        );
    }
    let (p50, p99) = r.vs_quiet();
    let (rp50, rp99) = r.vs_reading();
    let _ = writeln!(
        s,
        "\n| Comparison | p50 ratio | p99 ratio |\n|---|--:|--:|\n\
         | stalled + reading subscriber / no subscriber | {} | {} |\n\
         | stalled + reading subscriber / reading subscriber only (the stall alone) | {} | {} |",
        fmt_ratio(p50),
        fmt_ratio(p99),
        fmt_ratio(rp50),
        fmt_ratio(rp99)
    );
    let _ = writeln!(
        s,
        "\nThe stalled subscriber, read afterwards: {}. The reading one: {}.",
        describe_sub(&r.stalled, r.published_stalled),
        describe_sub(&r.reader, r.published_reader)
    );
    s
}
