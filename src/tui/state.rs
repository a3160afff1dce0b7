//! The dashboard's state: what the feed told it, the focused panel and the scroll
//! positions; `App::apply` and `App::on_input` are the only ways it changes.

use std::collections::BTreeMap;
use std::time::Instant;

use ccd_protocol::types::{Event, EventKind, StatsRow};
use ratatui::crossterm::event::{self as term, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::feed::{DaemonView, Msg};
use crate::home::Home;

/// Events kept in memory for the events panel (the oldest are dropped).
pub(super) const MAX_EVENTS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Panel {
    Actors,
    Queries,
    Today,
    Breakers,
    Limits,
    Events,
}

impl Panel {
    pub(super) const ALL: [Panel; 6] = [
        Panel::Actors,
        Panel::Queries,
        Panel::Today,
        Panel::Breakers,
        Panel::Limits,
        Panel::Events,
    ];

    pub(super) fn index(self) -> usize {
        Panel::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    pub(super) fn next(self, step: isize) -> Panel {
        let n = Panel::ALL.len() as isize;
        Panel::ALL[(self.index() as isize + step).rem_euclid(n) as usize]
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Quit,
}

/// The daemon's reachability as the poller last saw it.
pub(super) enum Link {
    Connecting,
    Up(Box<DaemonView>),
    Down { why: String, since: Instant },
}

pub(super) enum EventsLink {
    Connecting,
    Live,
    Lost(String),
}

pub(super) struct InFlight {
    pub(super) session_id: String,
    pub(super) project: Option<String>,
    pub(super) model: Option<String>,
    pub(super) seen: Instant,
}

pub(super) struct App {
    pub(super) home: String,
    pub(super) link: Link,
    pub(super) last_up: Option<Instant>,
    pub(super) updated: Option<Instant>,
    pub(super) today: Option<Result<StatsRow, String>>,
    /// Keyed by (seq, lagged) so that the log and the live stream never show an event twice.
    pub(super) events: BTreeMap<(u64, bool), Event>,
    pub(super) events_link: EventsLink,
    /// Turns seen starting on the live stream and not yet completed.
    pub(super) in_flight: BTreeMap<String, InFlight>,
    pub(super) focus: Panel,
    pub(super) scroll: [usize; Panel::ALL.len()],
    /// Set when the stream lagged: the in-flight list may miss completions.
    pub(super) lagged: bool,
}

impl App {
    pub(super) fn new(home: &Home) -> App {
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

    pub(super) fn on_input(&mut self, ev: &term::Event) -> Flow {
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

    pub(super) fn apply(&mut self, msg: Msg) {
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

    pub(super) fn push_event(&mut self, e: Event) {
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
    pub(super) fn track(&mut self, e: &Event) {
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

    pub(super) fn view(&self) -> Option<&DaemonView> {
        match &self.link {
            Link::Up(v) => Some(v),
            _ => None,
        }
    }
}
