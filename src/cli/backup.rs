//! `ccd backup create|list|rm`: online backups of the database.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use ccd_actors::store;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self};
use clap::Subcommand;

use super::args::ListArgs;
use crate::exit;
use crate::home::{Home, read};
use crate::table::{Table, print_json};

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Back up the database while the daemon keeps serving (default: $CCD_HOME/backups/).
    Create {
        /// Where to write the backup (a new file); default: $CCD_HOME/backups/ccd-<time>.db.
        path: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List backups (reads the database directly).
    List(ListArgs),
    /// Delete a backup file and its record.
    Rm {
        /// The backup's id (see `ccd backup list`).
        id: i64,
    },
}

pub fn run(home: &Home, autostart: bool, cmd: BackupCmd) -> anyhow::Result<u8> {
    match cmd {
        BackupCmd::Create { path, json } => {
            let path = path
                .map(|p| {
                    std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))
                })
                .transpose()?
                .map(|p| p.to_string_lossy().into_owned());
            let b = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::BackupCreate>(&types::BackupCreate { path })?;
            if json {
                print_json(&b)?;
                return Ok(exit::OK);
            }
            outln!(
                "backup {} written to {} ({} bytes)",
                b.id,
                b.path,
                b.size_bytes
            );
        }
        BackupCmd::List(args) => {
            let backups = read(home, store::backups)?;
            if args.json {
                print_json(&backups)?;
            } else {
                let mut t = Table::new(["ID", "PATH", "SIZE", "CREATED"]);
                for b in backups {
                    t.row([
                        b.id.to_string(),
                        b.path,
                        b.size_bytes.to_string(),
                        b.created_at,
                    ]);
                }
                t.print_or_empty(&mut std::io::stdout().lock(), "no backups")?;
            }
        }
        BackupCmd::Rm { id } => {
            let b = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::BackupDelete>(&types::BackupId { id })?;
            outln!("removed backup {} ({})", b.id, b.path);
        }
    }
    Ok(exit::OK)
}
