//! `ccd query` (the answer streamed), `ccd ps` and `ccd cancel`; and the options every query
//! takes (`QueryOpts`, which `ccd batch` shares).

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use ccd_actors::store;
use ccd_protocol::methods as m;
use ccd_protocol::stream_json::{self, AgentMessage, ContentBlock};
use ccd_protocol::types::{self, PermissionMode, QueryResult, SessionStatus};
use ccd_protocol::{ErrorCode, Method, Notification, RpcError};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::client::{CallError, Client};
use crate::exit::{self, UsageError};
use crate::home::{Home, read};
use crate::table::{Table, dollars, print_json};

use super::args::{absolute, parse_timeout};

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
                status: Some(SessionStatus::Open),
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
    pub cwd: Option<PathBuf>,
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
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
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
    pub fn params(&self, prompt: String, continuing: bool) -> anyhow::Result<types::QueryRun> {
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
            let Ok(parsed) = stream_json::parse_line(event.to_string().as_bytes()) else {
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
        _ => exit::rpc_code(e),
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
            q.state.to_string(),
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
