//! `ccd-bench`: a bounded load generator for the `ccd` daemon's local Unix socket. It drives
//! closed-loop JSON-RPC traffic (`system.ping`, `setting.upsert`, `query.run`, `session.create`)
//! over persistent NDJSON connections, prints throughput and exact p50/p99/max latency next to
//! baselines (a bare NDJSON echo server; SQLite with one transaction per write; running the stub
//! agent directly), measures how fast an open circuit breaker refuses `query.run`, event-bus
//! fan-out to many subscribers and what a stalled subscriber costs a publisher, times daemon
//! startup and idle memory, and times reads from the daemon's FUSE agent filesystem. It never talks to anything but local Unix sockets, the `ccd` binary,
//! a stub agent script it writes itself and the daemon's own mount.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// Upper bound on measured requests in one phase (all connections together).
const MAX_TOTAL_REQUESTS: u64 = 10_000_000;

/// The value written by every `setting.upsert` request and by the SQLite baseline.
const UPSERT_VALUE: &str = "ccd-bench-value-0123456789abcdef";

#[derive(Parser, Debug)]
#[command(
    name = "ccd-bench",
    version,
    about = "Load generator for the ccd daemon: throughput and p50/p99/max latency over its Unix socket",
    long_about = "Load generator for the ccd daemon: throughput and p50/p99/max latency over its \
Unix socket.

Every request mode is a closed loop: each connection sends one JSON-RPC request, waits for \
its reply, and only then sends the next (`upsert --depth D` keeps D in flight instead). Each \
connection has a client thread of its own, except in `upsert`, where by default one client \
thread multiplexes all of them (--client-threads). A few unmeasured warm-up requests run on \
every connection first. Latency percentiles are exact (nearest rank over all \
samples). Every mode is bounded in request count and in wall-clock time, and only talks to \
local Unix sockets.

By default `ping` and `upsert` start their own daemon with `ccd daemon start` on a fresh \
temporary CCD_HOME and stop it afterwards (also on error or Ctrl-C); use --home DIR or \
--no-start to measure a daemon that is already running instead.

A JSON-RPC error reply counts as a failed request; failed requests are always reported and \
make ccd-bench exit with status 1.",
    after_help = "Examples:
  ccd-bench ping -c 16 -r 5000
  ccd-bench upsert -c 64 -r 200 --synchronous full
  ccd-bench startup --runs 10
  ccd-bench query -r 200 -q 400 --pool-sizes 1,2,4,8
  ccd-bench breaker -c 1 -c 8 -r 2000
  ccd-bench events -s 100 -e 5000 -p 8 -r 2000
  ccd-bench vfs --health-reads 2000 --big-reads 200
  ccd-bench all > bench.md"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// `system.ping` round trips, compared with a bare in-process NDJSON echo server.
    ///
    /// Runs the closed loop against the daemon, then starts an in-process Unix-socket echo
    /// server (one thread per connection that writes every line back) and drives it with the
    /// identical client loop and request line. Prints both, and the ratios of their p50
    /// latency and throughput: the cost of the daemon over the bare transport.
    Ping(PingArgs),
    /// `setting.upsert` writes, compared with SQLite doing one transaction per write.
    ///
    /// Every request writes a distinct key (`bench.n<N>.c<conn>.<i>`). Measures the daemon
    /// with N connections and, in the same run, with a single connection (so each commit
    /// carries one write). The baseline opens a temporary SQLite file as the daemon's writer
    /// does (WAL, the same `synchronous` level, the same schema) and does N×R
    /// `INSERT … ON CONFLICT(key) DO UPDATE` statements from one thread, each in its own
    /// transaction. When ccd-bench starts the daemons, it also measures N connections to a
    /// second daemon with `CCD_WRITER_MAX_BATCH=1`: one transaction per write through the
    /// same request path, so the ratio isolates group commit. Prints the throughput ratios of
    /// the N-connection run to each.
    Upsert(UpsertArgs),
    /// Daemon startup time and idle memory, over several fresh homes.
    ///
    /// For each run: a fresh temporary CCD_HOME; times `ccd daemon start` (spawn to exit) and
    /// spawn to the first `system.ping` answered on the socket; reads the daemon's pid from
    /// `system.health` and its VmRSS from /proc/PID/status after an idle pause; then times
    /// `ccd daemon stop`. Prints min/median/max.
    Startup(StartupArgs),
    /// `query.run` with a stub agent: per-query overhead, and throughput by executor pool size.
    ///
    /// Writes a stub agent (a shell script that reads its stdin to EOF and prints a captured
    /// Claude Code stream-json transcript) and starts daemons on fresh temporary homes with
    /// CCD_AGENT_CMD pointing at it. Overhead: R runs of the stub by the bench itself (spawn
    /// it with the daemon's arguments, write the prompt, close stdin, read stdout to EOF, wait)
    /// and R `query.run` calls on one connection to a daemon with pool size 1, one at a time,
    /// in alternating blocks (--block; so that both see the same machine load); the difference
    /// of their p50 (and p99) is what ccd adds per query, against a target of at most 5 ms. Throughput: for each
    /// pool size P a fresh daemon with CCD_EXECUTOR_POOL_SIZE=P and 2×P connections in a closed
    /// loop sharing Q queries, compared with 2×P threads running the stub directly.
    Query(QueryArgs),
    /// `query.run` refused by an open circuit breaker, next to `system.ping` on the same daemon.
    ///
    /// Writes a stub agent that reads its prompt to EOF and kills itself with SIGKILL (a
    /// `retryable` failure, which the breaker counts; an exit code without a result would be
    /// `non_retryable`, which it does not), and starts a daemon on a fresh temporary home with
    /// CCD_AGENT_CMD pointing at it, CCD_RETRY_MAX_RETRIES=0, CCD_BREAKER_CONSECUTIVE_FAILURES=3
    /// and CCD_BREAKER_WAIT_MS=3600000 (so that the breaker stays open for the whole run). Trips
    /// the breaker with 3 `query.run` calls (each must fail with -32007, agent failed), checks
    /// that `breaker.status` shows it OPEN and that one more call is refused with -32003.
    ///
    /// Then, for each connection count N (-c, repeatable or comma-separated): the closed loop
    /// with N connections sending `query.run {"prompt":"x"}`, where only a -32003 (circuit open)
    /// error counts as a success and any other reply as a failed request; waits until
    /// `stats.get` counts every refused query (the daemon records a refused turn in the
    /// background, after replying), so that this work does not spill into the next phase; then
    /// the same loop with `system.ping` on the same daemon. Prints both, the ratios of their
    /// p50 and p99 latency, and the target (refused in well under a millisecond: p99 below
    /// 1 ms). Finally checks that the agent ran only the 3 times that tripped the breaker, that
    /// the breaker is still OPEN, and that its `rejected` count matches the refusals.
    Breaker(BreakerArgs),
    /// The event bus: fan-out throughput to many subscribers, and what a stalled subscriber
    /// costs a publisher.
    ///
    /// Fan-out (a fresh daemon): P publisher connections warm up, then S subscriber connections
    /// (a thread each) subscribe to `session.created`; then the publishers share E
    /// `session.create` calls (each publishes exactly one `session.created` event), K requests
    /// in flight per connection (--pipeline; 1 is a closed loop). Every subscriber counts the
    /// events it receives and the ones `lagged` events say it missed. Published/s is E over the
    /// time from the release of the publishers to the last reply; delivered/s is the sum of the
    /// events received by all subscribers over the time from the release of the publishers to
    /// the moment the last subscriber has received (or been told it missed) every event.
    ///
    /// Stalled subscriber (another fresh daemon): R closed-loop `session.create` calls on one
    /// connection with no subscriber; R more with one subscriber thread that reads normally;
    /// then one more connection subscribes and never reads its socket again, unmeasured calls
    /// fill its socket and overflow its queue, and R more measured calls run. Prints the
    /// latencies, their ratios (stalled + reading over none, and over reading only), and checks
    /// afterwards (by reading the stalled socket) that every event reached each subscriber or
    /// was reported missed.
    Events(EventsArgs),
    /// Reads from the agent filesystem (FUSE): `health`, and a ~1 MiB `agents.sealed` against
    /// a copy of it on local disk.
    ///
    /// Starts a daemon on a fresh temporary home with CCD_VFS_ENABLED=true, learns its mount
    /// point from `vfs.status`, and imports (`agent.import`) one agent whose prompt is
    /// pseudo-random text (--prompt-bytes; zstd shrinks it only to about 3/4, so
    /// `agents.sealed` comes out at about 1 MiB by default). Every read is `std::fs::read`
    /// (open, read to end, close), timed one by one and compared byte for byte with the
    /// expected contents (a difference counts as a failure). First N reads of `health`
    /// (target: p50 under 1 ms); then N reads of `agents.sealed` from the mount and N of the
    /// same bytes copied to a regular file in the temporary directory, in alternating blocks
    /// (--block) so that both see the same machine conditions (target: mount p50 under
    /// 5 ms). Finally stops the daemon and checks that its mount is gone. Skipped (exit
    /// status 0) when /dev/fuse does not exist.
    Vfs(VfsArgs),
    /// Everything, with defaults, as a markdown report for docs/benchmarks.md.
    ///
    /// Runs ping with 1 and 16 connections (each with its echo baseline), upsert with 64
    /// connections (which includes the 1-connection run and the SQLite baseline), events
    /// (fan-out and the stalled-subscriber latency), query (the overhead and the throughput at
    /// pool sizes 1, 2, 4, 8), breaker (refused `query.run` next to `system.ping`, 1 and 8
    /// connections), the agent filesystem reads (vfs; skipped without /dev/fuse) and startup.
    /// Progress goes to stderr; the markdown report goes to stdout. With --home/--no-start,
    /// ping and upsert use the running daemon; events, query, breaker, vfs and startup always
    /// start their own daemons on fresh temporary homes.
    All(AllArgs),
    /// Only the bare NDJSON echo baseline (no daemon needed); for testing ccd-bench itself.
    #[command(hide = true)]
    Echo(EchoArgs),
}

/// Where the daemon binary is and how a daemon started by ccd-bench is configured.
#[derive(Args, Debug, Clone)]
struct DaemonOpts {
    /// The `ccd` binary that starts and stops daemons [default: `ccd` next to ccd-bench]
    #[arg(long, value_name = "PATH")]
    ccd: Option<PathBuf>,
    /// SQLite `synchronous` level: given to a daemon that ccd-bench starts (as
    /// CCD_WRITER_SYNCHRONOUS) and used by the SQLite baseline
    #[arg(
        long,
        value_enum,
        value_name = "LEVEL",
        env = "CCD_WRITER_SYNCHRONOUS",
        default_value_t = Synchronous::Normal
    )]
    synchronous: Synchronous,
    /// Keep the temporary directories (daemon homes and logs, command output, SQLite files)
    /// instead of deleting them, and print where they are
    #[arg(long)]
    keep_temp: bool,
}

/// Which daemon ping and upsert talk to.
#[derive(Args, Debug, Clone)]
struct Target {
    #[command(flatten)]
    daemon: DaemonOpts,
    /// Measure the daemon already running with this CCD_HOME instead of starting one
    /// (implies --no-start)
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Don't start a daemon: measure the one already running at --home, else $CCD_HOME,
    /// else ~/.ccd. Note that upsert then writes `bench.*` keys into its settings
    #[arg(long)]
    no_start: bool,
}

/// Bounds of a request phase.
#[derive(Args, Debug, Clone)]
struct Limits {
    /// Unmeasured warm-up requests per connection, before the measured ones
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    warmup: u32,
    /// Fail a connection whose connect, write or reply takes longer than this (e.g. 10s, 500ms);
    /// `ccd daemon start|stop` and the first ping after start get at least 30s
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Stop a measured phase after this much wall-clock time and report what was measured
    /// so far
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    max_time: Duration,
}

#[derive(Args, Debug)]
struct PingArgs {
    /// Concurrent connections, each driven by its own client thread
    #[arg(short, long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Measured requests per connection
    #[arg(short, long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    requests: u32,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct UpsertArgs {
    /// Concurrent connections (see --client-threads for how they are driven)
    #[arg(short, long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Measured requests per connection (the SQLite baseline does N×R writes)
    #[arg(short, long, value_name = "R", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    requests: u32,
    /// Requests of the 1-connection comparison run [default: the larger of R and
    /// min(N×R, 2000)]
    #[arg(long, value_name = "COUNT",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    single_requests: Option<u32>,
    #[command(flatten)]
    clients: ClientOpts,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    target: Target,
}

/// How `upsert` drives its connections.
#[derive(Args, Debug, Clone, Copy)]
struct ClientOpts {
    /// Client threads driving the connections, each multiplexing its share over non-blocking
    /// sockets (as wrk and redis-benchmark do), so that the client's own thread switches do not
    /// eat the 2 cores the daemon runs on; 0 runs one blocking client thread per connection
    #[arg(long, value_name = "T", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    client_threads: u32,
    /// Requests each connection keeps in flight (1: wait for each reply before sending the
    /// next); more than 1 needs --client-threads of at least 1
    #[arg(long, value_name = "D", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    depth: u32,
}

impl ClientOpts {
    fn driver(self) -> Result<Driver> {
        match (self.client_threads, self.depth) {
            (0, 1) => Ok(Driver::Threads),
            (0, _) => bail!("--depth above 1 needs --client-threads of at least 1"),
            (threads, depth) => Ok(Driver::Multiplexed { threads, depth }),
        }
    }
}

#[derive(Args, Debug)]
struct StartupArgs {
    /// Number of start/measure/stop cycles, each on a fresh temporary CCD_HOME
    #[arg(short = 'k', long, value_name = "K", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    #[command(flatten)]
    startup: StartupOpts,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug, Clone)]
struct StartupOpts {
    /// How long the daemon sits idle after the first ping before its RSS is read
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    idle: Duration,
    /// Give up when `ccd daemon start|stop`, or the first ping after start, takes longer
    #[arg(long = "start-timeout", value_name = "DURATION", default_value = "30s",
          value_parser = parse_duration)]
    start_timeout: Duration,
}

