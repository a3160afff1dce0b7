//! Running one agent CLI process: command line, stdin prompt, stream-json stdout, stderr tail,
//! deadline, cancellation, and the kill of its whole process group.
//!
//! The child runs in a process group of its own, so everything it starts (a tool's `bash`, its
//! subprocesses) is signalled together: SIGTERM, then SIGKILL after a grace period. The child is
//! always waited for, so no zombie is left, and its pipes are dropped with it. When it exits,
//! whatever it left running in its group is killed.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ccd_protocol::stream_json::{self, AgentMessage, ContentBlock, Init, Parsed, ResultMessage};
use ccd_protocol::types::{PermissionMode, Usage};
use ccd_protocol::{FrameError, NdjsonCodec};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// The most assistant text one run keeps (the turn's result when the agent gives none of its
/// own). Past it the text is cut, at a character boundary, and ends with [`TEXT_CUT_MARK`]: the
/// agent's output is otherwise unbounded, and a turn too big for SQLite would be lost.
pub const MAX_TEXT_BYTES: usize = 16 << 20;
/// What ends a text cut at [`MAX_TEXT_BYTES`].
pub const TEXT_CUT_MARK: &str =
    "\n\n[ccd: the agent's text was cut here: only its first 16 MiB were kept]";
/// The most one run's `total_cost_usd` is taken to be: a larger value (or a negative one) is
/// not a real cost, and summed into totals it could overflow to infinity, which JSON cannot
/// carry.
pub const MAX_COST_USD: f64 = 1_000_000.0;

/// How many stderr lines are kept for error messages.
const STDERR_TAIL: usize = 20;
/// The most of one stderr line kept in that tail.
const STDERR_LINE_BYTES: usize = 4096;

/// Why the agent command could not be started, and what to do about it (for the start-up
/// check and for a query alike).
pub fn cannot_run_agent(command: &str, e: &std::io::Error) -> String {
    format!(
        "cannot run the agent command `{command}`: {e}; install Claude Code (npm install -g \
         @anthropic-ai/claude-code) or set executor.command in config.toml or CCD_AGENT_CMD, then \
         run `ccd daemon restart` (the daemon reads both when it starts)"
    )
}

/// Whether `name` is one of the daemon's own variables (`CCD_*`, in any case, as the
/// configuration reads them): its configuration, `CCD_MASTER_KEY`, `CCD_HTTP_TOKEN`, `CCD_SET`.
fn is_daemon_var(name: &OsStr) -> bool {
    name.as_encoded_bytes()
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"CCD_"))
}

/// Take the daemon's own variables (see [`is_daemon_var`]) out of the environment a child
/// inherits: no process the daemon starts (agents, the `--version` probe, the agent
/// filesystem's helpers) sees them. Variables set on `cmd` afterwards (a project's `env`) still
/// apply.
pub fn remove_daemon_env(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for (name, _) in std::env::vars_os() {
        if is_daemon_var(&name) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// `Command::new(program)`, less the daemon's own variables (see [`remove_daemon_env`]).
pub fn child_command(program: impl AsRef<OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    remove_daemon_env(&mut cmd);
    cmd
}

/// The per-query options that become CLI flags.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    pub resume: Option<String>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub append_system_prompt: Option<String>,
    pub permission_mode: Option<PermissionMode>,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub mcp_config: Option<String>,
    pub add_dirs: Vec<String>,
    /// Claude Code subagents as `--agents` takes them (a JSON object by name).
    pub agents: Option<String>,
}

/// The argument list, never a shell string. Each option only when set, and each as one
/// `--flag=value` argument, so that no value, whatever it starts with, can be read as a flag of
/// its own (`--model --dangerously-skip-permissions` would have been two arguments). Claude
/// Code 2.1.197 reads every one of these flags in the `=` form (checked against the real CLI;
/// see docs/security.md).
pub fn agent_args(o: &AgentOptions) -> Vec<String> {
    // Partial messages: every API stream event as it arrives, so text reaches the caller
    // delta by delta instead of a whole message at a time.
    let mut args: Vec<String> = [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
    ]
    .map(String::from)
    .into();
    let mut opt = |flag: &str, value: Option<String>| {
        if let Some(v) = value {
            args.push(format!("{flag}={v}"));
        }
    };
    opt("--resume", o.resume.clone());
    opt("--model", o.model.clone());
    opt("--max-turns", o.max_turns.map(|n| n.to_string()));
    opt("--append-system-prompt", o.append_system_prompt.clone());
    opt(
        "--permission-mode",
        o.permission_mode.map(|m| m.as_str().to_string()),
    );
    opt(
        "--allowedTools",
        (!o.allowed_tools.is_empty()).then(|| o.allowed_tools.join(",")),
    );
    opt(
        "--disallowedTools",
        (!o.disallowed_tools.is_empty()).then(|| o.disallowed_tools.join(",")),
    );
    opt("--mcp-config", o.mcp_config.clone());
    for dir in &o.add_dirs {
        opt("--add-dir", Some(dir.clone()));
    }
    opt("--agents", o.agents.clone());
    args
}

/// Everything needed to run the agent once.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub command: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Taken out of the daemon's own environment (besides its `CCD_*` variables): what the
    /// caller's environment decides instead.
    pub env_remove: Vec<String>,
    /// Added to the daemon's own environment (less `env_remove` and its `CCD_*` variables).
    pub env: BTreeMap<String, String>,
    pub prompt: String,
    pub deadline: Instant,
    /// The query's timeout that `deadline` ends, for messages.
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub max_line_bytes: usize,
    pub cli_retry_limit: u32,
}

