//! The agent commands: `ccd query`, `ccd session ...`, `ccd batch`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use ccd_actors::store;
use ccd_protocol::agent::{self, AgentMessage, ContentBlock};
use ccd_protocol::methods as m;
use ccd_protocol::types::{self, PermissionMode, QueryResult};
use ccd_protocol::{ErrorCode, Method, Notification, RpcError};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::client::{CallError, Client};
use crate::exit;
use crate::exit::UsageError;
use crate::home::{Home, read};
use crate::table::{Table, count, print_json};

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The prompt; `-` (or none, with input piped in) reads it from standard input.
    #[arg(value_name = "PROMPT", conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    #[command(flatten)]
    opts: QueryOpts,
    /// Continue this session (its agent conversation is resumed, in the directory it started
    /// in unless --cwd or --project says otherwise); any unique prefix of its id works.
    #[arg(long, short = 's', conflicts_with_all = ["new_session", "continue_"], add = crate::complete::sessions())]
    session: Option<String>,
    /// Continue the most recent open session of this directory (or of --project).
    #[arg(long = "continue", short = 'c', conflicts_with = "new_session")]
    continue_: bool,
    /// Start a new session (the default when --session is not given).
    #[arg(long)]
    new_session: bool,
    /// Print every agent message as NDJSON on stdout, then the result as the last line.
    #[arg(long)]
    json: bool,
}

/// The prompt of `ccd query`: the argument, `-` or piped input, or `-f FILE`.
fn read_prompt(prompt: Option<String>, file: Option<&std::path::Path>) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Read};
    let text = match (prompt, file) {
        (_, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the prompt from {}", path.display()))?,
        (Some(p), None) if p != "-" => p,
        (p, None) => {
            let stdin = std::io::stdin();
            if p.is_none() && stdin.is_terminal() {
                return Err(UsageError(
                    "no prompt: give it as an argument, with -f FILE, or on standard input \
                     (`ccd query -`)"
                        .into(),
                )
                .into());
            }
            let mut text = String::new();
            stdin
                .lock()
                .read_to_string(&mut text)
                .context("reading the prompt from standard input")?;
            text
        }
    };
    if text.trim().is_empty() {
        return Err(UsageError("the prompt is empty".into()).into());
    }
    Ok(text)
}

/// The caller's environment as a query carries it: the daemon takes from it the variables
/// `executor.pass_env` names. Never ccd's own `CCD_*` variables; names and values that are
/// not UTF-8 cannot be carried.
pub fn caller_env() -> std::collections::BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !k.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("CCD_")))
        .collect()
}

/// The most recent open session of --project (a name), else of --cwd or the current
/// directory (a project given as a path is its directory): what `--continue` continues.
fn latest_session(home: &Home, opts: &QueryOpts) -> anyhow::Result<String> {
    let dir = match (&opts.cwd, &opts.project) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(p)) if names_a_path(p) => Some(PathBuf::from(p)),
        (None, Some(_)) => None,
        (None, None) => Some(std::env::current_dir().context("reading the current directory")?),
    };
    let (what, project, cwd) = match dir {
        // Sessions record their directory canonical, as the daemon resolved it.
        Some(d) => {
            let d = std::fs::canonicalize(&d)
                .with_context(|| format!("resolving {}", d.display()))?
                .to_string_lossy()
                .into_owned();
            (d.clone(), None, Some(d))
        }
        None => {
            let name = opts.project.clone().unwrap_or_default();
            (format!("project `{name}`"), Some(name), None)
        }
    };
    let (found, _) = read(home, move |c| {
        store::sessions(
            c,
            store::SessionFilter {
                status: Some("open"),
                project: project.as_deref(),
                cwd: cwd.as_deref(),
                limit: Some(1),
                ..Default::default()
            },
        )
    })?;
    match found.into_iter().next() {
        Some(s) => Ok(s.id),
        None => Err(UsageError(format!(
            "--continue: no open session in {what}; start one with `ccd query PROMPT` (see \
             `ccd session list`)"
        ))
        .into()),
    }
}

/// Whether a `--project` value is a path (of a project's directory) rather than a name:
/// project names hold no `/` and are never `.` or `..`.
fn names_a_path(project: &str) -> bool {
    project.contains('/') || project == "." || project == ".."
}

