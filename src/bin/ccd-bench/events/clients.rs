//! The two kinds of connection of the events suite: publishers sending `session.create` in
//! batches, and subscribers counting the `session.created` events they are sent.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::EVENT_TYPE;
use crate::cli::Limits;
use crate::client::{Body, Client, clip, io_error, reply_body, reply_id, reply_object};
use crate::fmt::nanos;
use crate::interrupt::{check_interrupted, interrupted};
use crate::phase::{WorkerOut, session_create_line};

/// Requests in flight per connection while filling a stalled subscriber's queue (unmeasured).
pub(super) const PREFILL_PIPELINE: u32 = 32;

/// How often a subscriber thread blocked in a read looks at its stop conditions.
pub(super) const SUBSCRIBER_POLL: Duration = Duration::from_millis(50);

/// Sends `n` `session.create` requests in one write, then reads their `n` replies in whatever
/// order they come. Counts each reply in `out` (a successful one with the time from the write to
/// its arrival). `Err` means the connection is unusable; the requests not yet answered are then
/// not counted.
pub(super) fn create_batch(client: &mut Client, n: u32, out: &mut WorkerOut) -> Result<()> {
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
pub(super) fn create_many(client: &mut Client, n: u32, out: &mut WorkerOut) -> Result<u64> {
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
pub(super) fn subscribe(socket: &Path, timeout: Duration) -> Result<Client> {
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
pub(super) struct SubControl {
    /// Events it should see at most (the planned count).
    pub(super) planned: u64,
    /// Events actually published (known once the publishers are done; `u64::MAX` until then).
    pub(super) published: AtomicU64,
    /// Set when publishing starts: from then on a subscriber that gets nothing for --timeout
    /// gives up.
    pub(super) started: AtomicBool,
    /// Set to make every subscriber stop (setup failed, or the run is over).
    pub(super) abort: AtomicBool,
    pub(super) timeout: Duration,
    /// Longest a subscriber counts after publishing started.
    pub(super) max_time: Duration,
}

impl SubControl {
    pub(super) fn new(planned: u64, limits: &Limits) -> SubControl {
        SubControl {
            planned,
            published: AtomicU64::new(u64::MAX),
            started: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            timeout: limits.timeout,
            max_time: limits.max_time + limits.timeout,
        }
    }

    pub(super) fn goal(&self) -> u64 {
        self.planned.min(self.published.load(Ordering::Acquire))
    }
}

/// What one subscriber saw.
#[derive(Default)]
pub(super) struct SubOut {
    /// `session.created` events received.
    pub(super) received: u64,
    /// Events that `lagged` events said it missed.
    pub(super) missed: u64,
    /// `lagged` events received.
    pub(super) lagged: u64,
    /// Other notifications (none are expected), and the type of the first.
    pub(super) unexpected: u64,
    pub(super) unexpected_type: Option<String>,
    /// When the last counted event (or `lagged`) arrived.
    pub(super) last: Option<Instant>,
    /// Received or was told it missed every published event.
    pub(super) complete: bool,
    pub(super) error: Option<String>,
}

/// One line a subscriber read.
pub(super) enum EventLine {
    Created,
    Lagged(u64),
    Other(String),
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Classifies a line on a subscribed connection. The common case (a compact `session.created`
/// notification) is recognised without parsing; anything else is parsed. A JSON-RPC error or
/// any reply is `Err`: nothing but notifications is expected.
pub(super) fn classify_event_line(line: &[u8]) -> Result<EventLine> {
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
pub(super) fn count_events(client: &mut Client, ctl: &SubControl, out: &mut SubOut) {
    if let Err(e) = count_events_inner(client, ctl, out) {
        out.error = Some(format!("{e:#}"));
    }
}

pub(super) fn count_events_inner(
    client: &mut Client,
    ctl: &SubControl,
    out: &mut SubOut,
) -> Result<()> {
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
pub(super) struct SubTotals {
    pub(super) count: u32,
    pub(super) received: u64,
    pub(super) missed: u64,
    pub(super) lagged: u64,
    pub(super) unexpected: u64,
    /// Subscribers that failed: error, or not every event received or reported missed.
    pub(super) failed: u64,
    /// Subscribers whose received + missed is not the published count.
    pub(super) miscounted: u64,
    /// When the last subscriber finished.
    pub(super) last: Option<Instant>,
    pub(super) messages: BTreeMap<String, u32>,
}

impl SubTotals {
    pub(super) fn add(&mut self, s: SubOut, published: u64) {
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

/// A subscriber thread: subscribe, report in, count.
pub(super) fn subscriber(socket: &Path, ctl: &SubControl, ready: &mpsc::Sender<()>) -> SubOut {
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
