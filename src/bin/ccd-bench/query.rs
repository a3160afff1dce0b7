//! Agent queries: what the daemon adds to running a stub agent directly, and throughput by
//! executor pool size.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cli::DaemonOpts;
use crate::client::{Attempt, Body, Client, clip};
use crate::daemon::{Daemon, TempDir, start_timeout, write_executable};
use crate::fmt::{Out, fmt_lat, fmt_ratio, group_thousands, ratio};
use crate::interrupt::{check_interrupted, interrupted};
use crate::latency::Latency;
use crate::phase::{Budget, Gate, PhaseResult, Stage, WorkerOut, run_clients};

/// What the stub agent prints: a captured Claude Code `stream-json` run answering one prompt.
const STUB_TRANSCRIPT: &str = include_str!("../../../protocol/fixtures/text.jsonl");

/// The stub agent: reads the prompt to EOF, then prints the transcript next to it.
const STUB_SCRIPT: &str = "#!/bin/sh
# ccd-bench stub agent: swallow the prompt, print a captured stream-json transcript.
# (`--version` answers the daemon's startup probe.)
if [ \"$1\" = --version ]; then echo 'ccd-bench stub agent'; exit 0; fi
cat > /dev/null
exec cat \"$(dirname \"$0\")/transcript.jsonl\"
";

/// The arguments the daemon gives the agent for a plain query (no resume, model or options).
const AGENT_ARGS: [&str; 5] = [
    "-p",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
];

/// CCD_EXECUTOR_QUEUE_SIZE of the daemons the query benchmark starts: never the limit.
const QUERY_QUEUE_SIZE: u32 = 100_000;

/// The overhead target: what ccd may add to a query at p50.
const OVERHEAD_TARGET_MS: f64 = 5.0;

/// What one query measurement runs.
pub(crate) struct QueryPlan {
    pub(crate) requests: u32,
    pub(crate) block: u32,
    pub(crate) queries: u32,
    pub(crate) pool_sizes: Vec<u32>,
    pub(crate) warmup: u32,
    pub(crate) timeout: Duration,
    pub(crate) max_time: Duration,
}

/// The stub agent script and its transcript in a temporary directory, which is also where
/// every query runs (the `cwd` of `query.run` and of the bare runs).
struct StubAgent {
    script: PathBuf,
    cwd: PathBuf,
    /// The transcript's `result` text: what every query must answer.
    expected: String,
    _dir: TempDir,
}

impl StubAgent {
    fn create(keep_temp: bool) -> Result<StubAgent> {
        let expected = STUB_TRANSCRIPT
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v.get("type").and_then(Value::as_str) == Some("result"))
            .and_then(|v| v.get("result").and_then(Value::as_str).map(str::to_string))
            .context("the embedded stub transcript has no `result` message with a result text")?;
        let dir = TempDir::new("agent", keep_temp)?;
        let transcript = dir.path.join("transcript.jsonl");
        fs::write(&transcript, STUB_TRANSCRIPT)
            .with_context(|| format!("writing {}", transcript.display()))?;
        let script = dir.path.join("agent.sh");
        write_executable(&script, STUB_SCRIPT)?;
        let cwd = dir.path.clone();
        Ok(StubAgent {
            script,
            cwd,
            expected,
            _dir: dir,
        })
    }

    /// Runs the stub once the way the daemon does: spawn with the agent arguments, write the
    /// prompt to stdin and close it, read stdout to EOF, wait. `Ok(Err)` is a run that went
    /// wrong (exit status, output); `Err` means the stub could not be run at all.
    fn run_once(&self, prompt: &str) -> Attempt {
        use std::io::Read as _;
        use std::os::unix::process::CommandExt as _;

        let mut child = Command::new(&self.script)
            .args(AGENT_ARGS)
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("running the stub agent {}", self.script.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            match stdin.write_all(prompt.as_bytes()) {
                // A child that exits without reading its prompt is not an error (as in ccd).
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e).context("writing the prompt to the stub agent");
                }
                _ => {}
            }
        }
        let mut output = Vec::with_capacity(STUB_TRANSCRIPT.len() + 1);
        let read = match child.stdout.take() {
            Some(mut stdout) => stdout.read_to_end(&mut output).map(|_| ()),
            None => Ok(()),
        };
        if let Err(e) = read {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).context("reading the stub agent's output");
        }
        let status = child.wait().context("waiting for the stub agent")?;
        Ok(if !status.success() {
            Err(format!("the stub agent exited with {status}"))
        } else if output != STUB_TRANSCRIPT.as_bytes() {
            Err(format!(
                "the stub agent printed {} bytes instead of its {}-byte transcript",
                output.len(),
                STUB_TRANSCRIPT.len()
            ))
        } else {
            Ok(())
        })
    }

    fn cwd_str(&self) -> Result<&str> {
        self.cwd
            .to_str()
            .with_context(|| format!("the temporary path {} is not UTF-8", self.cwd.display()))
    }
}

