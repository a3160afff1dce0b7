//! `ccd agent import|list|show|rm`: agent definitions (Claude Code subagents), which the
//! daemon keeps sealed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self, NoParams};
use clap::Subcommand;

use super::args::ListArgs;
use crate::client::Client;
use crate::exit;
use crate::home::Home;
use crate::table::{Table, count, print_json};

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Import a directory of subagent .md files, one .md file, or a JSON bundle; all or
    /// nothing. Starts the daemon if needed (it holds the key).
    Import {
        /// The directory, .md file or JSON bundle to import.
        path: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List agent definitions (needs the running daemon, which holds the key; never starts it).
    List(ListArgs),
    /// Print one definition as its subagent file (needs the running daemon; never starts it).
    Show {
        /// The agent's name (see `ccd agent list`).
        #[arg(add = crate::complete::agents())]
        name: String,
        /// Print the definition as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Remove a definition.
    Rm {
        /// The agent's name.
        #[arg(add = crate::complete::agents())]
        name: String,
    },
}

pub fn run(home: &Home, autostart: bool, cmd: AgentCmd) -> anyhow::Result<u8> {
    // Reading definitions needs the daemon (only it holds the key), but like every
    // listing it never starts it.
    let mut client = match cmd {
        AgentCmd::List(_) | AgentCmd::Show { .. } => Client::connect(home)?,
        _ => crate::daemon::connect_or_start(home, autostart)?,
    };
    match cmd {
        AgentCmd::Import { path, json } => {
            let path = std::path::absolute(&path)
                .with_context(|| format!("resolving {}", path.display()))?;
            let r = client.call::<m::AgentImport>(&types::AgentImport {
                path: path.to_string_lossy().into_owned(),
            })?;
            if json {
                print_json(&r)?;
                return Ok(exit::OK);
            }
            outln!(
                "imported {}: {}",
                count(r.imported.len(), "agent"),
                r.imported.join(", ")
            );
            if !r.replaced.is_empty() {
                outln!("replaced: {}", r.replaced.join(", "));
            }
        }
        AgentCmd::List(args) => {
            let list = client.call::<m::AgentList>(&NoParams {})?;
            if args.json {
                print_json(&list.agents)?;
            } else {
                let mut t = Table::new(["NAME", "MODEL", "TOOLS", "DESCRIPTION"]);
                for a in list.agents {
                    t.row([
                        a.name,
                        a.model.unwrap_or_else(|| "-".into()),
                        a.tools.join(","),
                        a.description,
                    ]);
                }
                t.print_or_empty(&mut std::io::stdout().lock(), "no agents")?;
            }
            if !list.damaged.is_empty() {
                eprintln!(
                    "ccd: damaged, left out: {} (restore a backup, or `ccd agent rm` \
                         and import them again)",
                    list.damaged.join(", ")
                );
            }
        }
        AgentCmd::Show { name, json } => {
            let d = client.call::<m::AgentGet>(&types::AgentName { name })?;
            if json {
                print_json(&d.agent)?;
            } else {
                write!(std::io::stdout().lock(), "{}", d.markdown)?;
            }
        }
        AgentCmd::Rm { name } => {
            let d = client.call::<m::AgentDelete>(&types::AgentName { name })?;
            outln!("removed agent {}", d.name);
        }
    }
    Ok(exit::OK)
}
