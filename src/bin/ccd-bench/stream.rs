//! Streaming: how long a text delta takes from the agent writing it to `ccd query` printing it.
//!
//! The agent is ccd-bench itself in a hidden mode (`stream-agent`, started by a two-line shell
//! script because the daemon runs its agent command without arguments of its own): it prints
//! a stream-json run with `--include-partial-messages`, N `content_block_delta` text deltas a
//! fixed interval apart, each delta's text carrying the CLOCK_MONOTONIC time just before it was
//! written. The measuring side reads what arrives and takes the clock again: CLOCK_MONOTONIC
//! is one clock for every process on a Linux machine, so the difference is the delta's trip.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::cli::{DaemonOpts, StreamAgentArgs};
use crate::daemon::{Daemon, TempDir, start_timeout, write_executable};
use crate::fmt::{Out, fmt_ns};
use crate::interrupt::{check_interrupted, interrupted};
use crate::latency::nearest_rank;

/// The target: a delta printed by `ccd query` within this long of the agent writing it, at p50.
const STREAM_TARGET_MS: f64 = 2.0;

/// The arguments the daemon gives the agent for a plain query; the bare runs use them too.
const AGENT_ARGS: [&str; 5] = [
    "-p",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
];

/// A delta's text is `[t:<CLOCK_MONOTONIC ns>]`.
const MARK_OPEN: &[u8] = b"[t:";
const MARK_CLOSE: u8 = b']';