/// The agent error classes, used by retries and the breaker: the protocol's, since they go on
/// the wire (a turn's `error_class`, -32007's `data.class`, as docs/protocol.md lists them).
pub use ccd_protocol::types::ErrorClass;

/// Why a run did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Agent,
    Timeout,
    Cancelled,
}

/// What the agent said, complete or partial.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    pub init: Option<Init>,
    pub result: Option<ResultMessage>,
    /// Usage summed over assistant messages; replaced by the result's when there is one.
    pub usage: Usage,
    /// Assistant text, concatenated: at most [`MAX_TEXT_BYTES`] of it (see
    /// [`Transcript::push_text`]).
    pub text: String,
    /// Whether `text` was cut at [`MAX_TEXT_BYTES`] (it then ends with [`TEXT_CUT_MARK`]).
    pub text_truncated: bool,
    pub model: Option<String>,
    pub messages: u64,
    pub stderr_tail: Vec<String>,
}

impl Transcript {
    /// Add assistant text, keeping at most [`MAX_TEXT_BYTES`] of it: what does not fit is
    /// dropped, and the text ends with [`TEXT_CUT_MARK`].
    pub fn push_text(&mut self, text: &str) {
        if self.text_truncated {
            return;
        }
        let room = MAX_TEXT_BYTES.saturating_sub(self.text.len());
        if text.len() <= room {
            self.text.push_str(text);
            return;
        }
        let mut cut = room;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&text[..cut]);
        self.text.push_str(TEXT_CUT_MARK);
        self.text_truncated = true;
    }

    pub fn agent_session_id(&self) -> Option<String> {
        self.result
            .as_ref()
            .and_then(|r| r.session_id.clone())
            .or_else(|| self.init.as_ref().map(|i| i.session_id.clone()))
            .filter(|s| !s.is_empty())
    }
}

#[derive(Debug, Clone)]
pub struct AgentFailure {
    pub kind: FailureKind,
    pub class: ErrorClass,
    pub detail: String,
    pub transcript: Transcript,
}

pub type RunResult = Result<Transcript, Box<AgentFailure>>;

