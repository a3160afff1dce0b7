//! The executor pool: supervised ExecutorActors that each run at most one agent process at a
//! time, behind a dispatcher with a bounded queue.
//!
//! `ExecutorPool` (actor `executor`) takes [`Submit`]s: it hands each to an idle member
//! (`executor-N`) or queues it (a full queue is -32009). A member runs the process outside its
//! own context (the future is spawned beside it), so it stays responsive; it keeps the pid of
//! its running agent so that, if it panics, its restart kills the whole process group: an agent
//! is never orphaned. The run then ends as "killed by a signal" (retryable).

pub mod process;

use std::cell::Cell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use ccd_protocol::stream_json::Parsed;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use process::{
    AgentFailure, AgentOptions, AgentSpec, ErrorClass, FailureKind, RunResult, Transcript,
    agent_args,
};

use crate::error::ActorError;
use crate::supervise::{
    ActorRequest, Call, Handle, HealthRegistry, Reply, Supervise, Supervision, ask, supervised,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// How many agent processes may run at once (one per ExecutorActor).
    pub pool_size: usize,
    /// Queries waiting for a free executor; past it, -32009.
    pub queue_size: usize,
    /// The agent CLI: a name looked up on PATH, or a path. `CCD_AGENT_CMD` overrides it.
    pub command: String,
    /// Default per-query deadline.
    pub timeout_ms: u64,
    /// After SIGTERM to the agent's process group, how long before SIGKILL.
    pub kill_grace_ms: u64,
    /// Longest accepted stdout line from the agent; a longer one fails the query.
    pub max_line_bytes: usize,
    /// The CLI retries rate limits and overload on its own for minutes; ccd stops it after
    /// this many `api_retry` messages and fails the query as retryable (ccd's own retry,
    /// with limiter and breaker, takes over). 0 stops it at the first.
    pub cli_retry_limit: u32,
    /// The variables a query takes from its caller's environment instead of the daemon's:
    /// names, or prefixes ending in `*`. `CCD_*` never passes.
    pub pass_env: Vec<String>,
}

/// The default `executor.pass_env`: what Claude Code reads for its API, credentials, cloud
/// providers (Bedrock, Vertex), proxies and certificates, and `PATH` for the tools it runs.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "ANTHROPIC_*",
    "CLAUDE_*",
    "DISABLE_*",
    "MAX_THINKING_TOKENS",
    "MCP_*",
    "AWS_*",
    "GOOGLE_*",
    "GCLOUD_*",
    "CLOUDSDK_*",
    "CLOUD_ML_REGION",
    "VERTEX_*",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "PATH",
];

impl ExecutorConfig {
    /// Whether `executor.pass_env` takes `name` from the caller.
    pub fn passes_env(&self, name: &str) -> bool {
        !name
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("CCD_"))
            && self
                .pass_env
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == pattern,
                })
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            pool_size: 4,
            queue_size: 256,
            command: "claude".into(),
            timeout_ms: 600_000,
            kill_grace_ms: 3_000,
            max_line_bytes: 8 * 1024 * 1024,
            cli_retry_limit: 2,
            pass_env: DEFAULT_PASS_ENV.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Sees every parsed message of a run as it is read; must not block.
pub type OnMessage = Box<dyn FnMut(&Parsed) + Send>;

/// One agent run to perform.
pub struct Run {
    pub spec: AgentSpec,
    pub cancel: CancellationToken,
    /// Sees every parsed message as it is read (used to stream `query.event`s).
    pub on_message: OnMessage,
}

impl ActorRequest for Run {
    type Output = RunResult;
}

/// Run through the pool: dispatched to an idle executor, or queued.
pub struct Submit(pub Run);

impl ActorRequest for Submit {
    type Output = RunResult;
}

/// The pool's occupancy, for `system.health`.
pub struct PoolStatus;