/// One `query.run` round trip. `Ok(Err)` is a JSON-RPC error or a wrong result; `Err` means
/// the connection is unusable.
fn query_once(client: &mut Client, prompt: &str, cwd: &str, expected: &str) -> Attempt {
    client.next_id += 1;
    let id = client.next_id;
    let mut line = json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "query.run",
        "params": {"prompt": prompt, "cwd": cwd},
    })
    .to_string();
    line.push('\n');
    Ok(match client.round_trip(&line, id)? {
        Body::Result(v) => {
            let is_error = v.get("is_error").and_then(Value::as_bool);
            let result = v.get("result").and_then(Value::as_str);
            if is_error == Some(false) && result == Some(expected) {
                Ok(())
            } else {
                Err(format!(
                    "unexpected query.run result (expected is_error false and result {expected:?}): {}",
                    clip(&v.to_string())
                ))
            }
        }
        Body::Error { msg, .. } => Err(msg),
        Body::Other => bail!("reply {id} has neither `result` nor `error`"),
    })
}

/// A closed loop over a shared budget: `threads` threads each build their own request
/// function with `make`, run `warmup` unmeasured requests, wait until all are ready, then take
/// requests from the shared budget of `total` one at a time and time each. The request function
/// returns `Ok(Err)` for a failed request and `Err` for a broken connection (which ends that
/// thread). Bounded by `max_time` after the start, and by `max_time` for the setup.
fn shared_budget_loop<F, W>(
    label: &str,
    threads: u32,
    total: u64,
    warmup: u32,
    max_time: Duration,
    make: F,
) -> Result<PhaseResult>
where
    F: Fn(u32) -> Result<W> + Sync,
    W: FnMut(Stage) -> Attempt,
{
    let budget = Budget::new(total);
    let mut result = run_clients(
        label,
        threads,
        threads,
        "bench-q",
        max_time,
        "set up and warmed up within",
        |t, ready, gate| {
            vec![budget_worker(
                t, warmup, max_time, &make, &budget, ready, gate,
            )]
        },
    )?;
    result.skipped = budget.left();
    Ok(result)
}

/// One client thread of [`shared_budget_loop`].
fn budget_worker<F, W>(
    t: u32,
    warmup: u32,
    max_time: Duration,
    make: &F,
    budget: &Budget,
    ready: &mpsc::Sender<()>,
    gate: &Gate,
) -> WorkerOut
where
    F: Fn(u32) -> Result<W>,
    W: FnMut(Stage) -> Attempt,
{
    let mut out = WorkerOut::default();
    let setup = make(t).and_then(|mut request| {
        out.warm_up(warmup, |_| request(Stage::Warmup))?;
        Ok(request)
    });
    // A failed setup loses the connection (not requests of the budget); the others go on.
    let Some(mut request) = out.report_ready(setup, ready, gate, 1) else {
        return out;
    };
    let deadline = Instant::now() + max_time;
    while !interrupted() && Instant::now() < deadline && budget.take(1) == 1 {
        let t0 = Instant::now();
        let attempt = request(Stage::Measure);
        if !out.record(attempt, t0.elapsed(), 1) {
            break;
        }
    }
    out.end = Some(Instant::now());
    out
}

