//! The dashboard's feed: three background threads (poller, events, input) and the messages
//! they send to the UI thread, which never talks to the daemon itself.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use ccd_actors::store;
use ccd_protocol::Method as _;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self, BreakerList, Event, Health, LimiterStatus, NoParams, StatsRow};
use ratatui::crossterm::event as term;

use crate::client::{CallError, Client};
use crate::home::Home;

/// What the dashboard says while it cannot reach the daemon.
pub(super) const NOT_RUNNING: &str =
    "ccd daemon is not running — start it with `ccd daemon start`; retrying…";

/// How often the poller refreshes without events, and how often connections are retried.
pub(super) const TICK: Duration = Duration::from_secs(1);
/// Events read from the persisted log at each refresh.
const BACKFILL: u32 = 100;
const DAY_MS: i64 = 86_400_000;

pub(super) enum Msg {
    Input(term::Event),
    InputFailed(String),
    Snapshot(Box<Snapshot>),
    /// The event connection is open and subscribing.
    EventsConnected,
    Live(Box<Event>),
    /// The event connection failed or was closed; retrying.
    EventsLost(String),
}

/// One refresh of everything that is polled.
pub(super) struct Snapshot {
    /// `Err(why)` when the daemon cannot be reached.
    pub(super) daemon: Result<DaemonView, String>,
    pub(super) today: Result<StatsRow, String>,
    /// The newest events of the persisted log: fills in what the live stream could not
    /// deliver (before the subscription, while disconnected, or lost by lagging).
    pub(super) recent: Vec<Event>,
}

pub(super) struct DaemonView {
    pub(super) health: Result<Health, String>,
    pub(super) limiter: Result<LimiterStatus, String>,
    pub(super) breakers: Result<BreakerList, String>,
}

pub(super) fn input(tx: &Sender<Msg>) {
    loop {
        let msg = match term::read() {
            Ok(ev) => Msg::Input(ev),
            Err(e) => Msg::InputFailed(e.to_string()),
        };
        let failed = matches!(msg, Msg::InputFailed(_));
        if tx.send(msg).is_err() || failed {
            return;
        }
    }
}

pub(super) fn poller(home: &Home, tx: &Sender<Msg>, nudges: &Receiver<()>) {
    let mut client: Option<Client> = None;
    loop {
        let snapshot = Snapshot {
            daemon: poll_daemon(home, &mut client),
            today: today(home),
            recent: recent(home),
        };
        if tx.send(Msg::Snapshot(Box::new(snapshot))).is_err() {
            return;
        }
        match nudges.recv_timeout(TICK) {
            Ok(()) => {
                // An event: refresh now, once for the whole burst.
                std::thread::sleep(Duration::from_millis(50));
                while nudges.try_recv().is_ok() {}
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Health, limiter and breakers on the poller's connection, reconnecting when it broke (once
/// per refresh, so a daemon that restarted between two refreshes is picked up at once).
pub(super) fn poll_daemon(home: &Home, client: &mut Option<Client>) -> Result<DaemonView, String> {
    let mut retried = false;
    let health = loop {
        let fresh = client.is_none();
        let c = match client {
            Some(c) => c,
            None => client.insert(Client::connect(home).map_err(|e| unreachable_message(&e))?),
        };
        match c.call::<m::SystemHealth>(&NoParams {}) {
            Ok(h) => break Ok(h),
            Err(CallError::Rpc(e)) => {
                break Err(format!("{}: {}", m::SystemHealth::NAME, e.message));
            }
            Err(e) => {
                *client = None;
                if fresh || retried {
                    return Err(unreachable_message(&e));
                }
                retried = true;
            }
        }
    };
    Ok(DaemonView {
        health,
        limiter: call_section::<m::LimiterStatus>(client),
        breakers: call_section::<m::BreakerStatus>(client),
    })
}

pub(super) fn call_section<M: ccd_protocol::Method<Params = NoParams>>(
    client: &mut Option<Client>,
) -> Result<M::Result, String> {
    let Some(c) = client else {
        return Err("connection lost".into());
    };
    match c.call::<M>(&NoParams {}) {
        Ok(r) => Ok(r),
        Err(CallError::Rpc(e)) => Err(format!("{}: {}", M::NAME, e.message)),
        Err(e) => {
            *client = None;
            Err(format!("{}: {e}", M::NAME))
        }
    }
}

pub(super) fn unreachable_message(e: &CallError) -> String {
    match e {
        CallError::NotRunning(_) => NOT_RUNNING.to_string(),
        other => format!("cannot reach the ccd daemon: {other}; retrying…"),
    }
}

/// Totals since 00:00 UTC, read directly from the database (works while the daemon is down).
pub(super) fn today(home: &Home) -> Result<StatsRow, String> {
    let now = store::now_ms();
    let start = now - now.rem_euclid(DAY_MS);
    crate::home::read(home, |c| {
        store::stats(c, start, None).map(|s| Some(s.totals))
    })
    .map(Option::unwrap_or_default)
    .map_err(|e| format!("reading the database: {e:#}"))
}

pub(super) fn events(home: &Home, tx: &Sender<Msg>, nudge: &Sender<()>) {
    loop {
        let mut client = match Client::connect(home) {
            Ok(c) => c,
            Err(e) => {
                if tx.send(Msg::EventsLost(unreachable_message(&e))).is_err() {
                    return;
                }
                std::thread::sleep(TICK);
                continue;
            }
        };
        if tx.send(Msg::EventsConnected).is_err() {
            return;
        }
        let params = serde_json::to_value(types::EventFilter::default()).ok();
        let outcome = client.follow(m::EventSubscribe::NAME, params, |note| {
            if note.method != "event" {
                return true;
            }
            let Ok(e) = serde_json::from_value::<Event>(note.params.clone()) else {
                return true; // an event type newer than this CLI: skip it
            };
            let _ = nudge.send(());
            tx.send(Msg::Live(Box::new(e))).is_ok()
        });
        let why = match outcome {
            Ok(()) => return, // the UI is gone
            Err(e) => unreachable_message(&e),
        };
        if tx.send(Msg::EventsLost(why)).is_err() {
            return;
        }
        std::thread::sleep(TICK);
    }
}

/// The newest events of the log (none when it cannot be read: the live stream still works).
pub(super) fn recent(home: &Home) -> Vec<Event> {
    crate::home::read(home, |c| store::recent_events(c, 0, &[], BACKFILL)).unwrap_or_default()
}
