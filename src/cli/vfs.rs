//! `ccd vfs status|unseal`: the agent filesystem.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self, NoParams};
use clap::Subcommand;

use crate::client::Client;
use crate::exit;
use crate::home::Home;
use crate::table::print_json;

#[derive(Debug, Subcommand)]
pub enum VfsCmd {
    /// Whether the filesystem is mounted, where, and if not, why.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON inside a `*.sealed` file of this boot's filesystem (or a copy of one
    /// that keeps its file name).
    Unseal {
        /// The sealed file, e.g. $CCD_HOME/vfs/agents.sealed.
        file: PathBuf,
    },
}

pub fn run(home: &Home, cmd: VfsCmd) -> anyhow::Result<u8> {
    match cmd {
        VfsCmd::Status { json } => {
            let st = Client::connect(home)?.call::<m::VfsStatus>(&NoParams {})?;
            if json {
                print_json(&st)?;
            } else if st.mounted {
                outln!("mounted at {}", st.mountpoint);
                if !st.damaged.is_empty() {
                    outln!(
                        "damaged, left out: {} (restore a backup, or `ccd agent rm` and import \
                     them again)",
                        st.damaged.join(", ")
                    );
                }
            } else {
                outln!(
                    "not mounted ({}): {}",
                    st.mountpoint,
                    st.reason.unwrap_or_else(|| "unknown reason".into())
                );
            }
            Ok(if st.mounted || !st.enabled {
                exit::OK
            } else {
                exit::ERROR
            })
        }
        VfsCmd::Unseal { file } => {
            let file = std::path::absolute(&file)
                .with_context(|| format!("resolving {}", file.display()))?;
            let v = Client::connect(home)?.call::<m::VfsUnseal>(&types::VfsUnseal {
                file: file.to_string_lossy().into_owned(),
            })?;
            print_json(&v)?;
            Ok(exit::OK)
        }
    }
}
