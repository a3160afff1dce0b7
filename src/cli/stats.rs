//! `ccd stats`: queries, errors, tokens and cost by day, project and model (read directly).

use std::io::Write;
use std::time::Duration;

use ccd_actors::store;
use ccd_protocol::types::{self};
use clap::Args;

use super::args::parse_duration;
use crate::exit;
use crate::home::{Home, read};
use crate::table::{Table, print_json};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this project's queries.
    #[arg(long, short, add = crate::complete::projects())]
    project: Option<String>,
    /// How far back (e.g. 24h, 7d, 30d).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    since: Duration,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, args: StatsArgs) -> anyhow::Result<u8> {
    let StatsArgs {
        project,
        since,
        json,
    } = args;
    let since_ms = store::now_ms() - since.as_millis().min(i64::MAX as u128) as i64;
    let stats = read(home, move |c| {
        store::stats(c, since_ms, project.as_deref()).map(Some)
    })?
    .unwrap_or_else(|| types::Stats {
        since: store::rfc3339(since_ms),
        rows: vec![],
        totals: Default::default(),
    });
    if json {
        print_json(&stats)?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    let mut t = Table::new([
        "DAY",
        "PROJECT",
        "MODEL",
        "QUERIES",
        "OK",
        "ERRORS r/n/u",
        "T/C/R",
        "TOKENS in/out/cache",
        "COST",
    ]);
    for r in stats.rows.iter().chain(std::iter::once(&stats.totals)) {
        t.row([
            if r.day.is_empty() {
                "total".into()
            } else {
                r.day.clone()
            },
            match (&r.project, r.day.is_empty()) {
                (Some(p), _) => p.clone(),
                (None, true) => "all".into(),
                (None, false) => "-".into(),
            },
            match (&r.model, r.day.is_empty()) {
                (Some(m), _) => m.clone(),
                (None, true) => "all".into(),
                (None, false) => "-".into(),
            },
            r.queries.to_string(),
            r.ok.to_string(),
            format!(
                "{}/{}/{}",
                r.errors_retryable, r.errors_non_retryable, r.errors_unavailable
            ),
            format!("{}/{}/{}", r.timeouts, r.cancelled, r.refused),
            format!(
                "{}/{}/{}",
                r.usage.input_tokens,
                r.usage.output_tokens,
                r.usage.cache_creation_input_tokens + r.usage.cache_read_input_tokens
            ),
            format!("${:.4}", r.cost_usd),
        ]);
    }
    outln!("since {}", stats.since);
    t.print(&mut out)?;
    outln!(
        "errors: r retryable, n non_retryable, u unavailable; T timeouts, C cancelled, R refused"
    );
    Ok(exit::OK)
}
