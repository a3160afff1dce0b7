//! The Claude Code CLI the tests run: [`claude_bin`] finds the pinned install, and [`CliEnv`]
//! runs it alone (no daemon) against a [`MockApi`] with a private HOME and project directory,
//! collecting its stream-json lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::mock_api::MockApi;

/// The Claude Code CLI the tests run: `$CCD_TEST_CLAUDE` if set, else
/// `<workspace>/target/claude-cli/node_modules/.bin/claude`. Panics with install instructions if
/// it is missing.
pub fn claude_bin() -> PathBuf {
    let path = match std::env::var_os("CCD_TEST_CLAUDE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/claude-cli/node_modules/.bin/claude")
        }
    };
    assert!(
        path.is_file(),
        "the Claude Code CLI is not at {} (set CCD_TEST_CLAUDE to use another one, or install it \
         with: npm install --prefix target/claude-cli @anthropic-ai/claude-code@2.1.197)",
        path.display()
    );
    path
}

/// A directory removed on drop, named for what it holds.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ccd-mock-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

/// A HOME and a project directory for CLI runs; runs in the same `CliEnv` share sessions.
pub struct CliEnv {
    home: tempfile::TempDir,
    project: tempfile::TempDir,
}

impl CliEnv {
    pub fn new() -> CliEnv {
        CliEnv {
            home: temp_dir("home"),
            project: temp_dir("proj"),
        }
    }

    pub fn spawn(&self, mock: &MockApi, args: &[&str], prompt: &str) -> Cli {
        let mut cmd = Command::new(claude_bin());
        cmd.args(["-p", "--output-format", "stream-json", "--verbose"])
            .args(args)
            .current_dir(self.project.path())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .env_remove("CLAUDE_CONFIG_DIR")
            .env_remove("ANTHROPIC_AUTH_TOKEN")
            .env_remove("ANTHROPIC_MODEL")
            .env_remove("CLAUDE_CODE_USE_BEDROCK")
            .env_remove("CLAUDE_CODE_USE_VERTEX")
            .envs(mock.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn claude");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(prompt.as_bytes()).expect("write prompt");
        drop(stdin);
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send((Instant::now(), value)).is_err() {
                    break;
                }
            }
        });
        let (tx, stderr) = mpsc::channel();
        let mut err_pipe = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        Cli {
            child,
            lines,
            stderr,
            seen: Vec::new(),
            started: Instant::now(),
        }
    }

    pub fn run(&self, mock: &MockApi, args: &[&str], prompt: &str) -> CliRun {
        self.spawn(mock, args, prompt)
            .finish(Duration::from_secs(90))
    }
}

/// A running CLI. Dropping it kills the process.
pub struct Cli {
    child: Child,
    lines: mpsc::Receiver<(Instant, Value)>,
    stderr: mpsc::Receiver<String>,
    /// Lines read so far by [`Cli::wait_for_line`].
    pub seen: Vec<(Instant, Value)>,
    started: Instant,
}

pub struct CliRun {
    pub lines: Vec<(Instant, Value)>,
    pub status: ExitStatus,
    pub elapsed: Duration,
    pub stderr: String,
}

impl CliRun {
    pub fn result(&self) -> &Value {
        self.lines
            .iter()
            .map(|(_, v)| v)
            .find(|v| v["type"] == "result")
            .unwrap_or_else(|| panic!("no result line in:\n{}", self.describe()))
    }

    pub fn init(&self) -> &Value {
        self.lines
            .iter()
            .map(|(_, v)| v)
            .find(|v| v["type"] == "system" && v["subtype"] == "init")
            .unwrap_or_else(|| panic!("no init line in:\n{}", self.describe()))
    }

    pub fn assistant_texts(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["type"] == "assistant")
            .flat_map(|v| {
                v["message"]["content"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str().map(String::from))
            .collect()
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "status: {:?}, after {:?}\nstdout:\n",
            self.status, self.elapsed
        );
        for (_, v) in &self.lines {
            let line = v.to_string();
            s.push_str(&line[..line.len().min(600)]);
            s.push('\n');
        }
        s.push_str("stderr:\n");
        s.push_str(&self.stderr);
        s
    }
}

impl Cli {
    /// The first line (from now on) that satisfies `pred`, waiting at most `limit`.
    pub fn wait_for_line(
        &mut self,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, v)) => {
                    self.seen.push((at, v.clone()));
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Wait for the CLI to exit (killing it after `limit`, which fails the test).
    pub fn finish(mut self, limit: Duration) -> CliRun {
        let deadline = self.started + limit;
        let status = loop {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => break None,
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        let timed_out = status.is_none();
        if timed_out {
            let _ = self.child.kill();
        }
        let status = match status {
            Some(s) => s,
            None => self.child.wait().expect("wait"),
        };
        // Collect the rest of stdout: its pipe closes when the CLI (and whatever it started) exits.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let run = CliRun {
            lines: std::mem::take(&mut self.seen),
            status,
            elapsed: self.started.elapsed(),
            stderr: self
                .stderr
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default(),
        };
        assert!(
            !timed_out,
            "claude did not finish within {limit:?}:\n{}",
            run.describe()
        );
        run
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        self.kill();
    }
}
