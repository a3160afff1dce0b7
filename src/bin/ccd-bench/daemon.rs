//! Starting, timing and stopping the daemons a benchmark measures, their temporary homes, and the
//! stub agent scripts the suites write.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::cli::{DaemonOpts, Synchronous, Target};
use crate::client::{Client, clip};
use crate::interrupt::interrupted;

/// The daemon ping and upsert talk to: one ccd-bench started (and stops on drop), or one
/// that was already running.
pub(crate) struct Daemon {
    ccd: Option<PathBuf>,
    home: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) pid: Option<u32>,
    /// Started by ccd-bench and not yet stopped.
    pub(crate) owned: bool,
    synchronous: Option<Synchronous>,
    pub(crate) timeout: Duration,
    /// Holds the temporary CCD_HOME and command output; dropped after `Drop::drop` stopped
    /// the daemon.
    scratch: Option<TempDir>,
    /// Extra environment for `ccd daemon start|stop` (and so for the daemon), e.g. the agent
    /// command of the query benchmark.
    env: Vec<(String, OsString)>,
}

/// How long a start took, both measured from spawning `ccd daemon start`.
pub(crate) struct StartTiming {
    pub(crate) start_cmd: Duration,
    pub(crate) first_ping: Duration,
}

impl Daemon {
    /// Starts a daemon, or attaches to a running one per --home/--no-start.
    pub(crate) fn acquire(t: &Target, timeout: Duration) -> Result<Daemon> {
        if t.home.is_none() && !t.no_start {
            return Ok(Daemon::start(&t.daemon, start_timeout(timeout))?.0);
        }
        let home = match &t.home {
            Some(h) => h.clone(),
            None => default_home()?,
        };
        let socket = home.join("ccd.sock");
        let mut client = Client::connect_and_ping(&socket, timeout).with_context(|| {
            format!(
                "no ccd daemon answers at {} (start one with `ccd daemon start`, or drop \
                     --home/--no-start to let ccd-bench start its own)",
                socket.display()
            )
        })?;
        let pid = client
            .call("system.health", json!({}))
            .ok()
            .as_ref()
            .and_then(health_pid);
        Ok(Daemon {
            ccd: None,
            home,
            socket,
            pid,
            owned: false,
            synchronous: None,
            timeout,
            scratch: None,
            env: Vec::new(),
        })
    }

    /// Starts a daemon on a fresh temporary CCD_HOME with `ccd daemon start`, waits for its
    /// first `system.ping` reply, and learns its pid from `system.health`.
    pub(crate) fn start(opts: &DaemonOpts, timeout: Duration) -> Result<(Daemon, StartTiming)> {
        Daemon::start_with_env(opts, timeout, Vec::new())
    }

