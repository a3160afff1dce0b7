//! `ccd config show`: every effective value and where it came from.

use std::time::Duration;

use ccd_protocol::methods as m;
use ccd_protocol::types::{self, NoParams};
use clap::Subcommand;

use super::args::{SET_HELP, parse_set};
use crate::client::Client;
use crate::exit;
use crate::home::Home;
use crate::table::{Table, print_json};

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print every effective value and where it came from (default, config.toml, environment,
    /// flag); reads the files and environment, the daemon need not run.
    Show {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_set, help = SET_HELP)]
        set: Vec<(String, String)>,
    },
}

pub fn run(home: &Home, cmd: ConfigCmd) -> anyhow::Result<u8> {
    match cmd {
        ConfigCmd::Show { json, set } => {
            let rows = ccd_actors::Config::explain(&home.root, &set)?;
            // A running daemon read its configuration when it started: say where it differs
            // from what a start now would use (never starting one to find out).
            let running: Option<(u32, Vec<types::ConfigValue>)> = Client::connect(home)
                .ok()
                .map(|c| c.with_timeout(Duration::from_secs(10)))
                .and_then(|mut c| {
                    let pid = c.call::<m::SystemHealth>(&NoParams {}).ok()?.pid;
                    Some((pid, c.call::<m::SystemConfig>(&NoParams {}).ok()?.values))
                });
            // A value the daemon adjusted at start (to fit the machine) is not one a restart
            // would change: not noted.
            let differs = |key: &str, value: &serde_json::Value| {
                running.as_ref().and_then(|(_, values)| {
                    values.iter().find(|d| {
                        d.key == key && d.value != *value && !d.source.contains("at start")
                    })
                })
            };
            if json {
                let map: serde_json::Map<String, serde_json::Value> = rows
                    .iter()
                    .map(|(k, v, src)| {
                        let mut entry = serde_json::json!({ "value": v, "source": src });
                        if let Some(d) = differs(k, v) {
                            entry["daemon"] =
                                serde_json::json!({ "value": d.value, "source": d.source });
                        }
                        (k.clone(), entry)
                    })
                    .collect();
                print_json(&map)?;
            } else {
                let mut t = Table::new(["KEY", "VALUE", "SOURCE"]);
                let mut changed = Vec::new();
                for (k, v, src) in &rows {
                    t.row([k.clone(), v.to_string(), src.clone()]);
                    if let Some(d) = differs(k, v) {
                        changed.push(format!("{k} = {} ({})", d.value, d.source));
                    }
                }
                t.print(&mut std::io::stdout().lock())?;
                if let (Some((pid, _)), false) = (&running, changed.is_empty()) {
                    eprintln!(
                        "note: the running daemon (pid {pid}) started with other values: {}; \
                     `ccd daemon restart` applies the ones above",
                        changed.join("; ")
                    );
                }
            }
            Ok(exit::OK)
        }
    }
}
