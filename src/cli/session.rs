//! `ccd session ...`: conversations kept by the daemon, each query a turn of one.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use ccd_actors::store;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self};
use clap::Subcommand;

use crate::exit;
use crate::home::{Home, read};
use crate::table::{Table, count, print_json};

use super::args::{absolute, parse_duration};
use crate::table::dollars;

/// `--status`: one of the session statuses (which clap lists in help and completion).
fn session_status() -> impl clap::builder::TypedValueParser<Value = types::SessionStatus> {
    use clap::builder::TypedValueParser as _;
    let words = types::SessionStatus::ALL.iter().map(|s| s.as_str());
    clap::builder::PossibleValuesParser::new(words).try_map(|s| s.parse::<types::SessionStatus>())
}

#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// Create an empty session and print its id.
    New {
        /// The project its queries run in unless they name another (see `ccd project list`).
        #[arg(long, short, add = crate::complete::projects())]
        project: Option<String>,
        /// A tag to find it by with `ccd session list --tag` (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The model its queries use unless they name another, e.g. sonnet.
        #[arg(long, short)]
        model: Option<String>,
        /// Print the session as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List sessions (reads the database directly).
    List {
        /// Only sessions in this state.
        #[arg(long, value_parser = session_status())]
        status: Option<types::SessionStatus>,
        /// Only sessions with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only sessions of this project.
        #[arg(long, short, add = crate::complete::projects())]
        project: Option<String>,
        /// Show at most this many, newest first.
        #[arg(long, short = 'n', default_value_t = 20, conflicts_with = "all")]
        limit: u32,
        /// Show every session.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a session and its turns (reads the database directly).
    Show {
        /// The session's id (see `ccd session list`, or the summary after `ccd query`).
        #[arg(add = crate::complete::sessions())]
        id: String,
        /// Print the session and its turns as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close a session: it takes no more queries.
    Close {
        /// The session's id (see `ccd session list`), or any unique prefix of it.
        #[arg(add = crate::complete::sessions())]
        id: String,
        /// Print the session as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a session and its turns (not while a query runs in it).
    Rm {
        /// The session's id, or any unique prefix of it.
        #[arg(add = crate::complete::sessions())]
        id: String,
        /// Print the removed session as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete closed and expired sessions not used for a while.
    Cleanup {
        /// Age, e.g. 7d, 12h, 0s.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        older_than: Duration,
    },
}

pub fn run(home: &Home, autostart: bool, cmd: SessionCmd) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    match cmd {
        SessionCmd::New {
            project,
            tags,
            model,
            json,
        } => {
            let cwd = match &project {
                Some(_) => None,
                None => Some(absolute(
                    &std::env::current_dir().context("reading the current directory")?,
                )?),
            };
            let params = types::SessionCreate {
                project,
                cwd,
                tags: Some(tags),
                model,
            };
            let s = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::SessionCreate>(&params)?;
            if json {
                print_json(&s)?;
            } else {
                writeln!(out, "{}", s.id)?;
            }
        }
        SessionCmd::List {
            status,
            tag,
            project,
            limit,
            all,
            json,
        } => {
            let (sessions, more) = read(home, move |c| {
                let filter = store::SessionFilter {
                    status,
                    tag: tag.as_deref(),
                    project: project.as_deref(),
                    limit: (!all).then_some(limit),
                    ..Default::default()
                };
                store::sessions(c, filter)
            })?;
            if json {
                print_json(&sessions)?;
            } else {
                print_list(&mut out, sessions, more, limit)?;
            }
        }
        SessionCmd::Show { id, json } => show(home, &mut out, id, json)?,
        SessionCmd::Close { id, json } => {
            let s = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::SessionClose>(&types::SessionId { id })?;
            if json {
                print_json(&s)?;
            } else {
                writeln!(out, "closed session {}", s.id)?;
            }
        }
        SessionCmd::Rm { id, json } => {
            let s = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::SessionDelete>(&types::SessionId { id })?;
            if json {
                print_json(&s)?;
            } else {
                writeln!(out, "removed session {} ({})", s.id, count(s.turns, "turn"))?;
            }
        }
        SessionCmd::Cleanup { older_than } => {
            let params = types::SessionCleanup {
                older_than_s: older_than.as_secs(),
            };
            let r = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::SessionCleanup>(&params)?;
            writeln!(out, "removed {}", count(r.removed, "session"))?;
        }
    }
    Ok(exit::OK)
}

/// `ccd session list`'s table, and a note on stderr when more sessions than `limit` exist.
fn print_list(
    out: &mut impl Write,
    sessions: Vec<types::Session>,
    more: bool,
    limit: u32,
) -> anyhow::Result<()> {
    let mut t = Table::new([
        "ID",
        "STATUS",
        "PROJECT",
        "TURNS",
        "TOKENS",
        "COST",
        "LAST USED",
    ]);
    for s in sessions {
        // Turns, but no agent conversation: every query was refused or failed
        // before the agent began one; there is nothing to resume.
        let status = if s.turns > 0 && s.agent_session_id.is_none() {
            format!("{} (nothing to resume)", s.status)
        } else {
            s.status.to_string()
        };
        t.row([
            s.id,
            status,
            s.project.unwrap_or_else(|| "-".into()),
            s.turns.to_string(),
            s.usage.total().to_string(),
            dollars(s.cost_usd),
            crate::table::local_time(&s.last_used_at),
        ]);
    }
    t.print_or_empty(out, "no sessions")?;
    if more {
        writeln!(
            std::io::stderr(),
            "(the newest {limit}; --limit N or --all for more)"
        )?;
    }
    Ok(())
}

/// `ccd session show`: one session and each of its turns whole (read directly).
fn show(home: &Home, out: &mut impl Write, id: String, json: bool) -> anyhow::Result<()> {
    let missing = format!("no session `{id}`");
    // None: no database yet.
    let found = read(home, move |c| {
        let id = match store::resolve_session_id(c, &id) {
            Ok(id) => id,
            Err(e) => return Ok(Some(Err(e.to_string()))),
        };
        let Some(session) = store::session(c, &id)? else {
            return Ok(Some(Err(format!("no session `{id}`"))));
        };
        Ok(Some(Ok(types::SessionDetail {
            turns: store::turns(c, &id)?,
            session,
        })))
    })?;
    let detail = found.unwrap_or(Err(missing)).map_err(anyhow::Error::msg)?;
    if json {
        print_json(&detail)?;
    } else {
        let s = &detail.session;
        let safe = crate::table::terminal_safe;
        let local = crate::table::local_time;
        writeln!(out, "session {}", s.id)?;
        writeln!(out, "  status:        {}", s.status)?;
        writeln!(
            out,
            "  project:       {}",
            safe(s.project.as_deref().unwrap_or("-"))
        )?;
        writeln!(
            out,
            "  directory:     {}",
            safe(s.cwd.as_deref().unwrap_or("-"))
        )?;
        writeln!(
            out,
            "  agent session: {}",
            safe(s.agent_session_id.as_deref().unwrap_or("-"))
        )?;
        writeln!(out, "  created:       {}", local(&s.created_at))?;
        writeln!(out, "  last used:     {}", local(&s.last_used_at))?;
        writeln!(
            out,
            "  totals:        {}, {} in / {} out tokens, {}",
            count(s.turns, "turn"),
            s.usage.input_tokens,
            s.usage.output_tokens,
            dollars(s.cost_usd)
        )?;
        if detail.turns.is_empty() {
            writeln!(out, "\nno turns yet")?;
        }
        // Each turn whole: its prompt and its answer (or error), wrapped, with
        // anything that would drive the terminal shown instead.
        for (i, turn) in detail.turns.iter().enumerate() {
            writeln!(
                out,
                "\nturn {} · {} · {} · {:.1}s · {} tokens · {}",
                i + 1,
                turn.status,
                local(&turn.started_at),
                turn.duration_ms as f64 / 1000.0,
                turn.usage.total(),
                dollars(turn.cost_usd)
            )?;
            writeln!(out, "  prompt:")?;
            write!(
                out,
                "{}",
                crate::table::wrap(&safe(&turn.prompt), 96, "    ")
            )?;
            if let Some(result) = &turn.result {
                writeln!(out, "  result:")?;
                write!(out, "{}", crate::table::wrap(&safe(result), 96, "    "))?;
            }
            if let Some(error) = &turn.error {
                writeln!(out, "  error:")?;
                write!(out, "{}", crate::table::wrap(&safe(error), 96, "    "))?;
            }
        }
    }
    Ok(())
}
