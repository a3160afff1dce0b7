//! The command line: every subcommand's arguments, with the defaults `--help` shows, and the
//! option types, defaults and limits the suites share. It imports no other module of ccd-bench.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Upper bound on measured requests in one phase (all connections together).
pub(crate) const MAX_TOTAL_REQUESTS: u64 = 10_000_000;

/// The value written by every `setting.upsert` request and by the SQLite baseline.
pub(crate) const UPSERT_VALUE: &str = "ccd-bench-value-0123456789abcdef";

/// Default of `--pipeline`: `session.create` requests in flight per publisher connection.
pub(crate) const DEFAULT_PIPELINE: u32 = 16;

/// Default prompt size (1.4 MiB of base64-alphabet characters, 6 random bits each), which
/// zstd can only squeeze to about 1 MiB, so `agents.sealed` comes out at about 1 MiB.
pub(crate) const VFS_PROMPT_BYTES: u32 = 1_468_006;

/// Refuses more than [`MAX_TOTAL_REQUESTS`] measured requests in one phase.
pub(crate) fn check_total(connections: u32, requests: u32) -> Result<()> {
    let total = u64::from(connections) * u64::from(requests);
    ensure!(
        total <= MAX_TOTAL_REQUESTS,
        "{connections} connections × {requests} requests = {total} is more than the limit of \
         {MAX_TOTAL_REQUESTS} measured requests per phase"
    );
    Ok(())
}

/// How the client side of a closed-loop phase drives its connections.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Driver {
    /// One blocking client thread per connection, one request in flight.
    Threads,
    /// `threads` client threads, each driving its share of the connections over non-blocking
    /// sockets on a single-threaded tokio runtime (as wrk and redis-benchmark do), `depth`
    /// requests in flight per connection.
    Multiplexed { threads: u32, depth: u32 },
}

impl Driver {
    /// How `connections` connections are driven, in words.
    pub(crate) fn explain(self, connections: u32) -> String {
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
    pub(crate) fn one_at_a_time(self) -> Driver {
        match self {
            Driver::Threads => Driver::Threads,
            Driver::Multiplexed { threads, .. } => Driver::Multiplexed { threads, depth: 1 },
        }
    }
}

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
  ccd-bench stream -q 10 -d 200 --interval 3ms
  ccd-bench breaker -c 1 -c 8 -r 2000
  ccd-bench events -s 100 -e 5000 -p 8 -r 2000
  ccd-bench vfs --health-reads 2000 --big-reads 200
  ccd-bench all > bench.md"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
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
    /// Streaming: the time from the agent writing a text delta to `ccd query` printing it.
    ///
    /// The stub agent is ccd-bench itself in a hidden agent mode (a two-line shell script
    /// execs it, since the daemon runs CCD_AGENT_CMD with the agent arguments only). It answers
    /// `--version`, reads the prompt to EOF, prints an init message, a `message_start` stream
    /// event and then D text deltas (`content_block_delta`) --interval apart, each delta's
    /// text being the CLOCK_MONOTONIC time taken just before its write (one clock for all
    /// processes on Linux), then the whole assistant message and a `result`. ccd-bench starts
    /// a daemon on a fresh temporary home with CCD_AGENT_CMD pointing at the script and runs
    /// the real `ccd query PROMPT` (the `ccd` next to ccd-bench, or --ccd) with its stdout
    /// piped, reads what it prints as it arrives, takes the clock after every read and
    /// subtracts each delta's time. A run counts as failed unless `ccd query` exits 0 and
    /// prints every delta exactly once and a newline (so the whole message printed again is
    /// a failure too). As a floor, ccd-bench also runs the stub directly the same way and reads
    /// its own stdout (a pipe and a process wake-up); bare runs and `ccd query` runs
    /// alternate. Prints p50/p90/p99/max over all deltas of the measured queries, against a
    /// target of at most 2 ms at p50.
    Stream(StreamArgs),
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
    /// The daemon's memory under clients that ask for large replies and never read them.
    ///
    /// Two attacks, each on a fresh daemon started with CCD_IPC_MAX_CONNECTIONS raised to
    /// N + 64 (and ccd-bench's soft open-file limit raised to its hard limit, which the daemon
    /// inherits): N connections that each pipeline K `rpc.discover` requests (a reply of about
    /// 60 kB each), then N connections that each send one batch of B of them; none of them ever
    /// reads. Meanwhile one well-behaved connection sends `system.ping` every --ping-interval
    /// and times the replies. Reads the daemon's VmRSS before (idle, after a warm-up),
    /// VmHWM once the daemon has dropped every connection (after `ipc.write_timeout_ms`), and
    /// VmRSS once they are gone. Targets: peak under the reply budget
    /// (`ipc.max_pending_reply_bytes`) + 64 MiB, ping p99 under 50 ms, every connection
    /// dropped. Not part of `all` (it takes over a minute and, on a daemon without the budget,
    /// gigabytes).
    Unread(UnreadArgs),
    /// Everything, with defaults, as a markdown report for docs/benchmarks.md.
    ///
    /// Runs ping with 1 and 16 connections (each with its echo baseline), upsert with 64
    /// connections (which includes the 1-connection run and the SQLite baseline), events
    /// (fan-out and the stalled-subscriber latency), query (the overhead and the throughput at
    /// pool sizes 1, 2, 4, 8), breaker (refused `query.run` next to `system.ping`, 1 and 8
    /// connections), the agent filesystem reads (vfs; skipped without /dev/fuse) and startup.
    /// Progress goes to stderr; the markdown report goes to stdout. With --home/--no-start,
    /// ping and upsert use the running daemon; events, query, stream, breaker, vfs and startup always
    /// start their own daemons on fresh temporary homes.
    All(AllArgs),
    /// The stub agent of `stream` (what its daemon runs as the agent); not for direct use.
    #[command(hide = true)]
    StreamAgent(StreamAgentArgs),
    /// Only the bare NDJSON echo baseline (no daemon needed); for testing ccd-bench itself.
    #[command(hide = true)]
    Echo(EchoArgs),
}

