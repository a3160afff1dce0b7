//! `ccd launch`: run the agent CLI in the current directory with ccd's agent filesystem.
//!
//! It makes sure the daemon runs (auto-start), checks that the filesystem is mounted and its
//! `health` file reads `OK`, sets `ORCHESTRATOR_ENABLED=true`, `ORCHESTRATOR_VFS_MOUNT`,
//! `ORCHESTRATOR_AGENTS`, `ORCHESTRATOR_RULES`, and `ORCHESTRATOR_API_URL` with
//! `ORCHESTRATOR_API_TOKEN` (when `http.token` is set) only when the HTTP API is this daemon's
//! and up, and replaces itself with the agent CLI (`executor.command`), passing the arguments
//! after `--`.

use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{Context as _, bail};
use ccd_protocol::methods as m;
use ccd_protocol::types::NoParams;

use crate::home::Home;

pub fn run(home: &Home, autostart: bool, args: Vec<String>) -> anyhow::Result<u8> {
    let mut client = crate::daemon::connect_or_start(home, autostart)?;
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
    if !health.starts_with("OK") {
        bail!(
            "the agent filesystem reports {}; see `ccd daemon logs`",
            health.trim()
        );
    }
    let health_rpc = client.call::<m::SystemHealth>(&NoParams {})?;
    let config = ccd_actors::Config::load(&home.root)?;
    let command = config.executor.command;
    let mut cmd = std::process::Command::new(&command);
    // The imported definitions as subagents (`agents.expose`), unless the caller gives its own.
    let own_agents = args
        .iter()
        .any(|a| a == "--agents" || a.starts_with("--agents="));
    if !own_agents {
        let exposed = client.call::<m::AgentExposed>(&NoParams {})?;
        if let Some(agents) = exposed.agents {
            cmd.arg(format!("--agents={agents}"));
        }
    }
    cmd.args(&args)
        .env("ORCHESTRATOR_ENABLED", "true")
        .env("ORCHESTRATOR_VFS_MOUNT", mount)
        .env("ORCHESTRATOR_AGENTS", mount.join("agents"))
        .env("ORCHESTRATOR_RULES", mount.join("orchestrator.sealed"));
    // An agent told about an API must reach this daemon's, not whatever else answers there
    // (nor one named by a variable inherited from an outer launch).
    cmd.env_remove("ORCHESTRATOR_API_URL")
        .env_remove("ORCHESTRATOR_API_TOKEN");
    let api = match &health_rpc.http {
        Some(url) => ours(url, &config.http.token, health_rpc.pid).map(|()| url),
        None => Err(health_rpc
            .http_api
            .reason
            .clone()
            .unwrap_or_else(|| "it is off".into())),
    };
    match api {
        Ok(url) => {
            cmd.env("ORCHESTRATOR_API_URL", url);
            if !config.http.token.is_empty() {
                cmd.env("ORCHESTRATOR_API_TOKEN", &config.http.token);
            }
        }
        // A disabled API needs no note; one that should serve and does not does.
        Err(why) if health_rpc.http_api.enabled => eprintln!(
            "ccd: note: ORCHESTRATOR_API_URL is not set: the HTTP API is not available ({why})"
        ),
        Err(_) => {}
    }
    // exec only returns on failure.
    let err = cmd.exec();
    bail!(
        "cannot run the agent CLI `{command}`: {err}; install Claude Code or set executor.command / CCD_AGENT_CMD"
    )
}

/// Whether `url` is this daemon's HTTP API, up: its `/health` answers with the daemon's pid.
fn ours(url: &str, token: &str, pid: u32) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;
    let host = url.strip_prefix("http://").unwrap_or(url);
    let addr: SocketAddr = host
        .parse()
        .map_err(|_| format!("cannot read the URL {url}"))?;
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{url}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    write!(
        s,
        "GET /health HTTP/1.0\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let mut raw = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{url}: {e}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let answered = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|h| h["pid"].as_u64());
    match answered {
        Some(p) if p == u64::from(pid) => Ok(()),
        Some(p) => Err(format!("{url} is served by another process (pid {p})")),
        None => Err(format!(
            "{url}/health does not answer as this daemon's API ({})",
            raw.lines().next().unwrap_or("no answer")
        )),
    }
}