/// The prompt of the `i`-th query of thread `t` in a throughput phase (warm-up or measured).
fn throughput_prompt(t: u32, stage: Stage, i: u64) -> String {
    match stage {
        Stage::Warmup => format!("ccd-bench warm-up c{t} #{i}"),
        Stage::Measure => format!("ccd-bench query c{t} #{i}"),
    }
}

/// `threads` connections to the daemon, sharing `total` `query.run` calls.
fn daemon_query_phase(
    label: &str,
    daemon: &Daemon,
    stub: &StubAgent,
    threads: u32,
    total: u64,
    plan: &QueryPlan,
) -> Result<PhaseResult> {
    let cwd = stub.cwd_str()?;
    let socket = &daemon.socket;
    let expected = stub.expected.as_str();
    shared_budget_loop(label, threads, total, plan.warmup, plan.max_time, |t| {
        let mut client = Client::connect(socket, plan.timeout)?;
        let mut i = 0u64;
        Ok(move |stage: Stage| {
            i += 1;
            let prompt = throughput_prompt(t, stage, i);
            query_once(&mut client, &prompt, cwd, expected)
        })
    })
}

/// `threads` threads running the stub directly, sharing `total` runs.
fn bare_stub_phase(
    label: &str,
    stub: &StubAgent,
    threads: u32,
    total: u64,
    plan: &QueryPlan,
) -> Result<PhaseResult> {
    shared_budget_loop(label, threads, total, plan.warmup, plan.max_time, |t| {
        let mut i = 0u64;
        Ok(move |stage: Stage| {
            i += 1;
            let prompt = throughput_prompt(t, stage, i);
            stub.run_once(&prompt)
        })
    })
}

/// Per-query overhead: R bare stub runs and R `query.run` calls on one connection (to a daemon
/// with pool size 1), in alternating blocks (bare, query, bare, query, …) so that both see the
/// same conditions on a machine whose load drifts. A path's `wall` is the sum of its own round
/// trips (so its throughput is 1 / mean latency).
fn overhead_phase(daemon: &Daemon, stub: &StubAgent, plan: &QueryPlan) -> Result<QueryOverhead> {
    /// Runs queries `done..done + len` of the `n` of one path, one after the other, timing
    /// each. `false` when the path must stop (time is up, a signal, a broken connection); what
    /// it did not do then is counted as skipped (or lost).
    fn run_block(
        w: &mut WorkerOut,
        done: u64,
        len: u64,
        n: u64,
        deadline: Instant,
        mut run: impl FnMut(&str) -> Attempt,
    ) -> bool {
        for j in 0..len {
            if interrupted() || Instant::now() >= deadline {
                w.skipped += n - done - j;
                return false;
            }
            let prompt = format!("ccd-bench query #{}", done + j);
            let t0 = Instant::now();
            let attempt = run(&prompt);
            if !w.record(attempt, t0.elapsed(), n - done - j) {
                return false;
            }
        }
        true
    }
    fn finish(label: &str, w: WorkerOut) -> PhaseResult {
        let wall = Duration::from_nanos(w.lat_ns.iter().sum());
        PhaseResult {
            label: label.to_string(),
            connections: 1,
            ok: w.ok,
            rpc_errors: w.rpc_errors,
            warmup_failed: w.warmup_failed,
            lost: w.lost,
            skipped: w.skipped,
            wall,
            lat: Latency::from_samples(w.lat_ns),
            messages: w.messages.into_iter().map(|m| (m, 1)).collect(),
        }
    }

    check_interrupted()?;
    let cwd = stub.cwd_str()?;
    let expected = stub.expected.as_str();
    let mut client = Client::connect(&daemon.socket, plan.timeout)?;
    let n = u64::from(plan.requests);
    let mut bare = WorkerOut {
        lat_ns: Vec::with_capacity(plan.requests as usize),
        ..WorkerOut::default()
    };
    let mut via = WorkerOut {
        lat_ns: Vec::with_capacity(plan.requests as usize),
        ..WorkerOut::default()
    };
    for i in 0..plan.warmup {
        check_interrupted()?;
        let prompt = format!("ccd-bench warm-up #{i}");
        if let Err(msg) = stub.run_once(&prompt).context("warming up the bare stub")? {
            bare.warmup_failed += 1;
            bare.note(format!("warm-up: {msg}"));
        }
        if let Err(msg) =
            query_once(&mut client, &prompt, cwd, expected).context("warming up query.run")?
        {
            via.warmup_failed += 1;
            via.note(format!("warm-up: {msg}"));
        }
    }
    let block = u64::from(plan.block).max(1);
    let deadline = Instant::now() + plan.max_time;
    // Both paths have finished `done` requests; each block runs `len` bare, then `len` via ccd.
    let mut done = 0u64;
    while done < n {
        let len = block.min(n - done);
        if !run_block(&mut bare, done, len, n, deadline, |prompt| {
            stub.run_once(prompt)
        }) {
            via.skipped += n - done;
            break;
        }
        if !run_block(&mut via, done, len, n, deadline, |prompt| {
            query_once(&mut client, prompt, cwd, expected)
        }) {
            bare.skipped += n - done - len;
            break;
        }
        done += len;
    }
    Ok(QueryOverhead {
        bare: finish("bare stub (sequential)", bare),
        daemon: finish("query.run (ccd, pool 1, 1 conn)", via),
    })
}