/// Where the daemon binary is and how a daemon started by ccd-bench is configured.
#[derive(Args, Debug, Clone)]
pub(crate) struct DaemonOpts {
    /// The `ccd` binary that starts and stops daemons [default: `ccd` next to ccd-bench]
    #[arg(long, value_name = "PATH")]
    pub(crate) ccd: Option<PathBuf>,
    /// SQLite `synchronous` level: given to a daemon that ccd-bench starts (as
    /// CCD_WRITER_SYNCHRONOUS) and used by the SQLite baseline
    #[arg(
        long,
        value_enum,
        value_name = "LEVEL",
        env = "CCD_WRITER_SYNCHRONOUS",
        default_value_t = Synchronous::Normal
    )]
    pub(crate) synchronous: Synchronous,
    /// Keep the temporary directories (daemon homes and logs, command output, SQLite files)
    /// instead of deleting them, and print where they are
    #[arg(long)]
    pub(crate) keep_temp: bool,
}

/// Which daemon ping and upsert talk to.
#[derive(Args, Debug, Clone)]
pub(crate) struct Target {
    #[command(flatten)]
    pub(crate) daemon: DaemonOpts,
    /// Measure the daemon already running with this CCD_HOME instead of starting one
    /// (implies --no-start)
    #[arg(long, value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// Don't start a daemon: measure the one already running at --home, else $CCD_HOME,
    /// else ~/.ccd. Note that upsert then writes `bench.*` keys into its settings
    #[arg(long)]
    pub(crate) no_start: bool,
}

/// Bounds of a request phase.
#[derive(Args, Debug, Clone)]
pub(crate) struct Limits {
    /// Unmeasured warm-up requests per connection, before the measured ones
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub(crate) warmup: u32,
    /// Fail a connection whose connect, write or reply takes longer than this (e.g. 10s, 500ms);
    /// `ccd daemon start|stop` and the first ping after start get at least 30s
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Stop a measured phase after this much wall-clock time and report what was measured
    /// so far
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub(crate) max_time: Duration,
}

#[derive(Args, Debug)]
pub(crate) struct PingArgs {
    /// Concurrent connections, each driven by its own client thread
    #[arg(short, long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) connections: u32,
    /// Measured requests per connection
    #[arg(short, long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) requests: u32,
    #[command(flatten)]
    pub(crate) limits: Limits,
    #[command(flatten)]
    pub(crate) target: Target,
}

