//! `ccd setting set|get|list|rm`: key/value settings kept by the daemon.

use std::io::Write;

use ccd_actors::store;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self};
use clap::Subcommand;

use super::args::ListArgs;
use crate::exit;
use crate::home::{Home, read};
use crate::table::{Table, print_json};

#[derive(Debug, Subcommand)]
pub enum SettingCmd {
    /// Set KEY to VALUE.
    Set {
        /// The setting's name.
        key: String,
        /// Its value (any text).
        value: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one setting's value (reads the database directly).
    Get {
        /// The setting's name.
        key: String,
        /// Print the whole record as JSON (key, value, updated_at).
        #[arg(long)]
        json: bool,
    },
    /// List settings (reads the database directly).
    List(ListArgs),
    /// Remove a setting.
    Rm {
        /// The setting's name.
        key: String,
    },
}

pub fn run(home: &Home, autostart: bool, cmd: SettingCmd) -> anyhow::Result<u8> {
    match cmd {
        SettingCmd::Set { key, value, json } => {
            let s = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::SettingUpsert>(&types::SettingUpsert { key, value })?;
            if json {
                print_json(&s)?;
            } else {
                outln!("{} = {}", s.key, s.value);
            }
        }
        SettingCmd::Get { key, json } => {
            let lookup = key.clone();
            let found = read(home, move |c| store::setting(c, &lookup))?;
            let Some(s) = found else {
                anyhow::bail!("no setting `{key}`");
            };
            if json {
                print_json(&s)?;
            } else {
                outln!("{}", s.value);
            }
        }
        SettingCmd::List(args) => {
            let settings = read(home, store::settings)?;
            if args.json {
                print_json(&settings)?;
            } else {
                // The value last: a long one runs on without pushing the other columns.
                let mut t = Table::new(["KEY", "UPDATED", "VALUE"]);
                for s in settings {
                    t.row([s.key, s.updated_at, s.value]);
                }
                t.print_or_empty(&mut std::io::stdout().lock(), "no settings")?;
            }
        }
        SettingCmd::Rm { key } => {
            let s = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::SettingDelete>(&types::SettingKey { key })?;
            outln!("removed setting {}", s.key);
        }
    }
    Ok(exit::OK)
}
