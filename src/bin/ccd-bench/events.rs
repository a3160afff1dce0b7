//! The event bus: fan-out from publishers to many subscribers, and what a stalled subscriber
//! costs a publisher.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use crate::cli::{DaemonOpts, Driver, Limits, check_total};
use crate::client::{Body, Client, Expect, clip, io_error, reply_body, reply_id, reply_object};
use crate::daemon::{Daemon, start_timeout};
use crate::fmt::{Out, fmt_lat, fmt_ratio, group_thousands, lat_ratios, nanos};
use crate::interrupt::{check_interrupted, interrupted, sleep_interruptible};
use crate::phase::{
    Budget, Gate, GateState, Op, Phase, PhaseResult, WorkerOut, run_phase, session_create_line,
    wait_ready,
};

/// The event type every `session.create` publishes, and the only one the subscribers ask for.
const EVENT_TYPE: &str = "session.created";

/// The fan-out target: events delivered per second, over all subscribers together.
const DELIVERY_TARGET: f64 = 100_000.0;

/// `events.subscriber_queue` when ccd-bench does not set it (the daemon's default).
const DAEMON_SUBSCRIBER_QUEUE: u32 = 4096;

/// Requests in flight per connection while filling a stalled subscriber's queue (unmeasured).
const PREFILL_PIPELINE: u32 = 32;

/// How many events beyond its queue the stalled subscriber is sent before the measurement: they
/// fill its socket and the connection's reply channel first (about 400 events on Linux with the
/// default socket buffer).
const PREFILL_EXTRA: u32 = 2000;

/// The pause between filling the stalled subscriber's queue and the measurement.
const PREFILL_SETTLE: Duration = Duration::from_millis(500);

/// How often a subscriber thread blocked in a read looks at its stop conditions.
const SUBSCRIBER_POLL: Duration = Duration::from_millis(50);

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

/// Sends `n` `session.create` requests in one write, then reads their `n` replies in whatever
/// order they come. Counts each reply in `out` (a successful one with the time from the write to
/// its arrival). `Err` means the connection is unusable; the requests not yet answered are then
/// not counted.
fn create_batch(client: &mut Client, n: u32, out: &mut WorkerOut) -> Result<()> {
    let first = client.next_id + 1;
    client.next_id += u64::from(n);
    let mut lines = String::with_capacity(n as usize * 72);
    for i in 0..u64::from(n) {
        lines.push_str(&session_create_line(first + i));
    }
    let mut pending = vec![true; n as usize];
    let mut left = n;
    let t0 = Instant::now();
    client
        .writer
        .write_all(lines.as_bytes())
        .map_err(io_error)
        .context("sending session.create requests")?;
    while left > 0 {
        client.buf.clear();
        let read = client
            .reader
            .read_line(&mut client.buf)
            .map_err(io_error)
            .context("reading a session.create reply")?;
        ensure!(
            read > 0 && client.buf.ends_with('\n'),
            "the daemon closed the connection"
        );
        let arrived = Instant::now();
        let Some(obj) = reply_object(&client.buf)? else {
            continue; // a notification
        };
        let id = reply_id(&obj);
        let slot = match id.map(Value::as_u64) {
            Some(Some(i)) if i >= first && i - first < u64::from(n) => {
                usize::try_from(i - first).context("reply id out of range")?
            }
            // An error that could not be tied to a request still answers one of them.
            None if obj.contains_key("error") => pending
                .iter()
                .position(|p| *p)
                .context("an error reply with no request left to answer")?,
            _ => bail!(
                "a reply with id {} to requests {first}..{}: {}",
                id.map_or_else(|| "null".into(), Value::to_string),
                first + u64::from(n) - 1,
                clip(&client.buf)
            ),
        };
        ensure!(
            pending.get(slot).copied().unwrap_or(false),
            "a second reply to request {}",
            first + slot as u64
        );
        pending[slot] = false;
        left -= 1;
        match reply_body(&obj) {
            Body::Result(r) if r.get("id").and_then(Value::as_str).is_some() => {
                out.ok += 1;
                out.lat_ns.push(nanos(arrived.duration_since(t0)));
            }
            Body::Result(r) => {
                out.rpc_errors += 1;
                out.note(format!(
                    "session.create answered without a session id: {}",
                    clip(&r.to_string())
                ));
            }
            Body::Error { msg, .. } => {
                out.rpc_errors += 1;
                out.note(msg);
            }
            Body::Other => bail!("a reply with neither `result` nor `error`"),
        }
    }
    Ok(())
}