/// Starts a daemon whose agent is the stub, with this pool size.
fn agent_daemon(
    opts: &DaemonOpts,
    stub: &StubAgent,
    pool_size: u32,
    timeout: Duration,
) -> Result<Daemon> {
    let env = vec![
        (
            "CCD_AGENT_CMD".to_string(),
            stub.script.as_os_str().to_owned(),
        ),
        (
            "CCD_EXECUTOR_POOL_SIZE".to_string(),
            pool_size.to_string().into(),
        ),
        (
            "CCD_EXECUTOR_QUEUE_SIZE".to_string(),
            QUERY_QUEUE_SIZE.to_string().into(),
        ),
    ];
    let (daemon, _) = Daemon::start_with_env(opts, start_timeout(timeout), env)
        .with_context(|| format!("starting a daemon with executor pool size {pool_size}"))?;
    Ok(daemon)
}

/// Per-query overhead: the bare stub against `query.run` with pool size 1, both sequential.
struct QueryOverhead {
    bare: PhaseResult,
    daemon: PhaseResult,
}

impl QueryOverhead {
    /// (daemon − bare) in milliseconds, at p50 and at p99.
    fn diff_ms(&self) -> Option<(f64, f64)> {
        let (d, b) = (self.daemon.lat.as_ref()?, self.bare.lat.as_ref()?);
        let ms = |a: u64, b: u64| (a as f64 - b as f64) / 1e6;
        Some((ms(d.p50, b.p50), ms(d.p99, b.p99)))
    }

    fn verdict(&self) -> String {
        match self.diff_ms() {
            Some((p50, _)) if p50 <= OVERHEAD_TARGET_MS => {
                format!("met ({p50:+.2} ms ≤ {OVERHEAD_TARGET_MS} ms at p50)")
            }
            Some((p50, _)) => {
                format!("NOT met ({p50:+.2} ms > {OVERHEAD_TARGET_MS} ms at p50)")
            }
            None => "unknown (no latency samples)".to_string(),
        }
    }
}

/// Throughput at one pool size: the daemon, and the bare stub with as many threads.
struct PoolRun {
    pool_size: u32,
    daemon: PhaseResult,
    bare: PhaseResult,
}

impl PoolRun {
    fn vs_bare(&self) -> Option<f64> {
        ratio(self.daemon.throughput(), self.bare.throughput())
    }

    /// Its row of the throughput tables: pool, conns, queries, errors; throughput, p50 and p99
    /// of ccd, then of the bare stub; their throughput ratio.
    fn cells(&self) -> [String; 11] {
        let (dp50, dp99, _) = fmt_lat(self.daemon.lat.as_ref());
        let (bp50, bp99, _) = fmt_lat(self.bare.lat.as_ref());
        [
            self.pool_size.to_string(),
            self.daemon.connections.to_string(),
            self.daemon.requests().to_string(),
            (self.daemon.failed() + self.bare.failed()).to_string(),
            group_thousands(self.daemon.throughput()),
            dp50,
            dp99,
            group_thousands(self.bare.throughput()),
            bp50,
            bp99,
            fmt_ratio(self.vs_bare()),
        ]
    }
}

