//! `ccd tui`: a live terminal dashboard (ratatui on crossterm).
//!
//! Panels: the daemon's actors (state, restarts, last panic), queries in flight (executor
//! occupancy, and turns seen starting on the event stream but not yet completed), cost and
//! tokens since midnight UTC (read straight from the database, like `ccd stats`), circuit
//! breakers, rate limits, and the live event stream.
//!
//! Three background threads feed one channel that the UI thread drains:
//!
//! - the *poller* calls `system.health`, `limiter.status` and `breaker.status` and reads today's
//!   totals and the newest logged events from the database, every second and after every event
//!   (bursts are coalesced); the log fills in events the live stream could not deliver;
//! - the *events* thread holds an `event.subscribe` connection and forwards each notification;
//! - the *input* thread reads terminal events (keys, resizes).
//!
//! The UI thread never talks to the daemon, so a slow or vanished daemon cannot freeze the
//! screen. When the daemon is not running the dashboard says so and both connections are retried
//! every second; the TUI never starts the daemon itself. The terminal is restored on every exit
//! path: normal quit, error, and panic (ratatui's hook).

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use ccd_actors::store;
use ccd_protocol::Method as _;
use ccd_protocol::methods as m;
use ccd_protocol::types::{
    self, ActorState, BreakerList, BreakerState, Event, EventKind, Health, LimitSpec,
    LimiterStatus, NoParams, StatsRow,
};
use ratatui::Frame;
use ratatui::crossterm::event::{self as term, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Paragraph, Row, Table, Wrap};

use crate::client::{CallError, Client};
use crate::exit;
use crate::home::Home;

/// What the dashboard says while it cannot reach the daemon.
pub const NOT_RUNNING: &str =
    "ccd daemon is not running — start it with `ccd daemon start`; retrying…";

/// How often the poller refreshes without events, and how often connections are retried.
const TICK: Duration = Duration::from_secs(1);
/// Events kept in memory for the events panel (the oldest are dropped).
const MAX_EVENTS: usize = 1000;
/// Events read from the persisted log at each refresh.
const BACKFILL: u32 = 100;
const DAY_MS: i64 = 86_400_000;

/// Run the dashboard until `q` or Ctrl-C.
pub fn run(home: &Home) -> anyhow::Result<u8> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!("`ccd tui` needs an interactive terminal (stdin and stdout must be a tty)");
    }
    let (tx, rx) = mpsc::channel::<Msg>();
    let (nudge_tx, nudge_rx) = mpsc::channel::<()>();
    spawn("ccd-tui-poller", {
        let (home, tx) = (home.clone(), tx.clone());
        move || poller(&home, &tx, &nudge_rx)
    })?;
    spawn("ccd-tui-events", {
        let (home, tx) = (home.clone(), tx.clone());
        move || events(&home, &tx, &nudge_tx)
    })?;

    // From here on the terminal is in raw mode on the alternate screen; the guard puts it back
    // however this function returns (ratatui's panic hook covers panics).
    let _guard = TerminalGuard;
    let mut terminal = ratatui::try_init()?;
    spawn("ccd-tui-input", move || input(&tx))?;

    let mut app = App::new(home);
    loop {
        terminal.draw(|f| app.render(f))?;
        let msg = match rx.recv_timeout(TICK) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue, // redraw: ages and uptimes move on
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Apply everything that is waiting before drawing again.
        for msg in std::iter::once(msg).chain(rx.try_iter()) {
            match msg {
                Msg::Input(ev) => {
                    if app.on_input(&ev) == Flow::Quit {
                        return Ok(exit::OK);
                    }
                }
                Msg::InputFailed(why) => anyhow::bail!("reading the terminal: {why}"),
                other => app.apply(other),
            }
        }
    }
    Ok(exit::OK)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("starting the {name} thread: {e}"))
}

/// Leaves raw mode and the alternate screen, and shows the cursor again, when dropped.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
        let _ = ratatui::crossterm::execute!(std::io::stdout(), ratatui::crossterm::cursor::Show);
    }
}

// ---------------------------------------------------------------------------------------------
// Background threads

