//! `unread`: the daemon's memory under clients that ask for large replies and never read them,
//! and what a well-behaved client sees meanwhile.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cli::DaemonOpts;
use crate::client::{Body, Client};
use crate::daemon::{Daemon, start_timeout};
use crate::fmt::{Out, fmt_duration, fmt_kib, fmt_ns, nanos};
use crate::interrupt::interrupted;
use crate::latency::Latency;

const DISCOVER: &str = r#"{"jsonrpc":"2.0","id":1,"method":"rpc.discover"}"#;
const PING_TARGET: Duration = Duration::from_millis(50);
/// Headroom over the budget that the daemon's peak RSS must stay under.
const RSS_HEADROOM_KIB: u64 = 64 * 1024;

pub(crate) struct UnreadPlan {
    pub(crate) connections: u32,
    pub(crate) pipeline: u32,
    pub(crate) batch: u32,
    /// `ipc.max_pending_reply_bytes` to set; `None` leaves the daemon's default (and works
    /// with a daemon that does not know the key).
    pub(crate) budget: Option<u64>,
    /// The budget the verdict is judged against (the daemon's default when not set).
    pub(crate) judged_budget: u64,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) ping_interval: Duration,
    pub(crate) settle: Duration,
    pub(crate) timeout: Duration,
}

pub(crate) struct AttackReport {
    pub(crate) name: &'static str,
    pub(crate) connections: u32,
    pub(crate) request_bytes: usize,
    pub(crate) idle_kib: u64,
    pub(crate) peak_kib: u64,
    /// The highest VmRSS sampled (every 10 ms) and when, from the first connection on.
    pub(crate) sampled_peak: (u64, Duration),
    pub(crate) dropped: u32,
    pub(crate) dropped_after: Duration,
    pub(crate) after_kib: u64,
    pub(crate) settled_after: Duration,
    pub(crate) pings: u64,
    pub(crate) ping_failures: u64,
    pub(crate) over_target: u64,
    pub(crate) latency: Option<Latency>,
}

impl AttackReport {
    pub(crate) fn passed(&self, budget: u64) -> bool {
        self.peak_kib < budget / 1024 + RSS_HEADROOM_KIB
            && self.ping_failures == 0
            && self
                .latency
                .as_ref()
                .is_some_and(|l| l.p99 < nanos(PING_TARGET))
            && self.dropped == self.connections
    }

    pub(crate) fn summary(&self, budget: u64) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} connections, {} bytes of requests on each (as much as the socket takes), none read",
            self.name, self.connections, self.request_bytes
        );
        let _ = writeln!(
            s,
            "  daemon RSS: idle {}, peak (VmHWM) {} (sampled: {} at {}; target: under the {} \
             budget + 64 MiB = {}), {} {} after the last was dropped",
            fmt_kib(self.idle_kib),
            fmt_kib(self.peak_kib),
            fmt_kib(self.sampled_peak.0),
            fmt_duration(self.sampled_peak.1),
            fmt_kib(budget / 1024),
            fmt_kib(budget / 1024 + RSS_HEADROOM_KIB),
            fmt_kib(self.after_kib),
            fmt_duration(self.settled_after),
        );
        let _ = writeln!(
            s,
            "  dropped by the daemon: {} of {} ({} after the first was opened)",
            self.dropped,
            self.connections,
            fmt_duration(self.dropped_after)
        );
        let lat = self.latency.as_ref().map_or_else(
            || "no samples".to_string(),
            |l| {
                format!(
                    "p50 {}  p99 {}  max {}",
                    fmt_ns(l.p50),
                    fmt_ns(l.p99),
                    fmt_ns(l.max)
                )
            },
        );
        let _ = writeln!(
            s,
            "  a well-behaved client's system.ping meanwhile: {} pings, {lat}, {} over 50 ms, {} failed (target: p99 under 50 ms)",
            self.pings, self.over_target, self.ping_failures
        );
        let _ = write!(
            s,
            "  verdict: {}",
            if self.passed(budget) { "PASS" } else { "FAIL" }
        );
        s
    }
}

/// Both attacks, each on a fresh daemon.
pub(crate) fn unread_suite(
    plan: &UnreadPlan,
    opts: &DaemonOpts,
    out: &mut Out,
) -> Result<Vec<AttackReport>> {
    raise_nofile();
    let pipeline = format!("{DISCOVER}\n").repeat(plan.pipeline as usize);
    let batch = format!("[{}]\n", vec![DISCOVER; plan.batch as usize].join(","));
    let mut reports = Vec::new();
    for (name, payload) in [
        ("pipelined rpc.discover", pipeline.as_bytes()),
        ("one batch of rpc.discover", batch.as_bytes()),
    ] {
        let report = attack(plan, opts, name, payload, out)?;
        out.line(&report.summary(plan.judged_budget));
        reports.push(report);
        if interrupted() {
            bail!("interrupted");
        }
    }
    Ok(reports)
}