    /// [`Daemon::start`] with extra environment variables for the daemon.
    pub(crate) fn start_with_env(
        opts: &DaemonOpts,
        timeout: Duration,
        env: Vec<(String, OsString)>,
    ) -> Result<(Daemon, StartTiming)> {
        let ccd = ccd_binary(opts.ccd.as_deref())?;
        let scratch = TempDir::new("daemon", opts.keep_temp)?;
        let home = scratch.path.join("home");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&home)
            .with_context(|| format!("creating {}", home.display()))?;
        let socket = home.join("ccd.sock");
        let mut daemon = Daemon {
            ccd: Some(ccd),
            home,
            socket,
            pid: None,
            owned: false,
            synchronous: Some(opts.synchronous),
            timeout,
            scratch: Some(scratch),
            env,
        };
        // From here on, dropping `daemon` runs `ccd daemon stop`, even when start fails halfway.
        daemon.owned = true;
        let run = daemon.run_ccd(&["daemon", "start"])?;
        let deadline = Instant::now() + timeout;
        let mut client = loop {
            match Client::connect_and_ping(&daemon.socket, timeout) {
                Ok(c) => break c,
                Err(e) if Instant::now() >= deadline || interrupted() => {
                    return Err(e.context(format!(
                        "`ccd daemon start` returned but no system.ping was answered at {} within {}",
                        daemon.socket.display(),
                        humantime::format_duration(timeout)
                    )));
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        };
        let first_ping = run.spawned.elapsed();
        let health = client.call("system.health", json!({}))?;
        daemon.pid = health_pid(&health).or_else(|| first_number(&run.stdout));
        ensure!(
            daemon.pid.is_some(),
            "found no pid in the system.health result ({}) nor in `ccd daemon start`'s output",
            clip(&health.to_string())
        );
        let timing = StartTiming {
            start_cmd: run.exited.duration_since(run.spawned),
            first_ping,
        };
        Ok((daemon, timing))
    }

    /// Runs `ccd daemon stop`, waits for the process to go away, and returns how long the
    /// command took.
    /// On failure the daemon stays "owned", so that dropping it tries again and then kills it.
    pub(crate) fn stop(&mut self) -> Result<Duration> {
        let run = self.run_ccd(&["daemon", "stop"])?;
        if let Some(pid) = self.pid {
            let deadline = Instant::now() + self.timeout;
            while process_alive(pid) {
                ensure!(
                    Instant::now() < deadline,
                    "daemon pid {pid} still runs {} after `ccd daemon stop` returned",
                    humantime::format_duration(self.timeout)
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
        self.owned = false;
        Ok(run.exited.duration_since(run.spawned))
    }

    /// Runs `ccd <args>` with this daemon's CCD_HOME, bounded by the timeout. Its stdout and
    /// stderr go to files (not pipes, which the detached daemon could hold open).
    fn run_ccd(&self, args: &[&str]) -> Result<CcdRun> {
        let ccd = self
            .ccd
            .as_deref()
            .context("no ccd binary known for this daemon")?;
        let scratch = self
            .scratch
            .as_ref()
            .context("no scratch directory for this daemon")?;
        let shown = format!("ccd {}", args.join(" "));
        let stem = args.join("-");
        let out_path = scratch.path.join(format!("{stem}.stdout"));
        let err_path = scratch.path.join(format!("{stem}.stderr"));
        let out_file = fs::File::create(&out_path)
            .with_context(|| format!("creating {}", out_path.display()))?;
        let err_file = fs::File::create(&err_path)
            .with_context(|| format!("creating {}", err_path.display()))?;
        let mut cmd = Command::new(ccd);
        cmd.args(args)
            .env("CCD_HOME", &self.home)
            .stdin(Stdio::null())
            .stdout(out_file)
            .stderr(err_file);
        if let Some(s) = self.synchronous {
            cmd.env("CCD_WRITER_SYNCHRONOUS", s.as_str());
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running `{shown}` ({})", ccd.display()))?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel::<(io::Result<ExitStatus>, Instant)>();
        let waiter = thread::Builder::new()
            .name("ccd-wait".into())
            .spawn(move || {
                let status = child.wait();
                let _ = tx.send((status, Instant::now()));
            });
        let waiter = match waiter {
            Ok(w) => w,
            Err(e) => {
                kill(pid, libc::SIGKILL);
                return Err(e).context("spawning a thread to wait for ccd");
            }
        };
        let (status, exited) = match rx.recv_timeout(self.timeout) {
            Ok(v) => v,
            Err(_) => {
                kill(pid, libc::SIGKILL);
                let _ = waiter.join();
                bail!(
                    "`{shown}` did not finish within {}",
                    humantime::format_duration(self.timeout)
                );
            }
        };
        let _ = waiter.join();
        let status = status.with_context(|| format!("waiting for `{shown}`"))?;
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        if !status.success() {
            let stderr = fs::read_to_string(&err_path).unwrap_or_default();
            let said = if stderr.trim().is_empty() {
                stdout.trim()
            } else {
                stderr.trim()
            };
            bail!(
                "`{shown}` failed ({status}) with CCD_HOME={}: {}",
                self.home.display(),
                clip(said)
            );
        }
        Ok(CcdRun {
            spawned,
            exited,
            stdout,
        })
    }

    /// `ccd` (the binary that started this daemon) as a command on this daemon's CCD_HOME.
    pub(crate) fn ccd_command(&self) -> Result<Command> {
        let ccd = self
            .ccd
            .as_deref()
            .context("no ccd binary known for this daemon")?;
        let mut cmd = Command::new(ccd);
        cmd.env("CCD_HOME", &self.home);
        Ok(cmd)
    }

    pub(crate) fn describe(&self) -> String {
        let pid = self.pid.map_or_else(|| "?".to_string(), |p| p.to_string());
        if self.owned {
            let mut s = format!(
                "daemon: started by ccd-bench (pid {pid}), CCD_HOME={}, CCD_WRITER_SYNCHRONOUS={}",
                self.home.display(),
                self.synchronous.map_or("?", Synchronous::as_str)
            );
            for (k, v) in &self.env {
                let _ = write!(s, ", {k}={}", v.to_string_lossy());
            }
            s
        } else {
            format!(
                "daemon: already running (pid {pid}), CCD_HOME={}",
                self.home.display()
            )
        }
    }

    pub(crate) fn markdown_description(&self) -> String {
        if self.owned {
            format!(
                "started by ccd-bench on a fresh temporary `CCD_HOME`, `CCD_WRITER_SYNCHRONOUS={}`",
                self.synchronous.map_or("?", Synchronous::as_str)
            )
        } else {
            "an already running daemon (settings unknown to ccd-bench)".to_string()
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if self.pid.is_none() && !self.socket.exists() {
            // `ccd daemon start` never got a daemon up; try anyway, quietly.
            let _ = self.stop();
            return;
        }
        if let Err(e) = self.stop() {
            eprintln!("ccd-bench: warning: stopping the daemon: {e:#}");
            if let Some(pid) = self.pid.filter(|p| process_alive(*p)) {
                eprintln!("ccd-bench: warning: sending SIGTERM, then SIGKILL, to daemon pid {pid}");
                kill(pid, libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(3);
                while process_alive(pid) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
                if process_alive(pid) {
                    kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

struct CcdRun {
    spawned: Instant,
    exited: Instant,
    stdout: String,
}

/// `ccd daemon start|stop` and the first ping after start get at least 30s.
pub(crate) fn start_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(30))
}

fn health_pid(health: &Value) -> Option<u32> {
    health
        .get("pid")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
}

fn first_number(s: &str) -> Option<u32> {
    s.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
}

fn ccd_binary(flag: Option<&Path>) -> Result<PathBuf> {
    let path = match flag {
        // Absolute: the stream suite runs `ccd query` from its stub agent's directory.
        Some(p) => {
            std::path::absolute(p).with_context(|| format!("resolving --ccd {}", p.display()))?
        }
        None => std::env::current_exe()
            .context("locating the ccd-bench executable")?
            .with_file_name("ccd"),
    };
    ensure!(
        path.is_file(),
        "the ccd binary is not at {}: build it (e.g. `cargo build --release --bin ccd`, the same \
         profile as ccd-bench) or pass --ccd PATH",
        path.display()
    );
    Ok(path)
}

fn default_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("CCD_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither CCD_HOME nor HOME is set; pass --home DIR")?;
    Ok(PathBuf::from(home).join(".ccd"))
}

fn kill(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Whether the process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|s| !matches!(s.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => false,
    }
}

/// VmRSS (KiB) and thread count from /proc/PID/status.
pub(crate) fn proc_status(pid: u32) -> Result<(u64, Option<u64>)> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).context("the daemon is not running")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let rss = field("VmRSS:").context("no VmRSS line")?;
    Ok((rss, field("Threads:")))
}

/// A private directory (mode 0700) under the system temp dir, removed on drop unless kept.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

impl TempDir {
    pub(crate) fn new(tag: &str, keep: bool) -> Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ccd-bench-{tag}-"))
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .with_context(|| {
                format!(
                    "creating a temporary directory under {}",
                    std::env::temp_dir().display()
                )
            })?;
        Ok(TempDir {
            path: dir.path().to_path_buf(),
            dir: Some(dir),
            keep,
        })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Removed here rather than by tempfile's own drop, which would not say when it failed.
        let Some(dir) = self.dir.take() else { return };
        let path = dir.keep();
        if self.keep {
            eprintln!("ccd-bench: kept {}", path.display());
        } else if let Err(e) = fs::remove_dir_all(&path) {
            eprintln!(
                "ccd-bench: warning: could not remove {}: {e}",
                path.display()
            );
        }
    }
}

/// Writes a new executable script (closed before any process is spawned from it: no ETXTBSY).
pub(crate) fn write_executable(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;

    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .with_context(|| format!("writing the stub agent {}", path.display()))
}
