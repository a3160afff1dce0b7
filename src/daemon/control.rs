//! Starting and stopping the daemon from the CLI: `start` (detached, with the ready handshake),
//! `connect_or_start` (auto-start for the commands that need the daemon), `stop`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ccd_protocol::methods as m;
use ccd_protocol::types::NoParams;
use rustix::process::{Pid, Signal, kill_process};

use super::handshake::{ALREADY, ERROR, OVERRIDES_ENV, READY, WARN};
use super::logs::tail_lines;
use crate::client::{CallError, Client};
use crate::home::{Home, PidLock};

/// Who starts the daemon: `ccd daemon start|restart`, or a command that needs it
/// (auto-start), which does not hand it `CCD_AGENT_CMD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Explicit,
    Auto,
}

/// Connect, starting the daemon first when it is not running and `autostart` allows.
pub fn connect_or_start(home: &Home, autostart: bool) -> Result<Client, CallError> {
    match Client::connect(home) {
        Err(CallError::NotRunning(_)) if autostart => {
            if std::env::var_os("CCD_AGENT_CMD").is_some_and(|v| !v.is_empty()) {
                eprintln!(
                    "ccd: note: starting the daemon without this shell's CCD_AGENT_CMD (it is \
                     for this command only); for every query set executor.command in \
                     config.toml, or run `CCD_AGENT_CMD=... ccd daemon start`"
                );
            }
            let how = How::Auto;
            start(home, Duration::from_secs(10), true, &[], how).map_err(|e| {
                match e.downcast::<CallError>() {
                    // A daemon runs but cannot be reached: say that, as `connect` would.
                    Ok(call @ CallError::NotRunning(_)) => call,
                    Ok(other) => CallError::Other(
                        anyhow::Error::new(other)
                            .context("the ccd daemon was not running; starting it failed"),
                    ),
                    Err(e) => CallError::Other(
                        e.context("the ccd daemon was not running; starting it failed"),
                    ),
                }
            })?;
            Client::connect(home)
        }
        other => other,
    }
}

/// `ccd daemon start`: start a detached daemon and return once its socket answers.
/// Returns the pid, and whether this call started it.
pub fn start(
    home: &Home,
    timeout: Duration,
    quiet: bool,
    overrides: &[(String, String)],
    how: How,
) -> anyhow::Result<(u32, bool)> {
    let deadline = Instant::now() + timeout;
    home.ensure()?;
    let exe = std::env::current_exe().context("finding the ccd executable")?;
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.logs().join("stderr.log"))
        .context("opening logs/stderr.log")?;
    let mut cmd = Command::new(exe);
    cmd.args(["daemon", "run", "--notify-ready"]);
    // The --set values go by environment, not on the command line: any user can read a
    // process's command line (/proc/PID/cmdline), only its owner its environment, and a value
    // may be a secret (http.token).
    if !overrides.is_empty() {
        cmd.env(
            OVERRIDES_ENV,
            serde_json::to_string(overrides).context("encoding the --set values")?,
        );
    }
    // `CCD_AGENT_CMD` also means "the agent this command runs" (`ccd launch`, `ccd doctor`): a
    // one-off value for such a command is not the agent every later query should run.
    if how == How::Auto {
        cmd.env_remove("CCD_AGENT_CMD");
    }
    cmd.env("CCD_HOME", &home.root)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    // SAFETY: the closure runs in the forked child before exec and makes only the setsid(2)
    // system call (rustix calls the kernel directly: no allocation, no lock), which is
    // async-signal-safe and touches no memory of the parent. It detaches the daemon from the
    // terminal's session so that closing the terminal or Ctrl-C there does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("spawning the daemon")?;
    let stdout = child.stdout.take().context("the daemon's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Line by line until the outcome (or EOF, sent as an empty line): warnings come first.
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            let eof = !matches!(reader.read_line(&mut line), Ok(n) if n > 0);
            let outcome = !line.starts_with(WARN);
            if tx.send(line).is_err() || eof || outcome {
                break;
            }
        }
    });
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => match line.trim().strip_prefix(WARN) {
                Some(warning) => eprintln!("ccd: warning: {}", warning.trim()),
                None => break line,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the daemon did not report ready within {timeout:?}; see {}",
                    home.log_file().display()
                );
            }
        }
    };
    let line = line.trim();
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        READY => {
            let pid: u32 = rest.parse().unwrap_or(child.id());
            if !quiet {
                writeln!(std::io::stdout().lock(), "ccd daemon started (pid {pid})")?;
            }
            Ok((pid, true))
        }
        ALREADY => {
            let _ = child.wait();
            let pid: u32 = rest.parse().unwrap_or(0);
            // Running is not enough: a daemon nothing can reach (its socket file deleted) must
            // not pass for one that serves, as `daemon status` would not.
            wait_answering(home, deadline)?;
            if !quiet {
                writeln!(
                    std::io::stdout().lock(),
                    "ccd daemon is already running (pid {pid})"
                )?;
            }
            Ok((pid, false))
        }
        ERROR => {
            let _ = child.wait();
            bail!("the daemon failed to start: {rest}")
        }
        _ => {
            let status = child.wait().ok();
            let tail = tail_lines(&home.logs().join("stderr.log"), 5)
                .unwrap_or_default()
                .join("\n");
            bail!(
                "the daemon exited before it was ready ({}){}{}",
                status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown status".into()),
                if tail.is_empty() {
                    ""
                } else {
                    "; last lines of logs/stderr.log:\n"
                },
                tail
            )
        }
    }
}

