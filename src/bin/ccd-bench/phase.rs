//! The closed-loop engine: N connections send requests (one at a time, or `depth` in flight)
//! for a bounded count and time, with blocking threads or multiplexed on one tokio thread, and
//! every latency is kept for exact percentiles.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::cli::{Driver, Limits, UPSERT_VALUE};
use crate::client::{
    Attempt, Client, Expect, clip, judge, quick_success, reply_body, reply_id, reply_object,
};
use crate::fmt::{fmt_ns, group_thousands, nanos};
use crate::interrupt::{check_interrupted, interrupted};
use crate::latency::Latency;

/// The prompt of every `query.run` of the breaker benchmark (plain ASCII: no escaping needed).
pub(crate) const REFUSED_PROMPT: &str = "x";

/// What a phase sends.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Ping,
    /// `setting.upsert` with key `<prefix>.c<conn>.<i>` (warm-up: `bench.warm.c<conn>.<i>`).
    Upsert {
        prefix: String,
    },
    /// `session.create` with no params (publishes one `session.created` event).
    SessionCreate,
    /// `query.run` with the prompt `x` and nothing else (refused while the breaker is open).
    QueryRun,
}

/// The `session.create` request line (with its `\n`).
pub(crate) fn session_create_line(id: u64) -> String {
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"session.create\",\"params\":{{}}}}\n")
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Stage {
    Warmup,
    Measure,
}

impl Op {
    /// The NDJSON request line (with its `\n`).
    pub(crate) fn request_line(&self, conn: u32, stage: Stage, i: u32, id: u64) -> String {
        match self {
            Op::Ping => format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"system.ping\",\"params\":{{}}}}\n"
            ),
            Op::SessionCreate => session_create_line(id),
            Op::QueryRun => format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"query.run\",\"params\":{{\"prompt\":\"{REFUSED_PROMPT}\"}}}}\n"
            ),
            Op::Upsert { prefix } => {
                let key = match stage {
                    Stage::Warmup => format!("bench.warm.c{conn}.{i}"),
                    Stage::Measure => format!("{prefix}.c{conn}.{i}"),
                };
                // Keys and value are plain ASCII without quotes or backslashes: no escaping needed.
                format!(
                    "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"setting.upsert\",\"params\":{{\"key\":\"{key}\",\"value\":\"{UPSERT_VALUE}\"}}}}\n"
                )
            }
        }
    }
}

pub(crate) struct Phase {
    pub(crate) label: String,
    pub(crate) socket: PathBuf,
    pub(crate) op: Op,
    pub(crate) expect: Expect,
    pub(crate) connections: u32,
    pub(crate) requests: u32,
    pub(crate) limits: Limits,
    pub(crate) driver: Driver,
}

#[derive(Clone, Debug)]
pub(crate) struct PhaseResult {
    pub(crate) label: String,
    pub(crate) connections: u32,
    /// Requests that got a successful reply.
    pub(crate) ok: u64,
    /// Requests answered with a JSON-RPC error (or an unexpected result).
    pub(crate) rpc_errors: u64,
    /// Unmeasured warm-up requests answered with a JSON-RPC error (still a failure).
    pub(crate) warmup_failed: u64,
    /// Requests lost to a broken connection: connect/warm-up failure, I/O error, timeout,
    /// protocol violation.
    pub(crate) lost: u64,
    /// Requests not sent because the phase hit --max-time or was interrupted.
    pub(crate) skipped: u64,
    pub(crate) wall: Duration,
    pub(crate) lat: Option<Latency>,
    /// Distinct error messages with how many connections reported them.
    pub(crate) messages: BTreeMap<String, u32>,
}

impl PhaseResult {
    /// Sums what the client threads of a phase measured; `wall` runs from `start` (their
    /// release) to the end of the last one.
    pub(crate) fn from_workers(
        label: &str,
        connections: u32,
        start: Instant,
        workers: Vec<WorkerOut>,
    ) -> PhaseResult {
        let mut result = PhaseResult {
            label: label.to_string(),
            connections,
            ok: 0,
            rpc_errors: 0,
            warmup_failed: 0,
            lost: 0,
            skipped: 0,
            wall: Duration::ZERO,
            lat: None,
            messages: BTreeMap::new(),
        };
        let mut samples = Vec::with_capacity(workers.iter().map(|w| w.lat_ns.len()).sum());
        let mut end = start;
        for w in workers {
            result.ok += w.ok;
            result.rpc_errors += w.rpc_errors;
            result.warmup_failed += w.warmup_failed;
            result.lost += w.lost;
            result.skipped += w.skipped;
            if let Some(e) = w.end {
                end = end.max(e);
            }
            for m in w.messages {
                *result.messages.entry(m).or_default() += 1;
            }
            samples.extend(w.lat_ns);
        }
        result.wall = end.duration_since(start);
        result.lat = Latency::from_samples(samples);
        result
    }