impl ActorRequest for PoolStatus {
    type Output = PoolInfo;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolInfo {
    pub size: usize,
    pub busy: usize,
    pub queued: usize,
}

/// A member is done with the run it was given: it is idle again. Handled even while the pool
/// is failed: refused, the member would never be handed work again.
struct Finished(usize);

impl ActorRequest for Finished {
    type Output = ();
    const WHILE_FAILED: bool = true;
}

/// A queued query was cancelled: take it out of the queue now (see [`ExecutorPool::prune`]).
/// Handled even while the pool is failed, so that the query is answered at once.
struct Prune;

impl ActorRequest for Prune {
    type Output = ();
    const WHILE_FAILED: bool = true;
}

fn failure(kind: FailureKind, class: ErrorClass, detail: String) -> Box<AgentFailure> {
    Box::new(AgentFailure {
        kind,
        class,
        detail,
        transcript: Transcript::default(),
    })
}

// ---------------------------------------------------------------------------------------------
// Members

pub struct ExecutorActor {
    sup: Supervision,
    /// Pid (and process-group id) of the agent running now; 0 when idle.
    running: Rc<Cell<u32>>,
}

supervised!(ExecutorActor);

impl ExecutorActor {
    pub fn new(sup: Supervision) -> Self {
        ExecutorActor {
            sup,
            running: Rc::new(Cell::new(0)),
        }
    }
}

impl Drop for ExecutorActor {
    fn drop(&mut self) {
        // The daemon is going away: its agents go with it.
        let pid = self.running.replace(0);
        if pid != 0 {
            process::signal_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Supervise for ExecutorActor {
    fn supervision(&self) -> &Supervision {
        &self.sup
    }

    fn reset(&mut self, _: &mut Context<Self>) -> anyhow::Result<()> {
        let pid = self.running.replace(0);
        if pid != 0 {
            tracing::warn!(
                actor = self.sup.name(),
                pid,
                "killing the agent of a restarting executor"
            );
            process::signal_group(pid, rustix::process::Signal::KILL);
        }
        Ok(())
    }
}

impl Handle<Run> for ExecutorActor {
    fn handle(&mut self, run: Run, _: &mut Context<Self>) -> Reply<RunResult> {
        let running = self.running.clone();
        let name = self.sup.name().to_string();
        Reply::local(async move {
            let Run {
                spec,
                cancel,
                on_message,
            } = run;
            let started = {
                let running = running.clone();
                move |pid: u32| {
                    tracing::debug!(actor = %name, pid, "agent started");
                    running.set(pid);
                }
            };
            let result = process::run_agent(spec, cancel, on_message, started).await;
            running.set(0);
            Ok(result)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The pool

/// Queued work, unless its caller has gone (dropped) or it was cancelled (answered so).
fn still_wanted(pending: Pending) -> Option<Pending> {
    if pending.tx.is_closed() {
        return None;
    }
    if pending.run.cancel.is_cancelled() {
        let _ = pending.tx.send(Err(failure(
            FailureKind::Cancelled,
            ErrorClass::NonRetryable,
            "stopped while queued".into(),
        )));
        return None;
    }
    Some(pending)
}

struct Pending {
    run: Run,
    tx: oneshot::Sender<RunResult>,
}

pub struct ExecutorPool {
    sup: Supervision,
    members: Vec<Addr<ExecutorActor>>,
    /// Each member's supervision handle: a failed member gets no work until it recovers.
    member_health: Vec<Supervision>,
    idle: Vec<usize>,
    queue: VecDeque<Pending>,
    queue_size: usize,
    kill_grace: Duration,
}

supervised!(ExecutorPool);

impl ExecutorPool {
    /// Start `size` members (`executor-1` ...) on the current arbiter; the pool is `executor`.
    pub fn new(
        health: &Arc<HealthRegistry>,
        size: usize,
        queue_size: usize,
        kill_grace: Duration,
    ) -> Self {
        let member_health: Vec<Supervision> = (1..=size)
            .map(|i| health.register(&format!("executor-{i}")))
            .collect();
        let members: Vec<_> = member_health
            .iter()
            .map(|sup| {
                let member = ExecutorActor::new(sup.clone());
                Supervisor::start(move |_| member)
            })
            .collect();
        ExecutorPool {
            sup: health.register("executor"),
            member_health,
            idle: (0..members.len()).rev().collect(),
            members,
            queue: VecDeque::new(),
            queue_size,
            kill_grace,
        }
    }

    /// The member actors, for `debug.crash`.
    pub fn member(&self, index: usize) -> Option<Addr<ExecutorActor>> {
        self.members.get(index).cloned()
    }

    fn dispatch(&mut self, idx: usize, pending: Pending, ctx: &mut Context<Self>) {
        let member = self.members[idx].clone();
        let pool = ctx.address();
        let Pending { run, tx } = pending;
        actix_rt::spawn(async move {
            let result = match ask(&member, format!("executor-{}", idx + 1), run).await {
                Ok(result) => result,
                Err(e) => Err(failure(
                    FailureKind::Agent,
                    ErrorClass::Retryable,
                    e.to_string(),
                )),
            };
            let _ = tx.send(result);
            pool.do_send(Call(Finished(idx)));
        });
    }

    /// An idle member that is not failed, taken off the idle list.
    fn take_idle(&mut self) -> Option<usize> {
        let pos = self.idle.iter().rposition(|i| {
            self.member_health[*i].state() != ccd_protocol::types::ActorState::Failed
        })?;
        Some(self.idle.remove(pos))
    }

    /// Drop queued work whose caller has gone, and answer queued work that was cancelled: so
    /// that neither counts against the queue's size, and a cancelled query's run (and the
    /// stream of events it holds) is released at once, not when an executor frees up.
    fn prune(&mut self) {
        let queue = std::mem::take(&mut self.queue);
        self.queue = queue.into_iter().filter_map(still_wanted).collect();
    }

    /// Hand queued work to idle members, skipping work whose caller gave up.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while self
            .idle
            .iter()
            .any(|i| self.member_health[*i].state() != ccd_protocol::types::ActorState::Failed)
        {
            let Some(pending) = self.queue.pop_front() else {
                return;
            };
            let Some(pending) = still_wanted(pending) else {
                continue;
            };
            if let Some(idx) = self.take_idle() {
                self.dispatch(idx, pending, ctx);
            }
        }
    }
}

impl Supervise for ExecutorPool {
    fn supervision(&self) -> &Supervision {
        &self.sup
    }

    fn on_started(&mut self, ctx: &mut Context<Self>) {
        // Queued work waits for a member that recovers from `failed`: look again every second.
        ctx.run_interval(Duration::from_secs(1), |pool, ctx| pool.pump(ctx));
    }
}

impl Handle<Submit> for ExecutorPool {
    fn handle(&mut self, Submit(run): Submit, ctx: &mut Context<Self>) -> Reply<RunResult> {
        let cancel = run.cancel.clone();
        let (tx, mut rx) = oneshot::channel();
        if let Some(idx) = self.take_idle() {
            self.dispatch(idx, Pending { run, tx }, ctx);
        } else if self.queue.len() < self.queue_size || {
            self.prune();
            self.queue.len() < self.queue_size
        } {
            self.queue.push_back(Pending { run, tx });
        } else {
            return Reply::err(ActorError::Overloaded(format!(
                "the executor queue is full ({} queries waiting for {} executors); try again later",
                self.queue.len(),
                self.members.len()
            )));
        }
        let grace = self.kill_grace + Duration::from_secs(1);
        let pool = ctx.address();
        Reply::later(async move {
            let restarted = || {
                Err(failure(
                    FailureKind::Agent,
                    ErrorClass::Retryable,
                    "the executor pool restarted".into(),
                ))
            };
            tokio::select! {
                r = &mut rx => Ok(r.unwrap_or_else(|_| restarted())),
                _ = cancel.cancelled() => {
                    // A running agent reports its own cancellation (with what it said so far);
                    // a queued one never started: the pool takes it out of the queue and answers
                    // at once, releasing its run (and the stream of events it holds).
                    pool.do_send(Call(Prune));
                    match tokio::time::timeout(grace, rx).await {
                        Ok(r) => Ok(r.unwrap_or_else(|_| restarted())),
                        Err(_) => Ok(Err(failure(FailureKind::Cancelled, ErrorClass::NonRetryable, "stopped while queued".into()))),
                    }
                }
            }
        })
    }
}

impl Handle<Finished> for ExecutorPool {
    fn handle(&mut self, Finished(idx): Finished, ctx: &mut Context<Self>) -> Reply<()> {
        if !self.idle.contains(&idx) {
            self.idle.push(idx);
        }
        self.pump(ctx);
        Reply::ok(())
    }
}

impl Handle<Prune> for ExecutorPool {
    fn handle(&mut self, _: Prune, _: &mut Context<Self>) -> Reply<()> {
        self.prune();
        Reply::ok(())
    }
}

impl Handle<PoolStatus> for ExecutorPool {
    fn handle(&mut self, _: PoolStatus, _: &mut Context<Self>) -> Reply<PoolInfo> {
        Reply::ok(PoolInfo {
            size: self.members.len(),
            busy: self.members.len() - self.idle.len(),
            queued: self.queue.iter().filter(|p| !p.tx.is_closed()).count(),
        })
    }
}

/// A member, for `debug.crash executor-N`.
pub struct Member(pub usize);

impl ActorRequest for Member {
    type Output = Option<Addr<ExecutorActor>>;
}

impl Handle<Member> for ExecutorPool {
    fn handle(
        &mut self,
        Member(i): Member,
        _: &mut Context<Self>,
    ) -> Reply<Option<Addr<ExecutorActor>>> {
        Reply::ok(self.member(i))
    }
}

// ---------------------------------------------------------------------------------------------
// The agent CLI's availability

/// The agent command as the daemon runs it, and what `<path> --version` said at start; shared
/// with the query path and `system.health`.
#[derive(Debug, Clone, Default)]
pub struct AgentProbe {
    /// As configured (`executor.command`, `CCD_AGENT_CMD`): the breaker's key names it.
    pub command: String,
    /// `command` resolved to an absolute path with the daemon's own `PATH`, once at start
    /// (and again when that file disappears): what every query runs, whatever `PATH` the
    /// caller or a project has. `None`: not found.
    pub path: Option<PathBuf>,
    /// `None` while the check runs.
    pub version: Option<Result<String, String>>,
}

pub type SharedProbe = Arc<Mutex<AgentProbe>>;

/// `command` as an absolute path: a name is looked up on `path_var` (the daemon's `PATH`), a
/// relative path is taken from the daemon's current directory. `None` when there is no
/// executable file there.
pub fn resolve_command(command: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.is_empty() {
        return None;
    }
    if command.contains('/') {
        let p = std::path::absolute(command).ok()?;
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path_var?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(command))
        .find(|p| executable(p))
}

/// The program a query runs: the resolved path, resolved again (with the daemon's `PATH`) if
/// it was not found at start or has since disappeared; the configured command when it cannot
/// be found at all (the spawn then fails and says so). Touches the filesystem: call it off
/// the event loop.
pub fn agent_program(probe: &SharedProbe) -> PathBuf {
    let (command, path) = match probe.lock() {
        Ok(p) => (p.command.clone(), p.path.clone()),
        Err(_) => return PathBuf::new(),
    };
    if let Some(path) = path
        && path.is_file()
    {
        return path;
    }
    let found = resolve_command(&command, std::env::var_os("PATH").as_deref());
    if let Some(found) = &found {
        tracing::info!("agent command `{command}` resolved to {}", found.display());
        if let Ok(mut p) = probe.lock() {
            p.path = Some(found.clone());
        }
    }
    found.unwrap_or_else(|| PathBuf::from(command))
}

/// Resolve the agent command, run `<path> --version` (bounded) and record the outcome.
pub async fn probe_agent(probe: SharedProbe) {
    let command = probe.lock().map(|p| p.command.clone()).unwrap_or_default();
    let resolving = probe.clone();
    let program = crate::blocking::off_loop("resolving the agent command", move || {
        agent_program(&resolving)
    })
    .await
    .unwrap_or_else(|_| PathBuf::from(&command));
    let outcome = async {
        let mut cmd = tokio::process::Command::new(&program);
        process::remove_daemon_env(cmd.as_std_mut());
        let out = cmd
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(30), out).await {
            Err(_) => Err(format!("`{command} --version` did not answer within 30 s")),
            Ok(Err(e)) => Err(process::cannot_run_agent(&command, &e)),
            Ok(Ok(o)) if !o.status.success() => {
                Err(format!("`{command} --version` failed with {}", o.status))
            }
            Ok(Ok(o)) => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        }
    }
    .await;
    match &outcome {
        Ok(v) => tracing::info!("agent CLI `{command}` ({}): {v}", program.display()),
        Err(e) => tracing::warn!("agent CLI unavailable: {e}"),
    }
    if let Ok(mut p) = probe.lock() {
        p.version = Some(outcome);
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::resolve_command;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn names_are_found_on_the_given_path_and_paths_are_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("agent");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let path_var =
            std::env::join_paths(["relative/dir", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(resolve_command("agent", Some(&path_var)), Some(bin.clone()));
        // Not executable, not there, no PATH, empty.
        assert_eq!(resolve_command("plain", Some(&path_var)), None);
        assert_eq!(resolve_command("missing", Some(&path_var)), None);
        assert_eq!(resolve_command("agent", None), None);
        assert_eq!(resolve_command("", Some(&path_var)), None);
        assert_eq!(resolve_command(bin.to_str().unwrap(), None), Some(bin));
    }
}