/// `dir` as an absolute path (relative to the current directory), as the daemon wants it.
fn absolute(dir: &std::path::Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    Ok(abs.to_string_lossy().into_owned())
}

/// Options shared by `query` and `batch`.
#[derive(Debug, Args, Clone)]
pub struct QueryOpts {
    /// Run in this project's directory, with its env (see `ccd project list`): its name, or
    /// the path of its directory; default: the current directory (for --session: the
    /// session's own directory).
    #[arg(long, short, conflicts_with = "cwd", add = crate::complete::projects())]
    project: Option<String>,
    /// Run in this directory instead.
    #[arg(long, short = 'C', value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// The model, e.g. sonnet or a full model name.
    #[arg(long, short)]
    model: Option<String>,
    /// Stop after this many agent turns.
    #[arg(long)]
    max_turns: Option<u32>,
    /// Tools the agent may use without asking, comma-separated (e.g. Bash,Read).
    #[arg(long, value_delimiter = ',')]
    allowed_tools: Vec<String>,
    /// Tools the agent may not use, comma-separated.
    #[arg(long, value_delimiter = ',')]
    disallowed_tools: Vec<String>,
    /// Claude Code's permission mode for the run (its --permission-mode); default: the
    /// agent's own setting.
    #[arg(long, value_enum, value_name = "MODE")]
    permission_mode: Option<Permission>,
    /// Text appended to the agent's system prompt.
    #[arg(long)]
    append_system_prompt: Option<String>,
    /// Give up after this long: a duration (90s, 500ms, 10m) or seconds; default: the daemon's
    /// executor.timeout_ms.
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_timeout)]
    timeout: Option<Duration>,
    /// Fail at once (exit 4) instead of waiting when the rate limiter says wait.
    #[arg(long)]
    no_wait: bool,
}

/// The values are spelled as query.run's `permission_mode` and Claude Code spell them; the
/// kebab-case forms clap would derive are kept as aliases.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Permission {
    /// Ask before tools that need permission (in a headless run: refuse them).
    Default,
    /// Accept file edits without asking.
    #[value(name = "acceptEdits", alias = "accept-edits")]
    AcceptEdits,
    /// Plan only: read and analyse, change nothing.
    Plan,
    /// Run every tool without asking.
    #[value(name = "bypassPermissions", alias = "bypass-permissions")]
    BypassPermissions,
}

impl From<Permission> for PermissionMode {
    fn from(p: Permission) -> Self {
        match p {
            Permission::Default => PermissionMode::Default,
            Permission::AcceptEdits => PermissionMode::AcceptEdits,
            Permission::Plan => PermissionMode::Plan,
            Permission::BypassPermissions => PermissionMode::BypassPermissions,
        }
    }
}

impl QueryOpts {
    /// The params of one query. `continuing`: it continues a session, which runs where the
    /// session's conversation is unless --cwd or --project says otherwise.
    fn params(&self, prompt: String, continuing: bool) -> anyhow::Result<types::QueryRun> {
        let project = match &self.project {
            // A path names the project whose directory it is.
            Some(p) if names_a_path(p) => Some(absolute(std::path::Path::new(p))?),
            p => p.clone(),
        };
        let cwd = match (&self.cwd, &project) {
            (Some(dir), _) => Some(absolute(dir)?),
            (None, Some(_)) => None,
            (None, None) if continuing => None,
            (None, None) => Some(
                std::env::current_dir()
                    .context("reading the current directory")?
                    .to_string_lossy()
                    .into_owned(),
            ),
        };
        Ok(types::QueryRun {
            prompt,
            project,
            cwd,
            model: self.model.clone(),
            max_turns: self.max_turns,
            append_system_prompt: self.append_system_prompt.clone(),
            permission_mode: self.permission_mode.map(Into::into),
            allowed_tools: (!self.allowed_tools.is_empty()).then(|| self.allowed_tools.clone()),
            disallowed_tools: (!self.disallowed_tools.is_empty())
                .then(|| self.disallowed_tools.clone()),
            // Never zero (parse_timeout refuses it); less than a millisecond rounds up to one.
            timeout_ms: self.timeout.map(|d| d.as_millis().max(1) as u64),
            stream: true,
            no_wait: self.no_wait,
            env: Some(caller_env()),
            ..Default::default()
        })
    }
}