    /// Measured requests that were sent (answered or lost); skipped ones are not.
    pub(crate) fn requests(&self) -> u64 {
        self.ok + self.rpc_errors + self.lost
    }

    pub(crate) fn failed(&self) -> u64 {
        self.rpc_errors + self.warmup_failed + self.lost
    }

    pub(crate) fn throughput(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    pub(crate) fn summary(&self) -> String {
        let mut s = format!(
            "{:<34} {:>4} conn: {:>8} ok, {} failed, {:>8.3} s → {:>9} req/s",
            self.label,
            self.connections,
            self.ok,
            self.failed(),
            self.wall.as_secs_f64(),
            group_thousands(self.throughput()),
        );
        match &self.lat {
            Some(l) => {
                let _ = write!(
                    s,
                    "; p50 {}, p99 {}, max {}",
                    fmt_ns(l.p50),
                    fmt_ns(l.p99),
                    fmt_ns(l.max)
                );
            }
            None => s.push_str("; no latency samples"),
        }
        if self.failed() > 0 {
            let _ = write!(
                s,
                "\n  FAILED: {} JSON-RPC error replies, {} requests lost to broken connections, \
                 {} error replies to warm-up requests",
                self.rpc_errors, self.lost, self.warmup_failed
            );
        }
        if self.skipped > 0 {
            let why = if interrupted() {
                "interrupted"
            } else {
                "--max-time reached"
            };
            let _ = write!(
                s,
                "\n  warning: {why}; {} requests were not sent",
                self.skipped
            );
        }
        for (msg, conns) in self.messages.iter().take(5) {
            let _ = write!(s, "\n  error (on {conns} connection(s)): {msg}");
        }
        if self.messages.len() > 5 {
            let _ = write!(
                s,
                "\n  … and {} other distinct errors",
                self.messages.len() - 5
            );
        }
        s
    }
}

/// What one client thread measured.
#[derive(Default)]
pub(crate) struct WorkerOut {
    pub(crate) lat_ns: Vec<u64>,
    pub(crate) ok: u64,
    pub(crate) rpc_errors: u64,
    pub(crate) warmup_failed: u64,
    pub(crate) lost: u64,
    pub(crate) skipped: u64,
    pub(crate) end: Option<Instant>,
    pub(crate) messages: Vec<String>,
}

impl WorkerOut {
    pub(crate) fn note(&mut self, msg: String) {
        if self.messages.len() < 3 && !self.messages.contains(&msg) {
            self.messages.push(msg);
        }
    }

    /// Runs `n` unmeasured warm-up requests (`request(i)`, `i` from 0) and counts the failed
    /// ones; stops early on a signal. `Err` when the connection broke.
    pub(crate) fn warm_up(
        &mut self,
        n: u32,
        mut request: impl FnMut(u32) -> Attempt,
    ) -> Result<()> {
        for i in 0..n {
            if interrupted() {
                break;
            }
            if let Err(msg) = request(i)? {
                self.warmup_failed += 1;
                self.note(format!("warm-up: {msg}"));
            }
        }
        Ok(())
    }

    /// Counts one measured request that took `dt`: a success with its latency, or a failure.
    /// `false` when the connection broke: that costs `lost_if_broken` requests (this one
    /// included), and the caller's loop must stop.
    pub(crate) fn record(&mut self, attempt: Attempt, dt: Duration, lost_if_broken: u64) -> bool {
        match attempt {
            Ok(Ok(())) => {
                self.ok += 1;
                self.lat_ns.push(nanos(dt));
                true
            }
            Ok(Err(msg)) => {
                self.rpc_errors += 1;
                self.note(msg);
                true
            }
            Err(e) => {
                self.lost += lost_if_broken;
                self.note(format!("{e:#}"));
                false
            }
        }
    }

