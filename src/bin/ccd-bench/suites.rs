//! The request suites of `ping`, `upsert` and `startup`, and the SQLite baseline that `upsert`
//! compares group commit with (one transaction per write, in-process).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};

use crate::cli::{DaemonOpts, Driver, Limits, StartupOpts, Synchronous, UPSERT_VALUE};
use crate::client::Expect;
use crate::daemon::{Daemon, TempDir, proc_status};
use crate::echo::run_echo_phase;
use crate::fmt::{Out, fmt_duration, fmt_kib, fmt_ratio, lat_ratios, nanos, ratio};
use crate::interrupt::{check_interrupted, interrupted, sleep_interruptible};
use crate::latency::{Latency, nearest_rank};
use crate::phase::{Op, Phase, PhaseResult, run_phase};

pub(crate) struct PingSuite {
    pub(crate) daemon: PhaseResult,
    pub(crate) echo: PhaseResult,
}

impl PingSuite {
    pub(crate) fn failures(&self) -> u64 {
        self.daemon.failed() + self.echo.failed()
    }
    pub(crate) fn p50_ratio(&self) -> Option<f64> {
        lat_ratios(self.daemon.lat.as_ref(), self.echo.lat.as_ref()).0
    }
    pub(crate) fn throughput_ratio(&self) -> Option<f64> {
        ratio(self.daemon.throughput(), self.echo.throughput())
    }
}

pub(crate) fn ping_suite(
    daemon: &Daemon,
    connections: u32,
    requests: u32,
    limits: &Limits,
    keep_temp: bool,
    out: &mut Out,
) -> Result<PingSuite> {
    let d = run_phase(&Phase {
        label: "system.ping (ccd)".into(),
        socket: daemon.socket.clone(),
        op: Op::Ping,
        expect: Expect::Result(Some("pong")),
        connections,
        requests,
        limits: limits.clone(),
        driver: Driver::Threads,
    })?;
    out.line(&d.summary());
    check_interrupted()?;
    let echo = run_echo_phase(connections, requests, limits, keep_temp)?;
    out.line(&echo.summary());
    let suite = PingSuite { daemon: d, echo };
    out.line(&format!(
        "  ratio, {connections} conn: ping p50 / bare echo p50 = {}; ping throughput / bare echo throughput = {}",
        fmt_ratio(suite.p50_ratio()),
        fmt_ratio(suite.throughput_ratio()),
    ));
    check_interrupted()?;
    Ok(suite)
}

pub(crate) struct UpsertSuite {
    /// How the client side drove the connections, in words.
    pub(crate) clients: String,
    pub(crate) multi: PhaseResult,
    /// `None` when the N-connection run already has a single connection.
    pub(crate) single: Option<PhaseResult>,
    /// N connections to a daemon committing every write on its own (`max_batch=1`); `None`
    /// when measuring a daemon ccd-bench did not start.
    pub(crate) ungrouped: Option<PhaseResult>,
    pub(crate) baseline: PhaseResult,
}

impl UpsertSuite {
    pub(crate) fn single(&self) -> &PhaseResult {
        self.single.as_ref().unwrap_or(&self.multi)
    }
    pub(crate) fn failures(&self) -> u64 {
        self.multi.failed()
            + self.single.as_ref().map_or(0, PhaseResult::failed)
            + self.ungrouped.as_ref().map_or(0, PhaseResult::failed)
            + self.baseline.failed()
    }
    pub(crate) fn vs_ungrouped(&self) -> Option<f64> {
        ratio(
            self.multi.throughput(),
            self.ungrouped.as_ref()?.throughput(),
        )
    }
    pub(crate) fn vs_baseline(&self) -> Option<f64> {
        ratio(self.multi.throughput(), self.baseline.throughput())
    }
    pub(crate) fn vs_single(&self) -> Option<f64> {
        ratio(self.multi.throughput(), self.single().throughput())
    }
}

/// What the upsert benchmark runs.
pub(crate) struct UpsertPlan {
    pub(crate) connections: u32,
    pub(crate) requests: u32,
    /// Requests of the 1-connection run (`None`: the default described in `--help`).
    pub(crate) single_requests: Option<u32>,
    pub(crate) driver: Driver,
}