enum Msg {
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
struct Snapshot {
    /// `Err(why)` when the daemon cannot be reached.
    daemon: Result<DaemonView, String>,
    today: Result<StatsRow, String>,
    /// The newest events of the persisted log: fills in what the live stream could not
    /// deliver (before the subscription, while disconnected, or lost by lagging).
    recent: Vec<Event>,
}

struct DaemonView {
    health: Result<Health, String>,
    limiter: Result<LimiterStatus, String>,
    breakers: Result<BreakerList, String>,
}

fn input(tx: &Sender<Msg>) {
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

fn poller(home: &Home, tx: &Sender<Msg>, nudges: &Receiver<()>) {
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
fn poll_daemon(home: &Home, client: &mut Option<Client>) -> Result<DaemonView, String> {
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

fn call_section<M: ccd_protocol::Method<Params = NoParams>>(
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

fn unreachable_message(e: &CallError) -> String {
    match e {
        CallError::NotRunning(_) => NOT_RUNNING.to_string(),
        other => format!("cannot reach the ccd daemon: {other}; retrying…"),
    }
}

/// Totals since 00:00 UTC, read directly from the database (works while the daemon is down).
fn today(home: &Home) -> Result<StatsRow, String> {
    let now = store::now_ms();
    let start = now - now.rem_euclid(DAY_MS);
    crate::home::read(home, |c| {
        store::stats(c, start, None).map(|s| Some(s.totals))
    })
    .map(Option::unwrap_or_default)
    .map_err(|e| format!("reading the database: {e:#}"))
}

fn events(home: &Home, tx: &Sender<Msg>, nudge: &Sender<()>) {
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
fn recent(home: &Home) -> Vec<Event> {
    crate::home::read(home, |c| store::recent_events(c, 0, &[], BACKFILL)).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// State

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Panel {
    Actors,
    Queries,
    Today,
    Breakers,
    Limits,
    Events,
}

impl Panel {
    const ALL: [Panel; 6] = [
        Panel::Actors,
        Panel::Queries,
        Panel::Today,
        Panel::Breakers,
        Panel::Limits,
        Panel::Events,
    ];

    fn index(self) -> usize {
        Panel::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    fn next(self, step: isize) -> Panel {
        let n = Panel::ALL.len() as isize;
        Panel::ALL[(self.index() as isize + step).rem_euclid(n) as usize]
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// The daemon's reachability as the poller last saw it.
enum Link {
    Connecting,
    Up(Box<DaemonView>),
    Down { why: String, since: Instant },
}

enum EventsLink {
    Connecting,
    Live,
    Lost(String),
}

struct InFlight {
    session_id: String,
    project: Option<String>,
    model: Option<String>,
    seen: Instant,
}

struct App {
    home: String,
    link: Link,
    last_up: Option<Instant>,
    updated: Option<Instant>,
    today: Option<Result<StatsRow, String>>,
    /// Keyed by (seq, lagged) so that the log and the live stream never show an event twice.
    events: BTreeMap<(u64, bool), Event>,
    events_link: EventsLink,
    /// Turns seen starting on the live stream and not yet completed.
    in_flight: BTreeMap<String, InFlight>,
    focus: Panel,
    scroll: [usize; Panel::ALL.len()],
    /// Set when the stream lagged: the in-flight list may miss completions.
    lagged: bool,
}

impl App {
    fn new(home: &Home) -> App {
        App {
            home: home.root.display().to_string(),
            link: Link::Connecting,
            last_up: None,
            updated: None,
            today: None,
            events: BTreeMap::new(),
            events_link: EventsLink::Connecting,
            in_flight: BTreeMap::new(),
            focus: Panel::Events,
            scroll: [0; Panel::ALL.len()],
            lagged: false,
        }
    }

    fn on_input(&mut self, ev: &term::Event) -> Flow {
        let term::Event::Key(KeyEvent {
            code,
            modifiers,
            kind,
            ..
        }) = ev
        else {
            return Flow::Continue; // a resize: the next draw adapts
        };
        if *kind == KeyEventKind::Release {
            return Flow::Continue;
        }
        let scroll = &mut self.scroll[self.focus.index()];
        // For the events panel, scrolling "up" goes back in time (away from the newest line).
        let (up, down): (isize, isize) = if self.focus == Panel::Events {
            (1, -1)
        } else {
            (-1, 1)
        };
        let step = |s: &mut usize, by: isize| *s = s.saturating_add_signed(by);
        match code {
            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => return Flow::Quit,
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => return Flow::Quit,
            KeyCode::Tab => self.focus = self.focus.next(1),
            KeyCode::BackTab => self.focus = self.focus.next(-1),
            KeyCode::Up | KeyCode::Char('k') => step(scroll, up),
            KeyCode::Down | KeyCode::Char('j') => step(scroll, down),
            KeyCode::PageUp => step(scroll, up * 10),
            KeyCode::PageDown => step(scroll, down * 10),
            KeyCode::Home | KeyCode::Char('g') => {
                *scroll = if self.focus == Panel::Events {
                    usize::MAX
                } else {
                    0
                }
            }
            KeyCode::End | KeyCode::Char('G') => {
                *scroll = if self.focus == Panel::Events {
                    0
                } else {
                    usize::MAX
                }
            }
            _ => {}
        }
        Flow::Continue
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Snapshot(s) => {
                let now = Instant::now();
                self.updated = Some(now);
                self.today = Some(s.today);
                for e in s.recent {
                    self.push_event(e);
                }
                self.link = match s.daemon {
                    Ok(view) => {
                        self.last_up = Some(now);
                        Link::Up(Box::new(view))
                    }
                    Err(why) => Link::Down {
                        since: match &self.link {
                            Link::Down { since, .. } => *since,
                            _ => now,
                        },
                        why,
                    },
                };
            }
            Msg::EventsConnected => {
                self.events_link = EventsLink::Live;
            }
            Msg::Live(e) => {
                self.events_link = EventsLink::Live;
                self.track(&e);
                self.push_event(*e);
            }
            Msg::EventsLost(why) => {
                // Completions may be missed while disconnected, and a restarted daemon has
                // no queries left running: forget what was in flight.
                self.in_flight.clear();
                self.lagged = false;
                self.events_link = EventsLink::Lost(why);
            }
            Msg::Input(_) | Msg::InputFailed(_) => {}
        }
    }

    fn push_event(&mut self, e: Event) {
        let key = (e.seq, matches!(e.kind, EventKind::Lagged { .. }));
        let newest = self.events.last_key_value().is_none_or(|(k, _)| key > *k);
        self.events.insert(key, e);
        // Keep the lines in view where they are while scrolled back.
        if newest && self.scroll[Panel::Events.index()] > 0 {
            self.scroll[Panel::Events.index()] += 1;
        }
        while self.events.len() > MAX_EVENTS {
            self.events.pop_first();
        }
    }

    /// Follow turns from the live stream.
    fn track(&mut self, e: &Event) {
        match &e.kind {
            EventKind::TurnStarted {
                session_id,
                query_id,
                project,
                model,
            } => {
                self.in_flight.insert(
                    query_id.clone(),
                    InFlight {
                        session_id: session_id.clone(),
                        project: project.clone(),
                        model: model.clone(),
                        seen: Instant::now(),
                    },
                );
            }
            EventKind::TurnCompleted { query_id, .. } => {
                self.in_flight.remove(query_id);
            }
            EventKind::Lagged { .. } => self.lagged = true,
            EventKind::DaemonStarted { .. } => self.in_flight.clear(),
            _ => {}
        }
    }

    fn view(&self) -> Option<&DaemonView> {
        match &self.link {
            Link::Up(v) => Some(v),
            _ => None,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Rendering

    fn render(&mut self, f: &mut Frame) {
        let area = f.area();
        let actors = self
            .view()
            .and_then(|v| v.health.as_ref().ok())
            .map_or(0, |h| h.actors.len());
        let top = (actors as u16 + 3).clamp(10, 15);
        let middle_rows = self.view().map_or(1, |v| {
            let breakers = v.breakers.as_ref().map_or(1, |b| b.breakers.len() + 1);
            let limits = v.limiter.as_ref().map_or(1, |l| l.keys.len().max(1) + 1);
            breakers.max(limits)
        });
        let middle_height = (middle_rows as u16 + 2).clamp(4, 9);
        // On short terminals the tables give way (they scroll) so that a third of the height,
        // and at least 5 lines, stays for the events.
        let body = area.height.saturating_sub(2);
        let events_min = (body / 3).max(5);
        let top = top.min(body.saturating_sub(middle_height + events_min).max(6));
        let [header, top_area, middle, events_area, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(top),
            Constraint::Length(middle_height),
            Constraint::Min(events_min),
            Constraint::Length(1),
        ])
        .areas(area);
        let [actors_area, right] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                .areas(top_area);
        let [queries_area, today_area] =
            Layout::vertical([Constraint::Min(4), Constraint::Length(6)]).areas(right);
        let [breakers_area, limits_area] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(middle);

        self.render_header(f, header);
        self.render_actors(f, actors_area);
        self.render_queries(f, queries_area);
        self.render_today(f, today_area);
        self.render_breakers(f, breakers_area);
        self.render_limits(f, limits_area);
        self.render_events(f, events_area);
        self.render_footer(f, footer);
    }

    fn block(&self, panel: Panel, title: String) -> Block<'static> {
        let focused = self.focus == panel;
        let block = Block::bordered().title(Span::styled(
            format!(" {title} "),
            Style::new().add_modifier(Modifier::BOLD),
        ));
        if focused {
            block
                .border_type(BorderType::Thick)
                .border_style(Style::new().fg(Color::Cyan))
        } else {
            block.border_style(Style::new().fg(Color::DarkGray))
        }
    }

    fn render_header(&self, f: &mut Frame, area: Rect) {
        let bold = Style::new().add_modifier(Modifier::BOLD);
        let line = match &self.link {
            Link::Connecting => Line::from(vec![
                Span::styled(" ccd ", bold),
                Span::raw(" connecting to the daemon…"),
            ]),
            Link::Down { why, since } => {
                let mut spans = vec![
                    Span::styled(" ccd ", bold),
                    Span::styled(
                        format!(" {why} "),
                        Style::new()
                            .fg(Color::White)
                            .bg(Color::Red)
                            .add_modifier(Modifier::BOLD),
                    ),
                ];
                spans.push(Span::raw(format!(
                    "  down for {}",
                    format_ms(since.elapsed().as_millis() as u64)
                )));
                Line::from(spans)
            }
            Link::Up(view) => match &view.health {
                Ok(h) => {
                    let status = if h.status == "ok" {
                        Span::styled("ok", Style::new().fg(Color::Green))
                    } else {
                        Span::styled(h.status.clone(), Style::new().fg(Color::Yellow))
                    };
                    Line::from(vec![
                        Span::styled(" ccd ", bold),
                        Span::styled("● running", Style::new().fg(Color::Green)),
                        Span::raw(format!(
                            "  pid {}  v{}  up {}  status ",
                            h.pid,
                            h.version,
                            format_ms(h.uptime_ms)
                        )),
                        status,
                        Span::styled(format!("  {}", self.home), Style::new().fg(Color::DarkGray)),
                    ])
                }
                Err(e) => Line::from(vec![
                    Span::styled(" ccd ", bold),
                    Span::styled(
                        format!(" the daemon answered with an error: {e} "),
                        Style::new().fg(Color::Black).bg(Color::Yellow),
                    ),
                ]),
            },
        };
        f.render_widget(Paragraph::new(line), area);
    }

    /// A message in place of a panel's content.
    fn message(&self, f: &mut Frame, area: Rect, block: Block<'static>, text: &str, style: Style) {
        f.render_widget(
            Paragraph::new(Line::styled(text.to_string(), style))
                .wrap(Wrap { trim: true })
                .block(block),
            area,
        );
    }

    /// What the actors panel shows when there is no daemon data: why, in full.
    fn no_daemon(&self) -> (String, Style) {
        match &self.link {
            Link::Down { why, .. } => (
                why.clone(),
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
            _ => ("connecting…".into(), Style::new().fg(Color::DarkGray)),
        }
    }

    /// What the other panels show then (the header and the actors panel say why).
    fn no_data(&self) -> &'static str {
        match &self.link {
            Link::Down { .. } => "no data: the daemon is not reachable",
            _ => "connecting…",
        }
    }

    fn render_actors(&mut self, f: &mut Frame, area: Rect) {
        let block = self.block(Panel::Actors, "Actors".into());
        let health = match self.view().map(|v| &v.health) {
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                let e = e.clone();
                return self.message(f, area, block, &e, Style::new().fg(Color::Yellow));
            }
            None => {
                let (text, style) = self.no_daemon();
                return self.message(f, area, block, &text, style);
            }
        };
        let rows: Vec<Row> = health
            .actors
            .iter()
            .map(|a| {
                let state = match a.state {
                    ActorState::Running => Style::new().fg(Color::Green),
                    ActorState::Restarting => Style::new().fg(Color::Yellow),
                    ActorState::Failed => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                };
                let restarts = if a.restarts > 0 {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new()
                };
                Row::new(vec![
                    Span::raw(a.name.clone()),
                    Span::styled(a.state.as_str(), state),
                    Span::styled(a.restarts.to_string(), restarts),
                    Span::raw(format_ms(a.uptime_ms)),
                    Span::styled(
                        a.reason
                            .clone()
                            .or_else(|| a.last_panic.clone())
                            .unwrap_or_else(|| "-".into()),
                        Style::new().fg(Color::DarkGray),
                    ),
                ])
            })
            .collect();
        let header = ["ACTOR", "STATE", "RESTARTS", "UP", "LAST PANIC"];
        let widths = [
            Constraint::Length(11),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Fill(1),
        ];
        self.table(f, area, block, Panel::Actors, &header, rows, &widths);
    }

    /// A table whose rows scroll when its panel is focused.
    #[allow(clippy::too_many_arguments)]
    fn table(
        &mut self,
        f: &mut Frame,
        area: Rect,
        block: Block<'static>,
        panel: Panel,
        header: &[&'static str],
        rows: Vec<Row<'static>>,
        widths: &[Constraint],
    ) {
        let visible = area.height.saturating_sub(3) as usize;
        let scroll = &mut self.scroll[panel.index()];
        *scroll = (*scroll).min(rows.len().saturating_sub(visible));
        let block = scroll_hint(block, *scroll, rows.len(), visible);
        let rows: Vec<Row> = rows.into_iter().skip(*scroll).collect();
        let header = Row::new(header.to_vec()).style(
            Style::new()
                .fg(Color::Gray)
                .add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
        );
        f.render_widget(
            Table::new(rows, widths.to_vec())
                .header(header)
                .block(block),
            area,
        );
    }

    /// Plain lines that scroll when the panel is focused.
    fn lines(
        &mut self,
        f: &mut Frame,
        area: Rect,
        block: Block<'static>,
        panel: Panel,
        lines: Vec<Line<'static>>,
    ) {
        let visible = area.height.saturating_sub(2) as usize;
        let scroll = &mut self.scroll[panel.index()];
        *scroll = (*scroll).min(lines.len().saturating_sub(visible));
        let block = scroll_hint(block, *scroll, lines.len(), visible);
        let lines: Vec<Line> = lines.into_iter().skip(*scroll).collect();
        f.render_widget(Paragraph::new(lines).block(block), area);
    }

    fn render_queries(&mut self, f: &mut Frame, area: Rect) {
        let block = self.block(Panel::Queries, "Queries in flight".into());
        let dim = Style::new().fg(Color::DarkGray);
        let mut lines = Vec::new();
        match self.view().map(|v| &v.health) {
            Some(Ok(h)) => {
                let e = &h.executor;
                let bar_width = e.size.min(20);
                let filled = if e.size == 0 {
                    0
                } else {
                    (e.busy * bar_width).div_ceil(e.size).min(bar_width)
                };
                let busy_style = if e.busy >= e.size && e.size > 0 {
                    Style::new().fg(Color::Yellow)
                } else {
                    Style::new().fg(Color::Green)
                };
                let agent = match h.agent.available {
                    Some(true) => Span::styled(
                        format!(
                            "{} {}",
                            h.agent.command,
                            h.agent.version.as_deref().unwrap_or("")
                        ),
                        Style::new().fg(Color::Green),
                    ),
                    Some(false) => Span::styled(
                        format!(
                            "{} unavailable{}",
                            h.agent.command,
                            h.agent
                                .reason
                                .as_deref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ),
                        Style::new().fg(Color::Red),
                    ),
                    None => Span::raw(format!("{} (checking…)", h.agent.command)),
                };
                lines.push(Line::from(vec![Span::raw("agent    "), agent]));
                lines.push(Line::from(vec![
                    Span::raw("executor "),
                    Span::styled("█".repeat(filled), busy_style),
                    Span::styled("░".repeat(bar_width - filled), dim),
                    Span::raw(format!(" {}/{} busy, ", e.busy, e.size)),
                    Span::styled(
                        format!("{} queued", e.queued),
                        if e.queued > 0 {
                            Style::new().fg(Color::Yellow)
                        } else {
                            Style::new()
                        },
                    ),
                ]));
            }
            Some(Err(_)) => lines.push(Line::styled("executor: unknown", dim)),
            None => lines.push(Line::styled(self.no_data(), dim)),
        }
        if self.in_flight.is_empty() {
            lines.push(Line::styled("no turns running", dim));
        } else {
            lines.push(Line::styled(
                format!(
                    "{} running{}:",
                    crate::table::count(self.in_flight.len(), "turn"),
                    if self.lagged {
                        " (events were lost; may be stale)"
                    } else {
                        ""
                    }
                ),
                Style::new().add_modifier(Modifier::BOLD),
            ));
            let mut running: Vec<_> = self.in_flight.iter().collect();
            running.sort_by_key(|(_, q)| q.seen);
            for (query_id, q) in running {
                let age = q.seen.elapsed().as_secs() * 1000;
                lines.push(Line::from(vec![
                    Span::styled(short(query_id).to_string(), Style::new().fg(Color::Cyan)),
                    Span::raw(format!(" {:>6}  ", format_ms(age))),
                    Span::raw(q.model.as_deref().unwrap_or("default model").to_string()),
                    Span::raw(
                        q.project
                            .as_deref()
                            .map(|p| format!(" in {p}"))
                            .unwrap_or_default(),
                    ),
                    Span::styled(format!("  session {}", short(&q.session_id)), dim),
                ]));
            }
        }
        self.lines(f, area, block, Panel::Queries, lines);
    }

    fn render_today(&mut self, f: &mut Frame, area: Rect) {
        let block = self.block(Panel::Today, "Today (since 00:00 UTC)".into());
        let lines = match &self.today {
            None => vec![Line::styled("reading…", Style::new().fg(Color::DarkGray))],
            Some(Err(e)) => vec![Line::styled(e.clone(), Style::new().fg(Color::Red))],
            Some(Ok(t)) => {
                let errors = t.errors_retryable + t.errors_non_retryable + t.errors_unavailable;
                vec![
                    Line::from(vec![
                        Span::styled(
                            format!("${:.4}", t.cost_usd),
                            Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
                        ),
                        Span::raw(format!("  {} tokens", compact(t.usage.total()))),
                    ]),
                    Line::raw(format!(
                        "tokens in {} · out {} · cache write {} · read {}",
                        compact(t.usage.input_tokens),
                        compact(t.usage.output_tokens),
                        compact(t.usage.cache_creation_input_tokens),
                        compact(t.usage.cache_read_input_tokens)
                    )),
                    Line::from(vec![
                        Span::raw(format!("queries {} · ok {} · ", t.queries, t.ok)),
                        Span::styled(
                            {
                                let classes: Vec<String> = [
                                    (t.errors_retryable, "retryable"),
                                    (t.errors_non_retryable, "non_retryable"),
                                    (t.errors_unavailable, "unavailable"),
                                ]
                                .iter()
                                .filter(|(n, _)| *n > 0)
                                .map(|(n, class)| format!("{n} {class}"))
                                .collect();
                                if classes.is_empty() {
                                    format!("errors {errors}")
                                } else {
                                    format!("errors {errors} ({})", classes.join(", "))
                                }
                            },
                            if errors > 0 {
                                Style::new().fg(Color::Red)
                            } else {
                                Style::new()
                            },
                        ),
                    ]),
                    Line::raw(format!(
                        "timeouts {} · cancelled {} · refused {}",
                        t.timeouts, t.cancelled, t.refused
                    )),
                ]
            }
        };
        self.lines(f, area, block, Panel::Today, lines);
    }

    fn render_breakers(&mut self, f: &mut Frame, area: Rect) {
        let block = self.block(Panel::Breakers, "Circuit breakers".into());
        let list = match self.view().map(|v| &v.breakers) {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                let e = e.clone();
                return self.message(f, area, block, &e, Style::new().fg(Color::Yellow));
            }
            None => {
                let text = self.no_data();
                return self.message(f, area, block, text, Style::new().fg(Color::DarkGray));
            }
        };
        if list.breakers.is_empty() {
            return self.message(
                f,
                area,
                block,
                "no breakers yet (one per agent command and model)",
                Style::new().fg(Color::DarkGray),
            );
        }
        let rows = list
            .breakers
            .iter()
            .map(|b| {
                let (state, style) = match b.state {
                    BreakerState::Closed => ("CLOSED", Style::new().fg(Color::Green)),
                    BreakerState::Open => (
                        "OPEN",
                        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                    ),
                    BreakerState::HalfOpen => ("HALF_OPEN", Style::new().fg(Color::Yellow)),
                };
                Row::new(vec![
                    Span::raw(breaker_key(&b.key)),
                    Span::styled(state, style),
                    Span::raw(format!(
                        "{:.0}% of {}",
                        b.failure_rate * 100.0,
                        b.calls_in_window
                    )),
                    Span::raw(if b.retry_after_ms > 0 {
                        format!("{:.1}s", b.retry_after_ms as f64 / 1000.0)
                    } else {
                        "-".into()
                    }),
                    Span::raw(format!("{}/{}", b.rejected, b.times_opened)),
                ])
            })
            .collect();
        let widths = [
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(9),
        ];
        let header = ["KEY", "STATE", "FAILURES", "RETRY IN", "REJ/OPEN"];
        self.table(f, area, block, Panel::Breakers, &header, rows, &widths);
    }

    fn render_limits(&mut self, f: &mut Frame, area: Rect) {
        let block = self.block(Panel::Limits, "Rate limits".into());
        let status = match self.view().map(|v| &v.limiter) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                let e = e.clone();
                return self.message(f, area, block, &e, Style::new().fg(Color::Yellow));
            }
            None => {
                let text = self.no_data();
                return self.message(f, area, block, text, Style::new().fg(Color::DarkGray));
            }
        };
        let mut lines = vec![Line::from(vec![
            Span::styled("global ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(spec(&status.limits.global)),
            Span::styled(" · model ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(spec(&status.limits.model)),
            Span::styled(" · project ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(spec(&status.limits.project)),
        ])];
        if status.keys.is_empty() {
            lines.push(Line::styled(
                "no queries limited yet",
                Style::new().fg(Color::DarkGray),
            ));
        }
        for k in &status.keys {
            let busy = if k.waiting > 0 {
                Style::new().fg(Color::Yellow)
            } else {
                Style::new()
            };
            lines.push(Line::from(vec![
                Span::styled(format!("{:<20} ", k.key), Style::new().fg(Color::Cyan)),
                Span::styled(
                    format!("in flight {} · waiting {}", k.in_flight, k.waiting),
                    busy,
                ),
                Span::raw(format!(
                    " · throttled {} · admitted {}",
                    k.throttled, k.admitted
                )),
                Span::styled(
                    k.available_tokens
                        .map(|t| format!(" · tokens {t}"))
                        .unwrap_or_default(),
                    Style::new().fg(Color::DarkGray),
                ),
            ]));
        }
        self.lines(f, area, block, Panel::Limits, lines);
    }

    fn render_events(&mut self, f: &mut Frame, area: Rect) {
        let visible = area.height.saturating_sub(2) as usize;
        let total = self.events.len();
        let idx = Panel::Events.index();
        self.scroll[idx] = self.scroll[idx].min(total.saturating_sub(visible));
        let back = self.scroll[idx];
        let state = match &self.events_link {
            EventsLink::Connecting => "connecting…".to_string(),
            EventsLink::Live if back > 0 => {
                format!("scrolled back {back}; End to follow")
            }
            EventsLink::Live => "live".to_string(),
            EventsLink::Lost(_) => "disconnected; retrying…".to_string(),
        };
        let block = self.block(
            Panel::Events,
            format!("Events ({total}, times UTC) — {state}"),
        );
        if total == 0 {
            let text = match &self.events_link {
                EventsLink::Lost(why) => why.clone(),
                _ => "no events yet".into(),
            };
            return self.message(f, area, block, &text, Style::new().fg(Color::DarkGray));
        }
        let end = total - back;
        let start = end.saturating_sub(visible);
        let block = scroll_hint(block, start, total, visible);
        let lines: Vec<Line> = self
            .events
            .values()
            .skip(start)
            .take(end - start)
            .map(event_line)
            .collect();
        f.render_widget(Paragraph::new(lines).block(block), area);
    }

    fn render_footer(&self, f: &mut Frame, area: Rect) {
        let key = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
        let dim = Style::new().fg(Color::DarkGray);
        let mut spans = vec![
            Span::styled(" q", key),
            Span::raw(" quit  "),
            Span::styled("Tab", key),
            Span::raw(" focus  "),
            Span::styled("↑↓ PgUp PgDn", key),
            Span::raw(" scroll  "),
            Span::styled("Home/End", key),
            Span::raw(" oldest/newest   "),
        ];
        if let Some(t) = self.updated {
            spans.push(Span::styled(
                format!("updated {:.1}s ago", t.elapsed().as_secs_f64()),
                dim,
            ));
        }
        f.render_widget(Paragraph::new(Line::from(spans)), area);
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting

/// Say on a panel's bottom border how many of its lines are out of view, when some are.
fn scroll_hint(
    block: Block<'static>,
    first: usize,
    total: usize,
    visible: usize,
) -> Block<'static> {
    let below = total.saturating_sub(first + visible);
    if first == 0 && below == 0 {
        return block;
    }
    let mut parts = Vec::new();
    if first > 0 {
        parts.push(format!("↑{first}"));
    }
    if below > 0 {
        parts.push(format!("↓{below}"));
    }
    block.title_bottom(Line::from(format!(" {} more ", parts.join(" "))).right_aligned())
}

/// One event on one line: time, type, then its key fields.
fn event_line(e: &Event) -> Line<'static> {
    let time = e.ts.get(11..19).unwrap_or(&e.ts).to_string();
    let (style, fields) = describe(&e.kind);
    Line::from(vec![
        Span::styled(format!("{time} "), Style::new().fg(Color::DarkGray)),
        Span::styled(format!("#{:<6} ", e.seq), Style::new().fg(Color::DarkGray)),
        Span::styled(format!("{:<19} ", e.kind.type_name()), style),
        Span::raw(fields),
    ])
}

/// The style of an event's type, and its key fields as text.
fn describe(kind: &EventKind) -> (Style, String) {
    let good = Style::new().fg(Color::Green);
    let bad = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
    let warn = Style::new().fg(Color::Yellow);
    let info = Style::new().fg(Color::Cyan);
    let plain = Style::new();
    let proj = |p: &Option<String>| {
        p.as_deref()
            .map(|p| format!(" project={p}"))
            .unwrap_or_default()
    };
    let model = |m: &Option<String>| {
        m.as_deref()
            .map(|m| format!(" model={m}"))
            .unwrap_or_default()
    };
    match kind {
        EventKind::SessionCreated {
            session_id,
            project,
        } => (
            info,
            format!("session={}{}", short(session_id), proj(project)),
        ),
        EventKind::SessionClosed { session_id } => {
            (plain, format!("session={}", short(session_id)))
        }
        EventKind::SessionError {
            session_id,
            query_id,
            project,
            class,
            detail,
        } => (
            bad,
            format!(
                "query={} session={}{} class={class} {detail}",
                short(query_id),
                short(session_id),
                proj(project)
            ),
        ),
        EventKind::TurnStarted {
            session_id,
            query_id,
            project,
            model: m,
        } => (
            info,
            format!(
                "query={} session={}{}{}",
                short(query_id),
                short(session_id),
                proj(project),
                model(m)
            ),
        ),
        EventKind::TurnCompleted {
            query_id,
            project,
            model: m,
            status,
            duration_ms,
            attempts,
            ..
        } => (
            if status == "ok" { good } else { bad },
            format!(
                "query={} status={status} in {}{}{}{}",
                short(query_id),
                format_ms(*duration_ms),
                if *attempts > 1 {
                    format!(" attempts={attempts}")
                } else {
                    String::new()
                },
                proj(project),
                model(m)
            ),
        ),
        EventKind::ToolCalled { query_id, tool, .. } => {
            (plain, format!("query={} tool={tool}", short(query_id)))
        }
        EventKind::ToolResult {
            query_id,
            tool_use_id,
            is_error,
            ..
        } => (
            if *is_error { warn } else { plain },
            format!(
                "query={} tool_use={}{}",
                short(query_id),
                short(tool_use_id),
                if *is_error { " error" } else { "" }
            ),
        ),
        EventKind::TokensUsed {
            query_id, usage, ..
        } => (
            plain,
            format!(
                "query={} in={} out={} cache_write={} cache_read={}",
                short(query_id),
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_creation_input_tokens,
                usage.cache_read_input_tokens
            ),
        ),
        EventKind::CostIncurred {
            query_id, cost_usd, ..
        } => (
            plain,
            format!("query={} cost=${cost_usd:.4}", short(query_id)),
        ),
        EventKind::QueryRetried {
            query_id,
            attempt,
            delay_ms,
            error,
            ..
        } => (
            warn,
            format!(
                "query={} attempt={attempt} after {} {error}",
                short(query_id),
                format_ms(*delay_ms)
            ),
        ),
        EventKind::ActorStarted { actor } => (good, format!("actor={actor}")),
        EventKind::ActorRestarted { actor, reason } => (warn, format!("actor={actor} {reason}")),
        EventKind::ActorFailed { actor, reason } => (bad, format!("actor={actor} {reason}")),
        EventKind::BreakerOpened { key, reason } => (bad, format!("key={key} {reason}")),
        EventKind::BreakerHalfOpened { key, reason } => (warn, format!("key={key} {reason}")),
        EventKind::BreakerClosed { key, reason } => (good, format!("key={key} {reason}")),
        EventKind::LimiterThrottled {
            query_id,
            project,
            model: m,
            key,
            retry_after_ms,
            ..
        } => (
            warn,
            format!(
                "query={} key={key} retry_after={}{}{}",
                short(query_id),
                format_ms(*retry_after_ms),
                proj(project),
                model(m)
            ),
        ),
        EventKind::VfsMounted { mountpoint } | EventKind::VfsUnmounted { mountpoint } => {
            (plain, format!("mountpoint={mountpoint}"))
        }
        EventKind::DaemonStarted { pid, version } => (good, format!("pid={pid} version={version}")),
        EventKind::DaemonStopping { pid } => (warn, format!("pid={pid}")),
        EventKind::Lagged { missed } => (bad, format!("missed={missed} (this view fell behind)")),
    }
}

/// A breaker's key (`<agent command>|<model>`) with the command's directory left out.
fn breaker_key(key: &str) -> String {
    match key.split_once('|') {
        Some((cmd, model)) => {
            let cmd = cmd.rsplit('/').next().unwrap_or(cmd);
            format!("{cmd}|{model}")
        }
        None => key.to_string(),
    }
}

/// The first 8 characters of an id.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// 1234 as "1.2k", 5_600_000 as "5.6M".
fn compact(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// A duration the way a person says it: 850ms, 12s, 5m 12s, 3h 4m, 2d 5h.
fn format_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A scope's limits in a few words.
fn spec(s: &LimitSpec) -> String {
    if s.is_off() {
        return "off".into();
    }
    let mut parts = Vec::new();
    if s.rate_per_s > 0.0 {
        parts.push(format!("{}/s burst {}", s.rate_per_s, s.burst));
    }
    if s.window_max > 0 {
        parts.push(format!("{} per {}", s.window_max, format_ms(s.window_ms)));
    }
    if s.concurrency > 0 {
        parts.push(format!("{} at once", s.concurrency));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn health() -> Health {
        serde_json::from_value(serde_json::json!({
            "status": "ok", "pid": 42, "version": "0.1.0",
            "started_at": "2026-01-01T00:00:00.000Z", "uptime_ms": 65_000,
            "fault_injection": false,
            "actors": [
                {"name": "gateway", "state": "running", "restarts": 0, "last_panic": null,
                 "reason": null, "uptime_ms": 65_000},
                {"name": "writer", "state": "restarting", "restarts": 2,
                 "last_panic": "boom", "reason": null, "uptime_ms": 10}
            ],
            "agent": {"command": "claude", "available": false, "version": null,
                      "reason": "not found"},
            "executor": {"size": 4, "busy": 1, "queued": 0}
        }))
        .expect("health fixture")
    }

    fn screen(app: &mut App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
        t.draw(|f| app.render(f)).expect("draw");
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn app() -> App {
        let mut app = App::new(&Home {
            root: "/tmp/ccd-home".into(),
        });
        app.apply(Msg::Snapshot(Box::new(Snapshot {
            daemon: Ok(DaemonView {
                health: Ok(health()),
                limiter: Err("limiter.status: limiter is restarting".into()),
                breakers: Ok(BreakerList { breakers: vec![] }),
            }),
            today: Ok(StatsRow::default()),
            recent: vec![],
        })));
        let started: Event = serde_json::from_value(serde_json::json!({
            "seq": 7, "ts": "2026-01-01T10:11:12.131Z", "type": "turn.started",
            "session_id": "0123456789abcdef", "query_id": "fedcba9876543210",
            "project": "web", "model": null
        }))
        .expect("event fixture");
        app.apply(Msg::Live(Box::new(started)));
        app
    }

    #[test]
    fn renders_every_panel() {
        let s = screen(&mut app(), 120, 40);
        for want in [
            "gateway",
            "running",
            "restarting",
            "boom",
            "1/4 busy",
            "fedcba98",
            "limiter is restarting",
            "no breakers yet",
            "10:11:12",
            "turn.started",
            "query=fedcba98",
            "$0.0000",
            "claude unavailable: not found",
        ] {
            assert!(s.contains(want), "{want:?} missing from\n{s}");
        }
    }

    #[test]
    fn a_completed_turn_leaves_the_in_flight_list() {
        let mut app = app();
        let done: Event = serde_json::from_value(serde_json::json!({
            "seq": 8, "ts": "2026-01-01T10:11:13.000Z", "type": "turn.completed",
            "session_id": "0123456789abcdef", "query_id": "fedcba9876543210",
            "project": "web", "model": null, "status": "ok", "duration_ms": 1200, "attempts": 1
        }))
        .expect("event fixture");
        app.apply(Msg::Live(Box::new(done)));
        assert!(app.in_flight.is_empty());
        assert!(screen(&mut app, 120, 40).contains("status=ok in 1s"));
    }

    #[test]
    fn says_when_the_daemon_is_down_and_survives_tiny_terminals() {
        let mut app = app();
        app.apply(Msg::Snapshot(Box::new(Snapshot {
            daemon: Err(NOT_RUNNING.into()),
            today: Err("reading the database: locked".into()),
            recent: vec![],
        })));
        assert!(screen(&mut app, 120, 40).contains("ccd daemon is not running"));
        for (w, h) in [(1, 1), (10, 3), (40, 12), (80, 24), (300, 100)] {
            screen(&mut app, w, h);
        }
    }

    #[test]
    fn keys_move_focus_scroll_and_quit() {
        let mut app = app();
        let key = |code, modifiers| term::Event::Key(KeyEvent::new(code, modifiers));
        assert_eq!(app.focus, Panel::Events);
        app.on_input(&key(KeyCode::Tab, KeyModifiers::NONE));
        assert_eq!(app.focus, Panel::Actors);
        app.on_input(&key(KeyCode::BackTab, KeyModifiers::SHIFT));
        assert_eq!(app.focus, Panel::Events);
        app.on_input(&key(KeyCode::Up, KeyModifiers::NONE));
        assert_eq!(app.scroll[Panel::Events.index()], 1);
        assert_eq!(
            app.on_input(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Flow::Quit
        );
        assert_eq!(
            app.on_input(&key(KeyCode::Char('q'), KeyModifiers::NONE)),
            Flow::Quit
        );
    }
}