    /// Reports the client thread in as ready, even when its setup (connect, warm-up) failed so
    /// that the phase does not wait for it, then waits for the gate. `None` when the thread must
    /// not run: its setup failed, which loses `at_stake` requests, or the phase was aborted
    /// (and reports nothing).
    pub(crate) fn report_ready<C>(
        &mut self,
        setup: Result<C>,
        ready: &mpsc::Sender<()>,
        gate: &Gate,
        at_stake: u64,
    ) -> Option<C> {
        let _ = ready.send(());
        let gate_state = gate.wait();
        match setup {
            Err(e) => {
                self.lost = at_stake;
                self.note(format!("{e:#}"));
                None
            }
            Ok(set_up) => (gate_state == GateState::Open).then_some(set_up),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateState {
    Closed,
    Open,
    Abort,
}

/// Holds every client thread until all connections are up and warmed up.
pub(crate) struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            state: Mutex::new(GateState::Closed),
            cv: Condvar::new(),
        }
    }
    pub(crate) fn set(&self, s: GateState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
        self.cv.notify_all();
    }
    fn wait(&self) -> GateState {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while *s == GateState::Closed {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        *s
    }
}

/// Waits for `n` ready reports, at most `limit`; returns how many came.
pub(crate) fn wait_ready(rx: &mpsc::Receiver<()>, n: u32, limit: Duration) -> u32 {
    let deadline = Instant::now() + limit;
    let mut ready = 0;
    while ready < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(()) => ready += 1,
            Err(_) => break,
        }
    }
    ready
}

/// Requests shared by the client threads of a phase, taken a few at a time.
pub(crate) struct Budget {
    total: u64,
    taken: AtomicU64,
}

impl Budget {
    pub(crate) fn new(total: u64) -> Budget {
        Budget {
            total,
            taken: AtomicU64::new(0),
        }
    }

    /// Takes up to `n` requests; returns how many it got (0 once the budget is spent).
    pub(crate) fn take(&self, n: u64) -> u64 {
        let total = self.total;
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                (t < total).then(|| t + n.min(total - t))
            })
            .map_or(0, |t| n.min(total - t))
    }

    /// Requests never taken (the phase stopped early).
    pub(crate) fn left(&self) -> u64 {
        self.total.saturating_sub(self.taken.load(Ordering::SeqCst))
    }
}

/// Runs the client threads of a phase, `client(i, ready, gate)` in thread `{thread_name}{i}`
/// for each of the `threads`: each connects and warms up its connection(s) and reports in once
/// per connection; once all `connections` have (within `max_time`), the gate releases them
/// together, and what they measured is summed, `wall` from the release to the end of the last
/// one. `not_ready` says, for the error, what the threads did not all manage in time.
pub(crate) fn run_clients<F>(
    label: &str,
    connections: u32,
    threads: u32,
    thread_name: &str,
    max_time: Duration,
    not_ready: &str,
    client: F,
) -> Result<PhaseResult>
where
    F: Fn(u32, &mpsc::Sender<()>, &Gate) -> Vec<WorkerOut> + Sync,
{
    check_interrupted()?;
    let gate = Gate::new();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads as usize);
        for i in 0..threads {
            let ready = ready_tx.clone();
            let (gate, client) = (&gate, &client);
            let spawned = thread::Builder::new()
                .name(format!("{thread_name}{i}"))
                .spawn_scoped(s, move || client(i, &ready, gate));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    gate.set(GateState::Abort);
                    return Err(e).context("spawning a client thread");
                }
            }
        }
        drop(ready_tx);
        // Every connection is reported exactly once when it is connected and warmed up (or has
        // failed).
        let ready = wait_ready(&ready_rx, connections, max_time);
        if ready < connections {
            gate.set(GateState::Abort);
            bail!(
                "{label}: only {ready} of {connections} connections were {not_ready} {}",
                humantime::format_duration(max_time)
            );
        }
        let start = Instant::now();
        gate.set(GateState::Open);
        // Join them all before giving up on one that panicked.
        let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        let outs = joined
            .into_iter()
            .map(|w| w.map_err(|_| anyhow!("{label}: a client thread panicked")))
            .collect::<Result<Vec<_>>>()?;
        Ok(PhaseResult::from_workers(
            label,
            connections,
            start,
            outs.into_iter().flatten().collect(),
        ))
    })
}