/// `n` unmeasured `session.create` calls, `PREFILL_PIPELINE` at a time. Returns how many
/// succeeded; failures are counted in `out` too.
fn create_many(client: &mut Client, n: u32, out: &mut WorkerOut) -> Result<u64> {
    let before = out.ok;
    let mut sent = 0;
    while sent < n {
        check_interrupted()?;
        let k = PREFILL_PIPELINE.min(n - sent);
        create_batch(client, k, out)?;
        sent += k;
    }
    out.lat_ns.clear();
    Ok(out.ok - before)
}

/// A connection subscribed to `session.created` (its reply read; nothing else yet).
fn subscribe(socket: &Path, timeout: Duration) -> Result<Client> {
    let mut client = Client::connect(socket, timeout)?;
    let r = client.call("event.subscribe", json!({ "types": [EVENT_TYPE] }))?;
    ensure!(
        r.get("subscription_id").and_then(Value::as_u64).is_some(),
        "event.subscribe answered {} (no subscription_id)",
        clip(&r.to_string())
    );
    Ok(client)
}

/// What a subscriber thread is told while it counts.
struct SubControl {
    /// Events it should see at most (the planned count).
    planned: u64,
    /// Events actually published (known once the publishers are done; `u64::MAX` until then).
    published: AtomicU64,
    /// Set when publishing starts: from then on a subscriber that gets nothing for --timeout
    /// gives up.
    started: AtomicBool,
    /// Set to make every subscriber stop (setup failed, or the run is over).
    abort: AtomicBool,
    timeout: Duration,
    /// Longest a subscriber counts after publishing started.
    max_time: Duration,
}

impl SubControl {
    fn new(planned: u64, limits: &Limits) -> SubControl {
        SubControl {
            planned,
            published: AtomicU64::new(u64::MAX),
            started: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            timeout: limits.timeout,
            max_time: limits.max_time + limits.timeout,
        }
    }

