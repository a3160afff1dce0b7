//! The open circuit breaker: how fast a refused `query.run` is answered, next to `system.ping`.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cli::Driver;
use crate::cli::{DaemonOpts, Limits};
use crate::client::Expect;
use crate::client::{Body, Client, clip};
use crate::daemon::{Daemon, TempDir, start_timeout, write_executable};
use crate::fmt::{Out, fmt_duration, fmt_lat, fmt_ns, fmt_ratio, group_thousands, lat_ratios};
use crate::interrupt::check_interrupted;
use crate::phase::{Op, Phase, PhaseResult, REFUSED_PROMPT, Stage, run_phase};

/// Failures in a row that open the breaker of the breaker benchmark's daemon.
const BREAKER_TRIP: u32 = 3;

/// How long that breaker stays open: longer than any run.
const BREAKER_WAIT_MS: u64 = 3_600_000;

/// JSON-RPC error code of a failed agent run.
const AGENT_FAILED: i64 = -32007;

/// JSON-RPC error code of a query refused by an open circuit breaker.
const CIRCUIT_OPEN: i64 = -32003;

/// The target: an open breaker refuses a query in well under this many milliseconds (at p99).
const BREAKER_TARGET_MS: f64 = 1.0;

/// The failing stub agent: reads the prompt to EOF, counts the run, and dies by SIGKILL.
const FAILING_SCRIPT: &str = "#!/bin/sh
# ccd-bench failing agent: swallow the prompt, count the run, die by SIGKILL (a retryable failure).
# (`--version` answers the daemon's startup probe.)
if [ \"$1\" = --version ]; then echo 'ccd-bench failing stub agent'; exit 0; fi
cat > /dev/null
echo run >> \"$(dirname \"$0\")/runs\"
kill -9 $$
";

/// What one breaker measurement runs.
pub(crate) struct BreakerPlan {
    pub(crate) connections: Vec<u32>,
    pub(crate) requests: u32,
    pub(crate) limits: Limits,
}

/// The failing stub agent in a temporary directory, with the file it counts its runs in.
struct FailingAgent {
    script: PathBuf,
    runs: PathBuf,
    _dir: TempDir,
}

impl FailingAgent {
    fn create(keep_temp: bool) -> Result<FailingAgent> {
        let dir = TempDir::new("failing-agent", keep_temp)?;
        let script = dir.path.join("agent.sh");
        write_executable(&script, FAILING_SCRIPT)?;
        Ok(FailingAgent {
            script,
            runs: dir.path.join("runs"),
            _dir: dir,
        })
    }

    /// How many times the agent was run for a query (not counting `--version`).
    fn runs(&self) -> Result<u64> {
        match fs::read_to_string(&self.runs) {
            Ok(s) => Ok(s.lines().count() as u64),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.runs.display())),
        }
    }
}

/// One connection count: refused `query.run`, then `system.ping`, on the same daemon.
struct BreakerRun {
    refused: PhaseResult,
    ping: PhaseResult,
    /// From the end of the refused phase until `stats.get` counted every refusal; `None` when
    /// that did not happen within --timeout (or was not checked, after failed requests).
    recorded_after: Option<Duration>,
}

impl BreakerRun {
    /// (p50, p99) of refused `query.run` over `system.ping`.
    fn vs_ping(&self) -> (Option<f64>, Option<f64>) {
        lat_ratios(self.refused.lat.as_ref(), self.ping.lat.as_ref())
    }

    fn verdict(&self) -> String {
        match &self.refused.lat {
            Some(l) if (l.p99 as f64) < BREAKER_TARGET_MS * 1e6 => format!(
                "met (p50 {}, p99 {} < {BREAKER_TARGET_MS} ms)",
                fmt_ns(l.p50),
                fmt_ns(l.p99)
            ),
            Some(l) => format!(
                "NOT met (p99 {} ≥ {BREAKER_TARGET_MS} ms; p50 {})",
                fmt_ns(l.p99),
                fmt_ns(l.p50)
            ),
            None => "unknown (no latency samples)".to_string(),
        }
    }
}

pub(crate) struct BreakerSuite {
    /// The open breaker's key (`<agent command>|<model>`).
    key: String,
    runs: Vec<BreakerRun>,
    /// Agent runs over the whole benchmark (the trips included).
    agent_runs: u64,
    /// The breaker's `rejected` count at the end, and the refusals ccd-bench saw.
    rejected: Option<u64>,
    refusals_seen: u64,
    /// Checks after the run that failed (each counts as a failure).
    problems: Vec<String>,
    daemon_text: String,
}