/// The model the stub agent names.
const STUB_MODEL: &str = "ccd-bench-stream-stub";

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine (unlike an
/// `Instant`, it can be written down and compared across processes).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given; CLOCK_MONOTONIC always exists
    // on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The stub agent (`ccd-bench stream-agent … -- <agent args>`)

/// The hidden `stream-agent` mode: what the daemon runs as its agent. Answers `--version`;
/// otherwise reads the prompt to EOF and prints one streamed answer (the stream events only
/// when given `--include-partial-messages`, as Claude Code does).
pub(crate) fn stream_agent(a: &StreamAgentArgs) -> Result<()> {
    if a.args.iter().any(|x| x == "--version") {
        println!("{} (ccd-bench stream agent)", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let partial = a.args.iter().any(|x| x == "--include-partial-messages");
    let mut prompt = Vec::new();
    io::stdin()
        .read_to_end(&mut prompt)
        .context("reading the prompt")?;
    let pid = std::process::id();
    let t0 = monotonic_ns();
    // Unique enough per run: each query is a new conversation.
    let session_id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        pid,
        (t0 >> 48) & 0xffff,
        (t0 >> 36) & 0xfff,
        (t0 >> 24) & 0xfff,
        t0 & 0xffff_ffff_ffff
    );
    let message_id = format!("msg_ccdbench_{pid}_{t0}");
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let interval = Duration::from_micros(a.interval_us);
    let mut out = io::stdout().lock();
    let mut emit = |v: &Value| -> io::Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        out.write_all(line.as_bytes())?;
        out.flush()
    };
    let usage = |output_tokens: u32| {
        json!({"input_tokens": 12, "output_tokens": output_tokens,
               "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
    };
    let event = |e: Value| {
        json!({"type": "stream_event", "event": e, "parent_tool_use_id": null,
               "session_id": session_id})
    };
    emit(&json!({
        "type": "system", "subtype": "init", "cwd": cwd, "session_id": session_id,
        "tools": [], "mcp_servers": [], "model": STUB_MODEL, "permissionMode": "default",
        "slash_commands": [], "apiKeySource": "none", "claude_code_version": "ccd-bench",
        "output_style": "default", "agents": [], "skills": [], "plugins": [],
    }))?;
    if partial {
        emit(&event(json!({
            "type": "message_start",
            "message": {"id": message_id, "type": "message", "role": "assistant",
                        "model": STUB_MODEL, "content": [], "stop_reason": null,
                        "stop_sequence": null, "usage": usage(1)},
        })))?;
        emit(&event(json!({
            "type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""},
        })))?;
    }
    let mut text = String::new();
    for i in 0..a.deltas {
        if i > 0 {
            std::thread::sleep(interval);
        }
        // The time goes into the text as late as possible: formatting the line after it is
        // counted as part of the trip (a microsecond or so).
        let piece = format!("[t:{}]", monotonic_ns());
        if partial {
            emit(&event(json!({
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            })))?;
        }
        text.push_str(&piece);
    }
    if partial {
        emit(&event(json!({"type": "content_block_stop", "index": 0})))?;
        emit(&event(json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": a.deltas},
        })))?;
        emit(&event(json!({"type": "message_stop"})))?;
    }
    emit(&json!({
        "type": "assistant",
        "message": {"id": message_id, "type": "message", "role": "assistant", "model": STUB_MODEL,
                    "content": [{"type": "text", "text": text}], "stop_reason": null,
                    "stop_sequence": null, "usage": usage(a.deltas)},
        "parent_tool_use_id": null, "session_id": session_id,
    }))?;
    let ms = (monotonic_ns() - t0) / 1_000_000;
    emit(&json!({
        "type": "result", "subtype": "success", "is_error": false, "api_error_status": null,
        "duration_ms": ms, "duration_api_ms": ms, "num_turns": 1, "result": text,
        "stop_reason": "end_turn", "session_id": session_id, "total_cost_usd": 0.0,
        "usage": usage(a.deltas), "modelUsage": {}, "permission_denials": [],
        "terminal_reason": "completed",
    }))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The measurement

/// What one stream measurement runs.
pub(crate) struct StreamPlan {
    pub(crate) queries: u32,
    pub(crate) warmup: u32,
    pub(crate) deltas: u32,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) max_time: Duration,
}

/// The stub agent's script (which execs ccd-bench in `stream-agent` mode) in a temporary
/// directory, which is also where every query runs.
struct StubAgent {
    script: PathBuf,
    cwd: PathBuf,
    dir: TempDir,
}

impl StubAgent {
    fn create(plan: &StreamPlan, keep_temp: bool) -> Result<StubAgent> {
        let exe = std::env::current_exe().context("locating the ccd-bench executable")?;
        let exe = exe
            .to_str()
            .with_context(|| format!("the path {} is not UTF-8", exe.display()))?;
        let dir = TempDir::new("stream-agent", keep_temp)?;
        let script = dir.path.join("agent.sh");
        write_executable(
            &script,
            &format!(
                "#!/bin/sh\n# ccd-bench stream stub agent: ccd-bench itself, in its agent mode.\n\
                 exec {} stream-agent --deltas {} --interval-us {} -- \"$@\"\n",
                shell_quote(exe),
                plan.deltas,
                plan.interval.as_micros()
            ),
        )?;
        let cwd = dir.path.join("work");
        fs::create_dir(&cwd).with_context(|| format!("creating {}", cwd.display()))?;
        Ok(StubAgent { script, cwd, dir })
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What arrived on a child's stdout: the trip time of every delta mark, in the order they
/// arrived, and every byte that was not part of a mark.
#[derive(Default)]
struct Reading {
    trips: Vec<u64>,
    other: Vec<u8>,
}

impl Reading {
    /// Takes the complete marks out of `pending`, read at `now`; leaves a mark cut by the end
    /// of a read for the next one.
    fn scan(&mut self, pending: &mut Vec<u8>, now: u64) {
        let mut at = 0;
        loop {
            let rest = &pending[at..];
            let Some(open) = rest.windows(MARK_OPEN.len()).position(|w| w == MARK_OPEN) else {
                // Keep what could be the start of a mark.
                let keep = (1..MARK_OPEN.len())
                    .rev()
                    .find(|&k| rest.ends_with(&MARK_OPEN[..k]))
                    .unwrap_or(0);
                self.other.extend_from_slice(&rest[..rest.len() - keep]);
                at = pending.len() - keep;
                break;
            };
            let digits = &rest[open + MARK_OPEN.len()..];
            let Some(close) = digits.iter().position(|&b| b == MARK_CLOSE) else {
                self.other.extend_from_slice(&rest[..open]);
                at += open;
                break;
            };
            self.other.extend_from_slice(&rest[..open]);
            match std::str::from_utf8(&digits[..close])
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
            {
                Some(t) => self.trips.push(now.saturating_sub(t)),
                // Not a mark after all: plain text.
                None => self
                    .other
                    .extend_from_slice(&rest[open..open + MARK_OPEN.len() + close + 1]),
            }
            at += open + MARK_OPEN.len() + close + 1;
        }
        pending.drain(..at);
    }
}

/// Reads the child's stdout to EOF as it arrives, taking the clock right after every read;
/// kills the child if that takes past `deadline`. Then waits for it.
fn read_child(child: &mut Child, deadline: Instant) -> Result<(Reading, std::process::ExitStatus)> {
    let mut stdout = child
        .stdout
        .take()
        .context("the child has no stdout pipe")?;
    let fd = stdout.as_raw_fd();
    let mut reading = Reading::default();
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let outcome: Result<()> = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || interrupted() {
            break Err(anyhow::anyhow!(
                "no end of output within the time allowed (--timeout plus the deltas' intervals)"
            ));
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().clamp(1, 100)).unwrap_or(100);
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break Err(e).context("poll on the child's stdout");
        }
        if ready == 0 {
            continue;
        }
        match stdout.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                let now = monotonic_ns();
                pending.extend_from_slice(&buf[..n]);
                reading.scan(&mut pending, now);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e).context("reading the child's stdout"),
        }
    };
    if let Err(e) = outcome {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    reading.other.extend_from_slice(&pending);
    let status = child.wait().context("waiting for the child")?;
    Ok((reading, status))
}

