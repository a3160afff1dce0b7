//! `ccd tui` as a person sees it: the dashboard runs in a detached tmux session of a fixed size
//! (120x40), the test reads the screen with `tmux capture-pane` and types with `tmux send-keys`.
//! Every wait is bounded; nothing depends on how fast the screen updates.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::daemon::*;

const LIMIT: Duration = Duration::from_secs(20);

/// A tmux server of its own (`-L`), with one session `t` running `ccd tui` for a daemon's home.
/// Dropping it kills the server, also when the test failed (then the last screen is printed).
struct Tmux {
    socket: String,
    /// The socket's file, removed with the server.
    socket_path: Option<PathBuf>,
}

impl Tmux {
    /// Start `ccd tui`; with `keep_dead_pane`, the pane stays after the process exits, so that
    /// its exit status and the restored screen can be read.
    fn start(d: &Daemon, keep_dead_pane: bool) -> Tmux {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut t = Tmux {
            socket_path: None,
            socket: format!(
                "ccd-tui-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let home = d.path().to_str().expect("utf-8 home");
        // tmux does not always learn the exit status of a pane's process (3.3a loses it when
        // the pty closes before the process is reaped): the shell writes it to a file.
        let exit_file = d.path().join("tui.exit");
        let command = format!(
            "{} tui; echo $? > {}",
            shell_quote(ccd_bin()),
            shell_quote(exit_file.to_str().expect("utf-8 home"))
        );
        let mut args = vec!["start-server", ";"];
        if keep_dead_pane {
            args.extend(["set-option", "-g", "remain-on-exit", "on", ";"]);
        }
        let (ccd_home, home_var) = (format!("CCD_HOME={home}"), format!("HOME={home}"));
        args.extend([
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "40",
            "-e",
            &ccd_home,
            "-e",
            &home_var,
            &command,
        ]);
        let out = t.tmux(&args);
        assert!(out.status.success(), "starting tmux:\n{}", describe(&out));
        let out = t.tmux(&["display-message", "-p", "#{socket_path}"]);
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        t.socket_path = (!path.is_empty()).then(|| PathBuf::from(path));
        t
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-f", "/dev/null", "-L", &self.socket])
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("running tmux")
    }

    /// The pane's text as it is on screen now (empty once the session is gone).
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Wait until the screen satisfies `cond`; returns that screen.
    fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut screen = String::new();
        wait_until(what, LIMIT, || {
            screen = self.screen();
            cond(&screen)
        });
        screen
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend(keys);
        let out = self.tmux(&args);
        assert!(out.status.success(), "send-keys:\n{}", describe(&out));
    }

    fn session_exists(&self) -> bool {
        self.tmux(&["has-session", "-t", "t"]).status.success()
    }

    /// The exit status of `ccd tui`, once it has exited.
    fn exit_status(d: &Daemon) -> Option<String> {
        std::fs::read_to_string(d.path().join("tui.exit"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
}

/// The title of the panel drawn with a thick border (the focused one).
fn focused_panel(screen: &str) -> Option<String> {
    screen.lines().find_map(|line| {
        let (_, after) = line.split_once('┏')?;
        let title: String = after
            .trim_start_matches(['━', ' '])
            .chars()
            .take_while(|c| *c != '━' && *c != '┓')
            .collect();
        Some(title.trim().to_string())
    })
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("last screen of `ccd tui`:\n{}", self.screen());
        }
        let _ = self.tmux(&["kill-server"]);
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A row of the actors panel: the actor's name first, then its state.
fn shows_actor(screen: &str, name: &str, state: &str) -> bool {
    let name = format!("{name} ");
    screen.lines().any(|l| {
        l.split(['│', '┃']).any(|cell| {
            let cell = cell.trim_start();
            cell.starts_with(&name) && cell.contains(state)
        })
    })
}

fn shows_actors(screen: &str) -> bool {
    shows_actor(screen, "gateway", "running") && shows_actor(screen, "writer", "running")
}

/// A line of the events panel for this event type and session.
fn shows_event(screen: &str, kind: &str, session_id: &str) -> bool {
    let short = &session_id[..8];
    screen
        .lines()
        .any(|l| l.contains(kind) && l.contains(&format!("session={short}")))
}

fn create_session(d: &Daemon) -> String {
    let s = d.call("session.create", json!({})).expect("session.create");
    s["id"].as_str().expect("session id").to_string()
}

#[test]
fn the_dashboard_shows_actors_and_events_and_follows_the_daemon_through_a_restart() {
    let d = Daemon::start();
    let tui = Tmux::start(&d, true);

    // Every panel, once the screen is drawn whole (a capture can catch a redraw half done).
    let panels = [
        "Actors",
        "Queries in flight",
        "Today",
        "Circuit breakers",
        "Rate limits",
        "Events",
    ];
    tui.wait_for("the actors and their state, in every panel", |s| {
        shows_actors(s) && panels.iter().all(|p| s.contains(p))
    });

    let first = create_session(&d);
    tui.wait_for("the session.created event", |s| {
        shows_event(s, "session.created", &first)
    });

    d.stop();
    let screen = tui.wait_for("the daemon to be reported as not running", |s| {
        s.contains("ccd daemon is not running") && s.contains("ccd daemon start")
    });
    assert!(
        !shows_actors(&screen),
        "actors still shown as running:\n{screen}"
    );
    assert!(
        !d.socket().exists(),
        "the dashboard must not start the daemon"
    );

    // Back again: the same dashboard reconnects, both its polling and its event subscription.
    d.ccd_ok(&["daemon", "start"]);
    tui.wait_for("the actors after the restart", |s| {
        shows_actors(s) && !s.contains("not running")
    });
    let second = create_session(&d);
    tui.wait_for("an event from the restarted daemon", |s| {
        shows_event(s, "session.created", &second)
    });

    // Tab moves the focus (the focused panel has the thick border), Shift-Tab moves it back;
    // the dashboard keeps running.
    let screen = tui.wait_for("the events panel focused", |s| {
        focused_panel(s).is_some_and(|t| t.starts_with("Events"))
    });
    assert!(shows_actors(&screen), "{screen}");
    tui.keys(&["Tab"]);
    tui.wait_for("the actors panel focused after Tab", |s| {
        focused_panel(s).is_some_and(|t| t.starts_with("Actors")) && shows_actors(s)
    });
    tui.keys(&["Up", "Down", "BTab"]);
    tui.wait_for("the events panel focused again after Shift-Tab", |s| {
        focused_panel(s).is_some_and(|t| t.starts_with("Events")) && shows_actors(s)
    });

    tui.keys(&["q"]);
    wait_until("ccd tui to exit after q", LIMIT, || {
        Tmux::exit_status(&d).is_some()
    });
    assert_eq!(
        Tmux::exit_status(&d).as_deref(),
        Some("0"),
        "exit status of ccd tui"
    );
    let screen = tui.screen();
    assert!(
        !screen.contains("Actors") && !screen.contains("Events"),
        "the terminal was not restored (still on the dashboard):\n{screen}"
    );
}

#[test]
fn without_a_daemon_it_says_so_keeps_retrying_and_quits_on_ctrl_c() {
    let d = Daemon::builder().prepare();

    // Not a terminal: a clear error rather than a garbled screen.
    let out = d.ccd(&["tui"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs an interactive terminal"),
        "{}",
        describe(&out)
    );

    let tui = Tmux::start(&d, false);
    tui.wait_for("the daemon to be reported as not running", |s| {
        s.contains("ccd daemon is not running") && s.contains("retrying")
    });
    assert!(!d.socket().exists(), "the dashboard started the daemon");

    // It keeps retrying: a daemon started later shows up without restarting the dashboard.
    d.ccd_ok(&["daemon", "start"]);
    tui.wait_for("the actors once the daemon runs", shows_actors);

    tui.keys(&["C-c"]);
    wait_until("the tmux session to end after Ctrl-C", LIMIT, || {
        !tui.session_exists()
    });
}
