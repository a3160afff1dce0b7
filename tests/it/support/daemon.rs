//! Test harness: a real `ccd` daemon on a temporary `CCD_HOME`, talked to over its socket the
//! way a user's script would (NDJSON lines on a Unix socket), and the CLI run as a process.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

pub fn ccd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ccd")
}

/// A daemon under test. Dropping it stops the daemon (or kills it if it does not stop).
pub struct Daemon {
    pub home: TempDir,
    env: Vec<(String, String)>,
}

pub struct Builder {
    env: Vec<(String, String)>,
    config: Option<String>,
}

impl Builder {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Run `path` as the agent CLI (`CCD_AGENT_CMD`).
    pub fn agent(self, path: impl AsRef<std::path::Path>) -> Self {
        let path = path.as_ref().to_str().expect("a UTF-8 agent path");
        self.env("CCD_AGENT_CMD", path)
    }

    pub fn fault_injection(self) -> Self {
        self.env("CCD_FAULT_INJECTION", "1")
    }

    /// Contents of `$CCD_HOME/config.toml`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.into());
        self
    }

    /// Prepare the home without starting the daemon.
    pub fn prepare(self) -> Daemon {
        let home = tempfile::Builder::new()
            .prefix("ccd-test-")
            .tempdir()
            .expect("temp dir");
        if let Some(cfg) = &self.config {
            std::fs::write(home.path().join("config.toml"), cfg).expect("write config");
        }
        Daemon {
            home,
            env: self.env,
        }
    }

    pub fn start(self) -> Daemon {
        let d = self.prepare();
        let out = d.ccd(&["daemon", "start"]);
        assert!(
            out.status.success(),
            "daemon start failed:\n{}",
            describe(&out)
        );
        d
    }
}

impl Daemon {
    pub fn builder() -> Builder {
        Builder {
            env: Vec::new(),
            config: None,
        }
    }

    pub fn start() -> Daemon {
        Daemon::builder().start()
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("ccd.sock")
    }

    /// A hermetic `ccd` command for this daemon's home.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ccd_bin());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("CCD_HOME", self.path())
            // Tests run many daemons at once: no HTTP API unless a test asks for one.
            .env("CCD_HTTP_ENABLED", "false")
            // Likewise no agent filesystem (a FUSE mount per daemon) unless asked for.
            .env("CCD_VFS_ENABLED", "false")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run the CLI to completion.
    pub fn ccd(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running ccd")
    }

    /// Run the CLI and expect success; returns stdout.
    pub fn ccd_ok(&self, args: &[&str]) -> String {
        let out = self.ccd(args);
        assert!(
            out.status.success(),
            "ccd {args:?} failed:\n{}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn connect(&self) -> Conn {
        Conn::open(&self.socket())
    }

    /// One call on a fresh connection: `Ok(result)` or `Err(error object)`.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, Value> {
        self.connect().call(method, params)
    }

    pub fn pid(&self) -> u32 {
        let h = self.call("system.health", json!({})).expect("health");
        h["pid"].as_u64().expect("pid") as u32
    }

    pub fn kill9(&self) {
        let pid = self.pid();
        let st = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        // A zombie leader can outlive its other threads' exit for a moment, and they share the
        // socket and lock file descriptors: gone means the kernel has dropped the pid lock too.
        let lock_file = self.path().join("ccd.pid");
        wait_until(
            "the killed daemon to be gone",
            Duration::from_secs(10),
            || {
                (!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid))
                    && std::fs::File::open(&lock_file).is_ok_and(|f| f.try_lock().is_ok())
            },
        );
    }

    /// The daemon's log (`logs/ccd.log`) once it contains `needle`. The log is written by a
    /// background thread, so a line may land a moment after what caused it: this waits for it
    /// (bounded) and fails the test, showing the log, if it never comes.
    pub fn log_containing(&self, needle: &str) -> String {
        let path = self.path().join("logs/ccd.log");
        let limit = Duration::from_secs(30);
        let start = Instant::now();
        loop {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {needle:?} in the daemon's log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&self) {
        let out = self.ccd(&["daemon", "stop"]);
        assert!(
            out.status.success(),
            "daemon stop failed:\n{}",
            describe(&out)
        );
    }
}

/// Whether `pid` is gone or a zombie (exited, not yet reaped).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.path().join("ccd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(pid) = pid else { return };
        let _ = self
            .command(&["daemon", "stop", "--timeout", "10"])
            .output();
        if is_live_daemon(pid) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Whether `pid` is a ccd daemon still running (not gone, not a zombie).
fn is_live_daemon(pid: u32) -> bool {
    !is_zombie(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.contains("daemon"))
}

/// A raw connection: NDJSON lines in and out.
pub struct Conn {
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Conn {
    pub fn open(path: &Path) -> Conn {
        Conn::try_open(path).unwrap_or_else(|| panic!("connecting to {}", path.display()))
    }

    pub fn try_open(path: &Path) -> Option<Conn> {
        let stream = UnixStream::connect(path).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        Some(Conn {
            reader: BufReader::new(stream),
            next_id: 1,
        })
    }

    pub fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream().set_read_timeout(Some(t)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send");
    }

    pub fn send(&mut self, v: &Value) {
        let mut line = serde_json::to_vec(v).unwrap();
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// The next line, parsed; `None` on EOF.
    pub fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}")),
            ),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => None,
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// Whether the daemon closed the connection (EOF or reset) within the read timeout.
    pub fn is_closed(&mut self) -> bool {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => true,
            Ok(_) => panic!("expected the connection to close, got {line:?}"),
            Err(e) => matches!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }

    /// Send a request; `None` when the daemon is gone (the write failed).
    pub fn try_request(&mut self, method: &str, params: Value) -> Option<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .unwrap();
        line.push(b'\n');
        self.reader.get_mut().write_all(&line).ok().map(|()| id)
    }

    pub fn request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// Read until the reply to request `id` (skipping notifications and other replies).
    pub fn reply_to(&mut self, id: u64) -> Value {
        loop {
            let m = self
                .recv()
                .unwrap_or_else(|| panic!("connection closed before the reply to request {id}"));
            if m["id"] == json!(id) {
                return m;
            }
        }
    }

    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.request(method, params);
        loop {
            let reply = self
                .recv()
                .unwrap_or_else(|| panic!("connection closed before the reply to {method}"));
            if reply["id"] != json!(id) {
                continue; // a notification or another request's reply
            }
            assert_eq!(reply["jsonrpc"], "2.0");
            return match (reply.get("result"), reply.get("error")) {
                (Some(r), None) => Ok(r.clone()),
                (None, Some(e)) => Err(e.clone()),
                _ => panic!("reply with both or neither of result and error: {reply}"),
            };
        }
    }
}

/// Whether every actor in a `system.health` result is running. (The overall `status` also
/// reflects the agent CLI, which most tests do not install on PATH.)
pub fn all_actors_running(health: &Value) -> bool {
    health["actors"]
        .as_array()
        .is_some_and(|a| a.iter().all(|a| a["state"] == "running"))
}

/// The error code of an error object.
pub fn code(err: &Value) -> i64 {
    err["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no code in {err}"))
}

/// The error class (`data.class`) of a JSON-RPC error from a query.
pub fn class(e: &Value) -> &str {
    e["data"]["class"]
        .as_str()
        .unwrap_or_else(|| panic!("no class in {e}"))
}

/// Poll `cond` until it holds, failing the test after `limit` (which only bounds a hang; no
/// assertion depends on how fast anything is).
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything needed to understand a failed command.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The element of the array `list` whose `name` is `name`.
pub fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no `{name}` in {list}"))
}