/// One run, measured: `Ok(trips)`, or what went wrong.
type Run = Result<Vec<u64>, String>;

/// Runs the stub directly, the way the daemon does (its arguments, the prompt on stdin), and
/// reads its stdout: the floor of the trip (a pipe and a process wake-up).
fn bare_run(stub: &StubAgent, plan: &StreamPlan, prompt: &str) -> Result<Run> {
    let mut child = Command::new(&stub.script)
        .args(AGENT_ARGS)
        .current_dir(&stub.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running the stub agent {}", stub.script.display()))?;
    if let Some(mut stdin) = child.stdin.take()
        && let Err(e) = stdin.write_all(prompt.as_bytes())
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e).context("writing the prompt to the stub agent");
    }
    let (reading, status) = match read_child(&mut child, run_deadline(plan)) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("{e:#}"))),
    };
    let n = plan.deltas as usize;
    // Its deltas, then the whole text twice more (the assistant message and the result).
    Ok(if !status.success() {
        Err(format!("the stub agent exited with {status}"))
    } else if reading.trips.len() != 3 * n {
        Err(format!(
            "the stub agent printed {} marks instead of 3 × {n}",
            reading.trips.len()
        ))
    } else {
        let mut trips = reading.trips;
        trips.truncate(n);
        Ok(trips)
    })
}

/// Runs `ccd query PROMPT` on the daemon with stdout piped and reads what it prints: every
/// delta once, then a newline, and nothing else.
fn ccd_run(daemon: &Daemon, stub: &StubAgent, plan: &StreamPlan, prompt: &str) -> Result<Run> {
    let stderr_path = stub.dir.path.join("ccd-query.stderr");
    let stderr = fs::File::create(&stderr_path)
        .with_context(|| format!("creating {}", stderr_path.display()))?;
    let mut child = daemon
        .ccd_command()?
        .args(["query", prompt])
        .current_dir(&stub.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("running `ccd query`")?;
    let said = || {
        let s = fs::read_to_string(&stderr_path).unwrap_or_default();
        crate::client::clip(s.trim())
    };
    let (reading, status) = match read_child(&mut child, run_deadline(plan)) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("`ccd query`: {e:#}; stderr: {}", said()))),
    };
    let n = plan.deltas as usize;
    Ok(if !status.success() {
        Err(format!("`ccd query` exited with {status}: {}", said()))
    } else if reading.trips.len() != n {
        Err(format!(
            "`ccd query` printed {} marks instead of {n} (the answer printed again whole, or \
             deltas lost?)",
            reading.trips.len()
        ))
    } else if reading.other != b"\n" {
        Err(format!(
            "`ccd query` printed {:?} besides the deltas (expected one newline)",
            crate::client::clip(&String::from_utf8_lossy(&reading.other))
        ))
    } else {
        Ok(reading.trips)
    })
}