#[derive(Args, Debug)]
pub(crate) struct UpsertArgs {
    /// Concurrent connections (see --client-threads for how they are driven)
    #[arg(short, long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) connections: u32,
    /// Measured requests per connection (the SQLite baseline does N×R writes)
    #[arg(short, long, value_name = "R", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) requests: u32,
    /// Requests of the 1-connection comparison run [default: the larger of R and
    /// min(N×R, 2000)]
    #[arg(long, value_name = "COUNT",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) single_requests: Option<u32>,
    #[command(flatten)]
    pub(crate) clients: ClientOpts,
    #[command(flatten)]
    pub(crate) limits: Limits,
    #[command(flatten)]
    pub(crate) target: Target,
}

/// How `upsert` drives its connections.
#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct ClientOpts {
    /// Client threads driving the connections, each multiplexing its share over non-blocking
    /// sockets (as wrk and redis-benchmark do), so that the client's own thread switches do not
    /// eat the 2 cores the daemon runs on; 0 runs one blocking client thread per connection
    #[arg(long, value_name = "T", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub(crate) client_threads: u32,
    /// Requests each connection keeps in flight (1: wait for each reply before sending the
    /// next); more than 1 needs --client-threads of at least 1
    #[arg(long, value_name = "D", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) depth: u32,
}

