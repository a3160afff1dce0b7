//! `ccd daemon ...`: start, stop, restart, status, logs, and the systemd service.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use ccd_protocol::methods as m;
use ccd_protocol::types::NoParams;
use clap::Subcommand;

use super::args::{SET_HELP, parse_set, parse_timeout};
use crate::client::{CallError, Client};
use crate::daemon;
use crate::exit::{self, UsageError};
use crate::home::Home;
use crate::table::{Table, count, print_json};

#[derive(Debug, Subcommand)]
pub enum DaemonCmd {
    /// Start the daemon in the background; returns once it answers (prints its pid).
    Start {
        /// How long to wait for the daemon to be ready: a duration (10s, 500ms, 2m) or seconds.
        #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Duration,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_set, help = SET_HELP)]
        set: Vec<(String, String)>,
        /// Print nothing when it starts or already runs (errors still go to stderr): for a
        /// login shell's profile.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Run the daemon in the foreground (SIGTERM or Ctrl-C stops it gracefully).
    Run {
        /// Report READY/ALREADY/ERROR on stdout for a parent `daemon start` (internal).
        #[arg(long, hide = true)]
        notify_ready: bool,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_set, help = SET_HELP)]
        set: Vec<(String, String)>,
    },
    /// Stop the daemon: finish in-flight requests, flush the writer, remove socket and pid file.
    Stop {
        /// How long to wait for it to exit: a duration (30s, 500ms, 2m) or seconds.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Duration,
    },
    /// Show pid, uptime, per-actor health, the agent CLI, the HTTP API and the agent
    /// filesystem; exit 3 when the daemon is not running.
    Status {
        /// Print `system.health` as JSON (`{"running": false, ...}` when not running).
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon if it runs, then start it (flags given to the old one's start are not
    /// kept: pass them again, or put them in config.toml).
    Restart {
        /// How long to wait for the old daemon to exit: a duration (30s, 500ms, 2m) or seconds.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Duration,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_set, help = SET_HELP)]
        set: Vec<(String, String)>,
    },
    /// Start the daemon at login: write and enable a systemd user service
    /// (~/.config/systemd/user/ccd.service) that runs `ccd daemon run` and restarts it if it
    /// fails. Without a systemd user manager, writes nothing and prints the line to add to
    /// ~/.profile instead (exit 1).
    Install {
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disable and remove the systemd user service (stopping the daemon it runs).
    Uninstall {
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the daemon's log ($CCD_HOME/logs/ccd.log).
    Logs {
        /// Keep printing new lines as they are written.
        #[arg(short, long)]
        follow: bool,
        /// How many lines to print first.
        #[arg(short = 'n', long = "lines", default_value_t = 50)]
        lines: usize,
    },
}

pub fn run(home: &Home, cmd: DaemonCmd) -> anyhow::Result<u8> {
    match cmd {
        DaemonCmd::Start {
            timeout,
            set,
            quiet,
        } => {
            daemon::start(home, timeout, quiet, &set, daemon::How::Explicit)?;
            Ok(exit::OK)
        }
        DaemonCmd::Run {
            notify_ready,
            mut set,
        } => {
            // From `daemon start`, which keeps them off the command line.
            if let Ok(json) = std::env::var(daemon::OVERRIDES_ENV) {
                let from_start: Vec<(String, String)> = serde_json::from_str(&json)
                    .with_context(|| format!("reading {}", daemon::OVERRIDES_ENV))?;
                set.splice(0..0, from_start);
            }
            daemon::run(home, notify_ready, &set)?;
            Ok(exit::OK)
        }
        DaemonCmd::Stop { timeout } => {
            if daemon::stop(home, timeout)? {
                outln!("ccd daemon stopped");
            } else {
                outln!("ccd daemon is not running");
            }
            Ok(exit::OK)
        }
        DaemonCmd::Restart { timeout, set } => {
            if crate::service::manages(home) {
                if !set.is_empty() {
                    return Err(UsageError(
                        "the daemon runs as the systemd service ccd.service, which --set does \
                         not reach: put the values in config.toml, then `ccd daemon restart`"
                            .into(),
                    )
                    .into());
                }
                crate::service::restart(home, timeout)?;
                outln!("restarted ccd.service");
                return Ok(exit::OK);
            }
            daemon::stop(home, timeout)?;
            daemon::start(
                home,
                Duration::from_secs(10),
                false,
                &set,
                daemon::How::Explicit,
            )?;
            Ok(exit::OK)
        }
        DaemonCmd::Status { json } => status(home, json),
        DaemonCmd::Logs { follow, lines } => {
            daemon::logs(home, lines, follow)?;
            Ok(exit::OK)
        }
        DaemonCmd::Install { json } => crate::service::install(home, json),
        DaemonCmd::Uninstall { json } => crate::service::uninstall(json),
    }
}

/// `ccd daemon status`: pid, uptime, per-actor health and the rest; exit 3 when not running.
fn status(home: &Home, json: bool) -> anyhow::Result<u8> {
    let health = match Client::connect(home)
        .map(|c| c.with_timeout(Duration::from_secs(10)))
        .and_then(|mut c| c.call::<m::SystemHealth>(&NoParams {}))
    {
        Ok(h) => h,
        Err(CallError::NotRunning(_)) => {
            let why = crate::client::lock_holder(home)
                .unwrap_or_else(|| "ccd daemon is not running".to_string());
            let service = crate::service::status();
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "running": false, "reason": why, "service": service })
                );
            } else {
                outln!("{why}");
                outln!("service: {}", service.line());
            }
            return Ok(exit::NOT_RUNNING);
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        // `running` as when it is not running, then `system.health`.
        let mut v = serde_json::to_value(&health)?;
        if let Some(map) = v.as_object_mut() {
            map.insert("running".into(), true.into());
            map.insert(
                "service".into(),
                serde_json::to_value(crate::service::status())?,
            );
        }
        print_json(&v)?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ccd daemon is running")?;
        writeln!(out, "  pid:      {}", health.pid)?;
        writeln!(out, "  version:  {}", health.version)?;
        writeln!(out, "  uptime:   {}", format_ms(health.uptime_ms))?;
        writeln!(out, "  status:   {}", health.status)?;
        writeln!(out, "  home:     {}", home.root.display())?;
        let agent = &health.agent;
        let agent_line = match (agent.available, &agent.version, &agent.reason) {
            (Some(true), Some(v), _) => match &agent.path {
                Some(path) if *path != agent.command => {
                    format!("{} ({v}) at {path}", agent.command)
                }
                _ => format!("{} ({v})", agent.command),
            },
            (Some(false), _, Some(why)) => format!("unavailable: {why}"),
            (Some(false), _, None) => format!("`{}` unavailable", agent.command),
            _ => format!("{} (being checked)", agent.command),
        };
        writeln!(out, "  agent:    {agent_line}")?;
        let x = &health.executor;
        writeln!(
            out,
            "  executor: {}, {} busy, {} queued",
            count(x.size, "slot"),
            x.busy,
            x.queued
        )?;
        let api = &health.http_api;
        let http = match (&health.http, &api.reason) {
            (Some(url), _) => url.clone(),
            // An older daemon reports no `http_api` (an empty bind).
            (None, _) if !api.enabled && !api.bind.is_empty() => {
                "off (disabled by http.enabled)".to_string()
            }
            (None, Some(why)) => format!("off: {why}"),
            (None, None) => "off".to_string(),
        };
        writeln!(out, "  http:     {http}")?;
        let vfs = &health.vfs;
        let vfs_line = match (vfs.enabled, vfs.mounted, &vfs.reason) {
            (false, _, _) => "off (disabled by vfs.enabled)".to_string(),
            (true, true, _) => format!("mounted at {}", vfs.mountpoint),
            (true, false, Some(why)) => format!("not mounted: {why}"),
            (true, false, None) => format!("not mounted at {}", vfs.mountpoint),
        };
        writeln!(out, "  vfs:      {vfs_line}")?;
        writeln!(out, "  service:  {}", crate::service::status().line())?;
        writeln!(out)?;
        let mut t = Table::new(["ACTOR", "STATE", "RESTARTS", "UPTIME", "LAST PANIC"]);
        for a in &health.actors {
            t.row([
                a.name.clone(),
                a.state.as_str().to_string(),
                a.restarts.to_string(),
                format_ms(a.uptime_ms),
                a.reason
                    .clone()
                    .or_else(|| a.last_panic.clone())
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        t.print(&mut out)?;
    }
    Ok(exit::OK)
}

fn format_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}
