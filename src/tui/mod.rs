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
//!
//! `feed` is the background threads and what they send, `state` the `App` they update,
//! `render` how it is drawn, `text` the words and numbers it shows.

use std::io::IsTerminal as _;
use std::sync::mpsc::{self, RecvTimeoutError};

use crate::exit;
use crate::home::Home;

mod feed;
mod render;
mod state;
mod text;

use feed::{Msg, TICK, events, input, poller};
use state::{App, Flow};

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

#[cfg(test)]
mod tests;