impl ClientOpts {
    pub(crate) fn driver(self) -> Result<Driver> {
        match (self.client_threads, self.depth) {
            (0, 1) => Ok(Driver::Threads),
            (0, _) => bail!("--depth above 1 needs --client-threads of at least 1"),
            (threads, depth) => Ok(Driver::Multiplexed { threads, depth }),
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct StartupArgs {
    /// Number of start/measure/stop cycles, each on a fresh temporary CCD_HOME
    #[arg(short = 'k', long, value_name = "K", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) runs: u32,
    #[command(flatten)]
    pub(crate) startup: StartupOpts,
    #[command(flatten)]
    pub(crate) daemon: DaemonOpts,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct StartupOpts {
    /// How long the daemon sits idle after the first ping before its RSS is read
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub(crate) idle: Duration,
    /// Give up when `ccd daemon start|stop`, or the first ping after start, takes longer
    #[arg(long = "start-timeout", value_name = "DURATION", default_value = "30s",
          value_parser = parse_duration)]
    pub(crate) start_timeout: Duration,
}

#[derive(Args, Debug)]
pub(crate) struct QueryArgs {
    /// Sequential queries of the overhead measurement, for the bare stub and for the daemon
    /// each
    #[arg(short, long, value_name = "R", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) requests: u32,
    /// The overhead measurement alternates blocks of N sequential bare stub runs and N
    /// sequential `query.run` calls, so that both see the same machine load while consecutive
    /// queries still pay for any work ccd does after replying; N ≥ R runs all bare stub runs
    /// first, N = 1 strictly alternates
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) block: u32,
    /// Queries per pool size in the throughput measurement, shared by all connections (the
    /// bare-stub comparison runs as many)
    #[arg(short, long, value_name = "Q", default_value_t = 400,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) queries: u32,
    /// Executor pool sizes of the throughput measurement (a fresh daemon and 2×size
    /// connections each)
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,2,4,8",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) pool_sizes: Vec<u32>,
    /// Unmeasured warm-up queries per connection (and per bare-stub thread), before the
    /// measured ones
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub(crate) warmup: u32,
    /// Fail a connection whose connect, write or reply takes longer than this (e.g. 10s,
    /// 500ms); `ccd daemon start|stop` and the first ping after start get at least 30s
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Stop a measured phase after this much wall-clock time and report what was measured
    /// so far
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub(crate) max_time: Duration,
    #[command(flatten)]
    pub(crate) daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub(crate) struct StreamArgs {
    /// Measured `ccd query` runs (and as many runs of the bare stub, alternating with them)
    #[arg(short, long, value_name = "Q", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) queries: u32,
    /// Text deltas the stub agent writes per query
    #[arg(short, long, value_name = "D", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) deltas: u32,
    /// The stub agent's pause between two deltas
    #[arg(long, value_name = "DURATION", default_value = "3ms", value_parser = parse_duration)]
    pub(crate) interval: Duration,
    /// Unmeasured warm-up queries (each path), before the measured ones
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub(crate) warmup: u32,
    /// Give up on a run that has not ended this long after the stub's deltas should have
    /// (D × --interval); `ccd daemon start|stop` get at least 30s
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Start no more measured queries after this much wall-clock time
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub(crate) max_time: Duration,
    #[command(flatten)]
    pub(crate) daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub(crate) struct StreamAgentArgs {
    /// Text deltas to print
    #[arg(long, default_value_t = 200)]
    pub(crate) deltas: u32,
    /// Pause between two deltas, in microseconds
    #[arg(long, default_value_t = 3000)]
    pub(crate) interval_us: u64,
    /// The arguments the daemon gives the agent (after `--`)
    #[arg(last = true)]
    pub(crate) args: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct BreakerArgs {
    /// Connection counts to measure (repeatable, or comma-separated), each with refused
    /// `query.run` and then `system.ping`
    #[arg(short, long, value_name = "N", value_delimiter = ',', default_value = "1,8",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) connections: Vec<u32>,
    /// Measured requests per connection, for each of the two methods
    #[arg(short, long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) requests: u32,
    #[command(flatten)]
    pub(crate) limits: Limits,
    #[command(flatten)]
    pub(crate) daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub(crate) struct EventsArgs {
    /// Subscriber connections of the fan-out measurement, each a thread that subscribes to
    /// `session.created` and counts what arrives
    #[arg(short, long, value_name = "S", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) subscribers: u32,
    /// `session.create` calls (so events published) of the fan-out measurement, shared by
    /// the publishers
    #[arg(short, long, value_name = "E", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) events: u32,
    /// Publisher connections of the fan-out measurement
    #[arg(short, long, value_name = "P", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) publishers: u32,
    /// `session.create` requests each publisher connection sends at once before reading their
    /// replies (1 = closed loop)
    #[arg(long, value_name = "K", default_value_t = DEFAULT_PIPELINE,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) pipeline: u32,
    /// Measured `session.create` calls of each stalled-subscriber latency run (one connection,
    /// closed loop)
    #[arg(short, long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) requests: u32,
    /// `events.subscriber_queue` of the daemons ccd-bench starts, given as
    /// CCD_EVENTS_SUBSCRIBER_QUEUE [default: not set, so the daemon's own default, 4096]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub(crate) subscriber_queue: Option<u32>,
    #[command(flatten)]
    pub(crate) limits: Limits,
    #[command(flatten)]
    pub(crate) daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub(crate) struct UnreadArgs {
    /// Never-reading connections of each attack
    #[arg(short, long, value_name = "N", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub(crate) connections: u32,
    /// `rpc.discover` requests each connection of the first attack pipelines (what the socket
    /// takes without blocking is sent)
    #[arg(short = 'k', long, value_name = "K", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) pipeline: u32,
    /// `rpc.discover` requests in each connection's batch in the second attack
    #[arg(short, long, value_name = "B", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) batch: u32,
    /// `ipc.max_pending_reply_bytes` given to the daemons (CCD_IPC_MAX_PENDING_REPLY_BYTES)
    /// [default: not set, so the daemon's own default, 256 MiB, against which the peak is
    /// judged]
    #[arg(long, value_name = "BYTES")]
    pub(crate) budget: Option<u64>,
    /// `ipc.write_timeout_ms` given to the daemons [default: not set, so 30 s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) write_timeout: Option<Duration>,
    /// Pause between the well-behaved client's pings
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_duration)]
    pub(crate) ping_interval: Duration,
    /// How long to wait, after the connections are gone, for the RSS to come back near idle
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub(crate) settle: Duration,
    /// Give up on a ping, or a start, after this long
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub(crate) struct AllArgs {
    /// Measured requests per connection for ping (run with 1 and with --ping-connections)
    #[arg(long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) ping_requests: u32,
    /// Connections of the concurrent ping run
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) ping_connections: u32,
    /// Measured requests per connection for upsert
    #[arg(long, value_name = "R", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) upsert_requests: u32,
    /// Connections of the concurrent upsert run
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) upsert_connections: u32,
    /// Client threads of the upsert runs (see `ccd-bench upsert --client-threads`)
    #[arg(long, value_name = "T", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub(crate) upsert_client_threads: u32,
    /// Requests in flight per connection in the upsert runs (see `ccd-bench upsert --depth`)
    #[arg(long, value_name = "D", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) upsert_depth: u32,
    /// Sequential queries of the query overhead measurement (bare stub and daemon each)
    #[arg(long, value_name = "R", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) query_requests: u32,
    /// Block size of the query overhead measurement (see `ccd-bench query --block`)
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) query_block: u32,
    /// Queries per pool size in the query throughput measurement
    #[arg(long, value_name = "Q", default_value_t = 400,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) query_queries: u32,
    /// Executor pool sizes of the query throughput measurement
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,2,4,8",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) query_pool_sizes: Vec<u32>,
    /// Unmeasured warm-up queries per connection (and per bare-stub thread) for query
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub(crate) query_warmup: u32,
    /// Measured `ccd query` runs of the streaming benchmark, each with 200 deltas 3 ms apart
    /// (0 skips the streaming benchmark)
    #[arg(long, value_name = "Q", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub(crate) stream_queries: u32,
    /// Measured requests per connection of the breaker benchmark, for refused `query.run` and
    /// for `system.ping` each (0 skips the breaker benchmark)
    #[arg(long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub(crate) breaker_requests: u32,
    /// Connection counts of the breaker benchmark
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,8",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) breaker_connections: Vec<u32>,
    /// Subscribers of the events fan-out measurement (0 skips the events benchmark)
    #[arg(long, value_name = "S", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub(crate) events_subscribers: u32,
    /// `session.create` calls (events published) of the events fan-out measurement
    #[arg(long, value_name = "E", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) events_count: u32,
    /// Publisher connections of the events fan-out measurement
    #[arg(long, value_name = "P", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) events_publishers: u32,
    /// Requests in flight per publisher connection in the events fan-out measurement
    #[arg(long, value_name = "K", default_value_t = DEFAULT_PIPELINE,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) events_pipeline: u32,
    /// Measured `session.create` calls of each stalled-subscriber latency run
    #[arg(long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) events_requests: u32,
    /// Reads of `health` in the agent filesystem benchmark (0 skips the vfs benchmark)
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub(crate) vfs_health_reads: u32,
    /// Reads of `agents.sealed` (from the mount, and as many from the local copy) in the agent
    /// filesystem benchmark
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) vfs_big_reads: u32,
    /// Startup cycles (0 skips the startup benchmark)
    #[arg(short = 'k', long, value_name = "K", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub(crate) runs: u32,
    #[command(flatten)]
    pub(crate) startup: StartupOpts,
    #[command(flatten)]
    pub(crate) limits: Limits,
    #[command(flatten)]
    pub(crate) target: Target,
}

#[derive(Args, Debug)]
pub(crate) struct VfsArgs {
    /// Reads of `health` from the mount
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) health_reads: u32,
    /// Reads of `agents.sealed` from the mount, and as many of its copy on local disk
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) big_reads: u32,
    /// The `agents.sealed` reads alternate blocks of N reads from the mount and N from the
    /// local copy
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) block: u32,
    /// Size in bytes of the pseudo-random prompt of the imported agent (the default makes
    /// `agents.sealed` about 1 MiB)
    #[arg(long, value_name = "BYTES", default_value_t = VFS_PROMPT_BYTES,
          value_parser = clap::value_parser!(u32).range(1..=67_108_864))]
    pub(crate) prompt_bytes: u32,
    /// Unmeasured warm-up reads of each file (at most 20 of `agents.sealed`)
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub(crate) warmup: u32,
    /// Give up on a `ccd daemon start|stop` (at least 30s), a JSON-RPC reply, or the import
    /// showing up on the mount after this long
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Stop each measurement after this much wall-clock time and report what was measured
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) max_time: Duration,
    #[command(flatten)]
    pub(crate) daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub(crate) struct EchoArgs {
    /// Concurrent connections
    #[arg(short, long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) connections: u32,
    /// Measured requests per connection
    #[arg(short, long, value_name = "R", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) requests: u32,
    /// Keep the temporary socket directory
    #[arg(long)]
    pub(crate) keep_temp: bool,
    #[command(flatten)]
    pub(crate) limits: Limits,
}

/// SQLite `PRAGMA synchronous` levels the daemon accepts in CCD_WRITER_SYNCHRONOUS.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Synchronous {
    Off,
    Normal,
    Full,
}

impl Synchronous {
    pub(crate) fn as_str(self) -> &'static str {
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