#[derive(Args, Debug)]
struct QueryArgs {
    /// Sequential queries of the overhead measurement, for the bare stub and for the daemon
    /// each
    #[arg(short, long, value_name = "R", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,
    /// The overhead measurement alternates blocks of N sequential bare stub runs and N
    /// sequential `query.run` calls, so that both see the same machine load while consecutive
    /// queries still pay for any work ccd does after replying; N ≥ R runs all bare stub runs
    /// first, N = 1 strictly alternates
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    block: u32,
    /// Queries per pool size in the throughput measurement, shared by all connections (the
    /// bare-stub comparison runs as many)
    #[arg(short, long, value_name = "Q", default_value_t = 400,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    queries: u32,
    /// Executor pool sizes of the throughput measurement (a fresh daemon and 2×size
    /// connections each)
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,2,4,8",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pool_sizes: Vec<u32>,
    /// Unmeasured warm-up queries per connection (and per bare-stub thread), before the
    /// measured ones
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    warmup: u32,
    /// Fail a connection whose connect, write or reply takes longer than this (e.g. 10s,
    /// 500ms); `ccd daemon start|stop` and the first ping after start get at least 30s
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Stop a measured phase after this much wall-clock time and report what was measured
    /// so far
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    max_time: Duration,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
struct BreakerArgs {
    /// Connection counts to measure (repeatable, or comma-separated), each with refused
    /// `query.run` and then `system.ping`
    #[arg(short, long, value_name = "N", value_delimiter = ',', default_value = "1,8",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: Vec<u32>,
    /// Measured requests per connection, for each of the two methods
    #[arg(short, long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    requests: u32,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
struct EventsArgs {
    /// Subscriber connections of the fan-out measurement, each a thread that subscribes to
    /// `session.created` and counts what arrives
    #[arg(short, long, value_name = "S", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    subscribers: u32,
    /// `session.create` calls (so events published) of the fan-out measurement, shared by
    /// the publishers
    #[arg(short, long, value_name = "E", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    events: u32,
    /// Publisher connections of the fan-out measurement
    #[arg(short, long, value_name = "P", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    publishers: u32,
    /// `session.create` requests each publisher connection sends at once before reading their
    /// replies (1 = closed loop)
    #[arg(long, value_name = "K", default_value_t = DEFAULT_PIPELINE,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pipeline: u32,
    /// Measured `session.create` calls of each stalled-subscriber latency run (one connection,
    /// closed loop)
    #[arg(short, long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    requests: u32,
    /// `events.subscriber_queue` of the daemons ccd-bench starts, given as
    /// CCD_EVENTS_SUBSCRIBER_QUEUE [default: not set, so the daemon's own default, 4096]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    subscriber_queue: Option<u32>,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
struct AllArgs {
    /// Measured requests per connection for ping (run with 1 and with --ping-connections)
    #[arg(long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    ping_requests: u32,
    /// Connections of the concurrent ping run
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    ping_connections: u32,
    /// Measured requests per connection for upsert
    #[arg(long, value_name = "R", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    upsert_requests: u32,
    /// Connections of the concurrent upsert run
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    upsert_connections: u32,
    /// Client threads of the upsert runs (see `ccd-bench upsert --client-threads`)
    #[arg(long, value_name = "T", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    upsert_client_threads: u32,
    /// Requests in flight per connection in the upsert runs (see `ccd-bench upsert --depth`)
    #[arg(long, value_name = "D", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    upsert_depth: u32,
    /// Sequential queries of the query overhead measurement (bare stub and daemon each)
    #[arg(long, value_name = "R", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    query_requests: u32,
    /// Block size of the query overhead measurement (see `ccd-bench query --block`)
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    query_block: u32,
    /// Queries per pool size in the query throughput measurement
    #[arg(long, value_name = "Q", default_value_t = 400,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    query_queries: u32,
    /// Executor pool sizes of the query throughput measurement
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,2,4,8",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    query_pool_sizes: Vec<u32>,
    /// Unmeasured warm-up queries per connection (and per bare-stub thread) for query
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    query_warmup: u32,
    /// Measured requests per connection of the breaker benchmark, for refused `query.run` and
    /// for `system.ping` each (0 skips the breaker benchmark)
    #[arg(long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    breaker_requests: u32,
    /// Connection counts of the breaker benchmark
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,8",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    breaker_connections: Vec<u32>,
    /// Subscribers of the events fan-out measurement (0 skips the events benchmark)
    #[arg(long, value_name = "S", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    events_subscribers: u32,
    /// `session.create` calls (events published) of the events fan-out measurement
    #[arg(long, value_name = "E", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    events_count: u32,
    /// Publisher connections of the events fan-out measurement
    #[arg(long, value_name = "P", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    events_publishers: u32,
    /// Requests in flight per publisher connection in the events fan-out measurement
    #[arg(long, value_name = "K", default_value_t = DEFAULT_PIPELINE,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    events_pipeline: u32,
    /// Measured `session.create` calls of each stalled-subscriber latency run
    #[arg(long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    events_requests: u32,
    /// Reads of `health` in the agent filesystem benchmark (0 skips the vfs benchmark)
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    vfs_health_reads: u32,
    /// Reads of `agents.sealed` (from the mount, and as many from the local copy) in the agent
    /// filesystem benchmark
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    vfs_big_reads: u32,
    /// Startup cycles (0 skips the startup benchmark)
    #[arg(short = 'k', long, value_name = "K", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    runs: u32,
    #[command(flatten)]
    startup: StartupOpts,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct VfsArgs {
    /// Reads of `health` from the mount
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    health_reads: u32,
    /// Reads of `agents.sealed` from the mount, and as many of its copy on local disk
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    big_reads: u32,
    /// The `agents.sealed` reads alternate blocks of N reads from the mount and N from the
    /// local copy
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    block: u32,
    /// Size in bytes of the pseudo-random prompt of the imported agent (the default makes
    /// `agents.sealed` about 1 MiB)
    #[arg(long, value_name = "BYTES", default_value_t = VFS_PROMPT_BYTES,
          value_parser = clap::value_parser!(u32).range(1..=67_108_864))]
    prompt_bytes: u32,
    /// Unmeasured warm-up reads of each file (at most 20 of `agents.sealed`)
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    warmup: u32,
    /// Give up on a `ccd daemon start|stop` (at least 30s), a JSON-RPC reply, or the import
    /// showing up on the mount after this long
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Stop each measurement after this much wall-clock time and report what was measured
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    max_time: Duration,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
struct EchoArgs {
    /// Concurrent connections
    #[arg(short, long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Measured requests per connection
    #[arg(short, long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    requests: u32,
    /// Keep the temporary socket directory
    #[arg(long)]
    keep_temp: bool,
    #[command(flatten)]
    limits: Limits,
}

/// SQLite `PRAGMA synchronous` levels the daemon accepts in CCD_WRITER_SYNCHRONOUS.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Synchronous {
    Off,
    Normal,
    Full,
}

impl Synchronous {
    fn as_str(self) -> &'static str {
        match self {
            Synchronous::Off => "off",
            Synchronous::Normal => "normal",
            Synchronous::Full => "full",
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// Entry point, Ctrl-C
// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_interrupt_handler();
    let outcome = match cli.command {
        Cmd::Ping(a) => cmd_ping(&a),
        Cmd::Upsert(a) => cmd_upsert(&a),
        Cmd::Startup(a) => cmd_startup(&a),
        Cmd::Query(a) => cmd_query(&a),
        Cmd::Breaker(a) => cmd_breaker(&a),
        Cmd::Events(a) => cmd_events(&a),
        Cmd::Vfs(a) => cmd_vfs(&a),
        Cmd::All(a) => cmd_all(&a),
        Cmd::Echo(a) => cmd_echo(&a),
    };
    match outcome {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Failures(n)) => {
            eprintln!("ccd-bench: {n} request(s) failed (see above)");
            ExitCode::from(1)
        }
        Err(e) if interrupted() => {
            eprintln!("ccd-bench: interrupted ({e:#})");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("ccd-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// How a command went, when it did not fail outright.
enum Outcome {
    Clean,
    Failures(u64),
}

impl Outcome {
    fn from_failures(n: u64) -> Outcome {
        if n == 0 {
            Outcome::Clean
        } else {
            Outcome::Failures(n)
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // A second Ctrl-C gives up on cleaning up.
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Makes SIGINT/SIGTERM stop the measurement early so that a daemon ccd-bench started is
/// still stopped and its temporary home removed.
fn install_interrupt_handler() {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only touches an atomic and `_exit`.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted by signal");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Subcommands
// ---------------------------------------------------------------------------------------------

fn cmd_ping(a: &PingArgs) -> Result<Outcome> {
    check_total(a.connections, a.requests)?;
    let daemon = Daemon::acquire(&a.target, a.limits.timeout)?;
    println!("{}", environment_line());
    println!("{}", daemon.describe());
    let suite = ping_suite(
        &daemon,
        a.connections,
        a.requests,
        &a.limits,
        a.target.daemon.keep_temp,
        &mut Out::Stdout,
    )?;
    drop(daemon);
    Ok(Outcome::from_failures(suite.failures()))
}

fn cmd_upsert(a: &UpsertArgs) -> Result<Outcome> {
    check_total(a.connections, a.requests)?;
    let driver = a.clients.driver()?;
    let daemon = Daemon::acquire(&a.target, a.limits.timeout)?;
    println!("{}", environment_line());
    println!("{}", daemon.describe());
    let plan = UpsertPlan {
        connections: a.connections,
        requests: a.requests,
        single_requests: a.single_requests,
        driver,
    };
    let suite = upsert_suite(
        &daemon,
        &plan,
        &a.limits,
        &a.target.daemon,
        &mut Out::Stdout,
    )?;
    drop(daemon);
    Ok(Outcome::from_failures(suite.failures()))
}

fn cmd_startup(a: &StartupArgs) -> Result<Outcome> {
    println!("{}", environment_line());
    let samples = startup_suite(a.runs, &a.startup, &a.daemon, &mut Out::Stdout)?;
    let mut text = String::new();
    for row in startup_rows(&samples, a.startup.idle) {
        let _ = writeln!(
            text,
            "  {:<34} min {:>10}  median {:>10}  max {:>10}",
            row.0, row.1, row.2, row.3
        );
    }
    print!("{text}");
    Ok(Outcome::Clean)
}

fn cmd_query(a: &QueryArgs) -> Result<Outcome> {
    let plan = QueryPlan {
        requests: a.requests,
        block: a.block,
        queries: a.queries,
        pool_sizes: a.pool_sizes.clone(),
        warmup: a.warmup,
        timeout: a.timeout,
        max_time: a.max_time,
    };
    println!("{}", environment_line());
    let suite = query_suite(&plan, &a.daemon, &mut Out::Stdout)?;
    Ok(Outcome::from_failures(suite.failures()))
}

fn cmd_breaker(a: &BreakerArgs) -> Result<Outcome> {
    let plan = BreakerPlan {
        connections: a.connections.clone(),
        requests: a.requests,
        limits: a.limits.clone(),
    };
    for &c in &plan.connections {
        check_total(c, plan.requests)?;
    }
    println!("{}", environment_line());
    let suite = breaker_suite(&plan, &a.daemon, &mut Out::Stdout)?;
    println!("{}", breaker_summary(&suite));
    Ok(Outcome::from_failures(suite.failures()))
}

fn cmd_events(a: &EventsArgs) -> Result<Outcome> {
    let plan = EventsPlan {
        subscribers: a.subscribers,
        events: a.events,
        publishers: a.publishers,
        pipeline: a.pipeline,
        requests: a.requests,
        subscriber_queue: a.subscriber_queue,
        limits: a.limits.clone(),
    };
    println!("{}", environment_line());
    let suite = events_suite(&plan, &a.daemon, &mut Out::Stdout)?;
    Ok(Outcome::from_failures(suite.failures()))
}

fn cmd_vfs(a: &VfsArgs) -> Result<Outcome> {
    let plan = VfsPlan {
        health_reads: a.health_reads,
        big_reads: a.big_reads,
        block: a.block,
        prompt_bytes: a.prompt_bytes,
        warmup: a.warmup,
        timeout: a.timeout,
        max_time: a.max_time,
    };
    println!("{}", environment_line());
    match vfs_suite(&plan, &a.daemon, &mut Out::Stdout)? {
        VfsReport::Skipped(why) => {
            println!("vfs: skipped: {why}");
            Ok(Outcome::Clean)
        }
        VfsReport::Ran(suite) => Ok(Outcome::from_failures(suite.failures())),
    }
}

fn cmd_echo(a: &EchoArgs) -> Result<Outcome> {
    check_total(a.connections, a.requests)?;
    println!("{}", environment_line());
    let echo = run_echo_phase(a.connections, a.requests, &a.limits, a.keep_temp)?;
    println!("{}", echo.summary());
    Ok(Outcome::from_failures(echo.failed()))
}

fn cmd_all(a: &AllArgs) -> Result<Outcome> {
    check_total(a.ping_connections, a.ping_requests)?;
    check_total(a.upsert_connections, a.upsert_requests)?;
    let upsert_driver = ClientOpts {
        client_threads: a.upsert_client_threads,
        depth: a.upsert_depth,
    }
    .driver()?;
    for &c in &a.breaker_connections {
        check_total(c, a.breaker_requests)?;
    }
    let mut out = Out::Stderr;
    let daemon = Daemon::acquire(&a.target, a.limits.timeout)?;
    out.line(&environment_line());
    out.line(&daemon.describe());
    let keep = a.target.daemon.keep_temp;
    let ping_1 = ping_suite(&daemon, 1, a.ping_requests, &a.limits, keep, &mut out)?;
    let ping_n = ping_suite(
        &daemon,
        a.ping_connections,
        a.ping_requests,
        &a.limits,
        keep,
        &mut out,
    )?;
    let plan = UpsertPlan {
        connections: a.upsert_connections,
        requests: a.upsert_requests,
        single_requests: None,
        driver: upsert_driver,
    };
    let upsert = upsert_suite(&daemon, &plan, &a.limits, &a.target.daemon, &mut out)?;
    let daemon_text = daemon.markdown_description();
    drop(daemon);
    let events = if a.events_subscribers > 0 {
        Some(events_suite(
            &EventsPlan {
                subscribers: a.events_subscribers,
                events: a.events_count,
                publishers: a.events_publishers,
                pipeline: a.events_pipeline,
                requests: a.events_requests,
                subscriber_queue: None,
                limits: a.limits.clone(),
            },
            &a.target.daemon,
            &mut out,
        )?)
    } else {
        None
    };
    let query = query_suite(
        &QueryPlan {
            requests: a.query_requests,
            block: a.query_block,
            queries: a.query_queries,
            pool_sizes: a.query_pool_sizes.clone(),
            warmup: a.query_warmup,
            timeout: a.limits.timeout,
            max_time: a.limits.max_time,
        },
        &a.target.daemon,
        &mut out,
    )?;
    let breaker = if a.breaker_requests > 0 {
        Some(breaker_suite(
            &BreakerPlan {
                connections: a.breaker_connections.clone(),
                requests: a.breaker_requests,
                limits: a.limits.clone(),
            },
            &a.target.daemon,
            &mut out,
        )?)
    } else {
        None
    };
    let vfs = if a.vfs_health_reads > 0 {
        let report = vfs_suite(
            &VfsPlan {
                health_reads: a.vfs_health_reads,
                big_reads: a.vfs_big_reads,
                block: 10,
                prompt_bytes: VFS_PROMPT_BYTES,
                warmup: 20,
                timeout: a.limits.timeout,
                max_time: a.limits.max_time,
            },
            &a.target.daemon,
            &mut out,
        )?;
        if let VfsReport::Skipped(why) = &report {
            out.line(&format!("vfs: skipped: {why}"));
        }
        Some(report)
    } else {
        None
    };
    let startup = if a.runs > 0 {
        startup_suite(a.runs, &a.startup, &a.target.daemon, &mut out)?
    } else {
        Vec::new()
    };

    let md = markdown_report(&MarkdownInput {
        daemon_text: &daemon_text,
        limits: &a.limits,
        synchronous: a.target.daemon.synchronous,
        ping: [&ping_1, &ping_n],
        upsert: &upsert,
        events: events.as_ref(),
        query: &query,
        breaker: breaker.as_ref(),
        vfs: vfs.as_ref(),
        startup: &startup,
        idle: a.startup.idle,
    });
    print!("{md}");
    let failures = ping_1.failures()
        + ping_n.failures()
        + upsert.failures()
        + events.as_ref().map_or(0, EventsSuite::failures)
        + query.failures()
        + breaker.as_ref().map_or(0, BreakerSuite::failures)
        + match &vfs {
            Some(VfsReport::Ran(v)) => v.failures(),
            _ => 0,
        };
    Ok(Outcome::from_failures(failures))
}

fn check_total(connections: u32, requests: u32) -> Result<()> {
    let total = u64::from(connections) * u64::from(requests);
    ensure!(
        total <= MAX_TOTAL_REQUESTS,
        "{connections} connections × {requests} requests = {total} is more than the limit of \
         {MAX_TOTAL_REQUESTS} measured requests per phase"
    );
    Ok(())
}

/// Where progress lines go: stdout for single modes, stderr for `all` (whose stdout is the
/// markdown report).
enum Out {
    Stdout,
    Stderr,
}

impl Out {
    fn line(&mut self, s: &str) {
        match self {
            Out::Stdout => println!("{s}"),
            Out::Stderr => eprintln!("{s}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Suites
// ---------------------------------------------------------------------------------------------

struct PingSuite {
    daemon: PhaseResult,
    echo: PhaseResult,
}

impl PingSuite {
    fn failures(&self) -> u64 {
        self.daemon.failed() + self.echo.failed()
    }
    fn p50_ratio(&self) -> Option<f64> {
        lat_ratios(self.daemon.lat.as_ref(), self.echo.lat.as_ref()).0
    }
    fn throughput_ratio(&self) -> Option<f64> {
        ratio(self.daemon.throughput(), self.echo.throughput())
    }
}

fn ping_suite(
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

struct UpsertSuite {
    /// How the client side drove the connections, in words.
    clients: String,
    multi: PhaseResult,
    /// `None` when the N-connection run already has a single connection.
    single: Option<PhaseResult>,
    /// N connections to a daemon committing every write on its own (`max_batch=1`); `None`
    /// when measuring a daemon ccd-bench did not start.
    ungrouped: Option<PhaseResult>,
    baseline: PhaseResult,
}

impl UpsertSuite {
    fn single(&self) -> &PhaseResult {
        self.single.as_ref().unwrap_or(&self.multi)
    }
    fn failures(&self) -> u64 {
        self.multi.failed()
            + self.single.as_ref().map_or(0, PhaseResult::failed)
            + self.ungrouped.as_ref().map_or(0, PhaseResult::failed)
            + self.baseline.failed()
    }
    fn vs_ungrouped(&self) -> Option<f64> {
        ratio(
            self.multi.throughput(),
            self.ungrouped.as_ref()?.throughput(),
        )
    }
    fn vs_baseline(&self) -> Option<f64> {
        ratio(self.multi.throughput(), self.baseline.throughput())
    }
    fn vs_single(&self) -> Option<f64> {
        ratio(self.multi.throughput(), self.single().throughput())
    }
}

/// What the upsert benchmark runs.
struct UpsertPlan {
    connections: u32,
    requests: u32,
    /// Requests of the 1-connection run (`None`: the default described in `--help`).
    single_requests: Option<u32>,
    driver: Driver,
}

fn upsert_suite(
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
struct StartupSample {
    start_cmd: Duration,
    first_ping: Duration,
    rss_kib: u64,
    threads: Option<u64>,
    stop_cmd: Duration,
}

fn startup_suite(
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
fn startup_rows(
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

// ---------------------------------------------------------------------------------------------
// Markdown report
// ---------------------------------------------------------------------------------------------

struct MarkdownInput<'a> {
    daemon_text: &'a str,
    limits: &'a Limits,
    synchronous: Synchronous,
    ping: [&'a PingSuite; 2],
    upsert: &'a UpsertSuite,
    events: Option<&'a EventsSuite>,
    query: &'a QuerySuite,
    breaker: Option<&'a BreakerSuite>,
    vfs: Option<&'a VfsReport>,
    startup: &'a [StartupSample],
    idle: Duration,
}

fn markdown_report(m: &MarkdownInput<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## ccd-bench results\n");
    let _ = writeln!(s, "- Machine: {}", machine_description());
    let _ = writeln!(s, "- Daemon: {}", m.daemon_text);
    let _ = writeln!(
        s,
        "- Closed loop: each connection sends a request and waits for its reply before sending the \
         next, with a client thread of its own, except in the upsert runs: {}; {} unmeasured \
         warm-up requests per connection. Percentiles are exact (nearest rank over all samples).",
        m.upsert.clients, m.limits.warmup
    );
    let _ = writeln!(
        s,
        "- Baselines: *bare echo* is an in-process Unix-socket NDJSON echo server (a thread per \
         connection) driven by the same client loop with the same request line; *SQLite* is one \
         thread doing one `INSERT … ON CONFLICT DO UPDATE` per transaction on a WAL database with \
         `synchronous={}`.",
        m.synchronous.as_str()
    );
    if cfg!(debug_assertions) {
        let _ = writeln!(
            s,
            "- **Warning: ccd-bench is a debug build; numbers are not representative.**"
        );
    }
    let _ = writeln!(s, "\n### Requests\n");
    let _ = writeln!(
        s,
        "| Workload | Conns | Requests | Errors | Throughput (req/s) | p50 | p99 | max |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|");
    let mut rows: Vec<&PhaseResult> = Vec::new();
    for p in m.ping {
        rows.push(&p.daemon);
        rows.push(&p.echo);
    }
    rows.push(m.upsert.single());
    if m.upsert.single.is_some() {
        rows.push(&m.upsert.multi);
    }
    rows.extend(&m.upsert.ungrouped);
    rows.push(&m.upsert.baseline);
    for r in rows {
        let (p50, p99, max) = fmt_lat(r.lat.as_ref());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {p50} | {p99} | {max} |",
            r.label,
            r.connections,
            r.requests(),
            r.failed(),
            group_thousands(r.throughput()),
        );
    }
    let _ = writeln!(s, "\n### Ratios\n");
    let _ = writeln!(s, "| Comparison | Ratio |");
    let _ = writeln!(s, "|---|--:|");
    for p in m.ping {
        let n = p.daemon.connections;
        let _ = writeln!(
            s,
            "| ping p50 / bare echo p50, {n} conn | {} |",
            fmt_ratio(p.p50_ratio())
        );
        let _ = writeln!(
            s,
            "| ping throughput / bare echo throughput, {n} conn | {} |",
            fmt_ratio(p.throughput_ratio())
        );
    }
    let n = m.upsert.multi.connections;
    let _ = writeln!(
        s,
        "| upsert throughput, {n} conn / SQLite 1 txn per write | {} |",
        fmt_ratio(m.upsert.vs_baseline())
    );
    if m.upsert.ungrouped.is_some() {
        let _ = writeln!(
            s,
            "| upsert throughput, {n} conn / same with max_batch=1 | {} |",
            fmt_ratio(m.upsert.vs_ungrouped())
        );
    }
    let _ = writeln!(
        s,
        "| upsert throughput, {n} conn / 1 conn | {} |",
        fmt_ratio(m.upsert.vs_single())
    );
    if let Some(e) = m.events {
        s.push_str(&events_markdown(e));
    }
    s.push_str(&query_markdown(m.query));
    if let Some(b) = m.breaker {
        s.push_str(&breaker_markdown(b));
    }
    if let Some(v) = m.vfs {
        s.push_str(&vfs_markdown(v));
    }
    if !m.startup.is_empty() {
        let _ = writeln!(
            s,
            "\n### Startup ({} runs, fresh CCD_HOME each)\n",
            m.startup.len()
        );
        let _ = writeln!(s, "| Metric | min | median | max |");
        let _ = writeln!(s, "|---|--:|--:|--:|");
        for (name, lo, mid, hi) in startup_rows(m.startup, m.idle) {
            let _ = writeln!(s, "| {name} | {lo} | {mid} | {hi} |");
        }
    }
    s
}

fn environment_line() -> String {
    let build = if cfg!(debug_assertions) {
        "debug build (numbers not representative)"
    } else {
        "release build"
    };
    format!(
        "ccd-bench {}, {build}; {}",
        env!("CARGO_PKG_VERSION"),
        machine_description()
    )
}

fn machine_description() -> String {
    let cpus = thread::available_parallelism().map_or(0, usize::from);
    let model = fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
        info.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_string());
    match model {
        Some(model) => format!("{cpus} CPUs ({model}), Linux {kernel}"),
        None => format!("{cpus} CPUs, Linux {kernel}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Closed-loop phases
// ---------------------------------------------------------------------------------------------

/// What a phase sends.
#[derive(Clone, Debug)]
enum Op {
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

#[derive(Clone, Copy, Debug)]
enum Stage {
    Warmup,
    Measure,
}

impl Op {
    /// The NDJSON request line (with its `\n`).
    fn request_line(&self, conn: u32, stage: Stage, i: u32, id: u64) -> String {
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

/// What counts as a successful reply.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The request line itself, written back by the echo baseline.
    Echo,
    /// A JSON-RPC `result` (optionally equal to this string); an `error` is a failed request.
    Result(Option<&'static str>),
    /// A JSON-RPC `error` with this code; any other reply is a failed request.
    ErrorCode(i64),
}

struct Phase {
    label: String,
    socket: PathBuf,
    op: Op,
    expect: Expect,
    connections: u32,
    requests: u32,
    limits: Limits,
    driver: Driver,
}

/// How the client side of a closed-loop phase drives its connections.
#[derive(Clone, Copy, Debug)]
enum Driver {
    /// One blocking client thread per connection, one request in flight.
    Threads,
    /// `threads` client threads, each driving its share of the connections over non-blocking
    /// sockets on a single-threaded tokio runtime (as wrk and redis-benchmark do), `depth`
    /// requests in flight per connection.
    Multiplexed { threads: u32, depth: u32 },
}

impl Driver {
    /// How `connections` connections are driven, in words.
    fn explain(self, connections: u32) -> String {
        match self {
            Driver::Threads => {
                format!("{connections} blocking client thread(s), one per connection")
            }
            Driver::Multiplexed { threads, depth } => format!(
                "{} client thread(s) multiplexing {connections} connection(s), {depth} request(s) \
                 in flight per connection",
                threads.clamp(1, connections.max(1))
            ),
        }
    }

    /// The same driver with one request in flight per connection.
    fn one_at_a_time(self) -> Driver {
        match self {
            Driver::Threads => Driver::Threads,
            Driver::Multiplexed { threads, .. } => Driver::Multiplexed { threads, depth: 1 },
        }
    }
}

#[derive(Clone, Debug)]
struct Latency {
    p50: u64,
    p99: u64,
    max: u64,
}

impl Latency {
    /// Exact percentiles of the samples (nanoseconds); `None` without samples.
    fn from_samples(mut ns: Vec<u64>) -> Option<Latency> {
        ns.sort_unstable();
        Some(Latency {
            p50: nearest_rank(&ns, 50)?,
            p99: nearest_rank(&ns, 99)?,
            max: *ns.last()?,
        })
    }
}

/// The nearest-rank percentile of sorted samples: the smallest sample with at least `pct`%
/// of all samples at or below it.
fn nearest_rank<T: Copy>(sorted: &[T], pct: u64) -> Option<T> {
    let n = sorted.len() as u64;
    if n == 0 {
        return None;
    }
    let rank = (n * pct).div_ceil(100).clamp(1, n);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

#[derive(Clone, Debug)]
struct PhaseResult {
    label: String,
    connections: u32,
    /// Requests that got a successful reply.
    ok: u64,
    /// Requests answered with a JSON-RPC error (or an unexpected result).
    rpc_errors: u64,
    /// Unmeasured warm-up requests answered with a JSON-RPC error (still a failure).
    warmup_failed: u64,
    /// Requests lost to a broken connection: connect/warm-up failure, I/O error, timeout,
    /// protocol violation.
    lost: u64,
    /// Requests not sent because the phase hit --max-time or was interrupted.
    skipped: u64,
    wall: Duration,
    lat: Option<Latency>,
    /// Distinct error messages with how many connections reported them.
    messages: BTreeMap<String, u32>,
}

impl PhaseResult {
    /// Sums what the client threads of a phase measured; `wall` runs from `start` (their
    /// release) to the end of the last one.
    fn from_workers(
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
    fn requests(&self) -> u64 {
        self.ok + self.rpc_errors + self.lost
    }

    fn failed(&self) -> u64 {
        self.rpc_errors + self.warmup_failed + self.lost
    }

    fn throughput(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    fn summary(&self) -> String {
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

/// How one request went: `Ok(Ok(()))` a success, `Ok(Err(message))` a failed request (a
/// JSON-RPC error reply or a wrong answer), `Err` a broken connection (or an agent that could
/// not be run at all).
type Attempt = Result<Result<(), String>>;

/// What one client thread measured.
#[derive(Default)]
struct WorkerOut {
    lat_ns: Vec<u64>,
    ok: u64,
    rpc_errors: u64,
    warmup_failed: u64,
    lost: u64,
    skipped: u64,
    end: Option<Instant>,
    messages: Vec<String>,
}

impl WorkerOut {
    fn note(&mut self, msg: String) {
        if self.messages.len() < 3 && !self.messages.contains(&msg) {
            self.messages.push(msg);
        }
    }

    /// Runs `n` unmeasured warm-up requests (`request(i)`, `i` from 0) and counts the failed
    /// ones; stops early on a signal. `Err` when the connection broke.
    fn warm_up(&mut self, n: u32, mut request: impl FnMut(u32) -> Attempt) -> Result<()> {
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
    fn record(&mut self, attempt: Attempt, dt: Duration, lost_if_broken: u64) -> bool {
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
    fn report_ready<C>(
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
enum GateState {
    Closed,
    Open,
    Abort,
}

/// Holds every client thread until all connections are up and warmed up.
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            state: Mutex::new(GateState::Closed),
            cv: Condvar::new(),
        }
    }
    fn set(&self, s: GateState) {
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
fn wait_ready(rx: &mpsc::Receiver<()>, n: u32, limit: Duration) -> u32 {
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
struct Budget {
    total: u64,
    taken: AtomicU64,
}

impl Budget {
    fn new(total: u64) -> Budget {
        Budget {
            total,
            taken: AtomicU64::new(0),
        }
    }

    /// Takes up to `n` requests; returns how many it got (0 once the budget is spent).
    fn take(&self, n: u64) -> u64 {
        let total = self.total;
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                (t < total).then(|| t + n.min(total - t))
            })
            .map_or(0, |t| n.min(total - t))
    }

    /// Requests never taken (the phase stopped early).
    fn left(&self) -> u64 {
        self.total.saturating_sub(self.taken.load(Ordering::SeqCst))
    }
}

/// Runs the client threads of a phase, `client(i, ready, gate)` in thread `{thread_name}{i}`
/// for each of the `threads`: each connects and warms up its connection(s) and reports in once
/// per connection; once all `connections` have (within `max_time`), the gate releases them
/// together, and what they measured is summed, `wall` from the release to the end of the last
/// one. `not_ready` says, for the error, what the threads did not all manage in time.
fn run_clients<F>(
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
fn run_phase(p: &Phase) -> Result<PhaseResult> {
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
        let broken = loop {
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
            let (id, attempt) = match self.read_reply(p.limits.timeout, p.expect).await {
                Ok(r) => r,
                Err(e) => break e,
            };
            let Some(t0) = inflight.remove(&id) else {
                break anyhow!("a reply has id {id}, which is not a request in flight");
            };
            answered += 1;
            match stage {
                Stage::Measure => {
                    if !out.record(attempt, t0.elapsed(), 1) {
                        break anyhow!("protocol violation");
                    }
                }
                Stage::Warmup => match attempt {
                    Ok(Ok(())) => {}
                    Ok(Err(msg)) => {
                        out.warmup_failed += 1;
                        out.note(format!("warm-up: {msg}"));
                    }
                    Err(e) => break e,
                },
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

// ---------------------------------------------------------------------------------------------
// JSON-RPC client
// ---------------------------------------------------------------------------------------------

/// One persistent NDJSON connection.
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    buf: String,
    next_id: u64,
}

/// The payload of one reply line.
enum Body {
    Result(Value),
    /// A JSON-RPC error: its code (when it is an integer) and `JSON-RPC error <code>: <message>`.
    Error {
        code: Option<i64>,
        msg: String,
    },
    /// Neither `result` nor `error` (for instance an echoed request).
    Other,
}

impl Client {
    fn connect(socket: &Path, timeout: Duration) -> Result<Client> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        stream
            .set_read_timeout(Some(timeout))
            .context("setting the socket read timeout")?;
        stream
            .set_write_timeout(Some(timeout))
            .context("setting the socket write timeout")?;
        let writer = stream.try_clone().context("cloning the socket handle")?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            buf: String::with_capacity(256),
            next_id: 1_000_000_000,
        })
    }

    /// Connects and checks that the daemon answers `system.ping` with "pong".
    fn connect_and_ping(socket: &Path, timeout: Duration) -> Result<Client> {
        let mut client = Client::connect(socket, timeout)?;
        let pong = client.call("system.ping", json!({}))?;
        ensure!(
            pong.as_str() == Some("pong"),
            "system.ping answered {pong} instead of \"pong\""
        );
        Ok(client)
    }

    /// Sends one request line and reads its reply, skipping server notifications. `Ok(Err)` is
    /// a JSON-RPC error reply or a result other than the expected one; `Err` means the
    /// connection is unusable (I/O error, timeout, EOF, malformed or mismatched reply).
    fn exchange(&mut self, line: &str, id: u64, expect: Expect) -> Attempt {
        let body = self.round_trip(line, id)?;
        judge(expect, id, body)
    }

    fn round_trip(&mut self, line: &str, id: u64) -> Result<Body> {
        self.writer
            .write_all(line.as_bytes())
            .map_err(io_error)
            .context("sending a request")?;
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_line(&mut self.buf)
                .map_err(io_error)
                .context("reading a reply")?;
            ensure!(
                n > 0 && self.buf.ends_with('\n'),
                "the server closed the connection"
            );
            if let Some(body) = parse_reply(&self.buf, id)? {
                return Ok(body);
            }
        }
    }

    /// A one-off call; a JSON-RPC error becomes `Err`.
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut line =
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        match self
            .round_trip(&line, id)
            .with_context(|| format!("calling {method}"))?
        {
            Body::Result(v) => Ok(v),
            Body::Error { msg, .. } => bail!("{method} failed: {msg}"),
            Body::Other => bail!("{method}: the reply has neither `result` nor `error`"),
        }
    }
}

/// The id of `line` when it is a success reply whose result is what `expect` asks for, read
/// without building the reply's JSON tree: the load generator's own CPU time comes out of the
/// two cores the daemon runs on. `None` for anything else (an error, a notification, a null or
/// unexpected result, a malformed line), which the full parse then judges and explains.
fn quick_success(line: &str, expect: Expect) -> Option<u64> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        #[serde(borrow)]
        result: Option<&'a RawValue>,
        #[serde(borrow)]
        error: Option<&'a RawValue>,
        #[serde(borrow)]
        method: Option<&'a RawValue>,
    }
    let reply: Reply = serde_json::from_str(line).ok()?;
    if reply.error.is_some() || reply.method.is_some() {
        return None;
    }
    let (result, id) = (reply.result?, reply.id?.get().parse::<u64>().ok()?);
    match expect {
        Expect::Result(None) => Some(id),
        Expect::Result(Some(want)) => {
            (serde_json::from_str::<&str>(result.get()).ok()? == want).then_some(id)
        }
        Expect::Echo | Expect::ErrorCode(_) => None,
    }
}

/// Whether reply `body` to request `id` is what `expect` asks for: `Ok(Err)` is a JSON-RPC
/// error reply or a wrong result, `Err` a protocol violation.
fn judge(expect: Expect, id: u64, body: Body) -> Attempt {
    Ok(match (expect, body) {
        (Expect::Echo, Body::Other) => Ok(()),
        (Expect::Echo, _) => {
            bail!("the echo server sent something other than the request back")
        }
        (Expect::Result(_), Body::Error { msg, .. }) => Err(msg),
        (Expect::Result(None), Body::Result(_)) => Ok(()),
        (Expect::Result(Some(want)), Body::Result(v)) => {
            if v.as_str() == Some(want) {
                Ok(())
            } else {
                Err(format!(
                    "unexpected result {} (expected {want:?})",
                    clip(&v.to_string())
                ))
            }
        }
        (Expect::Result(_) | Expect::ErrorCode(_), Body::Other) => {
            bail!("reply {id} has neither `result` nor `error`")
        }
        (Expect::ErrorCode(want), Body::Error { code, msg }) => {
            if code == Some(want) {
                Ok(())
            } else {
                Err(format!("{msg} (expected error {want})"))
            }
        }
        (Expect::ErrorCode(want), Body::Result(v)) => Err(format!(
            "unexpected result {} (expected error {want})",
            clip(&v.to_string())
        )),
    })
}

/// Makes socket timeouts say so.
fn io_error(e: io::Error) -> anyhow::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => anyhow!("timed out ({e})"),
        _ => anyhow::Error::new(e),
    }
}

/// Parses one line from the server into its JSON object; `Ok(None)` for a server
/// notification (a `method` and no `id`).
fn reply_object(line: &str) -> Result<Option<serde_json::Map<String, Value>>> {
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("the reply is not JSON: {}", clip(line)))?;
    let Value::Object(obj) = v else {
        bail!("the reply is not a JSON object: {}", clip(line));
    };
    let notification = reply_id(&obj).is_none() && obj.contains_key("method");
    Ok((!notification).then_some(obj))
}

/// A reply's `id`, unless it is missing or null.
fn reply_id(obj: &serde_json::Map<String, Value>) -> Option<&Value> {
    obj.get("id").filter(|v| !v.is_null())
}

/// Parses one reply line for request `id`; `Ok(None)` for a server notification.
fn parse_reply(line: &str, id: u64) -> Result<Option<Body>> {
    let Some(obj) = reply_object(line)? else {
        return Ok(None);
    };
    let got = reply_id(&obj);
    let error = obj.get("error");
    match got {
        Some(v) if v.as_u64() == Some(id) => {}
        // An error that could not be tied to a request (e.g. a parse error) still answers it.
        None if error.is_some() => {}
        _ => bail!(
            "reply for request {id} has id {}: {}",
            got.map_or_else(|| "null".into(), Value::to_string),
            clip(line)
        ),
    }
    Ok(Some(reply_body(&obj)))
}

/// What a reply object carries: its error (as a message), its result, or neither.
fn reply_body(obj: &serde_json::Map<String, Value>) -> Body {
    if let Some(e) = obj.get("error") {
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("(no message)");
        let shown = e.get("code").map_or_else(|| "?".into(), Value::to_string);
        return Body::Error {
            code: e.get("code").and_then(Value::as_i64),
            msg: format!("JSON-RPC error {shown}: {message}"),
        };
    }
    match obj.get("result") {
        Some(r) => Body::Result(r.clone()),
        None => Body::Other,
    }
}

fn clip(s: &str) -> String {
    let s = s.trim_end();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Bare echo baseline
// ---------------------------------------------------------------------------------------------

/// An in-process Unix-socket NDJSON echo server: a thread per connection writes every line
/// it reads back unchanged.
struct EchoServer {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    // Dropped last: the socket lives in here.
    _dir: TempDir,
}

impl EchoServer {
    fn start(keep_temp: bool) -> Result<EchoServer> {
        let dir = TempDir::new("echo", keep_temp)?;
        let socket = dir.path.join("echo.sock");
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("binding the echo socket {}", socket.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_a = Arc::clone(&stop);
        let accept = thread::Builder::new()
            .name("echo-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop_a.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    // A failed spawn drops the connection; the client then reports the failure.
                    let _ = thread::Builder::new()
                        .name("echo-conn".into())
                        .spawn(move || echo_connection(stream));
                }
            })
            .context("spawning the echo accept thread")?;
        Ok(EchoServer {
            socket,
            stop,
            accept: Some(accept),
            _dir: dir,
        })
    }
}

fn echo_connection(stream: UnixStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        writer.write_all(&line)?;
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn run_echo_phase(
    connections: u32,
    requests: u32,
    limits: &Limits,
    keep_temp: bool,
) -> Result<PhaseResult> {
    let server = EchoServer::start(keep_temp)?;
    run_phase(&Phase {
        label: "bare NDJSON echo".into(),
        socket: server.socket.clone(),
        op: Op::Ping,
        expect: Expect::Echo,
        connections,
        requests,
        limits: limits.clone(),
        driver: Driver::Threads,
    })
}

// ---------------------------------------------------------------------------------------------
// SQLite baseline
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Agent queries (stub agent)
// ---------------------------------------------------------------------------------------------

/// What the stub agent prints: a captured Claude Code `stream-json` run answering one prompt.
const STUB_TRANSCRIPT: &str = include_str!("../../protocol/fixtures/text.jsonl");

/// The stub agent: reads the prompt to EOF, then prints the transcript next to it.
const STUB_SCRIPT: &str = "#!/bin/sh
# ccd-bench stub agent: swallow the prompt, print a captured stream-json transcript.
# (`--version` answers the daemon's startup probe.)
if [ \"$1\" = --version ]; then echo 'ccd-bench stub agent'; exit 0; fi
cat > /dev/null
exec cat \"$(dirname \"$0\")/transcript.jsonl\"
";

/// The arguments the daemon gives the agent for a plain query (no resume, model or options).
const AGENT_ARGS: [&str; 4] = ["-p", "--output-format", "stream-json", "--verbose"];

/// CCD_EXECUTOR_QUEUE_SIZE of the daemons the query benchmark starts: never the limit.
const QUERY_QUEUE_SIZE: u32 = 100_000;

/// The overhead target: what ccd may add to a query at p50.
const OVERHEAD_TARGET_MS: f64 = 5.0;

/// What one query measurement runs.
struct QueryPlan {
    requests: u32,
    block: u32,
    queries: u32,
    pool_sizes: Vec<u32>,
    warmup: u32,
    timeout: Duration,
    max_time: Duration,
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

/// Writes a new executable script (closed before any process is spawned from it: no ETXTBSY).
fn write_executable(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .with_context(|| format!("writing the stub agent {}", path.display()))
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

struct QuerySuite {
    overhead: QueryOverhead,
    /// Block size of the overhead measurement.
    block: u32,
    pools: Vec<PoolRun>,
    daemon_text: String,
}

impl QuerySuite {
    fn failures(&self) -> u64 {
        self.overhead.bare.failed()
            + self.overhead.daemon.failed()
            + self
                .pools
                .iter()
                .map(|p| p.daemon.failed() + p.bare.failed())
                .sum::<u64>()
    }
}

fn query_suite(plan: &QueryPlan, opts: &DaemonOpts, out: &mut Out) -> Result<QuerySuite> {
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

fn fmt_lat(l: Option<&Latency>) -> (String, String, String) {
    l.map_or_else(
        || ("–".to_string(), "–".to_string(), "–".to_string()),
        |l| (fmt_ns(l.p50), fmt_ns(l.p99), fmt_ns(l.max)),
    )
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
fn query_markdown(q: &QuerySuite) -> String {
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

// ---------------------------------------------------------------------------------------------
// Open circuit breaker: refused queries
// ---------------------------------------------------------------------------------------------

/// Failures in a row that open the breaker of the breaker benchmark's daemon.
const BREAKER_TRIP: u32 = 3;

/// How long that breaker stays open: longer than any run.
const BREAKER_WAIT_MS: u64 = 3_600_000;

/// JSON-RPC error code of a failed agent run.
const AGENT_FAILED: i64 = -32007;

/// JSON-RPC error code of a query refused by an open circuit breaker.
const CIRCUIT_OPEN: i64 = -32003;

/// The prompt of every `query.run` of the breaker benchmark (plain ASCII: no escaping needed).
const REFUSED_PROMPT: &str = "x";

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
struct BreakerPlan {
    connections: Vec<u32>,
    requests: u32,
    limits: Limits,
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

struct BreakerSuite {
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
    fn failures(&self) -> u64 {
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

fn breaker_suite(plan: &BreakerPlan, opts: &DaemonOpts, out: &mut Out) -> Result<BreakerSuite> {
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
fn breaker_summary(b: &BreakerSuite) -> String {
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
fn breaker_markdown(b: &BreakerSuite) -> String {
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

// ---------------------------------------------------------------------------------------------
// Event bus: fan-out and stalled subscribers
// ---------------------------------------------------------------------------------------------

/// The event type every `session.create` publishes, and the only one the subscribers ask for.
const EVENT_TYPE: &str = "session.created";

/// The fan-out target: events delivered per second, over all subscribers together.
const DELIVERY_TARGET: f64 = 100_000.0;

/// `events.subscriber_queue` when ccd-bench does not set it (the daemon's default).
const DAEMON_SUBSCRIBER_QUEUE: u32 = 4096;

/// Default of `--pipeline`: `session.create` requests in flight per publisher connection.
const DEFAULT_PIPELINE: u32 = 16;

/// Requests in flight per connection while filling a stalled subscriber's queue (unmeasured).
const PREFILL_PIPELINE: u32 = 32;

/// How many events beyond its queue the stalled subscriber is sent before the measurement: they
/// fill its socket and the connection's reply channel first (about 400 events on Linux with the
/// default socket buffer).
const PREFILL_EXTRA: u32 = 2000;

/// The pause between filling the stalled subscriber's queue and the measurement.
const PREFILL_SETTLE: Duration = Duration::from_millis(500);

/// How often a subscriber thread blocked in a read looks at its stop conditions.
const SUBSCRIBER_POLL: Duration = Duration::from_millis(50);

/// What one events measurement runs.
struct EventsPlan {
    subscribers: u32,
    events: u32,
    publishers: u32,
    pipeline: u32,
    requests: u32,
    subscriber_queue: Option<u32>,
    limits: Limits,
}

impl EventsPlan {
    fn queue(&self) -> u32 {
        self.subscriber_queue.unwrap_or(DAEMON_SUBSCRIBER_QUEUE)
    }

    fn daemon_env(&self) -> Vec<(String, OsString)> {
        self.subscriber_queue
            .map(|q| {
                (
                    "CCD_EVENTS_SUBSCRIBER_QUEUE".to_string(),
                    q.to_string().into(),
                )
            })
            .into_iter()
            .collect()
    }

    fn queue_text(&self) -> String {
        match self.subscriber_queue {
            Some(q) => format!("CCD_EVENTS_SUBSCRIBER_QUEUE={q}"),
            None => format!("subscriber queue {DAEMON_SUBSCRIBER_QUEUE} (the daemon's default)"),
        }
    }
}

/// The `session.create` request line (with its `\n`).
fn session_create_line(id: u64) -> String {
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"session.create\",\"params\":{{}}}}\n")
}

/// Sends `n` `session.create` requests in one write, then reads their `n` replies in whatever
/// order they come. Counts each reply in `out` (a successful one with the time from the write to
/// its arrival). `Err` means the connection is unusable; the requests not yet answered are then
/// not counted.
fn create_batch(client: &mut Client, n: u32, out: &mut WorkerOut) -> Result<()> {
    let first = client.next_id + 1;
    client.next_id += u64::from(n);
    let mut lines = String::with_capacity(n as usize * 72);
    for i in 0..u64::from(n) {
        lines.push_str(&session_create_line(first + i));
    }
    let mut pending = vec![true; n as usize];
    let mut left = n;
    let t0 = Instant::now();
    client
        .writer
        .write_all(lines.as_bytes())
        .map_err(io_error)
        .context("sending session.create requests")?;
    while left > 0 {
        client.buf.clear();
        let read = client
            .reader
            .read_line(&mut client.buf)
            .map_err(io_error)
            .context("reading a session.create reply")?;
        ensure!(
            read > 0 && client.buf.ends_with('\n'),
            "the daemon closed the connection"
        );
        let arrived = Instant::now();
        let Some(obj) = reply_object(&client.buf)? else {
            continue; // a notification
        };
        let id = reply_id(&obj);
        let slot = match id.map(Value::as_u64) {
            Some(Some(i)) if i >= first && i - first < u64::from(n) => {
                usize::try_from(i - first).context("reply id out of range")?
            }
            // An error that could not be tied to a request still answers one of them.
            None if obj.contains_key("error") => pending
                .iter()
                .position(|p| *p)
                .context("an error reply with no request left to answer")?,
            _ => bail!(
                "a reply with id {} to requests {first}..{}: {}",
                id.map_or_else(|| "null".into(), Value::to_string),
                first + u64::from(n) - 1,
                clip(&client.buf)
            ),
        };
        ensure!(
            pending.get(slot).copied().unwrap_or(false),
            "a second reply to request {}",
            first + slot as u64
        );
        pending[slot] = false;
        left -= 1;
        match reply_body(&obj) {
            Body::Result(r) if r.get("id").and_then(Value::as_str).is_some() => {
                out.ok += 1;
                out.lat_ns.push(nanos(arrived.duration_since(t0)));
            }
            Body::Result(r) => {
                out.rpc_errors += 1;
                out.note(format!(
                    "session.create answered without a session id: {}",
                    clip(&r.to_string())
                ));
            }
            Body::Error { msg, .. } => {
                out.rpc_errors += 1;
                out.note(msg);
            }
            Body::Other => bail!("a reply with neither `result` nor `error`"),
        }
    }
    Ok(())
}

/// `n` unmeasured `session.create` calls, `PREFILL_PIPELINE` at a time. Returns how many
/// succeeded; failures are counted in `out` too.
fn create_many(client: &mut Client, n: u32, out: &mut WorkerOut) -> Result<u64> {
    let before = out.ok;
    let mut sent = 0;
    while sent < n {
        check_interrupted()?;
        let k = PREFILL_PIPELINE.min(n - sent);
        create_batch(client, k, out)?;
        sent += k;
    }
    out.lat_ns.clear();
    Ok(out.ok - before)
}

/// A connection subscribed to `session.created` (its reply read; nothing else yet).
fn subscribe(socket: &Path, timeout: Duration) -> Result<Client> {
    let mut client = Client::connect(socket, timeout)?;
    let r = client.call("event.subscribe", json!({ "types": [EVENT_TYPE] }))?;
    ensure!(
        r.get("subscription_id").and_then(Value::as_u64).is_some(),
        "event.subscribe answered {} (no subscription_id)",
        clip(&r.to_string())
    );
    Ok(client)
}

/// What a subscriber thread is told while it counts.
struct SubControl {
    /// Events it should see at most (the planned count).
    planned: u64,
    /// Events actually published (known once the publishers are done; `u64::MAX` until then).
    published: AtomicU64,
    /// Set when publishing starts: from then on a subscriber that gets nothing for --timeout
    /// gives up.
    started: AtomicBool,
    /// Set to make every subscriber stop (setup failed, or the run is over).
    abort: AtomicBool,
    timeout: Duration,
    /// Longest a subscriber counts after publishing started.
    max_time: Duration,
}

impl SubControl {
    fn new(planned: u64, limits: &Limits) -> SubControl {
        SubControl {
            planned,
            published: AtomicU64::new(u64::MAX),
            started: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            timeout: limits.timeout,
            max_time: limits.max_time + limits.timeout,
        }
    }

    fn goal(&self) -> u64 {
        self.planned.min(self.published.load(Ordering::Acquire))
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct SubOut {
    /// `session.created` events received.
    received: u64,
    /// Events that `lagged` events said it missed.
    missed: u64,
    /// `lagged` events received.
    lagged: u64,
    /// Other notifications (none are expected), and the type of the first.
    unexpected: u64,
    unexpected_type: Option<String>,
    /// When the last counted event (or `lagged`) arrived.
    last: Option<Instant>,
    /// Received or was told it missed every published event.
    complete: bool,
    error: Option<String>,
}

/// One line a subscriber read.
enum EventLine {
    Created,
    Lagged(u64),
    Other(String),
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Classifies a line on a subscribed connection. The common case (a compact `session.created`
/// notification) is recognised without parsing; anything else is parsed. A JSON-RPC error or
/// any reply is `Err`: nothing but notifications is expected.
fn classify_event_line(line: &[u8]) -> Result<EventLine> {
    if contains(line, b"\"type\":\"session.created\"") && contains(line, b"\"method\":\"event\"") {
        return Ok(EventLine::Created);
    }
    let text = String::from_utf8_lossy(line);
    let v: Value = serde_json::from_slice(line)
        .with_context(|| format!("the daemon sent a line that is not JSON: {}", clip(&text)))?;
    let obj = v
        .as_object()
        .with_context(|| format!("the daemon sent a non-object: {}", clip(&text)))?;
    if obj.get("method").and_then(Value::as_str) != Some("event") {
        match reply_body(obj) {
            Body::Error { msg, .. } => bail!("{msg}"),
            _ => bail!(
                "an unexpected message on a subscribed connection: {}",
                clip(&text)
            ),
        }
    }
    let params = obj.get("params");
    let kind = params.and_then(|p| p.get("type")).and_then(Value::as_str);
    Ok(match kind {
        Some(EVENT_TYPE) => EventLine::Created,
        Some("lagged") => EventLine::Lagged(
            params
                .and_then(|p| p.get("missed"))
                .and_then(Value::as_u64)
                .with_context(|| format!("a `lagged` event without `missed`: {}", clip(&text)))?,
        ),
        Some(other) => EventLine::Other(other.to_string()),
        None => bail!("an event without a type: {}", clip(&text)),
    })
}

/// Reads events from a subscribed connection until it has received (or been told it missed)
/// every published event, the daemon stops sending (no event for --timeout once publishing
/// started), the time is up, or it is told to stop.
fn count_events(client: &mut Client, ctl: &SubControl, out: &mut SubOut) {
    if let Err(e) = count_events_inner(client, ctl, out) {
        out.error = Some(format!("{e:#}"));
    }
}

fn count_events_inner(client: &mut Client, ctl: &SubControl, out: &mut SubOut) -> Result<()> {
    client
        .writer
        .set_read_timeout(Some(SUBSCRIBER_POLL))
        .context("setting the socket read timeout")?;
    let mut line = Vec::with_capacity(512);
    let mut since: Option<Instant> = None; // publishing started (as this thread saw it)
    let mut last_progress = Instant::now();
    loop {
        if since.is_none() && ctl.started.load(Ordering::Acquire) {
            since = Some(Instant::now());
            last_progress = Instant::now();
        }
        if out.received + out.missed >= ctl.goal() {
            out.complete = true;
            return Ok(());
        }
        if ctl.abort.load(Ordering::Acquire) || interrupted() {
            return Ok(());
        }
        match client.reader.read_until(b'\n', &mut line) {
            Ok(0) => bail!("the daemon closed the connection"),
            Ok(_) if line.ends_with(b"\n") => {
                let now = Instant::now();
                match classify_event_line(&line)? {
                    EventLine::Created => out.received += 1,
                    EventLine::Lagged(n) => {
                        out.missed += n;
                        out.lagged += 1;
                    }
                    EventLine::Other(t) => {
                        out.unexpected += 1;
                        out.unexpected_type.get_or_insert(t);
                    }
                }
                out.last = Some(now);
                last_progress = now;
                line.clear();
            }
            Ok(_) => bail!("the daemon closed the connection in the middle of a line"),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Bytes of a partial line stay in `line` for the next read.
                if let Some(since) = since {
                    let counts = || {
                        format!(
                            "received {}, missed {}, of {} published",
                            out.received,
                            out.missed,
                            ctl.goal()
                        )
                    };
                    ensure!(
                        last_progress.elapsed() < ctl.timeout,
                        "no event for {} ({})",
                        humantime::format_duration(ctl.timeout),
                        counts()
                    );
                    ensure!(
                        since.elapsed() < ctl.max_time,
                        "still counting after {} ({})",
                        humantime::format_duration(ctl.max_time),
                        counts()
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading events"),
        }
    }
}

/// Sums of what the subscribers saw.
#[derive(Default)]
struct SubTotals {
    count: u32,
    received: u64,
    missed: u64,
    lagged: u64,
    unexpected: u64,
    /// Subscribers that failed: error, or not every event received or reported missed.
    failed: u64,
    /// Subscribers whose received + missed is not the published count.
    miscounted: u64,
    /// When the last subscriber finished.
    last: Option<Instant>,
    messages: BTreeMap<String, u32>,
}

impl SubTotals {
    fn add(&mut self, s: SubOut, published: u64) {
        self.count += 1;
        self.received += s.received;
        self.missed += s.missed;
        self.lagged += s.lagged;
        self.unexpected += s.unexpected;
        if let Some(t) = s.last {
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
        }
        let mut failed = false;
        if let Some(e) = s.error {
            failed = true;
            *self.messages.entry(e).or_default() += 1;
        } else if !s.complete {
            failed = true;
            *self
                .messages
                .entry("stopped before every event arrived".to_string())
                .or_default() += 1;
        }
        if s.complete && s.received + s.missed != published {
            self.miscounted += 1;
            failed = true;
            *self
                .messages
                .entry(format!(
                    "received {} + missed {} is not the {published} events published",
                    s.received, s.missed
                ))
                .or_default() += 1;
        }
        if let Some(t) = s.unexpected_type {
            *self
                .messages
                .entry(format!(
                    "got events of other types than {EVENT_TYPE}, such as {t}"
                ))
                .or_default() += 1;
        }
        if failed {
            self.failed += 1;
        }
    }
}

/// The fan-out measurement.
struct Fanout {
    /// The publishers' `session.create` calls; `wall` is from their release to the last reply.
    publish: PhaseResult,
    pipeline: u32,
    subs: SubTotals,
    /// From the release of the publishers to the last subscriber done.
    delivery_wall: Duration,
    queue_text: String,
}

impl Fanout {
    fn delivered_per_s(&self) -> f64 {
        let secs = self.delivery_wall.as_secs_f64();
        if secs > 0.0 {
            self.subs.received as f64 / secs
        } else {
            0.0
        }
    }

    fn failures(&self) -> u64 {
        self.publish.failed() + self.subs.failed
    }

    fn verdict(&self) -> String {
        let d = self.delivered_per_s();
        let (met, cmp) = if d >= DELIVERY_TARGET {
            ("met", "≥")
        } else {
            ("NOT met", "<")
        };
        format!(
            "{met} ({} {cmp} {})",
            group_thousands(d),
            group_thousands(DELIVERY_TARGET)
        )
    }
}

/// One publisher connection of the fan-out: warm up, wait for the gate, then take batches of
/// `pipeline` calls from the shared budget.
fn publisher(
    socket: &Path,
    plan: &EventsPlan,
    conn: u32,
    budget: &Budget,
    ready: &mpsc::Sender<()>,
    gate: &Gate,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    let mut warm = WorkerOut::default();
    let setup = (|| -> Result<Client> {
        let mut client = Client::connect(socket, plan.limits.timeout)?;
        for _ in 0..plan.limits.warmup {
            create_batch(&mut client, 1, &mut warm)?;
        }
        Ok(client)
    })();
    out.warmup_failed = warm.rpc_errors;
    for m in warm.messages {
        out.note(format!("warm-up: {m}"));
    }
    let setup = setup.with_context(|| format!("publisher {conn}"));
    // A failed setup loses the connection (not requests of the budget); the others go on.
    let Some(mut client) = out.report_ready(setup, ready, gate, 1) else {
        return out;
    };
    let deadline = Instant::now() + plan.limits.max_time;
    let pipeline = u64::from(plan.pipeline.max(1));
    while !interrupted() && Instant::now() < deadline {
        let k = budget.take(pipeline);
        if k == 0 {
            break;
        }
        let k = u32::try_from(k).unwrap_or(u32::MAX);
        let answered = out.ok + out.rpc_errors;
        if let Err(e) = create_batch(&mut client, k, &mut out) {
            out.lost += u64::from(k) - (out.ok + out.rpc_errors - answered);
            out.note(format!("{e:#}"));
            break;
        }
    }
    out.end = Some(Instant::now());
    out
}

/// A subscriber thread: subscribe, report in, count.
fn subscriber(socket: &Path, ctl: &SubControl, ready: &mpsc::Sender<()>) -> SubOut {
    let mut out = SubOut::default();
    match subscribe(socket, ctl.timeout) {
        Ok(mut client) => {
            let _ = ready.send(());
            count_events(&mut client, ctl, &mut out);
        }
        Err(e) => {
            out.error = Some(format!("subscribing: {e:#}"));
            let _ = ready.send(());
        }
    }
    out
}

fn fanout(daemon: &Daemon, plan: &EventsPlan) -> Result<Fanout> {
    check_interrupted()?;
    let total = u64::from(plan.events);
    let gate = Gate::new();
    let budget = Budget::new(total);
    let ctl = SubControl::new(total, &plan.limits);
    let socket = daemon.socket.as_path();
    let label = format!("session.create ({} subscribers)", plan.subscribers);
    thread::scope(|s| {
        let run = (|| -> Result<Fanout> {
            // 1. Publishers connect and warm up (no subscriber sees those events).
            let (ptx, prx) = mpsc::channel::<()>();
            let mut pubs = Vec::with_capacity(plan.publishers as usize);
            for p in 0..plan.publishers {
                let ready = ptx.clone();
                let (gate, budget) = (&gate, &budget);
                let h = thread::Builder::new()
                    .name(format!("bench-pub{p}"))
                    .spawn_scoped(s, move || publisher(socket, plan, p, budget, &ready, gate))
                    .context("spawning a publisher thread")?;
                pubs.push(h);
            }
            drop(ptx);
            let ready = wait_ready(&prx, plan.publishers, plan.limits.max_time);
            ensure!(
                ready == plan.publishers,
                "only {ready} of {} publishers were connected and warmed up within {}",
                plan.publishers,
                humantime::format_duration(plan.limits.max_time)
            );
            // 2. Subscribers subscribe.
            let (stx, srx) = mpsc::channel::<()>();
            let mut subs = Vec::with_capacity(plan.subscribers as usize);
            for i in 0..plan.subscribers {
                let ready = stx.clone();
                let ctl = &ctl;
                let h = thread::Builder::new()
                    .name(format!("bench-sub{i}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || subscriber(socket, ctl, &ready))
                    .context("spawning a subscriber thread")?;
                subs.push(h);
            }
            drop(stx);
            let ready = wait_ready(&srx, plan.subscribers, plan.limits.max_time);
            ensure!(
                ready == plan.subscribers,
                "only {ready} of {} subscribers had subscribed within {}",
                plan.subscribers,
                humantime::format_duration(plan.limits.max_time)
            );
            check_interrupted()?;
            // 3. Publish; count.
            let start = Instant::now();
            ctl.started.store(true, Ordering::Release);
            gate.set(GateState::Open);
            let pubs = pubs
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow!("a publisher thread panicked")))
                .collect::<Result<Vec<_>>>()?;
            let mut publish = PhaseResult::from_workers(&label, plan.publishers, start, pubs);
            publish.skipped = budget.left();
            // Every successful call published exactly one event.
            ctl.published.store(publish.ok, Ordering::Release);
            let mut totals = SubTotals::default();
            for h in subs {
                let o = h
                    .join()
                    .map_err(|_| anyhow!("a subscriber thread panicked"))?;
                totals.add(o, publish.ok);
            }
            let delivery_wall = totals
                .last
                .map_or(Duration::ZERO, |t| t.duration_since(start));
            Ok(Fanout {
                publish,
                pipeline: plan.pipeline,
                subs: totals,
                delivery_wall,
                queue_text: plan.queue_text(),
            })
        })();
        // Release every thread still waiting (on an error path); the scope then joins them.
        ctl.abort.store(true, Ordering::Release);
        gate.set(GateState::Abort);
        run
    })
}

/// The publisher's latency with and without a stalled subscriber.
struct StallRun {
    quiet: PhaseResult,
    /// With only the reading subscriber: what a subscriber that keeps up costs.
    reading_only: PhaseResult,
    loaded: PhaseResult,
    /// Unmeasured calls made after the stalled subscriber subscribed, before the measurement.
    prefill: u32,
    prefill_failed: u64,
    /// Events published while each subscriber was subscribed.
    published_stalled: u64,
    published_reader: u64,
    stalled: SubOut,
    reader: SubOut,
}

/// 1 when a subscriber did not receive (or hear it missed) exactly the events published.
fn sub_failed(s: &SubOut, published: u64) -> u64 {
    u64::from(s.error.is_some() || !s.complete || s.received + s.missed != published)
}

fn describe_sub(s: &SubOut, published: u64) -> String {
    let mut t = format!(
        "received {}, missed {} ({} lagged events), of {published} published",
        s.received, s.missed, s.lagged
    );
    if let Some(e) = &s.error {
        let _ = write!(t, "; FAILED: {e}");
    } else if !s.complete {
        t.push_str("; FAILED: stopped before every event arrived");
    } else if s.received + s.missed != published {
        t.push_str("; FAILED: received + missed is not the published count");
    }
    t
}

/// Successful calls of a closed-loop phase, its warm-up included (each published one event).
fn calls_ok(p: &PhaseResult, warmup: u32) -> u64 {
    u64::from(warmup).saturating_sub(p.warmup_failed) + p.ok
}

impl StallRun {
    fn failures(&self) -> u64 {
        self.quiet.failed()
            + self.reading_only.failed()
            + self.loaded.failed()
            + self.prefill_failed
            + sub_failed(&self.stalled, self.published_stalled)
            + sub_failed(&self.reader, self.published_reader)
    }

    /// With the stalled and the reading subscriber / with none: (p50, p99).
    fn vs_quiet(&self) -> (Option<f64>, Option<f64>) {
        lat_ratios(self.loaded.lat.as_ref(), self.quiet.lat.as_ref())
    }

    /// With the stalled and the reading subscriber / with the reading one only: the stall alone.
    fn vs_reading(&self) -> (Option<f64>, Option<f64>) {
        lat_ratios(self.loaded.lat.as_ref(), self.reading_only.lat.as_ref())
    }
}

fn stall_run(daemon: &Daemon, plan: &EventsPlan) -> Result<StallRun> {
    check_interrupted()?;
    let phase = |label: &str| Phase {
        label: label.to_string(),
        socket: daemon.socket.clone(),
        op: Op::SessionCreate,
        expect: Expect::Result(None),
        connections: 1,
        requests: plan.requests,
        limits: plan.limits.clone(),
        driver: Driver::Threads,
    };
    let warmup = plan.limits.warmup;
    let timeout = plan.limits.timeout;
    let quiet = run_phase(&phase("session.create, no subscribers"))?;
    check_interrupted()?;

    // A subscriber that reads (in a thread of its own) until the end of the measurement.
    let mut reading = subscribe(&daemon.socket, timeout).context("the reading subscriber")?;
    let ctl = SubControl::new(u64::MAX, &plan.limits);
    ctl.started.store(true, Ordering::Release);
    let prefill = plan.queue().saturating_add(PREFILL_EXTRA);
    thread::scope(|s| -> Result<StallRun> {
        let ctl = &ctl;
        let reader = thread::Builder::new()
            .name("bench-reader".into())
            .spawn_scoped(s, move || {
                let mut out = SubOut::default();
                count_events(&mut reading, ctl, &mut out);
                out
            })
            .context("spawning the reading subscriber thread")?;
        let run = (|| -> Result<(PhaseResult, Client, u64, WorkerOut, PhaseResult)> {
            let reading_only = run_phase(&phase("session.create, 1 reading subscriber"))?;
            check_interrupted()?;
            // A subscriber that reads its subscription reply and then never reads again.
            let stalled = subscribe(&daemon.socket, timeout).context("the stalled subscriber")?;
            // Fill its socket, its connection's reply channel and its queue.
            let mut filler = Client::connect(&daemon.socket, timeout)?;
            let mut fill = WorkerOut::default();
            let filled = create_many(&mut filler, prefill, &mut fill)
                .context("filling the stalled subscriber's queue")?;
            drop(filler);
            // Let the reading subscriber catch up and the event log write those events (every
            // `events.flush_interval_ms`, 200 ms by default), so that the measurement pays for
            // neither.
            sleep_interruptible(PREFILL_SETTLE);
            check_interrupted()?;
            let loaded = run_phase(&phase("session.create, 1 stalled + 1 reading subscriber"))?;
            Ok((reading_only, stalled, filled, fill, loaded))
        })();
        let (reading_only, mut stalled, filled, fill, loaded) = match run {
            Ok(v) => v,
            Err(e) => {
                ctl.abort.store(true, Ordering::Release);
                return Err(e);
            }
        };
        let published_stalled = filled + calls_ok(&loaded, warmup);
        let published_reader = calls_ok(&reading_only, warmup) + published_stalled;
        ctl.published.store(published_reader, Ordering::Release);
        let reader = reader
            .join()
            .map_err(|_| anyhow!("the reading subscriber thread panicked"))?;
        // Now read what the stalled subscriber was sent: the events its socket held, a `lagged`
        // for those its queue dropped, and the newest ones.
        let drain = SubControl::new(published_stalled, &plan.limits);
        drain.started.store(true, Ordering::Release);
        drain.published.store(published_stalled, Ordering::Release);
        let mut st = SubOut::default();
        count_events(&mut stalled, &drain, &mut st);
        let mut fill_failed = fill.rpc_errors;
        if let Some(m) = fill.messages.first() {
            eprintln!("ccd-bench: filling the stalled subscriber's queue: {m}");
            fill_failed = fill_failed.max(1);
        }
        Ok(StallRun {
            quiet,
            reading_only,
            loaded,
            prefill,
            prefill_failed: fill_failed,
            published_stalled,
            published_reader,
            stalled: st,
            reader,
        })
    })
}

struct EventsSuite {
    fanout: Fanout,
    stall: StallRun,
    daemon_text: String,
    queue: u32,
}

impl EventsSuite {
    fn failures(&self) -> u64 {
        self.fanout.failures() + self.stall.failures()
    }
}

fn events_suite(plan: &EventsPlan, opts: &DaemonOpts, out: &mut Out) -> Result<EventsSuite> {
    check_total(1, plan.events)?;
    check_total(1, plan.requests)?;
    check_interrupted()?;
    let start_timeout = start_timeout(plan.limits.timeout);

    // 1. Fan-out.
    let (daemon, _) = Daemon::start_with_env(opts, start_timeout, plan.daemon_env())
        .context("starting a daemon for the fan-out measurement")?;
    out.line(&daemon.describe());
    let daemon_text = daemon.markdown_description();
    out.line(&format!(
        "events fan-out: {} subscribers of `{EVENT_TYPE}`, {} publisher connections \
         ({} in flight each), {} `session.create` calls; {}",
        plan.subscribers,
        plan.publishers,
        plan.pipeline,
        plan.events,
        plan.queue_text()
    ));
    let fan = fanout(&daemon, plan)?;
    drop(daemon);
    out.line(&fan.publish.summary());
    out.line(&fanout_summary(&fan));
    check_interrupted()?;

    // 2. Publisher latency with a stalled subscriber.
    let (daemon, _) = Daemon::start_with_env(opts, start_timeout, plan.daemon_env())
        .context("starting a daemon for the stalled-subscriber measurement")?;
    out.line(&daemon.describe());
    let stall = stall_run(&daemon, plan)?;
    drop(daemon);
    out.line(&stall.quiet.summary());
    out.line(&stall.reading_only.summary());
    out.line(&format!(
        "  then one more subscriber, which stalls (reads its subscription reply, then never \
         reads again); {} unmeasured `session.create` calls fill its socket and overflow its \
         queue ({})",
        stall.prefill,
        plan.queue_text()
    ));
    out.line(&stall.loaded.summary());
    out.line(&stall_summary(&stall));
    Ok(EventsSuite {
        fanout: fan,
        stall,
        daemon_text,
        queue: plan.queue(),
    })
}

fn fanout_summary(f: &Fanout) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  published: {} events in {:.3} s → {} events/s",
        f.publish.ok,
        f.publish.wall.as_secs_f64(),
        group_thousands(f.publish.throughput())
    );
    let _ = writeln!(
        s,
        "  delivered: {} events to {} subscribers in {:.3} s (release of the publishers → last \
         subscriber done) → {} events/s in total; missed (lagged): {} in {} lagged events",
        f.subs.received,
        f.subs.count,
        f.delivery_wall.as_secs_f64(),
        group_thousands(f.delivered_per_s()),
        f.subs.missed,
        f.subs.lagged
    );
    if f.subs.failed > 0 {
        let _ = writeln!(
            s,
            "  FAILED: {} subscribers did not get (or hear they missed) every event",
            f.subs.failed
        );
    }
    for (msg, n) in f.subs.messages.iter().take(5) {
        let _ = writeln!(s, "  subscriber error (on {n}): {msg}");
    }
    let _ = write!(
        s,
        "  target ≥ {} events/s delivered in total: {}",
        group_thousands(DELIVERY_TARGET),
        f.verdict()
    );
    s
}

fn stall_summary(r: &StallRun) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  stalled subscriber (read afterwards): {}",
        describe_sub(&r.stalled, r.published_stalled)
    );
    if r.stalled.error.is_none() && r.stalled.missed == 0 {
        let _ = writeln!(
            s,
            "  note: the stalled subscriber's queue never overflowed (no `lagged`)"
        );
    }
    let _ = writeln!(
        s,
        "  reading subscriber: {}",
        describe_sub(&r.reader, r.published_reader)
    );
    if r.prefill_failed > 0 {
        let _ = writeln!(
            s,
            "  FAILED: {} of the unmeasured calls that filled the queue",
            r.prefill_failed
        );
    }
    let (p50, p99) = r.vs_quiet();
    let _ = writeln!(
        s,
        "  ratio, with a stalled + a reading subscriber / with none: p50 {}, p99 {}",
        fmt_ratio(p50),
        fmt_ratio(p99)
    );
    let (p50, p99) = r.vs_reading();
    let _ = write!(
        s,
        "  ratio, with a stalled + a reading subscriber / with the reading one only (the stall \
         alone): p50 {}, p99 {}",
        fmt_ratio(p50),
        fmt_ratio(p99)
    );
    s
}

/// The `### Events` section of the markdown report.
fn events_markdown(e: &EventsSuite) -> String {
    let mut s = String::new();
    let f = &e.fanout;
    let r = &e.stall;
    let _ = writeln!(s, "\n### Events (event bus)\n");
    let _ = writeln!(
        s,
        "- Daemons: {}, {}; a fresh one for each part. Every `session.create` publishes one \
         `{EVENT_TYPE}` event.",
        e.daemon_text, f.queue_text
    );
    let _ = writeln!(
        s,
        "- Fan-out: every subscriber is a connection and a thread of its own that subscribes to \
         `{EVENT_TYPE}` and counts the events it receives and those `lagged` events say it \
         missed. The publishers share the `session.create` calls, {} in flight per connection \
         (a publish latency is from the write of its batch to its reply). Delivered/s is the events received by all subscribers together over the time from the \
         release of the publishers to the moment the last subscriber has received (or heard it \
         missed) every event.\n",
        f.pipeline
    );
    let _ = writeln!(
        s,
        "| Subscribers | Publishers | Events | Errors | Published (events/s) | publish p50 | publish p99 | Delivered (events/s, total) | Missed (lagged) |"
    );
    let _ = writeln!(s, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let (p50, p99, _) = fmt_lat(f.publish.lat.as_ref());
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {p50} | {p99} | {} | {} |",
        f.subs.count,
        f.publish.connections,
        f.publish.requests(),
        f.failures(),
        group_thousands(f.publish.throughput()),
        group_thousands(f.delivered_per_s()),
        f.subs.missed
    );
    let _ = writeln!(
        s,
        "\nTarget ≥ {} events/s delivered in total: {}.",
        group_thousands(DELIVERY_TARGET),
        f.verdict()
    );
    let _ = writeln!(
        s,
        "\n#### Publisher latency with a stalled subscriber (`session.create`, 1 connection, closed loop)\n\n\
         First with no subscriber; then with one subscriber that reads normally (a thread of \
         its own); then with that one and one that reads its subscription reply and then never \
         reads its socket again. Before the last run, {} unmeasured calls fill the stalled \
         subscriber's socket and overflow its queue of {}, so that it is losing events \
         throughout.\n",
        r.prefill, e.queue
    );
    let _ = writeln!(
        s,
        "| Run | Requests | Errors | Throughput (req/s) | p50 | p99 | max |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|");
    for p in [&r.quiet, &r.reading_only, &r.loaded] {
        let (p50, p99, max) = fmt_lat(p.lat.as_ref());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {p50} | {p99} | {max} |",
            p.label,
            p.requests(),
            p.failed(),
            group_thousands(p.throughput())
        );
    }
    let (p50, p99) = r.vs_quiet();
    let (rp50, rp99) = r.vs_reading();
    let _ = writeln!(
        s,
        "\n| Comparison | p50 ratio | p99 ratio |\n|---|--:|--:|\n\
         | stalled + reading subscriber / no subscriber | {} | {} |\n\
         | stalled + reading subscriber / reading subscriber only (the stall alone) | {} | {} |",
        fmt_ratio(p50),
        fmt_ratio(p99),
        fmt_ratio(rp50),
        fmt_ratio(rp99)
    );
    let _ = writeln!(
        s,
        "\nThe stalled subscriber, read afterwards: {}. The reading one: {}.",
        describe_sub(&r.stalled, r.published_stalled),
        describe_sub(&r.reader, r.published_reader)
    );
    s
}

// ---------------------------------------------------------------------------------------------
// Agent filesystem (FUSE) reads
// ---------------------------------------------------------------------------------------------

/// Target for the p50 of reading `health` from the mount.
const VFS_HEALTH_TARGET_MS: f64 = 1.0;

/// Target for the p50 of reading the ~1 MiB `agents.sealed` from the mount.
const VFS_BIG_TARGET_MS: f64 = 5.0;

/// Default prompt size (1.4 MiB of base64-alphabet characters, 6 random bits each), which
/// zstd can only squeeze to about 1 MiB, so `agents.sealed` comes out at about 1 MiB.
const VFS_PROMPT_BYTES: u32 = 1_468_006;

/// What `health` holds while the daemon is fine.
const VFS_HEALTH_OK: &[u8] = b"OK\n";

/// The name of the big agent the VFS benchmark imports.
const VFS_AGENT: &str = "big";

struct VfsPlan {
    health_reads: u32,
    big_reads: u32,
    block: u32,
    prompt_bytes: u32,
    warmup: u32,
    timeout: Duration,
    max_time: Duration,
}

/// Latencies of reading one file over and over (each read: open, read to end, close).
struct ReadRun {
    label: String,
    /// Measured reads that returned bytes (equal to the expected ones or not).
    ok: u64,
    /// Reads (warm-up included) that failed with an I/O error.
    errors: u64,
    /// Reads (warm-up included) whose bytes differ from the expected ones.
    mismatches: u64,
    /// Measured reads not done because of --max-time or a signal.
    skipped: u64,
    lat: Option<Latency>,
    messages: BTreeMap<String, u32>,
}

impl ReadRun {
    fn failed(&self) -> u64 {
        self.errors + self.mismatches
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{:<28} {} reads, {} I/O errors, {} mismatches",
            self.label, self.ok, self.errors, self.mismatches
        );
        if self.skipped > 0 {
            let _ = write!(s, ", {} skipped (time limit)", self.skipped);
        }
        match &self.lat {
            Some(l) => {
                let _ = write!(
                    s,
                    "; p50 {}  p99 {}  max {}",
                    fmt_ns(l.p50),
                    fmt_ns(l.p99),
                    fmt_ns(l.max)
                );
            }
            None => s.push_str("; no latency samples"),
        }
        for (msg, n) in &self.messages {
            let _ = write!(s, "\n    {n}× {msg}");
        }
        s
    }
}

/// Times `std::fs::read` of one path and checks what it returns.
struct ReadSampler<'a> {
    label: &'a str,
    path: &'a Path,
    expect: &'a [u8],
    planned: u64,
    /// Measured reads attempted (failed ones included).
    attempts: u64,
    samples: Vec<u64>,
    errors: u64,
    mismatches: u64,
    messages: BTreeMap<String, u32>,
}

impl<'a> ReadSampler<'a> {
    fn new(label: &'a str, path: &'a Path, expect: &'a [u8], planned: u32) -> ReadSampler<'a> {
        ReadSampler {
            label,
            path,
            expect,
            planned: u64::from(planned),
            attempts: 0,
            samples: Vec::with_capacity(planned as usize),
            errors: 0,
            mismatches: 0,
            messages: BTreeMap::new(),
        }
    }

    fn note(&mut self, msg: String) {
        *self.messages.entry(msg).or_insert(0) += 1;
    }

    /// One read; its latency is kept when `measure`.
    fn read(&mut self, measure: bool) {
        let t = Instant::now();
        let got = fs::read(self.path);
        let dt = t.elapsed();
        if measure {
            self.attempts += 1;
        }
        match got {
            Ok(bytes) => {
                if measure {
                    self.samples.push(nanos(dt));
                }
                if bytes != self.expect {
                    self.mismatches += 1;
                    self.note(format!(
                        "{}: read {} bytes that differ from the expected {} bytes",
                        self.path.display(),
                        bytes.len(),
                        self.expect.len()
                    ));
                }
            }
            Err(e) => {
                self.errors += 1;
                self.note(format!("reading {}: {e}", self.path.display()));
            }
        }
    }

    fn done(&self) -> bool {
        self.attempts >= self.planned
    }

    fn finish(self) -> ReadRun {
        let ok = self.samples.len() as u64;
        ReadRun {
            label: self.label.to_string(),
            ok,
            errors: self.errors,
            mismatches: self.mismatches,
            skipped: self.planned.saturating_sub(self.attempts),
            lat: Latency::from_samples(self.samples),
            messages: self.messages,
        }
    }
}

struct VfsSuite {
    mountpoint: PathBuf,
    /// Filesystem type of the directory holding the local copy (from /proc/self/mountinfo).
    local_fs: String,
    prompt_bytes: usize,
    sealed_bytes: usize,
    block: u32,
    health: ReadRun,
    big_vfs: ReadRun,
    big_local: ReadRun,
    /// Problems found after the measurements (the daemon did not stop, the mount stayed).
    teardown: Vec<String>,
}

impl VfsSuite {
    fn failures(&self) -> u64 {
        self.health.failed()
            + self.big_vfs.failed()
            + self.big_local.failed()
            + self.teardown.len() as u64
    }

    /// Mount / local copy, for `agents.sealed`: (p50, p99).
    fn ratios(&self) -> (Option<f64>, Option<f64>) {
        lat_ratios(self.big_vfs.lat.as_ref(), self.big_local.lat.as_ref())
    }

    fn describe(&self) -> String {
        format!(
            "agent `{VFS_AGENT}` with a {} incompressible prompt ({} bytes); agents.sealed is {} \
             ({} bytes); local copy on {}",
            fmt_bytes(self.prompt_bytes),
            group_thousands(self.prompt_bytes as f64),
            fmt_bytes(self.sealed_bytes),
            group_thousands(self.sealed_bytes as f64),
            self.local_fs
        )
    }
}

/// A VFS benchmark that ran, or why it did not.
enum VfsReport {
    Skipped(String),
    Ran(Box<VfsSuite>),
}

fn fmt_bytes(n: usize) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", n / 1024.0)
    }
}

/// "met" / "MISSED" for a p50 against a target in milliseconds.
fn vfs_verdict(lat: Option<&Latency>, target_ms: f64) -> String {
    match lat {
        Some(l) if (l.p50 as f64) / 1e6 < target_ms => {
            format!("p50 {} < {target_ms} ms: met", fmt_ns(l.p50))
        }
        Some(l) => format!("p50 {} ≥ {target_ms} ms: MISSED", fmt_ns(l.p50)),
        None => format!("target p50 < {target_ms} ms: no samples"),
    }
}

/// `bytes` characters of deterministic pseudo-random text from the base64 alphabet (so about
/// 6 bits of entropy per byte), in lines of 76 characters.
fn incompressible_text(bytes: usize, seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // splitmix64
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut s = String::with_capacity(bytes);
    let mut col = 0;
    while s.len() < bytes {
        let mut x = next();
        for _ in 0..10 {
            if s.len() >= bytes {
                break;
            }
            if col == 76 {
                s.push('\n');
                col = 0;
            } else {
                s.push(char::from(ALPHABET[(x & 63) as usize]));
                x >>= 6;
                col += 1;
            }
        }
    }
    s
}

/// (mount point, filesystem type) of every line of /proc/self/mountinfo.
fn mounts() -> Vec<(PathBuf, String)> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?.replace("\\040", " ");
            let fstype = right.split(' ').next()?;
            Some((PathBuf::from(point), fstype.to_string()))
        })
        .collect()
}

fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|(p, _)| p == path)
}

/// The type of the filesystem holding `path` (the longest mount point that contains it).
fn fs_type_of(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts()
        .into_iter()
        .filter(|(p, _)| path.starts_with(p))
        .max_by_key(|(p, _)| p.as_os_str().len())
        .map_or_else(
            || "?".to_string(),
            |(p, t)| format!("{} ({t})", p.display()),
        )
}

/// Polls `.manifest` on the mount until it counts at least one agent.
fn wait_for_agent(mountpoint: &Path, timeout: Duration) -> Result<()> {
    let manifest = mountpoint.join(".manifest");
    let deadline = Instant::now() + timeout;
    loop {
        let count = fs::read(&manifest)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("agent_count").and_then(Value::as_u64));
        if count.is_some_and(|n| n >= 1) {
            return Ok(());
        }
        check_interrupted()?;
        ensure!(
            Instant::now() < deadline,
            "{} did not count the imported agent within {} (agent_count: {})",
            manifest.display(),
            humantime::format_duration(timeout),
            count.map_or_else(|| "unreadable".to_string(), |n| n.to_string())
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn vfs_suite(plan: &VfsPlan, opts: &DaemonOpts, out: &mut Out) -> Result<VfsReport> {
    if !Path::new("/dev/fuse").exists() {
        return Ok(VfsReport::Skipped(
            "/dev/fuse does not exist, so the agent filesystem cannot be mounted here".into(),
        ));
    }
    let scratch = TempDir::new("vfs", opts.keep_temp)?;
    // The agent definition to import: a large prompt that zstd cannot shrink much.
    let agents_dir = scratch.path.join("agents");
    fs::create_dir(&agents_dir).with_context(|| format!("creating {}", agents_dir.display()))?;
    let prompt = incompressible_text(plan.prompt_bytes as usize, 0x00cc_dbe4_c4f5);
    let md = format!(
        "---\nname: {VFS_AGENT}\ndescription: A large agent (ccd-bench vfs)\n---\n{prompt}\n"
    );
    let md_path = agents_dir.join(format!("{VFS_AGENT}.md"));
    fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;

    let env = vec![("CCD_VFS_ENABLED".to_string(), OsString::from("true"))];
    let (mut daemon, _) = Daemon::start_with_env(opts, start_timeout(plan.timeout), env)
        .context("starting a daemon with CCD_VFS_ENABLED=true")?;
    out.line(&daemon.describe());
    let mut client = Client::connect(&daemon.socket, plan.timeout)?;
    let status = client.call("vfs.status", json!({}))?;
    if status.get("mounted").and_then(Value::as_bool) != Some(true) {
        bail!(
            "the daemon did not mount the agent filesystem: vfs.status = {}",
            clip(&status.to_string())
        );
    }
    let mountpoint = PathBuf::from(
        status
            .get("mountpoint")
            .and_then(Value::as_str)
            .context("vfs.status has no `mountpoint`")?,
    );
    let agents_path = agents_dir
        .to_str()
        .context("the temporary directory's path is not UTF-8")?;
    client.call("agent.import", json!({ "path": agents_path }))?;
    drop(client);
    wait_for_agent(&mountpoint, plan.timeout)?;

    // The reference: agents.sealed as the mount serves it, copied to a regular file.
    let sealed_path = mountpoint.join("agents.sealed");
    let health_path = mountpoint.join("health");
    let sealed =
        fs::read(&sealed_path).with_context(|| format!("reading {}", sealed_path.display()))?;
    let copy_path = scratch.path.join("agents.sealed.copy");
    fs::write(&copy_path, &sealed).with_context(|| format!("writing {}", copy_path.display()))?;
    let local_fs = fs_type_of(&scratch.path);
    let suite_head = format!(
        "vfs: mounted at {} ({}); ",
        mountpoint.display(),
        mounts()
            .iter()
            .find(|(p, _)| *p == mountpoint)
            .map_or("?", |(_, t)| t.as_str())
    );

    // 1. `health`.
    let mut health = ReadSampler::new(
        "health (mount)",
        &health_path,
        VFS_HEALTH_OK,
        plan.health_reads,
    );
    for _ in 0..plan.warmup {
        health.read(false);
    }
    let started = Instant::now();
    while !health.done() && started.elapsed() < plan.max_time && !interrupted() {
        health.read(true);
    }
    let health = health.finish();
    check_interrupted()?;

    // 2. agents.sealed from the mount against its local copy, in alternating blocks.
    let mut vfs = ReadSampler::new(
        "agents.sealed (mount)",
        &sealed_path,
        &sealed,
        plan.big_reads,
    );
    let mut local = ReadSampler::new(
        "agents.sealed (local copy)",
        &copy_path,
        &sealed,
        plan.big_reads,
    );
    for _ in 0..plan.warmup.min(20) {
        vfs.read(false);
        local.read(false);
    }
    let started = Instant::now();
    let mut round = 0u64;
    'outer: while !(vfs.done() && local.done()) {
        let order: [&mut ReadSampler<'_>; 2] = if round.is_multiple_of(2) {
            [&mut vfs, &mut local]
        } else {
            [&mut local, &mut vfs]
        };
        for s in order {
            for _ in 0..plan.block {
                if started.elapsed() >= plan.max_time || interrupted() {
                    break 'outer;
                }
                if s.done() {
                    break;
                }
                s.read(true);
            }
        }
        round += 1;
    }
    let big_vfs = vfs.finish();
    let big_local = local.finish();
    check_interrupted()?;

    // Stop the daemon; its mount must go away with it.
    let mut teardown = Vec::new();
    if let Err(e) = daemon.stop() {
        teardown.push(format!("stopping the daemon: {e:#}"));
    }
    drop(daemon);
    if is_mount_point(&mountpoint) {
        teardown.push(format!(
            "{} is still mounted after the daemon stopped",
            mountpoint.display()
        ));
    }
    let suite = VfsSuite {
        mountpoint,
        local_fs,
        prompt_bytes: prompt.len(),
        sealed_bytes: sealed.len(),
        block: plan.block,
        health,
        big_vfs,
        big_local,
        teardown,
    };
    out.line(&format!("{suite_head}{}", suite.describe()));
    out.line(&vfs_summary(&suite));
    Ok(VfsReport::Ran(Box::new(suite)))
}

fn vfs_summary(v: &VfsSuite) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", v.health.summary());
    let _ = writeln!(
        s,
        "  target: health {}",
        vfs_verdict(v.health.lat.as_ref(), VFS_HEALTH_TARGET_MS)
    );
    let _ = writeln!(s, "{}", v.big_vfs.summary());
    let _ = writeln!(s, "{}", v.big_local.summary());
    let (p50, p99) = v.ratios();
    let _ = writeln!(
        s,
        "  (alternating blocks of {} reads) ratio mount / local copy: p50 {}, p99 {}",
        v.block,
        fmt_ratio(p50),
        fmt_ratio(p99)
    );
    let _ = writeln!(
        s,
        "  target: agents.sealed ({}) {}",
        fmt_bytes(v.sealed_bytes),
        vfs_verdict(v.big_vfs.lat.as_ref(), VFS_BIG_TARGET_MS)
    );
    if v.teardown.is_empty() {
        let _ = write!(
            s,
            "  daemon stopped; {} is no longer mounted",
            v.mountpoint.display()
        );
    } else {
        for t in &v.teardown {
            let _ = writeln!(s, "  FAILED: {t}");
        }
    }
    s.trim_end().to_string()
}

fn vfs_markdown(r: &VfsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n### Agent filesystem (FUSE)\n");
    let v = match r {
        VfsReport::Skipped(why) => {
            let _ = writeln!(s, "Skipped: {why}.");
            return s;
        }
        VfsReport::Ran(v) => v,
    };
    let _ = writeln!(
        s,
        "A daemon with `CCD_VFS_ENABLED=true`; every read is `std::fs::read` (open, read to end, \
         close) of a file on its mount; {}. The mount and local-copy reads of `agents.sealed` \
         alternate in blocks of {}; every read is checked byte for byte.\n",
        v.describe(),
        v.block
    );
    let _ = writeln!(s, "| File | Reads | Errors | p50 | p99 | max |");
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
    for r in [&v.health, &v.big_vfs, &v.big_local] {
        let (p50, p99, max) = fmt_lat(r.lat.as_ref());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {p50} | {p99} | {max} |",
            r.label,
            r.ok,
            r.failed()
        );
    }
    let _ = writeln!(s);
    let (p50, p99) = v.ratios();
    let _ = writeln!(
        s,
        "- `agents.sealed` mount / local copy: p50 {}, p99 {}",
        fmt_ratio(p50),
        fmt_ratio(p99)
    );
    let _ = writeln!(
        s,
        "- Target `health`: {}",
        vfs_verdict(v.health.lat.as_ref(), VFS_HEALTH_TARGET_MS)
    );
    let _ = writeln!(
        s,
        "- Target `agents.sealed` ({}): {}",
        fmt_bytes(v.sealed_bytes),
        vfs_verdict(v.big_vfs.lat.as_ref(), VFS_BIG_TARGET_MS)
    );
    for t in &v.teardown {
        let _ = writeln!(s, "- **Failed:** {t}");
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Daemon control
// ---------------------------------------------------------------------------------------------

/// The daemon ping and upsert talk to: one ccd-bench started (and stops on drop), or one
/// that was already running.
struct Daemon {
    ccd: Option<PathBuf>,
    home: PathBuf,
    socket: PathBuf,
    pid: Option<u32>,
    /// Started by ccd-bench and not yet stopped.
    owned: bool,
    synchronous: Option<Synchronous>,
    timeout: Duration,
    /// Holds the temporary CCD_HOME and command output; dropped after `Drop::drop` stopped
    /// the daemon.
    scratch: Option<TempDir>,
    /// Extra environment for `ccd daemon start|stop` (and so for the daemon), e.g. the agent
    /// command of the query benchmark.
    env: Vec<(String, OsString)>,
}

/// How long a start took, both measured from spawning `ccd daemon start`.
struct StartTiming {
    start_cmd: Duration,
    first_ping: Duration,
}

impl Daemon {
    /// Starts a daemon, or attaches to a running one per --home/--no-start.
    fn acquire(t: &Target, timeout: Duration) -> Result<Daemon> {
        if t.home.is_none() && !t.no_start {
            return Ok(Daemon::start(&t.daemon, start_timeout(timeout))?.0);
        }
        let home = match &t.home {
            Some(h) => h.clone(),
            None => default_home()?,
        };
        let socket = home.join("ccd.sock");
        let mut client = Client::connect_and_ping(&socket, timeout).with_context(|| {
            format!(
                "no ccd daemon answers at {} (start one with `ccd daemon start`, or drop \
                     --home/--no-start to let ccd-bench start its own)",
                socket.display()
            )
        })?;
        let pid = client
            .call("system.health", json!({}))
            .ok()
            .as_ref()
            .and_then(health_pid);
        Ok(Daemon {
            ccd: None,
            home,
            socket,
            pid,
            owned: false,
            synchronous: None,
            timeout,
            scratch: None,
            env: Vec::new(),
        })
    }

    /// Starts a daemon on a fresh temporary CCD_HOME with `ccd daemon start`, waits for its
    /// first `system.ping` reply, and learns its pid from `system.health`.
    fn start(opts: &DaemonOpts, timeout: Duration) -> Result<(Daemon, StartTiming)> {
        Daemon::start_with_env(opts, timeout, Vec::new())
    }

    /// [`Daemon::start`] with extra environment variables for the daemon.
    fn start_with_env(
        opts: &DaemonOpts,
        timeout: Duration,
        env: Vec<(String, OsString)>,
    ) -> Result<(Daemon, StartTiming)> {
        let ccd = ccd_binary(opts.ccd.as_deref())?;
        let scratch = TempDir::new("daemon", opts.keep_temp)?;
        let home = scratch.path.join("home");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&home)
            .with_context(|| format!("creating {}", home.display()))?;
        let socket = home.join("ccd.sock");
        let mut daemon = Daemon {
            ccd: Some(ccd),
            home,
            socket,
            pid: None,
            owned: false,
            synchronous: Some(opts.synchronous),
            timeout,
            scratch: Some(scratch),
            env,
        };
        // From here on, dropping `daemon` runs `ccd daemon stop`, even when start fails halfway.
        daemon.owned = true;
        let run = daemon.run_ccd(&["daemon", "start"])?;
        let deadline = Instant::now() + timeout;
        let mut client = loop {
            match Client::connect_and_ping(&daemon.socket, timeout) {
                Ok(c) => break c,
                Err(e) if Instant::now() >= deadline || interrupted() => {
                    return Err(e.context(format!(
                        "`ccd daemon start` returned but no system.ping was answered at {} within {}",
                        daemon.socket.display(),
                        humantime::format_duration(timeout)
                    )));
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        };
        let first_ping = run.spawned.elapsed();
        let health = client.call("system.health", json!({}))?;
        daemon.pid = health_pid(&health).or_else(|| first_number(&run.stdout));
        ensure!(
            daemon.pid.is_some(),
            "found no pid in the system.health result ({}) nor in `ccd daemon start`'s output",
            clip(&health.to_string())
        );
        let timing = StartTiming {
            start_cmd: run.exited.duration_since(run.spawned),
            first_ping,
        };
        Ok((daemon, timing))
    }

    /// Runs `ccd daemon stop`, waits for the process to go away, and returns how long the
    /// command took.
    /// On failure the daemon stays "owned", so that dropping it tries again and then kills it.
    fn stop(&mut self) -> Result<Duration> {
        let run = self.run_ccd(&["daemon", "stop"])?;
        if let Some(pid) = self.pid {
            let deadline = Instant::now() + self.timeout;
            while process_alive(pid) {
                ensure!(
                    Instant::now() < deadline,
                    "daemon pid {pid} still runs {} after `ccd daemon stop` returned",
                    humantime::format_duration(self.timeout)
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
        self.owned = false;
        Ok(run.exited.duration_since(run.spawned))
    }

    /// Runs `ccd <args>` with this daemon's CCD_HOME, bounded by the timeout. Its stdout and
    /// stderr go to files (not pipes, which the detached daemon could hold open).
    fn run_ccd(&self, args: &[&str]) -> Result<CcdRun> {
        let ccd = self
            .ccd
            .as_deref()
            .context("no ccd binary known for this daemon")?;
        let scratch = self
            .scratch
            .as_ref()
            .context("no scratch directory for this daemon")?;
        let shown = format!("ccd {}", args.join(" "));
        let stem = args.join("-");
        let out_path = scratch.path.join(format!("{stem}.stdout"));
        let err_path = scratch.path.join(format!("{stem}.stderr"));
        let out_file = fs::File::create(&out_path)
            .with_context(|| format!("creating {}", out_path.display()))?;
        let err_file = fs::File::create(&err_path)
            .with_context(|| format!("creating {}", err_path.display()))?;
        let mut cmd = Command::new(ccd);
        cmd.args(args)
            .env("CCD_HOME", &self.home)
            .stdin(Stdio::null())
            .stdout(out_file)
            .stderr(err_file);
        if let Some(s) = self.synchronous {
            cmd.env("CCD_WRITER_SYNCHRONOUS", s.as_str());
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running `{shown}` ({})", ccd.display()))?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel::<(io::Result<ExitStatus>, Instant)>();
        let waiter = thread::Builder::new()
            .name("ccd-wait".into())
            .spawn(move || {
                let status = child.wait();
                let _ = tx.send((status, Instant::now()));
            });
        let waiter = match waiter {
            Ok(w) => w,
            Err(e) => {
                kill(pid, libc::SIGKILL);
                return Err(e).context("spawning a thread to wait for ccd");
            }
        };
        let (status, exited) = match rx.recv_timeout(self.timeout) {
            Ok(v) => v,
            Err(_) => {
                kill(pid, libc::SIGKILL);
                let _ = waiter.join();
                bail!(
                    "`{shown}` did not finish within {}",
                    humantime::format_duration(self.timeout)
                );
            }
        };
        let _ = waiter.join();
        let status = status.with_context(|| format!("waiting for `{shown}`"))?;
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        if !status.success() {
            let stderr = fs::read_to_string(&err_path).unwrap_or_default();
            let said = if stderr.trim().is_empty() {
                stdout.trim()
            } else {
                stderr.trim()
            };
            bail!(
                "`{shown}` failed ({status}) with CCD_HOME={}: {}",
                self.home.display(),
                clip(said)
            );
        }
        Ok(CcdRun {
            spawned,
            exited,
            stdout,
        })
    }

    fn describe(&self) -> String {
        let pid = self.pid.map_or_else(|| "?".to_string(), |p| p.to_string());
        if self.owned {
            let mut s = format!(
                "daemon: started by ccd-bench (pid {pid}), CCD_HOME={}, CCD_WRITER_SYNCHRONOUS={}",
                self.home.display(),
                self.synchronous.map_or("?", Synchronous::as_str)
            );
            for (k, v) in &self.env {
                let _ = write!(s, ", {k}={}", v.to_string_lossy());
            }
            s
        } else {
            format!(
                "daemon: already running (pid {pid}), CCD_HOME={}",
                self.home.display()
            )
        }
    }

    fn markdown_description(&self) -> String {
        if self.owned {
            format!(
                "started by ccd-bench on a fresh temporary `CCD_HOME`, `CCD_WRITER_SYNCHRONOUS={}`",
                self.synchronous.map_or("?", Synchronous::as_str)
            )
        } else {
            "an already running daemon (settings unknown to ccd-bench)".to_string()
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if self.pid.is_none() && !self.socket.exists() {
            // `ccd daemon start` never got a daemon up; try anyway, quietly.
            let _ = self.stop();
            return;
        }
        if let Err(e) = self.stop() {
            eprintln!("ccd-bench: warning: stopping the daemon: {e:#}");
            if let Some(pid) = self.pid.filter(|p| process_alive(*p)) {
                eprintln!("ccd-bench: warning: sending SIGTERM, then SIGKILL, to daemon pid {pid}");
                kill(pid, libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(3);
                while process_alive(pid) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
                if process_alive(pid) {
                    kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

struct CcdRun {
    spawned: Instant,
    exited: Instant,
    stdout: String,
}

/// `ccd daemon start|stop` and the first ping after start get at least 30s.
fn start_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(30))
}

fn health_pid(health: &Value) -> Option<u32> {
    health
        .get("pid")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
}

fn first_number(s: &str) -> Option<u32> {
    s.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
}

fn ccd_binary(flag: Option<&Path>) -> Result<PathBuf> {
    let path = match flag {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locating the ccd-bench executable")?
            .with_file_name("ccd"),
    };
    ensure!(
        path.is_file(),
        "the ccd binary is not at {}: build it (e.g. `cargo build --release --bin ccd`, the same \
         profile as ccd-bench) or pass --ccd PATH",
        path.display()
    );
    Ok(path)
}

fn default_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("CCD_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither CCD_HOME nor HOME is set; pass --home DIR")?;
    Ok(PathBuf::from(home).join(".ccd"))
}

fn kill(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Whether the process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|s| !matches!(s.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => false,
    }
}

/// VmRSS (KiB) and thread count from /proc/PID/status.
fn proc_status(pid: u32) -> Result<(u64, Option<u64>)> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).context("the daemon is not running")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let rss = field("VmRSS:").context("no VmRSS line")?;
    Ok((rss, field("Threads:")))
}

fn sleep_interruptible(d: Duration) {
    let end = Instant::now() + d;
    while !interrupted() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A private directory under the system temp dir, removed on drop unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new(tag: &str, keep: bool) -> Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        for _ in 0..16 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!(
                "ccd-bench-{tag}-{}-{n}-{nanos:x}",
                std::process::id()
            ));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir { path, keep }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!(
            "could not create a unique temporary directory under {}",
            base.display()
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("ccd-bench: kept {}", self.path.display());
        } else if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!(
                "ccd-bench: warning: could not remove {}: {e}",
                self.path.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

fn fmt_ns(ns: u64) -> String {
    let n = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", n / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", n / 1e6)
    } else {
        format!("{:.2} s", n / 1e9)
    }
}

/// A duration in whole nanoseconds (saturating), the unit of latency samples.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn fmt_duration(d: Duration) -> String {
    fmt_ns(nanos(d))
}

fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// (p50, p99) of latencies `a` over latencies `b`.
fn lat_ratios(a: Option<&Latency>, b: Option<&Latency>) -> (Option<f64>, Option<f64>) {
    match (a, b) {
        (Some(a), Some(b)) => (
            ratio(a.p50 as f64, b.p50 as f64),
            ratio(a.p99 as f64, b.p99 as f64),
        ),
        _ => (None, None),
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}×"))
}

/// `12345.6` → `12,346`.
fn group_thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_success_takes_only_plain_successes() {
        let ok = r#"{"jsonrpc":"2.0","id":7,"result":{"key":"k","value":"v"}}"#;
        assert_eq!(quick_success(ok, Expect::Result(None)), Some(7));
        let pong = r#"{"jsonrpc":"2.0","result":"pong","id":8}"#;
        assert_eq!(quick_success(pong, Expect::Result(Some("pong"))), Some(8));
        for (line, expect) in [
            // The wrong result, an error, a null result, a notification, a string id, no id,
            // an escaped string (left to the full parse), a duplicate member, not JSON.
            (pong, Expect::Result(Some("ping"))),
            (
                r#"{"jsonrpc":"2.0","id":9,"error":{"code":-32603,"message":"x"}}"#,
                Expect::Result(None),
            ),
            (
                r#"{"jsonrpc":"2.0","id":9,"result":null}"#,
                Expect::Result(None),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"event","params":{}}"#,
                Expect::Result(None),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"9","result":1}"#,
                Expect::Result(None),
            ),
            (r#"{"jsonrpc":"2.0","result":1}"#, Expect::Result(None)),
            (
                r#"{"jsonrpc":"2.0","id":9,"result":"p\u006fng"}"#,
                Expect::Result(Some("pong")),
            ),
            (r#"{"id":9,"id":10,"result":1}"#, Expect::Result(None)),
            ("{nope", Expect::Result(None)),
            (ok, Expect::ErrorCode(-32601)),
        ] {
            assert_eq!(quick_success(line, expect), None, "{line}");
        }
    }
}