/// Runs one closed-loop phase: its N connections connect and warm up, then are released
/// together; each sends its R requests (one at a time, or `depth` in flight when multiplexed)
/// and times every round trip.
pub(crate) fn run_phase(p: &Phase) -> Result<PhaseResult> {
    let not_ready = "connected and warmed up within --max-time";
    match p.driver {
        Driver::Threads => run_clients(
            &p.label,
            p.connections,
            p.connections,
            "bench-c",
            p.limits.max_time,
            not_ready,
            |conn, ready, gate| vec![worker(p, conn, ready, gate)],
        ),
        Driver::Multiplexed { threads, depth } => {
            let threads = threads.clamp(1, p.connections);
            run_clients(
                &p.label,
                p.connections,
                threads,
                "bench-m",
                p.limits.max_time,
                not_ready,
                |t, ready, gate| {
                    let conns: Vec<u32> = (t..p.connections).step_by(threads as usize).collect();
                    mux_thread(p, &conns, depth, ready, gate)
                },
            )
        }
    }
}

/// One client thread of [`run_phase`].
fn worker(p: &Phase, conn: u32, ready: &mpsc::Sender<()>, gate: &Gate) -> WorkerOut {
    let requests = p.requests;
    let mut out = WorkerOut {
        lat_ns: Vec::with_capacity(requests as usize),
        ..WorkerOut::default()
    };
    let mut id: u64 = 0;
    let setup = Client::connect(&p.socket, p.limits.timeout).and_then(|mut client| {
        out.warm_up(p.limits.warmup, |i| {
            id += 1;
            let line = p.op.request_line(conn, Stage::Warmup, i, id);
            client.exchange(&line, id, p.expect)
        })?;
        Ok(client)
    });
    let Some(mut client) = out.report_ready(setup, ready, gate, u64::from(requests)) else {
        return out;
    };

    let deadline = Instant::now() + p.limits.max_time;
    for i in 0..requests {
        id += 1;
        let line = p.op.request_line(conn, Stage::Measure, i, id);
        let t0 = Instant::now();
        if t0 >= deadline || interrupted() {
            out.skipped = u64::from(requests - i);
            break;
        }
        let attempt = client.exchange(&line, id, p.expect);
        if !out.record(attempt, t0.elapsed(), u64::from(requests - i)) {
            break;
        }
    }
    out.end = Some(Instant::now());
    out
}

/// One client thread of a multiplexed phase: connects and warms up each of `conns` (reporting
/// each in), waits at the gate, then drives them all at once on one single-threaded runtime.
fn mux_thread(
    p: &Phase,
    conns: &[u32],
    depth: u32,
    ready: &mpsc::Sender<()>,
    gate: &Gate,
) -> Vec<WorkerOut> {
    let requests = u64::from(p.requests);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client thread's tokio runtime");
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            let outs = conns
                .iter()
                .map(|_| {
                    let _ = ready.send(());
                    let mut out = WorkerOut {
                        lost: requests,
                        ..WorkerOut::default()
                    };
                    out.note(format!("{e:#}"));
                    out
                })
                .collect();
            gate.wait();
            return outs;
        }
    };
    let mut set_up: Vec<(WorkerOut, Option<MuxConn>)> = runtime.block_on(async {
        let connecting = conns.iter().map(|&conn| async move {
            let mut out = WorkerOut {
                lat_ns: Vec::with_capacity(p.requests as usize),
                ..WorkerOut::default()
            };
            let mut c = match MuxConn::connect(p, conn).await {
                Ok(c) => Some(c),
                Err(e) => {
                    out.lost = requests;
                    out.note(format!("{e:#}"));
                    None
                }
            };
            if let Some(mut live) = c.take() {
                let warm = live
                    .drive(p, Stage::Warmup, p.limits.warmup, depth, None, &mut out)
                    .await;
                if warm {
                    c = Some(live);
                } else {
                    // The connection broke during warm-up: all its measured requests are lost.
                    out.lost = requests;
                }
            }
            let _ = ready.send(());
            (out, c)
        });
        futures_util::future::join_all(connecting).await
    });
    if gate.wait() != GateState::Open {
        return set_up.into_iter().map(|(out, _)| out).collect();
    }
    let deadline = Instant::now() + p.limits.max_time;
    runtime.block_on(async {
        let driving = set_up.iter_mut().map(|(out, c)| async move {
            if let Some(c) = c {
                c.drive(p, Stage::Measure, p.requests, depth, Some(deadline), out)
                    .await;
                out.end = Some(Instant::now());
            }
        });
        futures_util::future::join_all(driving).await;
    });
    set_up.into_iter().map(|(out, _)| out).collect()
}

/// One connection of a multiplexed phase.
struct MuxConn {
    conn: u32,
    reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    line: String,
    next_id: u64,
}

