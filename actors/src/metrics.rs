//! The daemon's metrics: counters fed by an event-bus subscription, plus a latency histogram
//! per JSON-RPC method that the socket side ([`crate::server`]) feeds. The HTTP API
//! ([`crate::http`]) serves them as Prometheus text on `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ccd_protocol::types::{EventFilter, EventKind, SessionErrorClass, TurnStatus};

use crate::eventbus::Bus;

/// What the daemon serves metrics from: counters fed by a bus subscription, plus RPC counts.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Default)]
struct MetricsInner {
    queries: BTreeMap<TurnStatus, u64>,
    errors: BTreeMap<SessionErrorClass, u64>,
    tokens: BTreeMap<&'static str, u64>,
    cost_usd: f64,
    limiter_waits: u64,
    query_seconds: Histogram,
    rpc: BTreeMap<String, Histogram>,
}

/// A Prometheus histogram with fixed buckets (seconds).
#[derive(Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

const QUERY_BUCKETS: &[f64] = &[0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
const RPC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 10.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(QUERY_BUCKETS)
    }
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}\n"));
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n",
            self.count
        ));
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        out.push_str(&format!(
            "{name}_sum{braces} {}\n{name}_count{braces} {}\n",
            self.sum, self.count
        ));
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MetricsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count one RPC request (by registered method; anything else is `unknown`).
    pub fn rpc(&self, method: &str, elapsed: std::time::Duration) {
        let secs = elapsed.as_secs_f64();
        let mut m = self.lock();
        // Only registered names (and `unknown`) are keys: a hit needs no further check.
        if let Some(h) = m.rpc.get_mut(method) {
            h.observe(secs);
            return;
        }
        let name = if ccd_protocol::methods::ALL_METHODS.contains(&method) {
            method
        } else {
            "unknown"
        };
        m.rpc
            .entry(name.to_string())
            .or_insert_with(|| Histogram::new(RPC_BUCKETS))
            .observe(secs);
    }

    fn event(&self, kind: &EventKind) {
        let mut m = self.lock();
        match kind {
            EventKind::TurnCompleted {
                status,
                duration_ms,
                ..
            } => {
                *m.queries.entry(*status).or_default() += 1;
                m.query_seconds.observe(*duration_ms as f64 / 1000.0);
            }
            EventKind::SessionError { class, .. } => *m.errors.entry(*class).or_default() += 1,
            EventKind::TokensUsed { usage, .. } => {
                for (kind, n) in [
                    ("input", usage.input_tokens),
                    ("output", usage.output_tokens),
                    ("cache_creation", usage.cache_creation_input_tokens),
                    ("cache_read", usage.cache_read_input_tokens),
                ] {
                    let total = m.tokens.entry(kind).or_default();
                    *total = total.saturating_add(n);
                }
            }
            EventKind::CostIncurred { cost_usd, .. } => m.cost_usd += cost_usd,
            EventKind::LimiterThrottled { .. } => m.limiter_waits += 1,
            _ => {}
        }
    }

    /// Keep the counters fed from the bus for the daemon's life.
    pub fn follow(self: Arc<Self>, bus: &Bus) {
        let sub = bus.subscribe(u64::MAX, EventFilter::default(), 65_536);
        let bus = bus.clone();
        actix_rt::spawn(async move {
            loop {
                let (events, missed) = sub.next_shared().await;
                if missed > 0 {
                    tracing::warn!(missed, "metrics fell behind the event bus");
                }
                for e in events {
                    self.event(&e.kind);
                }
                if sub.ended.is_cancelled() {
                    bus.remove(sub.id);
                    return;
                }
            }
        });
    }

    /// The counters and histograms as Prometheus text (the `/metrics` page's first part).
    pub fn render(&self, out: &mut String) {
        let m = self.lock();
        out.push_str("# HELP ccd_queries_total Agent queries finished, by status.\n# TYPE ccd_queries_total counter\n");
        for status in TurnStatus::ALL {
            let n = m.queries.get(status).copied().unwrap_or(0);
            out.push_str(&format!("ccd_queries_total{{status=\"{status}\"}} {n}\n"));
        }
        out.push_str("# HELP ccd_query_errors_total Failed or refused queries, by error class.\n# TYPE ccd_query_errors_total counter\n");
        for class in SessionErrorClass::ALL {
            let n = m.errors.get(class).copied().unwrap_or(0);
            out.push_str(&format!(
                "ccd_query_errors_total{{class=\"{class}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP ccd_tokens_total Tokens used by agents, by kind.\n# TYPE ccd_tokens_total counter\n");
        for kind in ["input", "output", "cache_creation", "cache_read"] {
            out.push_str(&format!(
                "ccd_tokens_total{{kind=\"{kind}\"}} {}\n",
                m.tokens.get(kind).copied().unwrap_or(0)
            ));
        }
        out.push_str("# HELP ccd_cost_usd_total Cost reported by agents, in USD.\n# TYPE ccd_cost_usd_total counter\n");
        out.push_str(&format!("ccd_cost_usd_total {}\n", m.cost_usd));
        out.push_str("# HELP ccd_limiter_waits_total Queries the rate limiter made wait.\n# TYPE ccd_limiter_waits_total counter\n");
        out.push_str(&format!("ccd_limiter_waits_total {}\n", m.limiter_waits));
        out.push_str("# HELP ccd_query_duration_seconds Agent query latency.\n# TYPE ccd_query_duration_seconds histogram\n");
        m.query_seconds
            .render(out, "ccd_query_duration_seconds", "");
        out.push_str("# HELP ccd_rpc_requests_total JSON-RPC requests, by method.\n# TYPE ccd_rpc_requests_total counter\n");
        for (method, h) in &m.rpc {
            out.push_str(&format!(
                "ccd_rpc_requests_total{{method=\"{}\"}} {}\n",
                escape(method),
                h.count
            ));
        }
        out.push_str("# HELP ccd_rpc_duration_seconds JSON-RPC request latency, by method.\n# TYPE ccd_rpc_duration_seconds histogram\n");
        for (method, h) in &m.rpc {
            h.render(
                out,
                "ccd_rpc_duration_seconds",
                &format!("method=\"{}\"", escape(method)),
            );
        }
    }
}

/// `s` as a Prometheus label value (backslash, quote and newline escaped).
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