/// `ccd query`: stream the answer to stdout, tool calls and a summary to stderr.
pub fn query(home: &Home, autostart: bool, args: QueryArgs) -> anyhow::Result<u8> {
    let prompt = read_prompt(args.prompt, args.file.as_deref())?;
    let session = match (args.session, args.continue_) {
        (Some(id), _) => Some(id),
        (None, true) => Some(latest_session(home, &args.opts)?),
        (None, false) => None,
    };
    let mut params = args.opts.params(prompt, session.is_some())?;
    params.session = session;
    params.new_session = args.new_session;
    let mut client = crate::daemon::connect_or_start(home, autostart)?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut printed_text = false;
    let mut announced = false;
    // Messages whose text was printed delta by delta, so not again whole.
    let mut streamed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let outcome = client.call_streaming(
        m::QueryRun::NAME,
        Some(serde_json::to_value(&params)?),
        |note| {
            let Some(event) = query_event(note) else {
                return;
            };
            // The id, as soon as the daemon gives it (with the first event), for a
            // `query.cancel` from elsewhere; on stderr, so that stdout stays the answer.
            if !announced && let Some(id) = note.params.get("query_id").and_then(Value::as_str) {
                let _ = writeln!(err, "query {id}");
                announced = true;
            }
            if args.json {
                let _ = writeln!(out, "{event}");
                return;
            }
            // ccd's own notes: what the query waits for, a retry.
            if event["type"] == "ccd" {
                if let Some(note) = ccd_note(event) {
                    let _ = writeln!(err, "  {note}");
                }
                return;
            }
            let Ok(parsed) = agent::parse_line(event.to_string().as_bytes()) else {
                return;
            };
            match parsed.message {
                // The answer as it is written: a text delta of the main conversation (not a
                // subagent's), printed at once.
                AgentMessage::StreamEvent(ev) if parsed.raw["parent_tool_use_id"].is_null() => {
                    if let Some(id) = ev["message"]["id"].as_str() {
                        current = Some(id.to_string());
                    }
                    if let Some(text) = text_delta(&ev) {
                        let _ = write!(out, "{text}");
                        let _ = out.flush();
                        printed_text = true;
                        streamed.extend(current.clone());
                    }
                }
                // A message Claude Code makes up to report an error (not logged in, an API
                // error) is no part of the answer: the query's error says it, on stderr.
                AgentMessage::Assistant(a) if a.error.is_some() => {}
                AgentMessage::Assistant(a) => {
                    let seen = a
                        .message
                        .id
                        .as_ref()
                        .is_some_and(|id| streamed.contains(id));
                    for block in &a.message.content {
                        match block {
                            ContentBlock::Text { .. } if seen => {}
                            ContentBlock::Text { text } => {
                                let _ = write!(out, "{text}");
                                printed_text = true;
                            }
                            ContentBlock::ToolUse { name, input, .. } => {
                                let _ = writeln!(err, "  [{name}] {}", compact(input));
                            }
                            _ => {}
                        }
                    }
                    let _ = out.flush();
                }
                AgentMessage::ApiRetry(r) => {
                    let _ = writeln!(
                        err,
                        "  [api retry {}] {}",
                        r.attempt,
                        r.error.unwrap_or_default()
                    );
                }
                _ => {}
            }
        },
    );
    if printed_text {
        let _ = writeln!(out);
    }
    match outcome {
        Ok(value) => {
            let result: QueryResult =
                serde_json::from_value(value.clone()).context("decoding the query result")?;
            if args.json {
                writeln!(out, "{}", json!({ "type": "ccd_result", "result": value }))?;
            } else if !printed_text && let Some(text) = &result.result {
                writeln!(out, "{text}")?;
            }
            writeln!(err, "{}", summary(&result))?;
            Ok(exit::OK)
        }
        Err(CallError::Rpc(e)) => {
            if args.json {
                writeln!(out, "{}", json!({ "type": "ccd_error", "error": e }))?;
            }
            writeln!(err, "ccd: {}", e.message)?;
            if let Some(session) = e
                .data
                .as_ref()
                .and_then(|d| d.get("session_id"))
                .and_then(Value::as_str)
            {
                writeln!(err, "  session {session}")?;
            }
            Ok(query_exit_code(&e))
        }
        Err(e) => Err(e.into()),
    }
}

