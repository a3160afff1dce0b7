//! A daemon whose agent is the real Claude Code CLI pointed at a mock Messages API.

use std::time::Duration;

use serde_json::json;

use crate::support::claude::claude_bin;
use crate::support::daemon::{Daemon, wait_until};
use crate::support::mock_api::{Behaviour, MockApi};

/// A daemon whose agent is the real CLI talking to `mock`. Every process it starts carries a
/// marker in its environment, so the test can find (and count) its agent processes.
pub struct AgentDaemon {
    pub d: Daemon,
    pub mock: MockApi,
    marker: String,
}

impl std::ops::Deref for AgentDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

pub fn agent_daemon(behaviour: Behaviour, config: &str) -> AgentDaemon {
    let mock = MockApi::start(behaviour);
    let marker = format!(
        "ccd-test-{}",
        std::process::id() as u64 * 1_000_000 + rand_suffix()
    );
    let claude = claude_bin();
    let d = Daemon::builder()
        .fault_injection()
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEY", "test-key")
        .agent(claude)
        .env("CCDTEST_MARKER", &marker)
        .config(config)
        .start();
    AgentDaemon { d, mock, marker }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl AgentDaemon {
    /// Pids of live processes started for this daemon (its agents and their children).
    pub fn agent_processes(&self) -> Vec<u32> {
        let daemon = std::fs::read_to_string(self.path().join("ccd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        let needle = format!("CCDTEST_MARKER={}", self.marker);
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if Some(pid) == daemon {
                continue;
            }
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let has_marker = env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes());
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            if has_marker || zombie && state.contains(&format!(" {} ", daemon.unwrap_or(0))) {
                found.push(pid);
            }
        }
        found
    }

    pub fn wait_no_agent_processes(&self) {
        wait_until(
            "the agent processes to be gone",
            Duration::from_secs(30),
            || self.agent_processes().is_empty(),
        );
        // ...and the pool is idle again.
        wait_until(
            "the executor pool to be idle",
            Duration::from_secs(30),
            || {
                let h = self.call("system.health", json!({})).unwrap();
                h["executor"]["busy"] == 0 && h["executor"]["queued"] == 0
            },
        );
    }

    pub fn project(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        self.call(
            "project.create",
            json!({"name": "proj", "path": dir.path()}),
        )
        .unwrap();
        dir
    }
}
