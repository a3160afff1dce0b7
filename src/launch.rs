//! `ccd launch`: run the agent CLI in the current directory with ccd's agent filesystem.
//!
//! It makes sure the daemon runs (auto-start), checks that the filesystem is mounted and its
//! `health` file reads `OK`, sets `ORCHESTRATOR_ENABLED=true`, `ORCHESTRATOR_VFS_MOUNT`,
//! `ORCHESTRATOR_AGENTS`, `ORCHESTRATOR_RULES` and `ORCHESTRATOR_API_URL` (when the HTTP API
//! serves), and replaces itself with the agent CLI (`executor.command`), passing the arguments
//! after `--`.

use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{Context as _, bail};
use ccd_protocol::methods as m;
use ccd_protocol::types::NoParams;

use crate::client::Client;
use crate::home::Home;

pub fn run(home: &Home, autostart: bool, args: Vec<String>) -> anyhow::Result<u8> {
    let mut client = Client::connect_or_start(home, autostart)?;
    let vfs = client.call::<m::VfsStatus>(&NoParams {})?;
    if !vfs.mounted {
        bail!(
            "the agent filesystem is not mounted at {}: {}. Check `ccd vfs status`; FUSE needs /dev/fuse and fusermount3 (Debian: apt-get install fuse3)",
            vfs.mountpoint,
            vfs.reason.unwrap_or_else(|| "unknown reason".into())
        );
    }
    let mount = Path::new(&vfs.mountpoint);
    let health = std::fs::read_to_string(mount.join("health"))
        .with_context(|| format!("reading {}/health", mount.display()))?;
    if health.trim() != "OK" {
        bail!(
            "the agent filesystem reports {}; see `ccd daemon logs`",
            health.trim()
        );
    }
    let health_rpc = client.call::<m::SystemHealth>(&NoParams {})?;
    let command = ccd_actors::Config::load(&home.root)?.executor.command;
    let mut cmd = std::process::Command::new(&command);
    cmd.args(&args)
        .env("ORCHESTRATOR_ENABLED", "true")
        .env("ORCHESTRATOR_VFS_MOUNT", mount)
        .env("ORCHESTRATOR_AGENTS", mount.join("agents"))
        .env("ORCHESTRATOR_RULES", mount.join("orchestrator.sealed"));
    if let Some(url) = health_rpc.http {
        cmd.env("ORCHESTRATOR_API_URL", url);
    }
    // exec only returns on failure.
    let err = cmd.exec();
    bail!(
        "cannot run the agent CLI `{command}`: {err}; install Claude Code or set executor.command / CCD_AGENT_CMD"
    )
}
