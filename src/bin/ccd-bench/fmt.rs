//! Formatting of durations, sizes, ratios and counts for the reports, and where progress lines
//! go.

use std::time::Duration;

use crate::latency::Latency;

pub(crate) fn fmt_ns(ns: u64) -> String {
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
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    fmt_ns(nanos(d))
}

pub(crate) fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(crate) fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// (p50, p99) of latencies `a` over latencies `b`.
pub(crate) fn lat_ratios(a: Option<&Latency>, b: Option<&Latency>) -> (Option<f64>, Option<f64>) {
    match (a, b) {
        (Some(a), Some(b)) => (
            ratio(a.p50 as f64, b.p50 as f64),
            ratio(a.p99 as f64, b.p99 as f64),
        ),
        _ => (None, None),
    }
}

pub(crate) fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}×"))
}

/// `12345.6` → `12,346`.
pub(crate) fn group_thousands(x: f64) -> String {
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

/// (p50, p99, max) of a latency, or dashes without samples.
pub(crate) fn fmt_lat(l: Option<&Latency>) -> (String, String, String) {
    l.map_or_else(
        || ("–".to_string(), "–".to_string(), "–".to_string()),
        |l| (fmt_ns(l.p50), fmt_ns(l.p99), fmt_ns(l.max)),
    )
}

/// Where progress lines go: stdout for single modes, stderr for `all` (whose stdout is the
/// markdown report).
pub(crate) enum Out {
    Stdout,
    Stderr,
}

impl Out {
    pub(crate) fn line(&mut self, s: &str) {
        match self {
            Out::Stdout => println!("{s}"),
            Out::Stderr => eprintln!("{s}"),
        }
    }
}