    fn goal(&self) -> u64 {
        self.planned.min(self.published.load(Ordering::Acquire))
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct SubOut {
    /// `session.created` events received.
    received: u64,
    /// Events that `lagged` events said it missed.
    missed: u64,
    /// `lagged` events received.
    lagged: u64,
    /// Other notifications (none are expected), and the type of the first.
    unexpected: u64,
    unexpected_type: Option<String>,
    /// When the last counted event (or `lagged`) arrived.
    last: Option<Instant>,
    /// Received or was told it missed every published event.
    complete: bool,
    error: Option<String>,
}

/// One line a subscriber read.
enum EventLine {
    Created,
    Lagged(u64),
    Other(String),
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Classifies a line on a subscribed connection. The common case (a compact `session.created`
/// notification) is recognised without parsing; anything else is parsed. A JSON-RPC error or
/// any reply is `Err`: nothing but notifications is expected.
fn classify_event_line(line: &[u8]) -> Result<EventLine> {
    if contains(line, b"\"type\":\"session.created\"") && contains(line, b"\"method\":\"event\"") {
        return Ok(EventLine::Created);
    }
    let text = String::from_utf8_lossy(line);
    let v: Value = serde_json::from_slice(line)
        .with_context(|| format!("the daemon sent a line that is not JSON: {}", clip(&text)))?;
    let obj = v
        .as_object()
        .with_context(|| format!("the daemon sent a non-object: {}", clip(&text)))?;
    if obj.get("method").and_then(Value::as_str) != Some("event") {
        match reply_body(obj) {
            Body::Error { msg, .. } => bail!("{msg}"),
            _ => bail!(
                "an unexpected message on a subscribed connection: {}",
                clip(&text)
            ),
        }
    }
    let params = obj.get("params");
    let kind = params.and_then(|p| p.get("type")).and_then(Value::as_str);
    Ok(match kind {
        Some(EVENT_TYPE) => EventLine::Created,
        Some("lagged") => EventLine::Lagged(
            params
                .and_then(|p| p.get("missed"))
                .and_then(Value::as_u64)
                .with_context(|| format!("a `lagged` event without `missed`: {}", clip(&text)))?,
        ),
        Some(other) => EventLine::Other(other.to_string()),
        None => bail!("an event without a type: {}", clip(&text)),
    })
}

/// Reads events from a subscribed connection until it has received (or been told it missed)
/// every published event, the daemon stops sending (no event for --timeout once publishing
/// started), the time is up, or it is told to stop.
fn count_events(client: &mut Client, ctl: &SubControl, out: &mut SubOut) {
    if let Err(e) = count_events_inner(client, ctl, out) {
        out.error = Some(format!("{e:#}"));
    }
}

fn count_events_inner(client: &mut Client, ctl: &SubControl, out: &mut SubOut) -> Result<()> {
    client
        .writer
        .set_read_timeout(Some(SUBSCRIBER_POLL))
        .context("setting the socket read timeout")?;
    let mut line = Vec::with_capacity(512);
    let mut since: Option<Instant> = None; // publishing started (as this thread saw it)
    let mut last_progress = Instant::now();
    loop {
        if since.is_none() && ctl.started.load(Ordering::Acquire) {
            since = Some(Instant::now());
            last_progress = Instant::now();
        }
        if out.received + out.missed >= ctl.goal() {
            out.complete = true;
            return Ok(());
        }
        if ctl.abort.load(Ordering::Acquire) || interrupted() {
            return Ok(());
        }
        match client.reader.read_until(b'\n', &mut line) {
            Ok(0) => bail!("the daemon closed the connection"),
            Ok(_) if line.ends_with(b"\n") => {
                let now = Instant::now();
                match classify_event_line(&line)? {
                    EventLine::Created => out.received += 1,
                    EventLine::Lagged(n) => {
                        out.missed += n;
                        out.lagged += 1;
                    }
                    EventLine::Other(t) => {
                        out.unexpected += 1;
                        out.unexpected_type.get_or_insert(t);
                    }
                }
                out.last = Some(now);
                last_progress = now;
                line.clear();
            }
            Ok(_) => bail!("the daemon closed the connection in the middle of a line"),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Bytes of a partial line stay in `line` for the next read.
                if let Some(since) = since {
                    let counts = || {
                        format!(
                            "received {}, missed {}, of {} published",
                            out.received,
                            out.missed,
                            ctl.goal()
                        )
                    };
                    ensure!(
                        last_progress.elapsed() < ctl.timeout,
                        "no event for {} ({})",
                        humantime::format_duration(ctl.timeout),
                        counts()
                    );
                    ensure!(
                        since.elapsed() < ctl.max_time,
                        "still counting after {} ({})",
                        humantime::format_duration(ctl.max_time),
                        counts()
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading events"),
        }
    }
}

/// Sums of what the subscribers saw.
#[derive(Default)]
struct SubTotals {
    count: u32,
    received: u64,
    missed: u64,
    lagged: u64,
    unexpected: u64,
    /// Subscribers that failed: error, or not every event received or reported missed.
    failed: u64,
    /// Subscribers whose received + missed is not the published count.
    miscounted: u64,
    /// When the last subscriber finished.
    last: Option<Instant>,
    messages: BTreeMap<String, u32>,
}

impl SubTotals {
    fn add(&mut self, s: SubOut, published: u64) {
        self.count += 1;
        self.received += s.received;
        self.missed += s.missed;
        self.lagged += s.lagged;
        self.unexpected += s.unexpected;
        if let Some(t) = s.last {
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
        }
        let mut failed = false;
        if let Some(e) = s.error {
            failed = true;
            *self.messages.entry(e).or_default() += 1;
        } else if !s.complete {
            failed = true;
            *self
                .messages
                .entry("stopped before every event arrived".to_string())
                .or_default() += 1;
        }
        if s.complete && s.received + s.missed != published {
            self.miscounted += 1;
            failed = true;
            *self
                .messages
                .entry(format!(
                    "received {} + missed {} is not the {published} events published",
                    s.received, s.missed
                ))
                .or_default() += 1;
        }
        if let Some(t) = s.unexpected_type {
            *self
                .messages
                .entry(format!(
                    "got events of other types than {EVENT_TYPE}, such as {t}"
                ))
                .or_default() += 1;
        }
        if failed {
            self.failed += 1;
        }
    }
}

/// The fan-out measurement.
struct Fanout {
    /// The publishers' `session.create` calls; `wall` is from their release to the last reply.
    publish: PhaseResult,
    pipeline: u32,
    subs: SubTotals,
    /// From the release of the publishers to the last subscriber done.
    delivery_wall: Duration,
    queue_text: String,
}

impl Fanout {
    fn delivered_per_s(&self) -> f64 {
        let secs = self.delivery_wall.as_secs_f64();
        if secs > 0.0 {
            self.subs.received as f64 / secs
        } else {
            0.0
        }
    }

    fn failures(&self) -> u64 {
        self.publish.failed() + self.subs.failed
    }

    fn verdict(&self) -> String {
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
fn publisher(
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

/// A subscriber thread: subscribe, report in, count.
fn subscriber(socket: &Path, ctl: &SubControl, ready: &mpsc::Sender<()>) -> SubOut {
    let mut out = SubOut::default();
    match subscribe(socket, ctl.timeout) {
        Ok(mut client) => {
            let _ = ready.send(());
            count_events(&mut client, ctl, &mut out);
        }
        Err(e) => {
            out.error = Some(format!("subscribing: {e:#}"));
            let _ = ready.send(());
        }
    }
    out
}

fn fanout(daemon: &Daemon, plan: &EventsPlan) -> Result<Fanout> {
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

/// The publisher's latency with and without a stalled subscriber.
struct StallRun {
    quiet: PhaseResult,
    /// With only the reading subscriber: what a subscriber that keeps up costs.
    reading_only: PhaseResult,
    loaded: PhaseResult,
    /// Unmeasured calls made after the stalled subscriber subscribed, before the measurement.
    prefill: u32,
    prefill_failed: u64,
    /// Events published while each subscriber was subscribed.
    published_stalled: u64,
    published_reader: u64,
    stalled: SubOut,
    reader: SubOut,
}

/// 1 when a subscriber did not receive (or hear it missed) exactly the events published.
fn sub_failed(s: &SubOut, published: u64) -> u64 {
    u64::from(s.error.is_some() || !s.complete || s.received + s.missed != published)
}

fn describe_sub(s: &SubOut, published: u64) -> String {
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
fn calls_ok(p: &PhaseResult, warmup: u32) -> u64 {
    u64::from(warmup).saturating_sub(p.warmup_failed) + p.ok
}

impl StallRun {
    fn failures(&self) -> u64 {
        self.quiet.failed()
            + self.reading_only.failed()
            + self.loaded.failed()
            + self.prefill_failed
            + sub_failed(&self.stalled, self.published_stalled)
            + sub_failed(&self.reader, self.published_reader)
    }

    /// With the stalled and the reading subscriber / with none: (p50, p99).
    fn vs_quiet(&self) -> (Option<f64>, Option<f64>) {
        lat_ratios(self.loaded.lat.as_ref(), self.quiet.lat.as_ref())
    }

    /// With the stalled and the reading subscriber / with the reading one only: the stall alone.
    fn vs_reading(&self) -> (Option<f64>, Option<f64>) {
        lat_ratios(self.loaded.lat.as_ref(), self.reading_only.lat.as_ref())
    }
}

fn stall_run(daemon: &Daemon, plan: &EventsPlan) -> Result<StallRun> {
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