impl BreakerSuite {
    pub(crate) fn failures(&self) -> u64 {
        self.problems.len() as u64
            + self
                .runs
                .iter()
                .map(|r| r.refused.failed() + r.ping.failed())
                .sum::<u64>()
    }
}

/// One `query.run {"prompt":"x"}` round trip on a one-off client.
fn query_run_reply(client: &mut Client) -> Result<Body> {
    client.next_id += 1;
    let id = client.next_id;
    let line = Op::QueryRun.request_line(0, Stage::Warmup, 0, id);
    client.round_trip(&line, id)
}

fn describe_body(b: &Body) -> String {
    match b {
        Body::Result(v) => format!("the result {}", clip(&v.to_string())),
        Body::Error { msg, .. } => msg.clone(),
        Body::Other => "neither `result` nor `error`".to_string(),
    }
}

/// Trips the breaker with [`BREAKER_TRIP`] failing queries, checks that it is OPEN and refuses
/// a query; returns its key.
fn trip_breaker(client: &mut Client) -> Result<String> {
    for i in 1..=BREAKER_TRIP {
        let body = query_run_reply(client)?;
        if !matches!(
            body,
            Body::Error {
                code: Some(AGENT_FAILED),
                ..
            }
        ) {
            bail!(
                "tripping the breaker: query.run {i} of {BREAKER_TRIP} answered {} instead of \
                 error {AGENT_FAILED} (agent failed)",
                describe_body(&body)
            );
        }
    }
    let status = client.call("breaker.status", json!({}))?;
    let key = status
        .get("breakers")
        .and_then(Value::as_array)
        .and_then(|bs| {
            bs.iter()
                .find(|b| b.get("state").and_then(Value::as_str) == Some("OPEN"))
        })
        .and_then(|b| b.get("key").and_then(Value::as_str))
        .with_context(|| {
            format!(
                "after {BREAKER_TRIP} failed queries, breaker.status shows no OPEN breaker: {}",
                clip(&status.to_string())
            )
        })?
        .to_string();
    let body = query_run_reply(client)?;
    if !matches!(
        body,
        Body::Error {
            code: Some(CIRCUIT_OPEN),
            ..
        }
    ) {
        bail!(
            "with the breaker open, query.run answered {} instead of error {CIRCUIT_OPEN} \
             (circuit open)",
            describe_body(&body)
        );
    }
    Ok(key)
}

/// `stats.get`'s count of refused queries.
fn refused_count(client: &mut Client) -> Result<u64> {
    let stats = client.call("stats.get", json!({}))?;
    stats
        .pointer("/stats/totals/refused")
        .and_then(Value::as_u64)
        .with_context(|| {
            format!(
                "stats.get has no stats.totals.refused count: {}",
                clip(&stats.to_string())
            )
        })
}