pub(crate) fn upsert_suite(
    daemon: &Daemon,
    plan: &UpsertPlan,
    limits: &Limits,
    opts: &DaemonOpts,
    out: &mut Out,
) -> Result<UpsertSuite> {
    let &UpsertPlan {
        connections,
        requests,
        single_requests,
        driver,
    } = plan;
    if !daemon.owned {
        out.line(&format!(
            "  note: the SQLite baseline uses synchronous={}; make sure that matches the running \
             daemon's CCD_WRITER_SYNCHRONOUS",
            opts.synchronous.as_str()
        ));
    }
    out.line(&format!(
        "  clients: {} (the 1-connection run: one request at a time)",
        driver.explain(connections)
    ));
    let phase = |connections: u32, requests: u32, driver: Driver| Phase {
        label: "setting.upsert (ccd)".into(),
        socket: daemon.socket.clone(),
        op: Op::Upsert {
            prefix: format!("bench.n{connections}"),
        },
        expect: Expect::Result(None),
        connections,
        requests,
        limits: limits.clone(),
        driver,
    };
    let multi = run_phase(&phase(connections, requests, driver))?;
    out.line(&multi.summary());
    check_interrupted()?;
    let single = if connections > 1 {
        let total = connections.saturating_mul(requests);
        let n = single_requests.unwrap_or_else(|| requests.max(total.min(2000)));
        // One request at a time: every commit carries one write.
        let single = run_phase(&phase(1, n, driver.one_at_a_time()))?;
        out.line(&single.summary());
        check_interrupted()?;
        Some(single)
    } else {
        None
    };
    let ungrouped = if daemon.owned {
        let env = vec![("CCD_WRITER_MAX_BATCH".to_string(), "1".into())];
        let (one_per_txn, _) = Daemon::start_with_env(opts, daemon.timeout, env)
            .context("starting a daemon with CCD_WRITER_MAX_BATCH=1")?;
        let mut p = phase(connections, requests, driver);
        p.label = "setting.upsert (ccd, max_batch=1)".into();
        p.socket = one_per_txn.socket.clone();
        let r = run_phase(&p)?;
        out.line(&r.summary());
        drop(one_per_txn);
        check_interrupted()?;
        Some(r)
    } else {
        None
    };
    let baseline = sqlite_baseline(connections, requests, limits, opts)?;
    out.line(&baseline.summary());
    let suite = UpsertSuite {
        clients: driver.explain(connections),
        multi,
        single,
        ungrouped,
        baseline,
    };
    out.line(&format!(
        "  ratio: ccd {connections} conn throughput / SQLite 1 txn per write = {}; / ccd with \
         max_batch=1, {connections} conn = {}; / ccd 1 conn = {}",
        fmt_ratio(suite.vs_baseline()),
        fmt_ratio(suite.vs_ungrouped()),
        fmt_ratio(suite.vs_single()),
    ));
    check_interrupted()?;
    Ok(suite)
}

/// One startup cycle's measurements.
pub(crate) struct StartupSample {
    start_cmd: Duration,
    first_ping: Duration,
    rss_kib: u64,
    threads: Option<u64>,
    stop_cmd: Duration,
}

pub(crate) fn startup_suite(
    runs: u32,
    s: &StartupOpts,
    opts: &DaemonOpts,
    out: &mut Out,
) -> Result<Vec<StartupSample>> {
    let mut samples = Vec::with_capacity(runs as usize);
    for run in 1..=runs {
        check_interrupted()?;
        let (mut daemon, timing) =
            Daemon::start(opts, s.start_timeout).with_context(|| format!("startup run {run}"))?;
        let pid = daemon.pid.context("the daemon's pid is unknown")?;
        sleep_interruptible(s.idle);
        check_interrupted()?;
        let (rss_kib, threads) = proc_status(pid)
            .with_context(|| format!("startup run {run}: reading /proc/{pid}/status"))?;
        let stop_cmd = daemon
            .stop()
            .with_context(|| format!("startup run {run}"))?;
        drop(daemon);
        let sample = StartupSample {
            start_cmd: timing.start_cmd,
            first_ping: timing.first_ping,
            rss_kib,
            threads,
            stop_cmd,
        };
        out.line(&format!(
            "startup run {run}/{runs}: `ccd daemon start` {}, spawn → first ping {}, pid {pid}, idle RSS {}, threads {}, `ccd daemon stop` {}",
            fmt_duration(sample.start_cmd),
            fmt_duration(sample.first_ping),
            fmt_kib(sample.rss_kib),
            sample.threads.map_or_else(|| "?".to_string(), |t| t.to_string()),
            fmt_duration(sample.stop_cmd),
        ));
        samples.push(sample);
    }
    Ok(samples)
}

