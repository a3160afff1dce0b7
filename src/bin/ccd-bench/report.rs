//! The markdown report of `ccd-bench all`, as docs/benchmarks.md records it.

use std::fmt::Write as _;
use std::fs;
use std::thread;
use std::time::Duration;

use crate::breaker::{BreakerSuite, breaker_markdown};
use crate::cli::{Limits, Synchronous};
use crate::events::{EventsSuite, events_markdown};
use crate::fmt::{fmt_lat, fmt_ratio, group_thousands};
use crate::phase::PhaseResult;
use crate::query::{QuerySuite, query_markdown};
use crate::stream::{StreamSuite, stream_markdown};
use crate::suites::{PingSuite, StartupSample, UpsertSuite, startup_rows};
use crate::vfs::{VfsReport, vfs_markdown};

pub(crate) struct MarkdownInput<'a> {
    pub(crate) daemon_text: &'a str,
    pub(crate) limits: &'a Limits,
    pub(crate) synchronous: Synchronous,
    pub(crate) ping: [&'a PingSuite; 2],
    pub(crate) upsert: &'a UpsertSuite,
    pub(crate) events: Option<&'a EventsSuite>,
    pub(crate) query: &'a QuerySuite,
    pub(crate) stream: Option<&'a StreamSuite>,
    pub(crate) breaker: Option<&'a BreakerSuite>,
    pub(crate) vfs: Option<&'a VfsReport>,
    pub(crate) startup: &'a [StartupSample],
    pub(crate) idle: Duration,
}

pub(crate) fn markdown_report(m: &MarkdownInput<'_>) -> String {
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
    if let Some(st) = m.stream {
        s.push_str(&stream_markdown(st));
    }
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

pub(crate) fn environment_line() -> String {
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
