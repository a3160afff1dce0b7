//! `ccd limiter status|set`: the rate limiter's limits and keys.

use std::io::Write;
use std::time::Duration;

use ccd_protocol::methods as m;
use ccd_protocol::types::{self, NoParams};
use clap::Subcommand;

use super::args::parse_duration;
use crate::client::Client;
use crate::exit::{self, UsageError};
use crate::home::Home;
use crate::table::{Table, print_json};

#[derive(Debug, Subcommand)]
pub enum LimiterCmd {
    /// Show the limits per scope and each key's tokens, window, in-flight, waiting, throttled.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Change one scope's limits while the daemon runs (until it restarts: [limiter] in
    /// config.toml holds the lasting ones). Limits not given stay as they are; 0 turns one off.
    #[command(
        after_help = "Examples:\n  ccd limiter set global --rate 0.5 --burst 2\n  ccd limiter set model --concurrency 2\n  ccd limiter set project --window-max 100 --window 1h"
    )]
    Set {
        /// global (every query), model (each model apart) or project (each project apart).
        #[arg(value_parser = ["global", "model", "project"])]
        scope: String,
        /// Token bucket: sustained queries per second (e.g. 0.5; 0: off).
        #[arg(long)]
        rate: Option<f64>,
        /// Token bucket: how many may start at once after a quiet spell (at least 1).
        #[arg(long)]
        burst: Option<u32>,
        /// Sliding window: at most this many queries in any --window (0: off).
        #[arg(long, requires = "window")]
        window_max: Option<u32>,
        /// The sliding window's length, e.g. 1m, 1h.
        #[arg(long, value_parser = parse_duration)]
        window: Option<Duration>,
        /// At most this many queries at once (0: off).
        #[arg(long)]
        concurrency: Option<u32>,
        /// Print the limiter's status as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(home: &Home, autostart: bool, cmd: LimiterCmd) -> anyhow::Result<u8> {
    match cmd {
        LimiterCmd::Set {
            scope,
            rate,
            burst,
            window_max,
            window,
            concurrency,
            json,
        } => {
            if rate.is_none()
                && burst.is_none()
                && window_max.is_none()
                && window.is_none()
                && concurrency.is_none()
            {
                return Err(UsageError(
                    "nothing to change: give --rate, --burst, --window-max with --window, or \
                 --concurrency"
                        .into(),
                )
                .into());
            }
            let mut client = crate::daemon::connect_or_start(home, autostart)?;
            let st = client.call::<m::LimiterStatus>(&NoParams {})?;
            let (scope_enum, mut spec) = match scope.as_str() {
                "global" => (types::Scope::Global, st.limits.global),
                "model" => (types::Scope::Model, st.limits.model),
                _ => (types::Scope::Project, st.limits.project),
            };
            if let Some(r) = rate {
                spec.rate_per_s = r;
            }
            if let Some(b) = burst {
                spec.burst = b;
            }
            if let Some(n) = window_max {
                spec.window_max = n;
            }
            if let Some(w) = window {
                spec.window_ms = u64::try_from(w.as_millis()).unwrap_or(u64::MAX);
            }
            if let Some(c) = concurrency {
                spec.concurrency = c;
            }
            let st = client.call::<m::LimiterConfigure>(&types::LimiterConfigure {
                scope: scope_enum,
                limits: spec,
            })?;
            if json {
                print_json(&st)?;
            } else {
                outln!(
                    "{scope}: rate {}/s, burst {}, window {} per {} ms, concurrency {} (until the \
                 daemon restarts)",
                    spec.rate_per_s,
                    spec.burst,
                    spec.window_max,
                    spec.window_ms,
                    spec.concurrency
                );
            }
            Ok(exit::OK)
        }
        LimiterCmd::Status { json } => status(home, json),
    }
}

/// `ccd limiter status`: the limits per scope, then each key's state.
fn status(home: &Home, json: bool) -> anyhow::Result<u8> {
    let st = Client::connect(home)?.call::<m::LimiterStatus>(&NoParams {})?;
    if json {
        print_json(&st)?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    let spec = |s: &types::LimitSpec| {
        if s.is_off() {
            return "off".to_string();
        }
        let mut parts = Vec::new();
        if s.rate_per_s > 0.0 {
            parts.push(format!("{}/s burst {}", s.rate_per_s, s.burst));
        }
        if s.window_max > 0 {
            parts.push(format!("{} per {} ms", s.window_max, s.window_ms));
        }
        if s.concurrency > 0 {
            parts.push(format!("{} at once", s.concurrency));
        }
        parts.join(", ")
    };
    outln!(
        "limits: global {}; per model {}; per project {}",
        spec(&st.limits.global),
        spec(&st.limits.model),
        spec(&st.limits.project)
    );
    outln!();
    let mut t = Table::new([
        "KEY",
        "TOKENS",
        "WINDOW",
        "IN FLIGHT",
        "WAITING",
        "THROTTLED",
        "ADMITTED",
    ]);
    for k in st.keys {
        t.row([
            k.key,
            k.available_tokens
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            if k.spec.window_max > 0 {
                format!("{}/{}", k.window_count, k.spec.window_max)
            } else {
                "-".into()
            },
            k.in_flight.to_string(),
            k.waiting.to_string(),
            k.throttled.to_string(),
            k.admitted.to_string(),
        ]);
    }
    t.print_or_empty(&mut out, "no queries limited yet")?;
    Ok(exit::OK)
}