fn run_deadline(plan: &StreamPlan) -> Instant {
    Instant::now() + plan.timeout + plan.interval * plan.deltas
}

/// One path's runs: the trips of its successful runs, and its failures.
#[derive(Default)]
pub(crate) struct PathResult {
    label: &'static str,
    ok: u64,
    failed: u64,
    trips: Vec<u64>,
    messages: BTreeMap<String, u32>,
}

impl PathResult {
    fn new(label: &'static str) -> PathResult {
        PathResult {
            label,
            ..PathResult::default()
        }
    }

    fn record(&mut self, run: Run, measured: bool) {
        match run {
            Ok(trips) if measured => {
                self.ok += 1;
                self.trips.extend(trips);
            }
            Ok(_) => {}
            Err(msg) => {
                self.failed += 1;
                let msg = if measured {
                    msg
                } else {
                    format!("warm-up: {msg}")
                };
                *self.messages.entry(msg).or_default() += 1;
            }
        }
    }

    /// p50, p90, p99 and max of the trips.
    fn percentiles(&self) -> Option<[u64; 4]> {
        let mut t = self.trips.clone();
        t.sort_unstable();
        Some([
            nearest_rank(&t, 50)?,
            nearest_rank(&t, 90)?,
            nearest_rank(&t, 99)?,
            *t.last()?,
        ])
    }

    fn cells(&self) -> [String; 4] {
        self.percentiles()
            .map_or_else(|| std::array::from_fn(|_| "–".into()), |p| p.map(fmt_ns))
    }

    fn summary(&self) -> String {
        let [p50, p90, p99, max] = self.cells();
        let mut s = format!(
            "  {:<44} {:>4} ok, {} failed, {:>6} deltas; p50 {p50}, p90 {p90}, p99 {p99}, max {max}",
            self.label,
            self.ok,
            self.failed,
            self.trips.len()
        );
        for (msg, n) in self.messages.iter().take(5) {
            let _ = write!(s, "\n  error ({n}×): {msg}");
        }
        s
    }
}

pub(crate) struct StreamSuite {
    bare: PathResult,
    ccd: PathResult,
    /// Measured queries not run because of --max-time or a signal.
    skipped: u64,
    plan_text: String,
    daemon_text: String,
}

impl StreamSuite {
    pub(crate) fn failures(&self) -> u64 {
        self.bare.failed + self.ccd.failed
    }

    fn verdict(&self) -> String {
        match self.ccd.percentiles() {
            Some([p50, ..]) => {
                let ms = p50 as f64 / 1e6;
                if ms <= STREAM_TARGET_MS {
                    format!("met ({} ≤ {STREAM_TARGET_MS} ms at p50)", fmt_ns(p50))
                } else {
                    format!("NOT met ({} > {STREAM_TARGET_MS} ms at p50)", fmt_ns(p50))
                }
            }
            None => "unknown (no deltas measured)".to_string(),
        }
    }
}