/// The exit code for a failed query: agent failures, timeouts and cancellations are 5.
fn query_exit_code(e: &RpcError) -> u8 {
    match e.kind() {
        Some(ErrorCode::AgentFailed | ErrorCode::Timeout | ErrorCode::Cancelled) => {
            exit::AGENT_FAILED
        }
        _ => crate::exit::rpc_code(e),
    }
}

/// One of ccd's own `query.event`s (`type` `ccd`) as a line for people.
fn ccd_note(event: &Value) -> Option<String> {
    let ms = |v: &Value| v.as_u64().unwrap_or(0);
    match (event["subtype"].as_str()?, event["for"].as_str()) {
        ("waiting", Some("rate_limiter")) => Some(format!(
            "waiting for the rate limiter: ~{} s",
            ms(&event["retry_after_ms"]).div_ceil(1000)
        )),
        ("waiting", Some("executor")) => Some(format!(
            "waiting for a free executor: {} busy, {} queued (executor.pool_size)",
            ms(&event["busy"]),
            ms(&event["queued"])
        )),
        ("retry", _) => Some(format!(
            "[retry {} in {:.1} s] {}",
            ms(&event["attempt"]),
            ms(&event["delay_ms"]) as f64 / 1000.0,
            event["error"].as_str().unwrap_or("")
        )),
        _ => None,
    }
}

/// The text of a `content_block_delta` stream event with a `text_delta`.
fn text_delta(event: &Value) -> Option<&str> {
    (event["type"] == "content_block_delta" && event["delta"]["type"] == "text_delta")
        .then(|| event["delta"]["text"].as_str())
        .flatten()
}

fn query_event(note: &Notification) -> Option<&Value> {
    (note.method == "query.event")
        .then(|| note.params.get("event"))
        .flatten()
}

/// A tool call's input on one short line.
fn compact(input: &Value) -> String {
    let text = match input
        .get("command")
        .or_else(|| input.get("file_path"))
        .or_else(|| input.get("pattern"))
    {
        Some(Value::String(s)) => s.clone(),
        _ => input.to_string(),
    };
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 100 {
        format!("{}…", one_line.chars().take(100).collect::<String>())
    } else {
        one_line
    }
}

fn summary(r: &QueryResult) -> String {
    format!(
        "turns {} · tokens {} in, {} out, {} cache · {} · {:.1}s · session {}",
        r.num_turns,
        r.usage.input_tokens,
        r.usage.output_tokens,
        r.usage.cache_creation_input_tokens + r.usage.cache_read_input_tokens,
        dollars(r.cost_usd),
        r.duration_ms as f64 / 1000.0,
        r.session_id
    )
}

// ---------------------------------------------------------------------------------------------
// sessions

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
        #[arg(long, value_parser = ["open", "closed", "expired"])]
        status: Option<String>,
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
        #[arg(long, default_value = "7d", value_parser = crate::cli::parse_duration)]
        older_than: Duration,
    },
}

pub fn session(home: &Home, autostart: bool, cmd: SessionCmd) -> anyhow::Result<u8> {
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
                    status: status.as_deref(),
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
                        s.status
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
                t.print_or_empty(&mut out, "no sessions")?;
                if more {
                    writeln!(
                        std::io::stderr(),
                        "(the newest {limit}; --limit N or --all for more)"
                    )?;
                }
            }
        }
        SessionCmd::Show { id, json } => {
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
        }
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

/// `ccd ps`.
pub fn ps(home: &Home, json: bool) -> anyhow::Result<u8> {
    let list = Client::connect(home)?.call::<m::QueryList>(&types::NoParams {})?;
    if json {
        print_json(&list.queries)?;
        return Ok(exit::OK);
    }
    let mut t = Table::new(["QUERY", "SESSION", "PROJECT", "MODEL", "ELAPSED", "STATE"]);
    for q in list.queries {
        t.row([
            q.query_id,
            q.session_id.chars().take(8).collect(),
            q.project.unwrap_or_else(|| "-".into()),
            q.model.unwrap_or_else(|| "-".into()),
            format!("{:.1}s", q.elapsed_ms as f64 / 1000.0),
            q.state,
        ]);
    }
    t.print_or_empty(&mut std::io::stdout().lock(), "no queries running")?;
    Ok(exit::OK)
}

