//! The dashboard drawn on a test backend.

use ccd_protocol::types::{BreakerList, Event, Health, StatsRow};
use ratatui::crossterm::event::{self as term, KeyCode, KeyEvent, KeyModifiers};

use super::feed::*;
use super::state::*;
use crate::home::Home;
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