/// After a start found a daemon already running: wait until it answers on its socket (it may
/// still be starting), failing as "not running" (exit 3, as `daemon status` would) at once when
/// its socket file is gone, or at `deadline`.
fn wait_answering(home: &Home, deadline: Instant) -> anyhow::Result<()> {
    loop {
        match Client::connect(home) {
            Ok(_) => return Ok(()),
            Err(CallError::NotRunning(why)) => {
                let gone = crate::client::socket_orphaned(&home.socket());
                if gone || Instant::now() >= deadline {
                    return Err(CallError::NotRunning(why).into());
                }
                if PidLock::probe(&home.pid_file()).is_none() {
                    return Err(CallError::NotRunning(
                        "the daemon that was running stopped while this start waited for it; \
                         run `ccd daemon start` again"
                            .into(),
                    )
                    .into());
                }
            }
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ccd daemon stop`: ask the daemon to stop and wait until it has exited, all within
/// `timeout` (asking included: a daemon that is stopped or hung does not get to hold it up).
pub fn stop(home: &Home, timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    let pid = match Client::connect(home) {
        Ok(client) => {
            // The pid from the lock file: asking the daemon would be one more call to wait on.
            let pid = PidLock::probe(&home.pid_file()).flatten();
            let left = deadline.saturating_duration_since(Instant::now());
            let mut client = client.with_timeout(left.max(Duration::from_millis(1)));
            // Queries still running are given time to finish: say so, and which.
            if let Ok(list) = client.call::<m::QueryList>(&NoParams {})
                && !list.queries.is_empty()
            {
                let ids: Vec<String> = list
                    .queries
                    .iter()
                    .map(|q| q.query_id.chars().take(8).collect())
                    .collect();
                let what = match ids.len() {
                    1 => "1 running query".to_string(),
                    n => format!("{n} running queries"),
                };
                eprintln!(
                    "waiting for {what} to finish ({}; up to daemon.shutdown_timeout_ms, then \
                     they are cancelled)",
                    ids.join(", ")
                );
            }
            match client.call::<m::SystemShutdown>(&NoParams {}) {
                Ok(_) => pid,
                // The gateway cannot take the request (failed, restarting, stuck): signal
                // instead, if a daemon still holds the lock.
                Err(CallError::Rpc(_) | CallError::NotRunning(_)) => {
                    match PidLock::probe(&home.pid_file()) {
                        None => pid,
                        Some(_) => Some(terminate_locked(home)?),
                    }
                }
                Err(e) => return Err(anyhow::Error::new(e).context("asking the daemon to stop")),
            }
        }
        Err(CallError::NotRunning(_)) => match PidLock::probe(&home.pid_file()) {
            None => return Ok(false),
            // Holding the lock but not answering: signal it.
            Some(_) => Some(terminate_locked(home)?),
        },
        Err(e) => return Err(e.into()),
    };
    while PidLock::probe(&home.pid_file()).is_some() {
        if Instant::now() > deadline {
            let within = humantime::format_duration(timeout);
            match pid {
                Some(pid) => bail!(
                    "the daemon (pid {pid}) did not stop within {within}; it may still be \
                     finishing requests (`ccd daemon logs`), or be stuck: `kill -9 {pid}` ends it"
                ),
                None => bail!("the daemon did not stop within {within} (see `ccd daemon logs`)"),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(true)
}

/// SIGTERM the daemon that holds the pid lock; returns its pid.
fn terminate_locked(home: &Home) -> anyhow::Result<u32> {
    let pid = PidLock::probe(&home.pid_file())
        .context("no daemon holds the lock")?
        .context("a daemon holds the lock but its pid file is unreadable")?;
    anyhow::ensure!(
        pid > 1 && pid <= i32::MAX as u32,
        "the pid file holds an implausible pid {pid}; not signalling it"
    );
    // The pid is positive (never a process group) and read from the pid file whose lock a live
    // daemon holds.
    let target = Pid::from_raw(pid as i32).context("pid 0 is not a process")?;
    if let Err(e) = kill_process(target, Signal::TERM) {
        bail!("signalling daemon pid {pid}: {}", std::io::Error::from(e));
    }
    Ok(pid)
}
