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

use crate::cli::{print_json, read};
use crate::client::{CallError, Client};
use crate::exit;
use crate::home::Home;
use crate::table::Table;

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The prompt.
    prompt: String,
    #[command(flatten)]
    opts: QueryOpts,
    /// Continue this session (its agent conversation is resumed).
    #[arg(long, conflicts_with = "new_session")]
    session: Option<String>,
    /// Start a new session (the default when --session is not given).
    #[arg(long)]
    new_session: bool,
    /// Print every agent message as NDJSON on stdout, then the result as the last line.
    #[arg(long)]
    json: bool,
}

/// Options shared by `query` and `batch`.
#[derive(Debug, Args, Clone)]
pub struct QueryOpts {
    /// Run in this project's directory (see `ccd project list`); default: the current directory.
    #[arg(long, short)]
    project: Option<String>,
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
    fn params(&self, prompt: String) -> anyhow::Result<types::QueryRun> {
        let cwd = match &self.project {
            Some(_) => None,
            None => Some(
                std::env::current_dir()
                    .context("reading the current directory")?
                    .to_string_lossy()
                    .into_owned(),
            ),
        };
        Ok(types::QueryRun {
            prompt,
            project: self.project.clone(),
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
            ..Default::default()
        })
    }
}

/// `ccd query`: stream the answer to stdout, tool calls and a summary to stderr.
pub fn query(home: &Home, autostart: bool, args: QueryArgs) -> anyhow::Result<u8> {
    let mut params = args.opts.params(args.prompt)?;
    params.session = args.session;
    params.new_session = args.new_session;
    let mut client = Client::connect_or_start(home, autostart)?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut printed_text = false;
    let mut announced = false;
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
            let Ok(parsed) = agent::parse_line(event.to_string().as_bytes()) else {
                return;
            };
            match parsed.message {
                // A message Claude Code makes up to report an error (not logged in, an API
                // error) is no part of the answer: the query's error says it, on stderr.
                AgentMessage::Assistant(a) if a.error.is_some() => {}
                AgentMessage::Assistant(a) => {
                    for block in &a.message.content {
                        match block {
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
        _ => crate::rpc_exit_code(e),
    }
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
        "turns {} · tokens {} in, {} out, {} cache · ${:.4} · {:.1}s · session {}",
        r.num_turns,
        r.usage.input_tokens,
        r.usage.output_tokens,
        r.usage.cache_creation_input_tokens + r.usage.cache_read_input_tokens,
        r.cost_usd,
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
        #[arg(long, short)]
        project: Option<String>,
        /// A tag to find it by with `ccd session list --tag` (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The model its queries use unless they name another, e.g. sonnet.
        #[arg(long, short)]
        model: Option<String>,
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
        #[arg(long, short)]
        project: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a session and its turns (reads the database directly).
    Show {
        /// The session's id (see `ccd session list`, or the summary after `ccd query`).
        id: String,
        /// Print the session and its turns as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close a session: it takes no more queries.
    Close {
        /// The session's id (see `ccd session list`).
        id: String,
    },
    /// Delete closed and expired sessions not used for a while.
    Cleanup {
        /// Age, e.g. 7d, 12h, 0s.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
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
        } => {
            let params = types::SessionCreate {
                project,
                tags: Some(tags),
                model,
            };
            let s = Client::connect_or_start(home, autostart)?.call::<m::SessionCreate>(&params)?;
            writeln!(out, "{}", s.id)?;
        }
        SessionCmd::List {
            status,
            tag,
            project,
            json,
        } => {
            let (sessions, _) = read(home, move |c| {
                let filter = store::SessionFilter {
                    status: status.as_deref(),
                    tag: tag.as_deref(),
                    project: project.as_deref(),
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
                    t.row([
                        s.id,
                        s.status,
                        s.project.unwrap_or_else(|| "-".into()),
                        s.turns.to_string(),
                        s.usage.total().to_string(),
                        format!("${:.4}", s.cost_usd),
                        s.last_used_at,
                    ]);
                }
                t.print_or_empty(&mut out, "no sessions")?;
            }
        }
        SessionCmd::Show { id, json } => {
            let lookup = id.clone();
            let found = read(home, move |c| {
                let Some(session) = store::session(c, &lookup)? else {
                    return Ok(None);
                };
                Ok(Some(types::SessionDetail {
                    turns: store::turns(c, &lookup)?,
                    session,
                }))
            })?;
            let Some(detail) = found else {
                anyhow::bail!("no session `{id}`")
            };
            if json {
                print_json(&detail)?;
            } else {
                let s = &detail.session;
                writeln!(out, "session {}", s.id)?;
                writeln!(out, "  status:        {}", s.status)?;
                writeln!(
                    out,
                    "  project:       {}",
                    s.project.as_deref().unwrap_or("-")
                )?;
                writeln!(
                    out,
                    "  agent session: {}",
                    s.agent_session_id.as_deref().unwrap_or("-")
                )?;
                writeln!(out, "  created:       {}", s.created_at)?;
                writeln!(out, "  last used:     {}", s.last_used_at)?;
                writeln!(
                    out,
                    "  totals:        {}, {} in / {} out tokens, ${:.4}",
                    crate::cli::count(s.turns, "turn"),
                    s.usage.input_tokens,
                    s.usage.output_tokens,
                    s.cost_usd
                )?;
                writeln!(out)?;
                let mut t =
                    Table::new(["#", "STATUS", "PROMPT", "RESULT", "TOKENS", "COST", "TIME"]);
                for (i, turn) in detail.turns.iter().enumerate() {
                    t.row([
                        (i + 1).to_string(),
                        turn.status.clone(),
                        clip(&turn.prompt, 40),
                        clip(
                            turn.result
                                .as_deref()
                                .or(turn.error.as_deref())
                                .unwrap_or("-"),
                            50,
                        ),
                        turn.usage.total().to_string(),
                        format!("${:.4}", turn.cost_usd),
                        format!("{:.1}s", turn.duration_ms as f64 / 1000.0),
                    ]);
                }
                t.print_or_empty(&mut out, "no turns yet")?;
            }
        }
        SessionCmd::Close { id } => {
            let s = Client::connect_or_start(home, autostart)?
                .call::<m::SessionClose>(&types::SessionId { id })?;
            writeln!(out, "closed session {}", s.id)?;
        }
        SessionCmd::Cleanup { older_than } => {
            let params = types::SessionCleanup {
                older_than_s: older_than.as_secs(),
            };
            let r =
                Client::connect_or_start(home, autostart)?.call::<m::SessionCleanup>(&params)?;
            writeln!(out, "removed {}", crate::cli::count(r.removed, "session"))?;
        }
    }
    Ok(exit::OK)
}

fn clip(s: &str, n: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > n {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    } else {
        one_line
    }
}

// ---------------------------------------------------------------------------------------------
// batch

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// One prompt per line, or JSONL objects with `prompt` and any query.run option.
    /// Blank lines and lines starting with `#` are skipped.
    file: PathBuf,
    /// How many prompts run at once (1 to 256).
    #[arg(long, short, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Write results (JSONL) here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    #[command(flatten)]
    opts: QueryOpts,
}

struct Item {
    line: usize,
    params: types::QueryRun,
}

fn load_batch(args: &BatchArgs) -> anyhow::Result<Vec<Item>> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let mut items = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", args.file.display()))?;
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut params = args.opts.params(String::new())?;
        if trimmed.starts_with('{') {
            let mut obj: serde_json::Map<String, Value> =
                serde_json::from_str(trimmed).map_err(|e| {
                    crate::cli::UsageError(format!(
                        "{}:{n}: not a JSON object: {e}",
                        args.file.display()
                    ))
                })?;
            // The line's options win over the command line's.
            let mut base = serde_json::to_value(&params)?
                .as_object()
                .cloned()
                .unwrap_or_default();
            if obj.contains_key("project") {
                base.remove("cwd");
            }
            base.append(&mut obj);
            params = serde_json::from_value(Value::Object(base))
                .map_err(|e| crate::cli::UsageError(format!("{}:{n}: {e}", args.file.display())))?;
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

pub fn batch(home: &Home, autostart: bool, args: BatchArgs) -> anyhow::Result<u8> {
    let items = load_batch(&args)?;
    if items.is_empty() {
        anyhow::bail!("{} has no prompts", args.file.display());
    }
    let concurrency = usize::from(args.concurrency);
    // Fail early, before any thread starts, when the daemon cannot be reached.
    drop(Client::connect_or_start(home, autostart)?);

    let mut sink: Box<dyn Write + Send> = match &args.output {
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
    let (ok, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::scope(|s| -> anyhow::Result<()> {
        for worker in 0..concurrency.min(items.len()) {
            let tx = tx.clone();
            let (items, next, interrupted, live, ok, failed) =
                (&items, &next, &interrupted, &live, &ok, &failed);
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
                    if record["ok"] == true {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
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
            bar.set_message(format!(
                "{} ok, {} failed",
                ok.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            ));
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let skipped = items.len() - ok - failed;
    eprintln!(
        "batch: {ok} ok, {failed} failed{}",
        if skipped > 0 {
            format!(", {skipped} not run")
        } else {
            String::new()
        }
    );
    // contract.md's codes: an interrupted batch did not do its job (1), whatever finished.
    Ok(if interrupted.load(Ordering::SeqCst) {
        exit::ERROR
    } else if failed > 0 {
        exit::AGENT_FAILED
    } else {
        exit::OK
    })
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
        Ok(result) => {
            json!({ "line": item.line, "prompt": item.params.prompt, "ok": true, "result": result })
        }
        Err(e) => {
            if !matches!(e, CallError::Rpc(_)) {
                // Reconnect for the next prompt; the old connection is not Ctrl-C's to close.
                *client = None;
                if let Ok(mut live) = live.lock() {
                    live.idle_sockets.remove(&worker);
                }
            }
            let error = match e {
                CallError::Rpc(e) => serde_json::to_value(e).unwrap_or_default(),
                // Ctrl-C hung up on this query: that is what ended it.
                _ if interrupted.load(Ordering::SeqCst) => {
                    json!({ "message": "interrupted (Ctrl-C): the batch hung up, which cancelled the query" })
                }
                other => json!({ "message": other.to_string() }),
            };
            json!({ "line": item.line, "prompt": item.params.prompt, "ok": false, "error": error })
        }
    })
}