/// A line of the plain-text throughput table (its header or a [`PoolRun::cells`] row).
fn pool_text_row<T: std::fmt::Display>(c: &[T; 11]) -> String {
    format!(
        "  {:>4} {:>5} {:>7} {:>6} {:>10} {:>10} {:>10} | {:>10} {:>10} {:>10} | {:>9}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
    )
}

pub(crate) struct QuerySuite {
    overhead: QueryOverhead,
    /// Block size of the overhead measurement.
    block: u32,
    pools: Vec<PoolRun>,
    daemon_text: String,
}

impl QuerySuite {
    pub(crate) fn failures(&self) -> u64 {
        self.overhead.bare.failed()
            + self.overhead.daemon.failed()
            + self
                .pools
                .iter()
                .map(|p| p.daemon.failed() + p.bare.failed())
                .sum::<u64>()
    }
}

pub(crate) fn query_suite(
    plan: &QueryPlan,
    opts: &DaemonOpts,
    out: &mut Out,
) -> Result<QuerySuite> {
    check_interrupted()?;
    let stub = StubAgent::create(opts.keep_temp)?;
    out.line(&format!(
        "query: stub agent {} (prints a {}-byte stream-json transcript), agent args `{}`",
        stub.script.display(),
        STUB_TRANSCRIPT.len(),
        AGENT_ARGS.join(" ")
    ));

    // 1. Overhead per query, sequential.
    let daemon = agent_daemon(opts, &stub, 1, plan.timeout)?;
    out.line(&daemon.describe());
    let daemon_text = daemon.markdown_description();
    let overhead = overhead_phase(&daemon, &stub, plan)?;
    drop(daemon);
    out.line(&overhead.bare.summary());
    out.line(&overhead.daemon.summary());
    if let Some((p50, p99)) = overhead.diff_ms() {
        out.line(&format!(
            "  overhead per query (ccd − bare stub): p50 {p50:+.2} ms, p99 {p99:+.2} ms; target ≤ {OVERHEAD_TARGET_MS} ms at p50: {}",
            overhead.verdict()
        ));
    }
    check_interrupted()?;

    // 2. Throughput by pool size.
    let q = u64::from(plan.queries);
    let mut pools = Vec::with_capacity(plan.pool_sizes.len());
    for &pool_size in &plan.pool_sizes {
        let conns = pool_size.saturating_mul(2);
        let daemon = agent_daemon(opts, &stub, pool_size, plan.timeout)?;
        out.line(&daemon.describe());
        let d = daemon_query_phase(
            &format!("query.run (ccd, pool {pool_size})"),
            &daemon,
            &stub,
            conns,
            q,
            plan,
        )?;
        out.line(&d.summary());
        drop(daemon);
        check_interrupted()?;
        let b = bare_stub_phase(
            &format!("bare stub ({conns} threads)"),
            &stub,
            conns,
            q,
            plan,
        )?;
        out.line(&b.summary());
        let run = PoolRun {
            pool_size,
            daemon: d,
            bare: b,
        };
        out.line(&format!(
            "  ratio, pool {pool_size}, {conns} conn: ccd throughput / bare stub throughput = {}",
            fmt_ratio(run.vs_bare())
        ));
        pools.push(run);
        check_interrupted()?;
    }

    let suite = QuerySuite {
        overhead,
        block: plan.block.min(plan.requests),
        pools,
        daemon_text,
    };
    out.line(&query_summary(&suite));
    Ok(suite)
}

