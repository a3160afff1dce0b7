//! `ccd-bench`: a bounded load generator for the `ccd` daemon's local Unix socket. It drives
//! closed-loop JSON-RPC traffic (`system.ping`, `setting.upsert`, `query.run`, `session.create`)
//! over persistent NDJSON connections, prints throughput and exact p50/p99/max latency next to
//! baselines (a bare NDJSON echo server; SQLite with one transaction per write; running the stub
//! agent directly), times a streamed text delta from the agent to `ccd query`'s stdout,
//! measures how fast an open circuit breaker refuses `query.run`, event-bus fan-out to many
//! subscribers and what a stalled subscriber costs a publisher, times daemon startup and idle
//! memory, and times reads from the daemon's FUSE agent filesystem. It never talks to anything
//! but local Unix sockets, the `ccd` binary, the stub agent scripts it writes itself (one of
//! which runs ccd-bench again, in its hidden `stream-agent` mode) and the daemon's own mount.
//!
//! This file has the entry point and one function per subcommand; `phase` is the load engine
//! that the suites (`suites`, `query`, `breaker`, `events`, `vfs`) run (`stream` times its own
//! reads), `daemon` starts and stops what they measure, and `report` renders `all` as markdown.

mod breaker;
mod cli;
mod client;
mod daemon;
mod echo;
mod events;
mod fmt;
mod interrupt;
mod latency;
mod phase;
mod query;
mod report;
mod stream;
mod suites;
mod unread;
mod vfs;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use crate::breaker::{BreakerPlan, BreakerSuite, breaker_suite, breaker_summary};
use crate::cli::{
    AllArgs, BreakerArgs, Cli, ClientOpts, Cmd, EchoArgs, EventsArgs, PingArgs, QueryArgs,
    StartupArgs, StreamArgs, UnreadArgs, UpsertArgs, VFS_PROMPT_BYTES, VfsArgs, check_total,
};
use crate::daemon::Daemon;
use crate::echo::run_echo_phase;
use crate::events::{EventsPlan, EventsSuite, events_suite};
use crate::fmt::Out;
use crate::interrupt::{install_interrupt_handler, interrupted};
use crate::query::{QueryPlan, query_suite};
use crate::report::{MarkdownInput, environment_line, markdown_report};
use crate::stream::{StreamPlan, StreamSuite, stream_agent, stream_suite};
use crate::suites::{UpsertPlan, ping_suite, startup_rows, startup_suite, upsert_suite};
use crate::vfs::{VfsPlan, VfsReport, vfs_suite};

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_interrupt_handler();
    let outcome = match cli.command {
        Cmd::Ping(a) => cmd_ping(&a),
        Cmd::Upsert(a) => cmd_upsert(&a),
        Cmd::Startup(a) => cmd_startup(&a),
        Cmd::Query(a) => cmd_query(&a),
        Cmd::Stream(a) => cmd_stream(&a),
        Cmd::StreamAgent(a) => stream_agent(&a).map(|()| Outcome::Clean),
        Cmd::Breaker(a) => cmd_breaker(&a),
        Cmd::Events(a) => cmd_events(&a),
        Cmd::Vfs(a) => cmd_vfs(&a),
        Cmd::Unread(a) => cmd_unread(&a),
        Cmd::All(a) => cmd_all(&a),
        Cmd::Echo(a) => cmd_echo(&a),
    };
    match outcome {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Failures(n)) => {
            eprintln!("ccd-bench: {n} request(s) failed (see above)");
            ExitCode::from(1)
        }
        Ok(Outcome::Missed(n)) => {
            eprintln!("ccd-bench: {n} attack(s) missed their targets (see above)");
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
    /// `unread`: attacks whose memory, ping or drop target was not met.
    Missed(u64),
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

fn cmd_stream(a: &StreamArgs) -> Result<Outcome> {
    let plan = StreamPlan {
        queries: a.queries,
        warmup: a.warmup,
        deltas: a.deltas,
        interval: a.interval,
        timeout: a.timeout,
        max_time: a.max_time,
    };
    println!("{}", environment_line());
    let suite = stream_suite(&plan, &a.daemon, &mut Out::Stdout)?;
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

fn cmd_unread(a: &UnreadArgs) -> Result<Outcome> {
    let plan = crate::unread::UnreadPlan {
        connections: a.connections,
        pipeline: a.pipeline,
        batch: a.batch,
        budget: a.budget,
        judged_budget: a.budget.unwrap_or(256 * 1024 * 1024),
        write_timeout: a.write_timeout,
        ping_interval: a.ping_interval,
        settle: a.settle,
        timeout: a.timeout,
    };
    println!("{}", environment_line());
    let reports = crate::unread::unread_suite(&plan, &a.daemon, &mut Out::Stdout)?;
    let missed = reports
        .iter()
        .filter(|r| !r.passed(plan.judged_budget))
        .count() as u64;
    Ok(if missed == 0 {
        Outcome::Clean
    } else {
        Outcome::Missed(missed)
    })
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
    let stream = if a.stream_queries > 0 {
        Some(stream_suite(
            &StreamPlan {
                queries: a.stream_queries,
                warmup: 2,
                deltas: 200,
                interval: Duration::from_millis(3),
                timeout: a.limits.timeout,
                max_time: a.limits.max_time,
            },
            &a.target.daemon,
            &mut out,
        )?)
    } else {
        None
    };
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
        stream: stream.as_ref(),
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
        + stream.as_ref().map_or(0, StreamSuite::failures)
        + breaker.as_ref().map_or(0, BreakerSuite::failures)
        + match &vfs {
            Some(VfsReport::Ran(v)) => v.failures(),
            _ => 0,
        };
    Ok(Outcome::from_failures(failures))
}