/// Waits until `stats.get` counts at least `want` refused queries; how long that took, or
/// `None` after `limit`.
fn wait_recorded(client: &mut Client, want: u64, limit: Duration) -> Result<Option<Duration>> {
    let t0 = Instant::now();
    loop {
        if refused_count(client)? >= want {
            return Ok(Some(t0.elapsed()));
        }
        check_interrupted()?;
        if t0.elapsed() >= limit {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn breaker_suite(
    plan: &BreakerPlan,
    opts: &DaemonOpts,
    out: &mut Out,
) -> Result<BreakerSuite> {
    check_interrupted()?;
    let agent = FailingAgent::create(opts.keep_temp)?;
    let env = vec![
        (
            "CCD_AGENT_CMD".to_string(),
            agent.script.as_os_str().to_owned(),
        ),
        ("CCD_RETRY_MAX_RETRIES".to_string(), "0".into()),
        (
            "CCD_BREAKER_CONSECUTIVE_FAILURES".to_string(),
            BREAKER_TRIP.to_string().into(),
        ),
        (
            "CCD_BREAKER_WAIT_MS".to_string(),
            BREAKER_WAIT_MS.to_string().into(),
        ),
    ];
    let timeout = plan.limits.timeout;
    let (daemon, _) = Daemon::start_with_env(opts, start_timeout(timeout), env)
        .context("starting a daemon with a failing agent")?;
    out.line(&daemon.describe());
    let daemon_text = daemon.markdown_description();
    let mut control = Client::connect(&daemon.socket, timeout)?;
    let key = trip_breaker(&mut control)?;
    out.line(&format!(
        "breaker: {BREAKER_TRIP} failing queries (error {AGENT_FAILED}) opened breaker `{key}`; \
         the next query.run was refused with {CIRCUIT_OPEN}"
    ));
    // Refusals so far: the check in `trip_breaker`.
    let mut refusals_seen = 1u64;
    let mut problems = Vec::new();
    let mut runs = Vec::with_capacity(plan.connections.len());
    for &connections in &plan.connections {
        check_interrupted()?;
        let refused = run_phase(&Phase {
            label: "query.run refused (ccd, open breaker)".into(),
            socket: daemon.socket.clone(),
            op: Op::QueryRun,
            expect: Expect::ErrorCode(CIRCUIT_OPEN),
            connections,
            requests: plan.requests,
            limits: plan.limits.clone(),
            driver: Driver::Threads,
        })?;
        out.line(&refused.summary());
        // Every warm-up request and every successful measured one was a refusal; failed ones
        // may or may not have been, so the count is only checked when there were none.
        let recorded_after = if refused.failed() == 0 {
            refusals_seen += u64::from(connections) * u64::from(plan.limits.warmup) + refused.ok;
            let waited = wait_recorded(&mut control, refusals_seen, timeout)?;
            match waited {
                Some(d) => out.line(&format!(
                    "  all {refusals_seen} refused queries so far recorded (stats.get) {} after \
                     the phase ended",
                    fmt_duration(d)
                )),
                None => {
                    let p = format!(
                        "stats.get did not count {refusals_seen} refused queries within {} of \
                         the {connections}-connection phase",
                        humantime::format_duration(timeout)
                    );
                    out.line(&format!("  FAILED: {p}"));
                    problems.push(p);
                }
            }
            waited
        } else {
            None
        };
        check_interrupted()?;
        let ping = run_phase(&Phase {
            label: "system.ping (same daemon)".into(),
            socket: daemon.socket.clone(),
            op: Op::Ping,
            expect: Expect::Result(Some("pong")),
            connections,
            requests: plan.requests,
            limits: plan.limits.clone(),
            driver: Driver::Threads,
        })?;
        out.line(&ping.summary());
        let run = BreakerRun {
            refused,
            ping,
            recorded_after,
        };
        let (p50, p99) = run.vs_ping();
        out.line(&format!(
            "  ratio, {connections} conn: refused query.run / system.ping: p50 {}, p99 {}; \
             target (refused in under {BREAKER_TARGET_MS} ms at p99): {}",
            fmt_ratio(p50),
            fmt_ratio(p99),
            run.verdict()
        ));
        runs.push(run);
    }

    // Nothing ran the agent, and the breaker stayed open and counted every refusal.
    let agent_runs = agent.runs()?;
    if agent_runs != u64::from(BREAKER_TRIP) {
        problems.push(format!(
            "the agent ran {agent_runs} times, not just the {BREAKER_TRIP} that tripped the breaker"
        ));
    }
    let status = control.call("breaker.status", json!({}))?;
    let this = status
        .get("breakers")
        .and_then(Value::as_array)
        .and_then(|bs| {
            bs.iter()
                .find(|b| b.get("key").and_then(Value::as_str) == Some(key.as_str()))
        });
    let state = this.and_then(|b| b.get("state")).and_then(Value::as_str);
    if state != Some("OPEN") {
        problems.push(format!(
            "after the run, breaker `{key}` is {} instead of OPEN",
            state.unwrap_or("missing")
        ));
    }
    let rejected = this.and_then(|b| b.get("rejected")).and_then(Value::as_u64);
    let clean = runs.iter().all(|r| r.refused.failed() == 0);
    if clean && rejected != Some(refusals_seen) {
        problems.push(format!(
            "breaker.status counts {} rejected queries, ccd-bench saw {refusals_seen} refusals",
            rejected.map_or_else(|| "no".to_string(), |n| n.to_string())
        ));
    }
    drop(control);
    drop(daemon);
    out.line(&format!(
        "breaker: agent runs {agent_runs} (the {BREAKER_TRIP} trips), breaker {} with {} \
         rejected queries ({refusals_seen} refusals seen)",
        state.unwrap_or("missing"),
        rejected.map_or_else(|| "?".to_string(), |n| n.to_string())
    ));
    for p in &problems {
        out.line(&format!("  FAILED: {p}"));
    }
    Ok(BreakerSuite {
        key,
        runs,
        agent_runs,
        rejected,
        refusals_seen,
        problems,
        daemon_text,
    })
}

/// The plain-text table printed at the end of a breaker run.
pub(crate) fn breaker_summary(b: &BreakerSuite) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nopen breaker `{}`: refused query.run vs system.ping on the same daemon (closed loop):",
        b.key
    );
    let _ = writeln!(
        s,
        "  {:<38} {:>5} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "", "conns", "requests", "errors", "req/s", "p50", "p99", "max"
    );
    for r in &b.runs {
        for p in [&r.refused, &r.ping] {
            let (p50, p99, max) = fmt_lat(p.lat.as_ref());
            let _ = writeln!(
                s,
                "  {:<38} {:>5} {:>8} {:>6} {:>10} {p50:>10} {p99:>10} {max:>10}",
                p.label,
                p.connections,
                p.requests(),
                p.failed(),
                group_thousands(p.throughput())
            );
        }
        let (p50, p99) = r.vs_ping();
        let _ = writeln!(
            s,
            "  {:<38} {:>5} {:>8} {:>6} {:>10} {:>10} {:>10}",
            "refused / ping",
            r.refused.connections,
            "",
            "",
            "",
            fmt_ratio(p50),
            fmt_ratio(p99)
        );
    }
    for r in &b.runs {
        let _ = writeln!(
            s,
            "  target, {} conn: refused in under {BREAKER_TARGET_MS} ms at p99: {}",
            r.refused.connections,
            r.verdict()
        );
    }
    s
}

/// The `### Open circuit breaker` section of the markdown report.
pub(crate) fn breaker_markdown(b: &BreakerSuite) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Open circuit breaker (`query.run` refused, next to `system.ping`)\n"
    );
    let _ = writeln!(
        s,
        "- Agent: a shell script that reads the prompt to EOF and kills itself with SIGKILL (a \
         `retryable` failure)."
    );
    let _ = writeln!(
        s,
        "- Daemon: {}, `CCD_RETRY_MAX_RETRIES=0`, `CCD_BREAKER_CONSECUTIVE_FAILURES={BREAKER_TRIP}`, \
         `CCD_BREAKER_WAIT_MS={BREAKER_WAIT_MS}`; {BREAKER_TRIP} failing queries opened breaker \
         `{}`. Every `query.run {{\"prompt\":\"{REFUSED_PROMPT}\"}}` must be answered with error \
         {CIRCUIT_OPEN} (anything else counts as failed); the daemon records each refused turn \
         in the background, and ccd-bench waits until `stats.get` counts them all before the \
         `system.ping` run.",
        b.daemon_text, b.key
    );
    let _ = writeln!(
        s,
        "- Afterwards: the agent ran {} times (the trips); the breaker counts {} rejected \
         queries, ccd-bench saw {} refusals.",
        b.agent_runs,
        b.rejected
            .map_or_else(|| "?".to_string(), |n| n.to_string()),
        b.refusals_seen
    );
    let lags: Vec<String> = b
        .runs
        .iter()
        .map(|r| {
            let lag = r
                .recorded_after
                .map_or_else(|| "not checked".to_string(), fmt_duration);
            format!("{} conn: {lag}", r.refused.connections)
        })
        .collect();
    let _ = writeln!(
        s,
        "- Refused turns all counted by `stats.get` after the end of the refused phase: {}.",
        lags.join("; ")
    );
    for p in &b.problems {
        let _ = writeln!(s, "- **Failed:** {p}");
    }
    let _ = writeln!(
        s,
        "\n| Workload | Conns | Requests | Errors | Throughput (req/s) | p50 | p99 | max |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for r in &b.runs {
        for p in [&r.refused, &r.ping] {
            let (p50, p99, max) = fmt_lat(p.lat.as_ref());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {p50} | {p99} | {max} |",
                p.label,
                p.connections,
                p.requests(),
                p.failed(),
                group_thousands(p.throughput()),
            );
        }
    }
    let _ = writeln!(s, "\n| Comparison | p50 | p99 |");
    let _ = writeln!(s, "|---|--:|--:|");
    for r in &b.runs {
        let (p50, p99) = r.vs_ping();
        let _ = writeln!(
            s,
            "| refused query.run / system.ping, {} conn | {} | {} |",
            r.refused.connections,
            fmt_ratio(p50),
            fmt_ratio(p99)
        );
    }
    s.push('\n');
    for r in &b.runs {
        let _ = writeln!(
            s,
            "- Target (refused in under {BREAKER_TARGET_MS} ms at p99), {} conn: {}.",
            r.refused.connections,
            r.verdict()
        );
    }
    s
}