/// `ccd cancel`.
pub fn cancel(home: &Home, query_id: &str, json: bool) -> anyhow::Result<u8> {
    let r = Client::connect(home)?.call::<m::QueryCancel>(&types::QueryCancel {
        query_id: query_id.to_string(),
    })?;
    if json {
        print_json(&r)?;
    } else if r.cancelled {
        writeln!(std::io::stdout(), "cancelling query {}", r.query_id)?;
    } else {
        anyhow::bail!("no query `{query_id}` is running (see `ccd ps`)");
    }
    Ok(exit::OK)
}

/// A cost for people: cents and more to the cent, less to two significant digits ($0.0008),
/// nothing as $0.
pub fn dollars(usd: f64) -> String {
    if usd == 0.0 {
        "$0".into()
    } else if usd >= 0.01 {
        format!("${usd:.2}")
    } else {
        // Two significant digits, without trailing zeros.
        let digits = (-usd.log10().floor()).clamp(0.0, 12.0) as usize + 1;
        let text = format!("{usd:.digits$}");
        format!("${}", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

// ---------------------------------------------------------------------------------------------
// batch

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// One prompt per line, or JSONL objects with `prompt` and any query.run option; `-`
    /// reads standard input. Blank lines and lines starting with `#` are skipped.
    file: PathBuf,
    /// How many prompts run at once (1 to 256).
    #[arg(long, short, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Write results (JSONL) here instead of stdout. Never the input file; a file that
    /// exists and is not empty only with --force (overwrite it) or --resume (add to it).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Overwrite the --output file if it exists.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Carry on an earlier run into the --output file: skip every prompt that already has a
    /// result there (a record with status `ok` for its line and the same prompt), run the rest
    /// (failed, cancelled, never run, or changed since) and append their records.
    #[arg(long, requires = "output")]
    resume: bool,
    /// Tag every session the batch creates, for `ccd session list --tag T` (repeatable; a
    /// line that continues a `session` keeps that session's tags).
    #[arg(long = "tag", value_name = "T")]
    tags: Vec<String>,
    #[command(flatten)]
    opts: QueryOpts,
}

/// `ccd batch --help`'s epilogue: the records and the summary.
pub const BATCH_HELP: &str = "\
Each prompt's record is one JSON line: {\"line\": N (its line in FILE), \"prompt\", \"status\",
\"ok\", \"result\" (query.run's result) or \"error\" (the JSON-RPC error)}. status is
`ok`, `failed`, or `cancelled` (Ctrl-C, or `ccd cancel`; counted as not run). The summary on
stderr counts them: N ok, N failed, N not run (never started or cancelled), N skipped (--resume).
Exit: 0 all ok; 5 any failed or cancelled; 1 interrupted (Ctrl-C); 2 usage errors.

Examples:
  ccd batch prompts.txt -c 8 -o results.jsonl --tag nightly
  ccd batch prompts.txt -o results.jsonl --resume    # after Ctrl-C or failures: only the rest";

struct Item {
    line: usize,
    params: types::QueryRun,
}

fn load_batch(args: &BatchArgs) -> anyhow::Result<Vec<Item>> {
    let input: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut base = args.opts.params(String::new(), false)?;
    base.tags = (!args.tags.is_empty()).then(|| args.tags.clone());
    let mut items = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", args.file.display()))?;
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut params = base.clone();
        if trimmed.starts_with('{') {
            let mut obj: serde_json::Map<String, Value> =
                serde_json::from_str(trimmed).map_err(|e| {
                    UsageError(format!(
                        "{}:{n}: not a JSON object: {e}",
                        args.file.display()
                    ))
                })?;
            // The line's options win over the command line's.
            let mut fields = serde_json::to_value(&params)?
                .as_object()
                .cloned()
                .unwrap_or_default();
            // A line that names a project, or a session (which runs where its conversation
            // is), does not run in the current directory.
            if (obj.contains_key("project") || obj.contains_key("session"))
                && args.opts.cwd.is_none()
            {
                fields.remove("cwd");
            }
            // --tag tags the sessions the batch creates; one a line continues keeps its own.
            if obj.contains_key("session") {
                fields.remove("tags");
            }
            fields.append(&mut obj);
            params = serde_json::from_value(Value::Object(fields))
                .map_err(|e| UsageError(format!("{}:{n}: {e}", args.file.display())))?;
            // A line's `cwd` is the user's, relative to where `ccd batch` runs; the daemon takes
            // only absolute paths.
            if let Some(cwd) = &params.cwd {
                let abs = std::path::absolute(cwd).with_context(|| format!("resolving {cwd}"))?;
                params.cwd = Some(abs.to_string_lossy().into_owned());
            }
        } else {
            params.prompt = trimmed.to_string();
        }
        params.stream = true;
        items.push(Item { line: n, params });
    }
    Ok(items)
}

/// What `--output` may be: never the input file, and a file that already holds results only
/// with --force or --resume. With --resume, the results it holds: the line and prompt of each
/// `ok` record.
fn check_output(args: &BatchArgs, out: &std::path::Path) -> anyhow::Result<HashSet<(u64, String)>> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    // A device or a pipe (/dev/null, /dev/stdout) is written to as it is: nothing in it to lose.
    if !meta.is_file() {
        return Ok(HashSet::new());
    }
    let input = if args.file.as_os_str() == "-" {
        std::path::Path::new("/dev/stdin")
    } else {
        args.file.as_path()
    };
    if let Ok(input_meta) = std::fs::metadata(input)
        && (input_meta.dev(), input_meta.ino()) == (meta.dev(), meta.ino())
    {
        return Err(UsageError(format!(
            "--output {} is the input file{}: the results would replace the prompts; give \
             another -o FILE",
            out.display(),
            if args.file.as_os_str() == "-" {
                " (standard input)".to_string()
            } else {
                format!(" {}", args.file.display())
            }
        ))
        .into());
    }
    if meta.len() == 0 || args.force {
        return Ok(HashSet::new());
    }
    if !args.resume {
        return Err(UsageError(format!(
            "--output {} exists: give --force to overwrite it, --resume to run only the prompts \
             it has no result for (and add theirs to it), or another -o FILE",
            out.display()
        ))
        .into());
    }
    let file = std::fs::File::open(out).with_context(|| format!("opening {}", out.display()))?;
    let mut done = HashSet::new();
    let mut unreadable = 0usize;
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("reading {}", out.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(record) = serde_json::from_slice::<Value>(&line) else {
            unreadable += 1;
            continue;
        };
        // Records written before `status` existed say it with `ok` alone.
        let ok = match record.get("status") {
            Some(status) => status == "ok",
            None => record["ok"] == true,
        };
        if let (true, Some(n), Some(prompt)) =
            (ok, record["line"].as_u64(), record["prompt"].as_str())
        {
            done.insert((n, prompt.to_string()));
        }
    }
    if unreadable > 0 {
        eprintln!(
            "--resume: {} of {} are not JSON records; ignored",
            count(unreadable, "line"),
            out.display()
        );
    }
    Ok(done)
}