/// (metric, min, median, max) rows over startup samples.
pub(crate) fn startup_rows(
    samples: &[StartupSample],
    idle: Duration,
) -> Vec<(String, String, String, String)> {
    fn stats<T: Ord + Copy>(mut v: Vec<T>) -> Option<(T, T, T)> {
        v.sort_unstable();
        Some((*v.first()?, nearest_rank(&v, 50)?, *v.last()?))
    }
    let mut rows = Vec::new();
    let mut push_durations = |name: &str, v: Vec<Duration>| {
        if let Some((lo, mid, hi)) = stats(v) {
            rows.push((
                name.to_string(),
                fmt_duration(lo),
                fmt_duration(mid),
                fmt_duration(hi),
            ));
        }
    };
    push_durations(
        "`ccd daemon start` (spawn → exit)",
        samples.iter().map(|s| s.start_cmd).collect(),
    );
    push_durations(
        "spawn → first `system.ping` answered",
        samples.iter().map(|s| s.first_ping).collect(),
    );
    push_durations(
        "`ccd daemon stop`",
        samples.iter().map(|s| s.stop_cmd).collect(),
    );
    if let Some((lo, mid, hi)) = stats(samples.iter().map(|s| s.rss_kib).collect()) {
        rows.insert(
            2,
            (
                format!("idle RSS after {}", humantime::format_duration(idle)),
                fmt_kib(lo),
                fmt_kib(mid),
                fmt_kib(hi),
            ),
        );
    }
    if let Some((lo, mid, hi)) = stats(samples.iter().filter_map(|s| s.threads).collect()) {
        rows.insert(
            3,
            (
                "idle threads".to_string(),
                lo.to_string(),
                mid.to_string(),
                hi.to_string(),
            ),
        );
    }
    rows
}

/// One thread, one `INSERT … ON CONFLICT DO UPDATE` per transaction, on the same key set as
/// the daemon run (connections × requests distinct keys, interleaved by connection).
fn sqlite_baseline(
    connections: u32,
    requests: u32,
    limits: &Limits,
    opts: &DaemonOpts,
) -> Result<PhaseResult> {
    use rusqlite::{Connection, TransactionBehavior, params};

    const UPSERT: &str = "INSERT INTO settings(key, value, updated_at) VALUES (?1, ?2, ?3) \
                          ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at";

    fn write(db: &mut Connection, key: &str) -> rusqlite::Result<()> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(UPSERT)?
            .execute(params![key, UPSERT_VALUE, now_ms])?;
        tx.commit()
    }

    check_interrupted()?;
    let dir = TempDir::new("sqlite", opts.keep_temp)?;
    let path = dir.path.join("baseline.sqlite3");
    // The daemon's own write connection (WAL, the same pragmas, the same schema), so that the
    // baseline differs from the daemon only in committing every write on its own.
    let writer_cfg = ccd_actors::config::WriterConfig {
        synchronous: match opts.synchronous {
            Synchronous::Off => ccd_actors::config::Synchronous::Off,
            Synchronous::Normal => ccd_actors::config::Synchronous::Normal,
            Synchronous::Full => ccd_actors::config::Synchronous::Full,
        },
        ..Default::default()
    };
    let mut db = ccd_actors::store::open_writer(&path, &writer_cfg)
        .context("preparing the baseline database")?;

    for i in 0..limits.warmup {
        write(&mut db, &format!("bench.warm.{i}")).context("baseline warm-up write")?;
    }

    let total = u64::from(connections) * u64::from(requests);
    let mut samples = Vec::with_capacity(total as usize);
    let mut skipped = 0;
    let start = Instant::now();
    let deadline = start + limits.max_time;
    'outer: for i in 0..requests {
        for c in 0..connections {
            let key = format!("bench.c{c}.{i}");
            let t0 = Instant::now();
            if t0 >= deadline || interrupted() {
                skipped = total - samples.len() as u64;
                break 'outer;
            }
            write(&mut db, &key).with_context(|| format!("baseline write of {key}"))?;
            samples.push(nanos(t0.elapsed()));
        }
    }
    let wall = start.elapsed();
    let ok = samples.len() as u64;
    let rows: i64 = db
        .query_row(
            "SELECT count(*) FROM settings WHERE key NOT LIKE 'bench.warm.%'",
            [],
            |r| r.get(0),
        )
        .context("counting baseline rows")?;
    ensure!(
        rows as u64 == ok,
        "the baseline table has {rows} rows after {ok} writes"
    );
    drop(db);
    Ok(PhaseResult {
        label: "SQLite, 1 txn per write (1 thread)".into(),
        connections: 1,
        ok,
        rpc_errors: 0,
        warmup_failed: 0,
        lost: 0,
        skipped,
        wall,
        lat: Latency::from_samples(samples),
        messages: BTreeMap::new(),
    })
}