/// Capacity asked for the agent's stdout pipe.
const STDOUT_PIPE_BYTES: usize = 1 << 20;
/// After the agent has exited and its process group has been killed, how long reading what is
/// left in its stdout may take. Its end normally comes at once; only a process that left the
/// group (`setsid`) can hold it open longer, and is not waited for past this.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Run the agent once. `on_message` sees every parsed stdout message as it is read.
/// `started` receives the child's pid (its process-group id) as soon as it runs.
pub async fn run_agent(
    spec: AgentSpec,
    cancel: CancellationToken,
    mut on_message: impl FnMut(&Parsed),
    started: impl FnOnce(u32),
) -> RunResult {
    let mut transcript = Transcript::default();
    let fail = |kind, class, detail: String, t: Transcript| {
        Err(Box::new(AgentFailure {
            kind,
            class,
            detail,
            transcript: t,
        }))
    };

    let mut cmd = Command::new(&spec.command);
    // The daemon's own variables (its master key, HTTP token, `--set` values) are not the
    // agent's; the project's `env`, applied after, may still set any of them.
    remove_daemon_env(cmd.as_std_mut());
    for name in &spec.env_remove {
        cmd.env_remove(name);
    }
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .envs(&spec.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let too_long = e.raw_os_error() == Some(libc::E2BIG);
            // Std's own refusal of an argument or environment value with a NUL byte: about
            // this query's options, not the agent.
            let nul = e.kind() == std::io::ErrorKind::InvalidInput;
            // A working directory that went away since the query checked it fails the spawn
            // with ENOENT too: that is about this query, not the agent, and must not count
            // against the agent's breaker.
            let no_cwd = !spec.cwd.is_dir();
            let class = match e.kind() {
                _ if too_long || nul || no_cwd => ErrorClass::NonRetryable,
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    ErrorClass::Unavailable
                }
                _ => ErrorClass::Unavailable,
            };
            let detail = if nul {
                format!(
                    "cannot run `{}`: an argument or environment value of this query holds a \
                     NUL byte ({e})",
                    spec.command
                )
            } else if too_long {
                // This query's arguments (or the daemon's environment) are too big: nothing
                // about the agent is wrong, so it must not count against its breaker.
                format!(
                    "cannot run `{}`: its arguments and environment are over the kernel's \
                     limit ({e}); shorten the query's options or the project's env",
                    spec.command
                )
            } else if no_cwd {
                format!(
                    "cannot run `{}`: its working directory {} does not exist (or is not a \
                     directory)",
                    spec.command,
                    spec.cwd.display()
                )
            } else if class == ErrorClass::Unavailable {
                cannot_run_agent(&spec.command, &e)
            } else {
                format!(
                    "cannot run `{}` in {}: {e}",
                    spec.command,
                    spec.cwd.display()
                )
            };
            return fail(FailureKind::Agent, class, detail, transcript);
        }
    };
    let pid = child.id().unwrap_or(0);
    started(pid);
    // The real CLI (a Bun executable) drops what it has not yet written to its stdout when it
    // exits: with the default 64 KiB pipe a big final `result` line is cut short if we are a
    // moment late reading. A pipe of 1 MiB (the default pipe-max-size) takes it whole.
    if let Some(stdout) = &child.stdout
        && let Err(e) = rustix::pipe::fcntl_setpipe_size(stdout, STDOUT_PIPE_BYTES)
    {
        tracing::debug!(pid, "enlarging the agent's stdout pipe: {e}");
    }

    // The prompt on stdin, then EOF. A child that exits without reading it is not an error here.
    if let Some(mut stdin) = child.stdin.take() {
        let prompt = spec.prompt.clone();
        actix_rt::spawn(async move {
            let _ = stdin.write_all(prompt.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
    }
    let stderr_tail = std::rc::Rc::new(std::cell::RefCell::new(VecDeque::new()));
    let stderr_task = child.stderr.take().map(|stderr| {
        let tail = stderr_tail.clone();
        actix_rt::spawn(async move {
            // Read to EOF whatever comes (stopping early would leave the agent writing into a
            // closed pipe, killed by SIGPIPE): bytes that are not UTF-8 are replaced, and each
            // line is kept up to STDERR_LINE_BYTES, the rest of it skipped.
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            let keep = |line: &mut Vec<u8>| {
                let mut tail = tail.borrow_mut();
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(String::from_utf8_lossy(line).trim_end().to_string());
                line.clear();
            };
            loop {
                let chunk = match reader.fill_buf().await {
                    Ok(chunk) if !chunk.is_empty() => chunk,
                    _ => break,
                };
                let end = chunk.iter().position(|&b| b == b'\n');
                let part = &chunk[..end.unwrap_or(chunk.len())];
                let room = STDERR_LINE_BYTES.saturating_sub(line.len());
                line.extend_from_slice(&part[..part.len().min(room)]);
                let used = end.map_or(chunk.len(), |i| i + 1);
                reader.consume(used);
                if end.is_some() {
                    keep(&mut line);
                }
            }
            if !line.is_empty() {
                keep(&mut line);
            }
        })
    });
    let Some(stdout) = child.stdout.take() else {
        terminate(&mut child, pid, spec.kill_grace).await;
        return fail(
            FailureKind::Agent,
            ErrorClass::Retryable,
            "the agent's stdout was not captured".into(),
            transcript,
        );
    };
    let mut lines = FramedRead::new(stdout, NdjsonCodec::new(spec.max_line_bytes));
    let mut api_retries = 0u32;
    // Whether stdout has reached its end.
    let mut eof = false;
    // The leader's exit, once it is reaped (`Some(None)`: its status could not be read).
    let mut exited: Option<Option<std::process::ExitStatus>> = None;
    // Once the leader has exited: until when what is left in the pipe may still be read.
    let mut drain_until: Option<Instant> = None;

    // Read until the leader has exited and its output has been read, or stop early for a
    // reason; `stop` says why. The leader's exit is watched as well as stdout: a process it
    // left running (`sleep 30 &`) may hold stdout open, and EOF would not come before it ends.
    let stop: Option<(FailureKind, ErrorClass, String)> = loop {
        if eof && exited.is_some() {
            break None;
        }
        let next = tokio::select! {
            biased;
            // Once the agent has exited with its result read, the run is over: what is left is
            // the drain, which a cancellation no longer turns into a cancelled run.
            _ = cancel.cancelled(), if !(exited.is_some() && transcript.result.is_some()) => break Some((FailureKind::Cancelled, ErrorClass::NonRetryable, "stopped while the agent ran".into())),
            _ = tokio::time::sleep_until(spec.deadline), if exited.is_none() => break Some((FailureKind::Timeout, ErrorClass::Retryable, no_result_within(spec.timeout))),
            status = child.wait(), if exited.is_none() => {
                exited = Some(match status {
                    Ok(status) => {
                        // Nothing the agent started outlives it. Signalled right after the reap,
                        // with no other task run in between, so the group's id cannot have been
                        // taken by another process yet. What it printed is in the pipe, and its
                        // end comes once the group is gone.
                        signal_group(pid, rustix::process::Signal::KILL);
                        Some(status)
                    }
                    Err(e) => {
                        tracing::warn!(pid, "waiting for the agent: {e}");
                        terminate(&mut child, pid, spec.kill_grace).await
                    }
                });
                drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                continue;
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or(spec.deadline)), if drain_until.is_some() && !eof => {
                tracing::warn!(
                    pid,
                    "the agent exited, but a process it started outside its process group still \
                     holds its stdout; judging the run on what was read"
                );
                break None;
            }
            next = lines.next(), if !eof => next,
        };
        let line = match next {
            None => {
                eof = true;
                continue;
            }
            Some(Ok(line)) => line,
            Some(Err(FrameError::TooLong { limit })) => {
                break Some((
                    FailureKind::Agent,
                    ErrorClass::NonRetryable,
                    format!(
                        "the agent printed a line over the {limit}-byte limit (executor.max_line_bytes)"
                    ),
                ));
            }
            Some(Err(FrameError::Io(e))) => {
                break Some((
                    FailureKind::Agent,
                    ErrorClass::Retryable,
                    format!("reading the agent's output: {e}"),
                ));
            }
        };
        let parsed = match stream_json::parse_line(&line) {
            Ok(p) => p,
            Err(e) => {
                let shown: String = String::from_utf8_lossy(&line).chars().take(200).collect();
                tracing::warn!(
                    pid,
                    "skipping a non-JSON line from the agent ({e}): {shown}"
                );
                continue;
            }
        };
        transcript.messages += 1;
        on_message(&parsed);
        match parsed.message {
            AgentMessage::Init(init) => transcript.init = Some(init),
            AgentMessage::Assistant(a) => {
                if let Some(u) = &a.message.usage {
                    transcript.usage.add(u);
                }
                if transcript.model.is_none() {
                    transcript.model = a.message.model.clone().filter(|m| m != "<synthetic>");
                }
                for block in &a.message.content {
                    if let ContentBlock::Text { text } = block {
                        transcript.push_text(text);
                    }
                }
            }
            AgentMessage::ApiRetry(retry) => {
                api_retries += 1;
                let status = retry
                    .error_status
                    .map(|s| format!(" (HTTP {s})"))
                    .unwrap_or_default();
                match retry.error.as_deref() {
                    Some("authentication_failed") => {
                        break Some((
                            FailureKind::Agent,
                            ErrorClass::NonRetryable,
                            format!(
                                "authentication failed{status}: the agent CLI is not logged in or its API key is invalid"
                            ),
                        ));
                    }
                    Some(error) if api_retries > spec.cli_retry_limit => {
                        break Some((
                            FailureKind::Agent,
                            ErrorClass::Retryable,
                            format!(
                                "the API keeps failing with {error}{status}; stopped the agent after {api_retries} of its retries"
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            AgentMessage::Result(mut r) => {
                r.total_cost_usd = sane_cost(r.total_cost_usd, pid);
                transcript.usage = r.usage;
                transcript.result = Some(r);
            }
            _ => {}
        }
    };

    // A leader already reaped has had its group killed; signalling that id again, later, could
    // reach a group that has taken it since.
    let status = match exited {
        Some(status) => status,
        None => terminate(&mut child, pid, spec.kill_grace).await,
    };
    if let Some(task) = stderr_task {
        // The pipe closes with the process group; don't wait on a grandchild holding it.
        let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
    }
    transcript.stderr_tail = stderr_tail.borrow().iter().cloned().collect();

    if let Some((kind, class, detail)) = stop {
        return fail(kind, class, detail, transcript);
    }
    judge(status, transcript)
}

/// A result's `total_cost_usd` as ccd counts it: within `[0, MAX_COST_USD]`.
fn sane_cost(cost: f64, pid: u32) -> f64 {
    if (0.0..=MAX_COST_USD).contains(&cost) {
        return cost;
    }
    let sane = if cost > MAX_COST_USD {
        MAX_COST_USD
    } else {
        0.0
    };
    tracing::warn!(
        pid,
        "the agent reported a cost of {cost} USD; counted as {sane}"
    );
    sane
}

/// Why a query timed out ("query timed out: no result within 30s").
fn no_result_within(timeout: Duration) -> String {
    format!("no result within {}", humantime::format_duration(timeout))
}

/// The most of the agent's own words an error message carries.
const MAX_DETAIL_CHARS: usize = 2000;

/// `errors` of a result message (a list of strings), joined; empty when there are none.
fn error_strings(errors: &serde_json::Value) -> String {
    errors
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e.as_str().map(str::trim))
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// The last `n` lines of the agent's stderr, on one line.
fn last_stderr_lines(t: &Transcript, n: usize) -> String {
    let lines = &t.stderr_tail[t.stderr_tail.len().saturating_sub(n)..];
    lines.join(" | ")
}

/// `s` cut to at most `max` characters, with an ellipsis when cut.
fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// The last `max` characters of `s` (its most recent lines), after an ellipsis when cut.
fn bounded_end(s: &str, max: usize) -> String {
    let chars = s.chars().count();
    if chars <= max {
        return s.to_string();
    }
    let start = s.char_indices().nth(chars - max).map_or(0, |(at, _)| at);
    format!("…{}", &s[start..])
}

/// Decide success or the error class from the result message and the exit status.
fn judge(status: Option<std::process::ExitStatus>, transcript: Transcript) -> RunResult {
    use std::os::unix::process::ExitStatusExt;
    let fail = |class, detail: String, t: Transcript| {
        Err(Box::new(AgentFailure {
            kind: FailureKind::Agent,
            class,
            detail,
            transcript: t,
        }))
    };
    if let Some(r) = &transcript.result {
        if !r.is_error {
            return Ok(transcript);
        }
        let text = r.result.clone().unwrap_or_default();
        let class = match (r.api_error_status, r.subtype.as_str()) {
            (Some(429 | 500..=599), _) => ErrorClass::Retryable,
            (Some(_), _) => ErrorClass::NonRetryable,
            (None, "error_max_turns" | "error_max_budget_usd") => ErrorClass::NonRetryable,
            (None, _) => ErrorClass::NonRetryable,
        };
        // Claude Code ends some failures (not logged in, an API error) with a result whose
        // subtype is "success" beside `is_error`: that subtype says nothing, and is left out.
        let what = match (r.api_error_status, r.subtype.as_str()) {
            (Some(s), _) => format!("the API answered {s}"),
            (None, "success" | "") => "the agent reported an error".to_string(),
            (None, subtype) => format!("the agent reported an error ({subtype})"),
        };
        // The cause in the agent's words: its result text, else its `errors` ("No
        // conversation found with session ID ..."), else the end of its stderr.
        let cause = [
            bounded(text.trim(), MAX_DETAIL_CHARS),
            bounded(&error_strings(&r.errors), MAX_DETAIL_CHARS),
            bounded_end(&last_stderr_lines(&transcript, 5), MAX_DETAIL_CHARS),
        ]
        .into_iter()
        .find(|c| !c.is_empty());
        let detail = match cause {
            Some(cause) => format!("{what}: {cause}"),
            None => what,
        };
        return fail(class, detail, transcript);
    }
    let tail = last_stderr_lines(&transcript, 5);
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!("; stderr: {}", bounded_end(&tail, MAX_DETAIL_CHARS))
    };
    match status {
        Some(s) if s.signal().is_some() => {
            let sig = s.signal().unwrap_or(0);
            fail(
                ErrorClass::Retryable,
                format!("the agent was killed by signal {sig} before it finished{tail}"),
                transcript,
            )
        }
        Some(s) => fail(
            ErrorClass::NonRetryable,
            format!(
                "the agent exited with {} without a result{tail}",
                s.code()
                    .map(|c| format!("code {c}"))
                    .unwrap_or_else(|| "no code".into())
            ),
            transcript,
        ),
        None => fail(
            ErrorClass::Retryable,
            format!("the agent's exit status is unknown{tail}"),
            transcript,
        ),
    }
}

/// SIGTERM the process group, SIGKILL after the grace period, and reap the child.
async fn terminate(
    child: &mut Child,
    pid: u32,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    signal_group(pid, rustix::process::Signal::TERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => {
            // The leader is gone; make sure nothing it started outlives it.
            signal_group(pid, rustix::process::Signal::KILL);
            Some(status)
        }
        _ => {
            signal_group(pid, rustix::process::Signal::KILL);
            child.wait().await.ok()
        }
    }
}

/// Send `signal` to the process group led by `pid` (the agent was started as its leader).
/// ESRCH, when the group is already gone, is harmless and ignored.
pub fn signal_group(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, signal);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_only_for_set_options() {
        assert_eq!(
            agent_args(&AgentOptions::default()),
            [
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages"
            ]
        );
        let o = AgentOptions {
            resume: Some("-abc".into()),
            model: Some("--dangerously-skip-permissions".into()),
            max_turns: Some(3),
            permission_mode: Some(PermissionMode::AcceptEdits),
            allowed_tools: vec!["Bash".into(), "Read".into()],
            add_dirs: vec!["/a".into(), "/b".into()],
            ..Default::default()
        };
        let args = agent_args(&o);
        assert_eq!(
            args[5..],
            [
                "--resume=-abc",
                "--model=--dangerously-skip-permissions",
                "--max-turns=3",
                "--permission-mode=acceptEdits",
                "--allowedTools=Bash,Read",
                "--add-dir=/a",
                "--add-dir=/b",
            ]
        );
        // Every option is one argument: none of them can be read as a flag of its own.
        assert!(!args.contains(&"--dangerously-skip-permissions".to_string()));
        let o = AgentOptions {
            append_system_prompt: Some("-x".into()),
            disallowed_tools: vec!["-Bash".into()],
            mcp_config: Some("-c".into()),
            ..Default::default()
        };
        assert_eq!(
            agent_args(&o)[5..],
            [
                "--append-system-prompt=-x",
                "--disallowedTools=-Bash",
                "--mcp-config=-c"
            ]
        );
    }

    #[test]
    fn daemon_variables_in_any_case() {
        for name in [
            "CCD_MASTER_KEY",
            "CCD_HTTP_TOKEN",
            "CCD_SET",
            "ccd_http_token",
            "Ccd_x",
        ] {
            assert!(is_daemon_var(OsStr::new(name)), "{name}");
        }
        for name in ["CCD", "CCDTEST_MARKER", "PATH", "XCCD_A", ""] {
            assert!(!is_daemon_var(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn text_is_cut_at_the_limit_on_a_character_boundary() {
        let mut t = Transcript::default();
        t.push_text("x");
        let big = "é".repeat(MAX_TEXT_BYTES / 2);
        t.push_text(&big);
        assert!(t.text_truncated);
        let kept = t.text.strip_suffix(TEXT_CUT_MARK).unwrap();
        assert_eq!(kept.len(), MAX_TEXT_BYTES - 1);
        t.push_text("more");
        assert!(
            t.text.ends_with(TEXT_CUT_MARK),
            "nothing is added after the cut"
        );

        let mut t = Transcript::default();
        t.push_text(&"a".repeat(MAX_TEXT_BYTES));
        assert!(!t.text_truncated, "exactly the limit is kept whole");
        t.push_text("b");
        assert!(t.text_truncated);
        assert_eq!(t.text.len(), MAX_TEXT_BYTES + TEXT_CUT_MARK.len());
    }

    #[test]
    fn costs_are_counted_within_bounds() {
        assert_eq!(sane_cost(0.25, 1), 0.25);
        assert_eq!(sane_cost(1e308, 1), MAX_COST_USD);
        assert_eq!(sane_cost(f64::INFINITY, 1), MAX_COST_USD);
        assert_eq!(sane_cost(-1.0, 1), 0.0);
        assert_eq!(sane_cost(f64::NAN, 1), 0.0);
    }

    #[test]
    fn the_agents_own_words_are_kept_within_bounds() {
        assert_eq!(bounded("héllo", 2), "hé…");
        assert_eq!(bounded("hi", 2), "hi");
        assert_eq!(bounded_end("héllo", 2), "…lo");
        assert_eq!(bounded_end("hé", 2), "hé");
        let mut t = result(true, None, "error_during_execution");
        if let Some(r) = &mut t.result {
            r.result = None;
            r.errors = serde_json::json!(["No conversation found with session ID: x", 5]);
        }
        let f = judge(None, t).unwrap_err();
        assert_eq!(
            f.detail,
            "the agent reported an error (error_during_execution): No conversation found with \
             session ID: x"
        );
    }

    fn result(is_error: bool, status: Option<u16>, subtype: &str) -> Transcript {
        Transcript {
            result: Some(ResultMessage {
                is_error,
                api_error_status: status,
                subtype: subtype.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn error_classes() {
        use std::os::unix::process::ExitStatusExt;
        let ok = std::process::ExitStatus::from_raw(0);
        assert!(judge(Some(ok), result(false, None, "success")).is_ok());
        let class = |t| judge(Some(ok), t).unwrap_err().class;
        assert_eq!(
            class(result(true, Some(400), "success")),
            ErrorClass::NonRetryable
        );
        assert_eq!(
            class(result(true, Some(401), "success")),
            ErrorClass::NonRetryable
        );
        assert_eq!(
            class(result(true, Some(429), "success")),
            ErrorClass::Retryable
        );
        assert_eq!(
            class(result(true, Some(529), "success")),
            ErrorClass::Retryable
        );
        assert_eq!(
            class(result(true, Some(503), "success")),
            ErrorClass::Retryable
        );
        assert_eq!(
            class(result(true, None, "error_max_turns")),
            ErrorClass::NonRetryable
        );
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(
            judge(Some(killed), Transcript::default())
                .unwrap_err()
                .class,
            ErrorClass::Retryable
        );
        let exit1 = std::process::ExitStatus::from_raw(1 << 8);
        assert_eq!(
            judge(Some(exit1), Transcript::default()).unwrap_err().class,
            ErrorClass::NonRetryable
        );
    }
}