fn attack(
    plan: &UnreadPlan,
    opts: &DaemonOpts,
    name: &'static str,
    payload: &[u8],
    out: &mut Out,
) -> Result<AttackReport> {
    let mut env: Vec<(String, OsString)> = vec![(
        "CCD_IPC_MAX_CONNECTIONS".into(),
        (plan.connections + 64).to_string().into(),
    )];
    if let Some(b) = plan.budget {
        env.push((
            "CCD_IPC_MAX_PENDING_REPLY_BYTES".into(),
            b.to_string().into(),
        ));
    }
    if let Some(t) = plan.write_timeout {
        env.push((
            "CCD_IPC_WRITE_TIMEOUT_MS".into(),
            t.as_millis().to_string().into(),
        ));
    }
    let (daemon, _) = Daemon::start_with_env(opts, start_timeout(plan.timeout), env)?;
    out.line(&daemon.describe());
    let pid = daemon.pid.context("the daemon's pid is unknown")?;
    // Warm up: the first replies allocate what the daemon keeps.
    let mut warm = Client::connect_and_ping(&daemon.socket, plan.timeout)?;
    for _ in 0..3 {
        warm.call("rpc.discover", serde_json::json!({}))?;
    }
    drop(warm);
    thread::sleep(Duration::from_secs(1));
    let idle_kib = status_kib(pid, "VmRSS:")?;

    let stop = Arc::new(AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        let socket = daemon.socket.clone();
        let (interval, timeout) = (plan.ping_interval, plan.timeout);
        thread::spawn(move || ping_loop(&socket, interval, timeout, &stop))
    };

    let started = Instant::now();
    let sampler = {
        let stop = stop.clone();
        thread::spawn(move || {
            // The highest VmRSS seen, and when (from the first connection on).
            let mut peak = (0u64, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                if let Ok(kib) = status_kib(pid, "VmRSS:")
                    && kib > peak.0
                {
                    peak = (kib, started.elapsed());
                }
                thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let mut hogs = Vec::with_capacity(plan.connections as usize);
    for _ in 0..plan.connections {
        hogs.push(never_reading(&daemon.socket, payload)?);
    }
    out.line(&format!(
        "  {} connections opened in {}; waiting for the daemon to drop them",
        hogs.len(),
        fmt_duration(started.elapsed())
    ));
    // They are dropped after `ipc.write_timeout_ms` (30 s by default) without progress.
    let deadline = started + plan.write_timeout.unwrap_or(Duration::from_secs(30)) * 4;
    let mut open: Vec<bool> = vec![true; hogs.len()];
    let mut dropped_after = Duration::ZERO;
    while open.iter().any(|o| *o) && Instant::now() < deadline && !interrupted() {
        for (i, s) in hogs.iter().enumerate() {
            if open[i] && hung_up(s) {
                open[i] = false;
                dropped_after = started.elapsed();
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    let dropped = open.iter().filter(|o| !**o).count() as u32;
    let peak_kib = status_kib(pid, "VmHWM:")?;
    drop(hogs);
    // RSS after they are gone: until it is back within 16 MiB of idle, or `settle` passes.
    let gone = Instant::now();
    let mut after_kib = status_kib(pid, "VmRSS:")?;
    while after_kib > idle_kib + 16 * 1024 && gone.elapsed() < plan.settle && !interrupted() {
        thread::sleep(Duration::from_millis(100));
        after_kib = status_kib(pid, "VmRSS:")?;
    }
    let settled_after = gone.elapsed();
    stop.store(true, Ordering::SeqCst);
    let sampled_peak = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the sampling thread panicked"))?;
    let pings = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("the ping thread panicked"))?;
    let over_target = pings
        .samples
        .iter()
        .filter(|&&ns| ns >= nanos(PING_TARGET))
        .count() as u64;
    Ok(AttackReport {
        name,
        connections: plan.connections,
        request_bytes: payload.len(),
        idle_kib,
        peak_kib,
        sampled_peak,
        dropped,
        dropped_after,
        after_kib,
        settled_after,
        pings: pings.samples.len() as u64,
        ping_failures: pings.failures.load(Ordering::SeqCst),
        over_target,
        latency: Latency::from_samples(pings.samples),
    })
}

struct Pings {
    samples: Vec<u64>,
    failures: AtomicU64,
}

/// `system.ping` one at a time with a pause between, reconnecting after a failure, until `stop`.
fn ping_loop(
    socket: &std::path::Path,
    interval: Duration,
    timeout: Duration,
    stop: &AtomicBool,
) -> Pings {
    let pings = Pings {
        samples: Vec::new(),
        failures: AtomicU64::new(0),
    };
    let mut samples = Vec::new();
    let mut client = None;
    let mut id = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(socket, timeout) {
                Ok(c) => client.insert(c),
                Err(_) => {
                    pings.failures.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(interval);
                    continue;
                }
            },
        };
        id += 1;
        let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"system.ping"}}"#) + "\n";
        let t0 = Instant::now();
        match c.round_trip(&line, id) {
            Ok(Body::Result(_)) => samples.push(nanos(t0.elapsed())),
            Ok(_) => {
                pings.failures.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                pings.failures.fetch_add(1, Ordering::SeqCst);
                client = None;
            }
        }
        thread::sleep(interval);
    }
    Pings { samples, ..pings }
}

/// A connection that sends `payload` (as much of it as the socket takes without blocking) and
/// never reads.
fn never_reading(socket: &std::path::Path, payload: &[u8]) -> Result<UnixStream> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_nonblocking(true)?;
    let mut sent = 0;
    while sent < payload.len() {
        match s.write(&payload[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e).context("sending the requests"),
        }
    }
    Ok(s)
}

/// Whether the daemon has closed its end of `s`.
fn hung_up(s: &UnixStream) -> bool {
    let mut fds = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&s.as_fd()),
        events: 0,
        revents: 0,
    }];
    // SAFETY: one valid pollfd, no timeout.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    n > 0 && fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("the daemon is not running")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} line in /proc/{pid}/status"))
}

/// Hundreds of sockets: the soft open-file limit goes up to the hard one (the daemon that
/// ccd-bench starts inherits it).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct of ours.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