pub(crate) fn stream_suite(
    plan: &StreamPlan,
    opts: &DaemonOpts,
    out: &mut Out,
) -> Result<StreamSuite> {
    check_interrupted()?;
    let stub = StubAgent::create(plan, opts.keep_temp)?;
    let plan_text = format!(
        "{} text deltas per query, {} apart; {} measured queries per path after {} warm-up, \
         alternating bare stub and `ccd query`",
        plan.deltas,
        humantime::format_duration(plan.interval),
        plan.queries,
        plan.warmup
    );
    out.line(&format!(
        "stream: stub agent {} (ccd-bench stream-agent), agent args `{}`; {plan_text}",
        stub.script.display(),
        AGENT_ARGS.join(" ")
    ));
    let env = vec![(
        "CCD_AGENT_CMD".to_string(),
        stub.script.as_os_str().to_owned(),
    )];
    let (daemon, _) = Daemon::start_with_env(opts, start_timeout(plan.timeout), env)
        .context("starting a daemon with the stream stub agent")?;
    out.line(&daemon.describe());
    let daemon_text = daemon.markdown_description();

    let mut bare = PathResult::new("bare stub (agent → pipe → ccd-bench)");
    let mut ccd = PathResult::new("ccd query (agent → ccd → `ccd query` → pipe)");
    let deadline = Instant::now() + plan.max_time;
    let mut skipped = 0;
    for i in 0..plan.warmup + plan.queries {
        let measured = i >= plan.warmup;
        if measured && (interrupted() || Instant::now() >= deadline) {
            skipped = u64::from(plan.warmup + plan.queries - i);
            break;
        }
        check_interrupted()?;
        let prompt = format!("ccd-bench stream #{i}");
        bare.record(bare_run(&stub, plan, &prompt)?, measured);
        ccd.record(ccd_run(&daemon, &stub, plan, &prompt)?, measured);
    }
    drop(daemon);
    if skipped > 0 {
        let why = if interrupted() {
            "interrupted"
        } else {
            "--max-time reached"
        };
        out.line(&format!(
            "  warning: {why}; {skipped} queries per path were not run"
        ));
    }
    let suite = StreamSuite {
        bare,
        ccd,
        skipped,
        plan_text,
        daemon_text,
    };
    out.line(&suite.bare.summary());
    out.line(&suite.ccd.summary());
    out.line(&format!(
        "  target: a delta printed by `ccd query` ≤ {STREAM_TARGET_MS} ms after the agent wrote it, at p50: {}",
        suite.verdict()
    ));
    Ok(suite)
}

/// The `### Streaming` section of a markdown report.
pub(crate) fn stream_markdown(s: &StreamSuite) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "\n### Streaming (`ccd query`, agent's write to the CLI's print)\n"
    );
    let _ = writeln!(
        m,
        "- Agent: ccd-bench itself in its `stream-agent` mode, run with `{}`; each delta's text \
         is the CLOCK_MONOTONIC time just before its write. {}.",
        AGENT_ARGS.join(" "),
        s.plan_text
    );
    let _ = writeln!(
        m,
        "- Daemon: {}. `ccd query PROMPT` runs with its stdout piped to ccd-bench, which reads \
         it as it arrives and takes the clock after every read.",
        s.daemon_text
    );
    if s.skipped > 0 {
        let _ = writeln!(m, "- {} queries per path not run (--max-time).", s.skipped);
    }
    let _ = writeln!(
        m,
        "\n| Path | Queries | Errors | Deltas | p50 | p90 | p99 | max |"
    );
    let _ = writeln!(m, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for p in [&s.bare, &s.ccd] {
        let [p50, p90, p99, max] = p.cells();
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {p50} | {p90} | {p99} | {max} |",
            p.label,
            p.ok,
            p.failed,
            p.trips.len()
        );
    }
    let _ = writeln!(
        m,
        "\nTarget ≤ {STREAM_TARGET_MS} ms at p50: {}.",
        s.verdict()
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> Reading {
        let mut r = Reading::default();
        let mut pending = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            pending.extend_from_slice(c);
            r.scan(&mut pending, 1000 + i as u64);
        }
        r.other.extend_from_slice(&pending);
        r
    }

    #[test]
    fn marks_are_found_across_reads() {
        let r = scan_all(&[b"a[t:10][t", b":20]b[", b"t:x]", b"[t:5", b"0]\n"]);
        assert_eq!(r.trips, vec![990, 981, 954]);
        assert_eq!(r.other, b"ab[t:x]\n");
    }

    #[test]
    fn json_around_marks_is_other_text() {
        let r = scan_all(&[br#"{"content":[],"text":"[t:999]"}"#]);
        assert_eq!(r.trips, vec![1]);
        assert_eq!(r.other, br#"{"content":[],"text":""}"#);
    }
}