/// The plain-text tables printed at the end of a query run.
fn query_summary(q: &QuerySuite) -> String {
    let mut s = String::new();
    let o = &q.overhead;
    let _ = writeln!(
        s,
        "\nquery overhead (sequential, 1 connection, pool size 1; alternating blocks of {}):",
        q.block
    );
    let _ = writeln!(
        s,
        "  {:<36} {:>7} {:>6} {:>10} {:>10} {:>10}",
        "", "queries", "errors", "p50", "p99", "max"
    );
    for r in [&o.bare, &o.daemon] {
        let (p50, p99, max) = fmt_lat(r.lat.as_ref());
        let _ = writeln!(
            s,
            "  {:<36} {:>7} {:>6} {p50:>10} {p99:>10} {max:>10}",
            r.label,
            r.requests(),
            r.failed()
        );
    }
    if let Some((p50, p99)) = o.diff_ms() {
        let _ = writeln!(
            s,
            "  {:<36} {:>7} {:>6} {:>10} {:>10}",
            "overhead (ccd − bare)",
            "",
            "",
            format!("{p50:+.2} ms"),
            format!("{p99:+.2} ms")
        );
    }
    let _ = writeln!(
        s,
        "  target: ≤ {OVERHEAD_TARGET_MS} ms per query at p50: {}",
        o.verdict()
    );
    let _ = writeln!(
        s,
        "\nquery throughput by executor pool size (closed loop, 2 connections per pool slot):"
    );
    let header = [
        "pool", "conns", "queries", "errors", "ccd q/s", "ccd p50", "ccd p99", "bare q/s",
        "bare p50", "bare p99", "ccd/bare",
    ];
    let _ = writeln!(s, "{}", pool_text_row(&header));
    for p in &q.pools {
        let _ = writeln!(s, "{}", pool_text_row(&p.cells()));
    }
    s
}

/// The `### Agent queries` section of the markdown report.
pub(crate) fn query_markdown(q: &QuerySuite) -> String {
    let mut s = String::new();
    let o = &q.overhead;
    let _ = writeln!(s, "\n### Agent queries (`query.run`, stub agent)\n");
    let _ = writeln!(
        s,
        "- Agent: a shell script that reads the prompt to EOF and `cat`s a captured {}-byte \
         Claude Code `stream-json` transcript; run with `{}`.",
        STUB_TRANSCRIPT.len(),
        AGENT_ARGS.join(" ")
    );
    let _ = writeln!(
        s,
        "- Daemon: {}, `CCD_EXECUTOR_QUEUE_SIZE={QUERY_QUEUE_SIZE}`; a fresh daemon per pool size. \
         Every query creates a session and records a turn.",
        q.daemon_text
    );
    let _ = writeln!(
        s,
        "- *Bare stub*: ccd-bench itself spawns the stub with the same arguments and working \
         directory, writes the prompt, closes stdin, reads stdout to EOF and waits for it."
    );
    let _ = writeln!(
        s,
        "\n#### Overhead per query (sequential, one connection, pool size 1)\n\n\
         Sequential blocks of {} bare stub runs and {} `query.run` calls alternate, so that \
         both see the same machine conditions.\n",
        q.block, q.block
    );
    let _ = writeln!(s, "| Path | Queries | Errors | p50 | p99 | max |");
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
    for r in [&o.bare, &o.daemon] {
        let (p50, p99, max) = fmt_lat(r.lat.as_ref());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {p50} | {p99} | {max} |",
            r.label,
            r.requests(),
            r.failed()
        );
    }
    if let Some((p50, p99)) = o.diff_ms() {
        let _ = writeln!(
            s,
            "| **overhead (ccd − bare)** | | | **{p50:+.2} ms** | {p99:+.2} ms | |"
        );
    }
    let _ = writeln!(
        s,
        "\nTarget ≤ {OVERHEAD_TARGET_MS} ms per query at p50: {}.",
        o.verdict()
    );
    let _ = writeln!(
        s,
        "\n#### Throughput by executor pool size (closed loop, 2 connections per pool slot)\n\n\
         A row's queries are shared by 2×P connections to a fresh daemon with \
         `CCD_EXECUTOR_POOL_SIZE=P`; the bare stub does as many runs with 2×P threads. ccd runs at most P agents at once (the \
         others queue), the bare stub runs 2×P, so at small P the ratio is below 1 by design.\n"
    );
    let _ = writeln!(
        s,
        "| Pool | Conns | Queries | Errors | ccd (queries/s) | ccd p50 | ccd p99 | bare stub (runs/s) | bare p50 | bare p99 | ccd / bare |"
    );
    let _ = writeln!(s, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for p in &q.pools {
        let _ = writeln!(s, "| {} |", p.cells().join(" | "));
    }
    s
}
