//! `ccd breaker status|reset`: the circuit breakers in front of the agent.

use std::io::Write;

use ccd_protocol::methods as m;
use ccd_protocol::types::{self, NoParams};
use clap::Subcommand;

use crate::client::{CallError, Client};
use crate::exit;
use crate::home::Home;
use crate::table::{Table, count, print_json};

#[derive(Debug, Subcommand)]
pub enum BreakerCmd {
    /// Show every breaker's state.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Close a breaker (all when no KEY), forgetting its history. Never starts the daemon:
    /// breakers live in its memory, so with no daemon none is open (exit 0).
    Reset {
        /// The breaker's key as `ccd breaker status` shows it; all breakers when omitted.
        key: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(home: &Home, cmd: BreakerCmd) -> anyhow::Result<u8> {
    match cmd {
        BreakerCmd::Status { json } => {
            let st = Client::connect(home)?.call::<m::BreakerStatus>(&NoParams {})?;
            if json {
                // A bare array, as every other listing prints.
                print_json(&st.breakers)?;
                return Ok(exit::OK);
            }
            let mut t = Table::new([
                "KEY",
                "STATE",
                "RETRY IN",
                "FAILURE RATE",
                "IN A ROW",
                "REJECTED",
                "OPENED",
            ]);
            for b in st.breakers {
                t.row([
                    b.key,
                    b.state.as_str().to_string(),
                    if b.retry_after_ms > 0 {
                        format!("{:.1}s", b.retry_after_ms as f64 / 1000.0)
                    } else {
                        "-".into()
                    },
                    format!("{:.0}% of {}", b.failure_rate * 100.0, b.calls_in_window),
                    b.consecutive_failures.to_string(),
                    b.rejected.to_string(),
                    b.times_opened.to_string(),
                ]);
            }
            t.print_or_empty(&mut std::io::stdout().lock(), "no breakers yet")?;
            Ok(exit::OK)
        }
        BreakerCmd::Reset { key, json } => {
            // Breakers live in the daemon's memory: with no daemon there is none to reset (and
            // starting one to reset nothing would be a side effect nobody asked for).
            let mut client = match Client::connect(home) {
                Err(CallError::NotRunning(_))
                    if crate::home::PidLock::probe(&home.pid_file()).is_none() =>
                {
                    if json {
                        print_json(&types::BreakerResetResult { reset: 0 })?;
                    } else {
                        outln!("ccd daemon is not running, so no breaker is open");
                    }
                    return Ok(exit::OK);
                }
                other => other?,
            };
            let r = client.call::<m::BreakerReset>(&types::BreakerReset { key: key.clone() })?;
            if let Some(key) = key.filter(|_| r.reset == 0) {
                anyhow::bail!("no breaker `{key}` (`ccd breaker status` lists them)");
            }
            if json {
                print_json(&r)?;
            } else {
                outln!("reset {}", count(r.reset, "breaker"));
            }
            Ok(exit::OK)
        }
    }
}