pub fn batch(home: &Home, autostart: bool, args: BatchArgs) -> anyhow::Result<u8> {
    let done = match &args.output {
        Some(out) => check_output(&args, out)?,
        None => HashSet::new(),
    };
    let mut items = load_batch(&args)?;
    if items.is_empty() {
        anyhow::bail!("{} has no prompts", args.file.display());
    }
    let total = items.len();
    items.retain(|i| !done.contains(&(i.line as u64, i.params.prompt.clone())));
    let skipped = total - items.len();
    if let (true, Some(out)) = (args.resume, &args.output) {
        eprintln!(
            "--resume: {} of {} already {} a result in {}: skipped",
            skipped,
            count(total, "prompt"),
            if skipped == 1 { "has" } else { "have" },
            out.display()
        );
    }
    if items.is_empty() {
        eprintln!("batch: nothing to run, {skipped} skipped");
        return Ok(exit::OK);
    }
    let concurrency = usize::from(args.concurrency);
    // Fail early, before any thread starts, when the daemon cannot be reached.
    drop(crate::daemon::connect_or_start(home, autostart)?);

    let mut sink: Box<dyn Write + Send> = match &args.output {
        Some(p) if args.resume => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?;
            // A record cut short (the batch was killed while writing it) ends its line, so that
            // the next one starts on a line of its own.
            if ends_without_newline(&mut file)? {
                file.write_all(b"\n")
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Box::new(std::io::BufWriter::new(file))
        }
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    let bar = indicatif::ProgressBar::new(items.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let interrupted = Arc::new(AtomicBool::new(false));
    let live: Arc<Mutex<Live>> = Arc::default();
    {
        let (interrupted, live, home) = (interrupted.clone(), live.clone(), home.clone());
        ctrlc::set_handler(move || {
            interrupted.store(true, Ordering::SeqCst);
            // Cancel what runs; finished results are already written. A worker whose query
            // has no id here yet (queued, waiting for the limiter, or an agent that has printed
            // nothing) hangs up, which cancels it on the daemon's side; a query with an id is
            // cancelled by id, so that its record says -32008.
            let ids: Vec<String> = match live.lock() {
                Ok(live) => {
                    for fd in live.idle_sockets.values() {
                        if let Ok(fd) = fd.try_clone() {
                            let _ = std::os::unix::net::UnixStream::from(fd)
                                .shutdown(std::net::Shutdown::Both);
                        }
                    }
                    live.ids.iter().cloned().collect()
                }
                Err(_) => Vec::new(),
            };
            if let Ok(mut c) = Client::connect(&home) {
                for id in ids {
                    let _ = c.call::<m::QueryCancel>(&types::QueryCancel { query_id: id });
                }
            }
        })
        .context("installing the Ctrl-C handler")?;
    }

    let next = AtomicUsize::new(0);
    let counts = Counts::default();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::scope(|s| -> anyhow::Result<()> {
        for worker in 0..concurrency.min(items.len()) {
            let tx = tx.clone();
            let (items, next, interrupted, live, counts) =
                (&items, &next, &interrupted, &live, &counts);
            s.spawn(move || {
                let mut client: Option<Client> = None;
                loop {
                    if interrupted.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { return };
                    let record = run_one(home, &mut client, item, worker, live, interrupted);
                    let Some(record) = record else { return };
                    match record["status"].as_str() {
                        Some(STATUS_OK) => &counts.ok,
                        Some(STATUS_CANCELLED) => &counts.cancelled,
                        _ => &counts.failed,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    if tx.send(record).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for record in rx {
            writeln!(sink, "{record}").context("writing results")?;
            sink.flush().ok();
            bar.inc(1);
            bar.set_message(counts.summary(0, 0));
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let (ok, failed, cancelled) = counts.get();
    let never_started = items.len() - ok - failed - cancelled;
    eprintln!("batch: {}", counts.summary(never_started, skipped));
    // the exit codes: an interrupted batch did not do its job (1), whatever finished.
    Ok(if interrupted.load(Ordering::SeqCst) {
        exit::ERROR
    } else if failed > 0 || cancelled > 0 {
        exit::AGENT_FAILED
    } else {
        exit::OK
    })
}

/// Whether `file` is not empty and its last byte is not a newline.
fn ends_without_newline(file: &mut std::fs::File) -> anyhow::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// A record's `status`: its query answered; failed (any error but a cancellation); or was
/// cancelled (Ctrl-C, `ccd cancel`), which counts as not run and runs again with --resume.
const STATUS_OK: &str = "ok";
const STATUS_FAILED: &str = "failed";
const STATUS_CANCELLED: &str = "cancelled";

/// How the batch's prompts ended, as the workers count them.
#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    failed: AtomicUsize,
    cancelled: AtomicUsize,
}

impl Counts {
    fn get(&self) -> (usize, usize, usize) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.cancelled.load(Ordering::Relaxed),
        )
    }

    /// "N ok, N failed[, N not run (N cancelled)][, N skipped]": cancelled prompts did not run,
    /// like those that never started.
    fn summary(&self, never_started: usize, skipped: usize) -> String {
        let (ok, failed, cancelled) = self.get();
        let mut s = format!("{ok} ok, {failed} failed");
        let not_run = never_started + cancelled;
        if not_run > 0 {
            s.push_str(&format!(", {not_run} not run"));
            if cancelled > 0 {
                s.push_str(&format!(" ({cancelled} cancelled)"));
            }
        }
        if skipped > 0 {
            s.push_str(&format!(
                ", {skipped} skipped (a result already in the output)"
            ));
        }
        s
    }
}

/// What a batch's Ctrl-C handler cancels: the ids of the queries known to run, and the
/// connections of the workers whose query has no id yet (or that are between queries).
#[derive(Default)]
struct Live {
    ids: HashSet<String>,
    idle_sockets: HashMap<usize, OwnedFd>,
}

/// Run one prompt on this worker's connection; returns its JSONL record.
/// `None` when a Ctrl-C came before the prompt was sent.
fn run_one(
    home: &Home,
    client: &mut Option<Client>,
    item: &Item,
    worker: usize,
    live: &Mutex<Live>,
    interrupted: &AtomicBool,
) -> Option<Value> {
    let mut query_id: Option<String> = None;
    // The worker's connection while its query has an id (cancelled by id, not by hanging up).
    let mut socket: Option<OwnedFd> = None;
    let conn = match client {
        Some(c) => Ok(c),
        None => Client::connect(home).map(|c| {
            // Registered for a Ctrl-C to hang up; one that came before did not see it.
            if let (Some(fd), Ok(mut live)) = (c.socket(), live.lock()) {
                live.idle_sockets.insert(worker, fd);
            }
            client.insert(c)
        }),
    };
    if interrupted.load(Ordering::SeqCst) {
        return None;
    }
    let outcome = conn.and_then(|c| {
        let params = serde_json::to_value(&item.params).map_err(|e| CallError::Other(e.into()))?;
        c.call_streaming(m::QueryRun::NAME, Some(params), |note| {
            if query_id.is_none()
                && let Some(id) = note.params.get("query_id").and_then(Value::as_str)
            {
                query_id = Some(id.to_string());
                if let Ok(mut live) = live.lock() {
                    live.ids.insert(id.to_string());
                    socket = live.idle_sockets.remove(&worker);
                }
            }
        })
    });
    if let (Some(id), Ok(mut live)) = (&query_id, live.lock()) {
        live.ids.remove(id);
        if let Some(fd) = socket {
            live.idle_sockets.insert(worker, fd);
        }
    }
    Some(match outcome {
        Ok(result) => json!({
            "line": item.line,
            "prompt": item.params.prompt,
            "status": STATUS_OK,
            "ok": true,
            "result": result,
        }),
        Err(e) => {
            if !matches!(e, CallError::Rpc(_)) {
                // Reconnect for the next prompt; the old connection is not Ctrl-C's to close.
                *client = None;
                if let Ok(mut live) = live.lock() {
                    live.idle_sockets.remove(&worker);
                }
            }
            let (status, error) = match e {
                CallError::Rpc(e) if e.kind() == Some(ErrorCode::Cancelled) => (
                    STATUS_CANCELLED,
                    serde_json::to_value(e).unwrap_or_default(),
                ),
                CallError::Rpc(e) => (STATUS_FAILED, serde_json::to_value(e).unwrap_or_default()),
                // Ctrl-C hung up on this query: that is what ended it.
                _ if interrupted.load(Ordering::SeqCst) => (
                    STATUS_CANCELLED,
                    json!({ "message": "interrupted (Ctrl-C): the batch hung up, which cancelled the query" }),
                ),
                other => (STATUS_FAILED, json!({ "message": other.to_string() })),
            };
            json!({
                "line": item.line,
                "prompt": item.params.prompt,
                "status": status,
                "ok": false,
                "error": error,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::dollars;

    #[test]
    fn costs_read_as_people_write_them() {
        assert_eq!(dollars(0.0), "$0");
        assert_eq!(dollars(0.0008), "$0.0008");
        assert_eq!(dollars(0.000812), "$0.00081");
        assert_eq!(dollars(0.0123), "$0.01");
        assert_eq!(dollars(12.345), "$12.35");
    }
}