impl MuxConn {
    async fn connect(p: &Phase, conn: u32) -> Result<MuxConn> {
        let stream =
            tokio::time::timeout(p.limits.timeout, tokio::net::UnixStream::connect(&p.socket))
                .await
                .map_err(|_| anyhow!("timed out connecting to {}", p.socket.display()))?
                .with_context(|| format!("connecting to {}", p.socket.display()))?;
        let (reader, writer) = stream.into_split();
        Ok(MuxConn {
            conn,
            reader: tokio::io::BufReader::new(reader),
            writer,
            line: String::with_capacity(256),
            next_id: 0,
        })
    }

    /// Sends `n` requests of `stage`, keeping up to `depth` in flight (all requests that fit
    /// the window go out in one write), and records each reply in `out`: measured ones with
    /// their latency, warm-up failures as such. Stops sending at `deadline` or on a signal
    /// (the rest count as skipped). `false` when the connection broke, after counting every
    /// request it had not answered (measured stage) as lost.
    async fn drive(
        &mut self,
        p: &Phase,
        stage: Stage,
        mut n: u32,
        depth: u32,
        deadline: Option<Instant>,
        out: &mut WorkerOut,
    ) -> bool {
        use tokio::io::AsyncWriteExt;
        let mut sent = 0u32;
        let mut answered = 0u32;
        let mut inflight: std::collections::HashMap<u64, Instant> =
            std::collections::HashMap::with_capacity(depth as usize);
        let mut batch = String::new();
        let broken = 'drive: loop {
            batch.clear();
            while sent < n && sent - answered < depth {
                if deadline.is_some_and(|d| Instant::now() >= d) || interrupted() {
                    if matches!(stage, Stage::Measure) {
                        out.skipped += u64::from(n - sent);
                    }
                    n = sent;
                    break;
                }
                self.next_id += 1;
                batch.push_str(&p.op.request_line(self.conn, stage, sent, self.next_id));
                inflight.insert(self.next_id, Instant::now());
                sent += 1;
            }
            if !batch.is_empty() {
                let written =
                    tokio::time::timeout(p.limits.timeout, self.writer.write_all(batch.as_bytes()))
                        .await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break anyhow!(e).context("sending requests"),
                    Err(_) => break anyhow!("timed out sending requests"),
                }
            }
            if answered == sent {
                return true;
            }
            // Wait for one reply, then take every reply that has already arrived before the
            // window is refilled: the freed slots then go out in one write, as a pipelining
            // client's would, instead of one system call per reply.
            loop {
                let (id, attempt) = match self.read_reply(p.limits.timeout, p.expect).await {
                    Ok(r) => r,
                    Err(e) => break 'drive e,
                };
                let Some(t0) = inflight.remove(&id) else {
                    break 'drive anyhow!("a reply has id {id}, which is not a request in flight");
                };
                answered += 1;
                match stage {
                    Stage::Measure => {
                        if !out.record(attempt, t0.elapsed(), 1) {
                            break 'drive anyhow!("protocol violation");
                        }
                    }
                    Stage::Warmup => match attempt {
                        Ok(Ok(())) => {}
                        Ok(Err(msg)) => {
                            out.warmup_failed += 1;
                            out.note(format!("warm-up: {msg}"));
                        }
                        Err(e) => break 'drive e,
                    },
                }
                if answered == sent || !self.reader.buffer().contains(&b'\n') {
                    break;
                }
            }
        };
        if matches!(stage, Stage::Measure) {
            out.lost += u64::from(n - answered);
        }
        out.note(format!("{broken:#}"));
        false
    }

    /// Reads lines until a reply (skipping server notifications): its id, and whether it is
    /// what `expect` asks for.
    async fn read_reply(&mut self, timeout: Duration, expect: Expect) -> Result<(u64, Attempt)> {
        use tokio::io::AsyncBufReadExt;
        loop {
            self.line.clear();
            let n = tokio::time::timeout(timeout, self.reader.read_line(&mut self.line))
                .await
                .map_err(|_| anyhow!("timed out waiting for a reply"))?
                .context("reading a reply")?;
            ensure!(
                n > 0 && self.line.ends_with('\n'),
                "the server closed the connection"
            );
            if let Some(id) = quick_success(&self.line, expect) {
                return Ok((id, Ok(Ok(()))));
            }
            let Some(obj) = reply_object(&self.line)? else {
                continue;
            };
            let id = reply_id(&obj).and_then(Value::as_u64).with_context(|| {
                format!("a reply that answers no request: {}", clip(&self.line))
            })?;
            return Ok((id, judge(expect, id, reply_body(&obj))));
        }
    }
}
