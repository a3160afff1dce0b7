//! Daemon lifecycle: run in the foreground, start detached (with a ready handshake), stop,
//! status, logs; and the wiring of the actors at boot.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use anyhow::{Context as _, bail};
use ccd_actors::agents::AgentService;
use ccd_actors::config::SessionConfig;
use ccd_actors::eventbus::{Bus, EventBusActor, FlushEvents, supervision_publisher};
use ccd_actors::executor::{AgentProbe, ExecutorPool, SharedProbe, probe_agent};
use ccd_actors::gateway::{DaemonInfo, GatewayActor};
use ccd_actors::http;
use ccd_actors::metrics::Metrics;
use ccd_actors::query::{AgentSetup, QueryService, Resilience};
use ccd_actors::reader::Reader;
use ccd_actors::resilience::breaker::BreakerCore;
use ccd_actors::resilience::limiter::LimiterCore;
use ccd_actors::resilience::{BreakerActor, LimiterActor, SharedLimits};
use ccd_actors::store::ExpireSessions;
use ccd_actors::supervise::HealthRegistry;
use ccd_actors::vfs;
use ccd_actors::writer::{Drain, Write as DbWrite, WriterActor};
use ccd_actors::{Call, Config};
use ccd_protocol::methods as m;
use ccd_protocol::types::EventKind;
use ccd_protocol::types::NoParams;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use tokio_util::sync::CancellationToken;

use crate::client::{CallError, Client};
use crate::home::{Home, Lock, PidLock};

/// What the foreground daemon reports to a `ccd daemon start` waiting on its stdout.
const READY: &str = "READY";
const ALREADY: &str = "ALREADY";
const ERROR: &str = "ERROR";
/// A warning for the user, before READY (any number of them).
const WARN: &str = "WARN";

/// `ccd daemon run`: run in the foreground until SIGTERM/SIGINT or `system.shutdown`.
/// With `notify`, report READY/ALREADY/ERROR on stdout for a parent `daemon start`.
pub fn run(home: &Home, notify: bool, overrides: &[(String, String)]) -> anyhow::Result<()> {
    let result = run_inner(home, notify, overrides);
    if let Err(e) = &result
        && notify
    {
        report(&format!("{ERROR} {e:#}"));
    }
    result
}

fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.replace('\n', " "));
    let _ = out.flush();
}

fn run_inner(home: &Home, notify: bool, overrides: &[(String, String)]) -> anyhow::Result<()> {
    // SAFETY: umask(2) only sets this process's file mode creation mask; it cannot fail and
    // touches no memory. Everything the daemon creates (database, logs, backups) is owner-only.
    unsafe { libc::umask(0o077) };
    home.ensure()?;
    let lock = match PidLock::acquire(&home.pid_file())? {
        Lock::Acquired(lock) => lock,
        Lock::Held(pid) => {
            let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
            if notify {
                report(&format!("{ALREADY} {pid}"));
                return Ok(());
            }
            // A foreground run that did not run is a failure: a service manager must not
            // read it as a clean exit.
            bail!("the daemon is already running (pid {pid}); not starting a second one");
        }
    };
    let mut config = Config::load_with(&home.root, overrides)?;
    let _log_guard = crate::logging::init(home, !notify)?;
    fit_connections_to_fd_limit(&mut config);
    let effective = config_report(home, overrides, &config);
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let msg = ccd_actors::supervise::panic_message(info.payload());
        tracing::error!(target: "ccd::panic", "panic at {location}: {msg}");
    }));
    let fault_injection = std::env::var("CCD_FAULT_INJECTION").is_ok_and(|v| v == "1");
    tracing::info!(home = %home.root.display(), pid = std::process::id(), fault_injection, "daemon starting");

    let system = actix_rt::System::new();
    let outcome = system.block_on(serve(home, config, effective, fault_injection, notify));
    drop(system);
    // The socket first: once it is gone, no client can think this daemon still answers.
    let _ = std::fs::remove_file(home.socket());
    let _ = std::fs::remove_file(home.http_url_file());
    lock.release();
    match &outcome {
        Ok(()) => tracing::info!("daemon stopped"),
        Err(e) => tracing::error!("daemon failed: {e:#}"),
    }
    outcome
}

/// Descriptors kept for everything but IPC and HTTP connections: the database and its read
/// pool, logs, the FUSE device, epoll instances, listeners, and three pipes per running agent.
fn reserved_fds(config: &Config) -> u64 {
    64 + 4 * config.executor.pool_size as u64
}

/// Raises the soft limit on open files to the hard limit (many distributions start processes
/// at 1024), then makes sure the HTTP API's connections (`http.max_connections`, one descriptor
/// each, at most half of what is left after [`reserved_fds`]) and then `ipc.max_connections`
/// fit: each IPC connection holds two descriptors (its socket, and a duplicate that notices a
/// peer hanging up). A limit past which `accept` would fail instead of closing an idle
/// connection would let idle connections lock new clients out.
fn fit_connections_to_fd_limit(config: &mut Config) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("raising the open-file limit to its hard limit: {e}");
        }
    }
    let Some(soft) = getrlimit(Resource::Nofile).current else {
        return; // unlimited
    };
    let room = soft.saturating_sub(reserved_fds(config));
    if let Some(lowered) = config.http.fit_connections(room / 2) {
        tracing::warn!(
            "the open-file limit ({soft}) leaves room for {} HTTP connections: {lowered} \
             (raise `ulimit -n` for more)",
            config.http.max_connections
        );
    }
    let fits = usize::try_from(room.saturating_sub(config.http.connection_fds()) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    if config.ipc.max_connections > fits {
        tracing::warn!(
            "the open-file limit ({soft}) leaves room for {fits} connections: \
             ipc.max_connections lowered from {} to {fits} (raise `ulimit -n` for more)",
            config.ipc.max_connections
        );
        config.ipc.max_connections = fits;
    } else {
        tracing::info!(
            open_file_limit = soft,
            max_connections = config.ipc.max_connections,
            "connection limit fits the open-file limit"
        );
    }
}

/// What `system.config` answers: every value this daemon runs with, and where it came from
/// (a value the daemon changed at start, as `ipc.max_connections` may be, says so).
fn config_report(
    home: &Home,
    overrides: &[(String, String)],
    config: &Config,
) -> Vec<ccd_protocol::types::ConfigValue> {
    let explained = Config::explain(&home.root, overrides).unwrap_or_default();
    let running = serde_json::to_value(config).unwrap_or_default();
    explained
        .into_iter()
        .map(|(key, loaded, source)| {
            let value = key
                .split_once('.')
                .and_then(|(section, name)| running.get(section)?.get(name).cloned())
                .map(|v| ccd_actors::config::redact(&key, v))
                .unwrap_or(loaded.clone());
            let source = if value == loaded {
                source
            } else {
                format!("{source}, then lowered at start (was {loaded})")
            };
            ccd_protocol::types::ConfigValue { key, value, source }
        })
        .collect()
}

async fn serve(
    home: &Home,
    config: Config,
    effective: Vec<ccd_protocol::types::ConfigValue>,
    fault_injection: bool,
    notify: bool,
) -> anyhow::Result<()> {
    let health = HealthRegistry::new(config.supervisor.clone());
    let db = home.db();

    // The writer owns a thread of its own. Opening (and migrating) happens here, so a bad
    // database fails the start with a clear error instead of leaving a failed actor behind.
    let writer_arbiter = Arbiter::new();
    let writer = WriterActor::new(health.register("writer"), db.clone(), config.writer.clone())
        .with_context(|| format!("opening the database {}", db.display()))?;

    let reader = Reader::new(db.clone());
    reader.warm().context("opening a read connection")?;
    // The bus numbers events after the log's last one, and hears about every actor from the
    // start: it is wired before any actor runs.
    let bus = Bus::new();
    let last_seq = ccd_actors::store::open_reader(&db)?
        .map(|c| ccd_actors::store::last_event_seq(&c))
        .transpose()
        .context("reading the event log's last sequence number")?
        .unwrap_or(0);
    bus.start_after(last_seq);
    health.publish_to(supervision_publisher(bus.clone()));
    let writer = Supervisor::start_in_arbiter(&writer_arbiter.handle(), move |_| writer);
    let shutdown = CancellationToken::new();
    let info = Arc::new(DaemonInfo {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION"),
        started_at: SystemTime::now(),
        started: Instant::now(),
        fault_injection,
        home: home.root.clone(),
        shutdown: shutdown.clone(),
        subscriber_queue: config.events.subscriber_queue,
        http: Default::default(),
        vfs: Default::default(),
        config: effective,
    });
    let pool = ExecutorPool::new(
        &health,
        config.executor.pool_size,
        config.executor.queue_size,
        Duration::from_millis(config.executor.kill_grace_ms),
    );
    let pool = Supervisor::start(move |_| pool);
    // Queries without a project or cwd run in the user's home directory.
    let default_cwd = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| home.root.clone());
    // Limiter and breaker keep their accounting in cores that outlive any restart of theirs.
    let limiter_core = LimiterCore::new();
    let limits: SharedLimits = Arc::new(Mutex::new(config.limiter.clone()));
    let limiter = LimiterActor::new(
        health.register("limiter"),
        limiter_core.clone(),
        limits.clone(),
    );
    let limiter = Supervisor::start(move |_| limiter);
    let breaker = BreakerActor::new(
        health.register("breaker"),
        BreakerCore::new(),
        config.breaker,
        bus.clone(),
    );
    let breaker = Supervisor::start(move |_| breaker);
    let resilience = Resilience {
        limiter,
        limiter_core,
        breaker,
        retry: config.retry.clone(),
    };
    // The agent command is resolved once, with the daemon's own PATH (probe_agent, below, and
    // again only if that file disappears): never through a caller's or a project's PATH.
    let agent: SharedProbe = Arc::new(Mutex::new(AgentProbe {
        command: config.executor.command.clone(),
        path: None,
        version: None,
    }));
    let query = QueryService::new(
        writer.clone(),
        reader.clone(),
        pool,
        resilience,
        bus.clone(),
        AgentSetup {
            cfg: config.executor.clone(),
            probe: agent.clone(),
            default_cwd,
        },
    );
    let eventbus = EventBusActor::new(
        health.register("eventbus"),
        bus.clone(),
        writer.clone(),
        config.events.clone(),
    );
    let eventbus = Supervisor::start(move |_| eventbus);
    let http_info = info.clone();
    let reader_for_http = reader.clone();
    let key = ccd_actors::seal::MasterKey::load_or_create(&home.root)
        .context("loading the master key")?;
    let agents = AgentService::new(writer.clone(), reader.clone(), Arc::new(key));
    // The agent filesystem: its view is rebuilt by the VfsActor, served by fuser's thread.
    let snapshot: vfs::SharedSnapshot = Arc::default();
    let boot_key = Arc::new(ccd_actors::seal::MasterKey::generate());
    // The first view is complete before anything can read the mount.
    let first = vfs::build(&agents, &boot_key).await;
    if let Ok(mut s) = snapshot.write() {
        *s = first;
    }
    let vfs_actor = vfs::VfsActor::new(
        health.register("vfs"),
        snapshot.clone(),
        agents.clone(),
        boot_key,
        agents.changes(),
    );
    let vfs_actor = Supervisor::start(move |_| vfs_actor);
    let mountpoint = if config.vfs.mountpoint.is_empty() {
        home.root.join("vfs")
    } else {
        PathBuf::from(&config.vfs.mountpoint)
    };
    let vfs_info = info.clone();
    let gateway = GatewayActor::new(
        health.register("gateway"),
        writer.clone(),
        reader,
        query.clone(),
        agent.clone(),
        info,
        agents,
    );
    let gateway = gateway.with_eventbus(eventbus.clone());
    let gateway = gateway.with_vfs(vfs_actor.clone());
    let gateway = Supervisor::start(move |_| gateway);
    let mut vfs_status = ccd_protocol::types::VfsStatus {
        enabled: config.vfs.enabled,
        mounted: false,
        mountpoint: mountpoint.display().to_string(),
        reason: (!config.vfs.enabled).then(|| "disabled (vfs.enabled = false)".to_string()),
        damaged: Vec::new(),
    };
    // Held until the daemon stops: dropping it unmounts.
    let vfs_session = if config.vfs.enabled {
        match vfs::mount(&mountpoint, snapshot.clone()) {
            Ok(session) => {
                vfs_status.mounted = true;
                tracing::info!(mountpoint = %mountpoint.display(), "agent filesystem mounted");
                bus.publish(EventKind::VfsMounted {
                    mountpoint: vfs_status.mountpoint.clone(),
                });
                Some(session)
            }
            Err(e) => {
                tracing::warn!("agent filesystem not mounted: {e:#}");
                vfs_status.reason = Some(format!("{e:#}"));
                None
            }
        }
    } else {
        None
    };
    let _ = vfs_info.vfs.set(vfs_status);
    let metrics = Metrics::new();
    metrics.clone().follow(&bus);
    let warnings = start_http(
        home,
        &config.http,
        &http_info,
        gateway.clone(),
        reader_for_http,
        bus.clone(),
        metrics.clone(),
    );

    let listener = bind(home)?;
    spawn_signal_handlers(shutdown.clone())?;
    if notify {
        // What the user starting it should hear about: `daemon start` prints these on stderr.
        for warning in &warnings {
            report(&format!("{WARN} {warning}"));
        }
        report(&format!("{READY} {}", std::process::id()));
    }
    tracing::info!(socket = %home.socket().display(), "listening");
    bus.publish(EventKind::DaemonStarted {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
    });
    // After ready: nothing here may delay the first answered request.
    actix_rt::spawn(probe_agent(agent));
    actix_rt::spawn(expire_sessions(writer.clone(), config.session.clone()));

    let drain = Duration::from_millis(config.daemon.shutdown_timeout_ms);
    ccd_actors::server::serve(
        listener,
        gateway,
        config.ipc.clone(),
        shutdown,
        ccd_actors::server::Drain {
            timeout: drain,
            cancel: Box::new({
                let query = query.clone();
                move || query.cancel_all()
            }),
            // A cancelled agent gets its kill grace to exit, then its turn is recorded.
            cancel_grace: Duration::from_millis(config.executor.kill_grace_ms)
                + Duration::from_secs(2),
        },
        Some(metrics),
    )
    .await;

    if let Some(session) = vfs_session {
        vfs::unmount(&mountpoint, session);
        bus.publish(EventKind::VfsUnmounted {
            mountpoint: mountpoint.display().to_string(),
        });
        tracing::info!("agent filesystem unmounted");
    }
    query.refusals_recorded(drain).await;
    bus.publish(EventKind::DaemonStopping {
        pid: std::process::id(),
    });
    match tokio::time::timeout(drain, eventbus.send(Call(FlushEvents))).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!("writing the last events: {e}"),
        Ok(Err(e)) => tracing::error!("writing the last events: {e}"),
        Err(_) => tracing::error!("writing the last events took longer than {drain:?}"),
    }
    tracing::info!("flushing the writer");
    match tokio::time::timeout(drain, writer.send(Call(Drain))).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!("flushing the writer: {e}"),
        Ok(Err(e)) => tracing::error!("flushing the writer: {e}"),
        Err(_) => tracing::error!("flushing the writer took longer than {drain:?}"),
    }
    writer_arbiter.stop();
    let _ = writer_arbiter.join();
    Ok(())
}

/// Start the HTTP API if it is enabled, and publish its state: in `system.health`, and its URL
/// in `$CCD_HOME/http.url` (removed at stop). The API is an extra: a bind that fails leaves it
/// off, with the reason, and the daemon runs; what is returned are warnings for the user.
fn start_http(
    home: &Home,
    cfg: &http::HttpConfig,
    info: &DaemonInfo,
    gateway: Addr<GatewayActor>,
    reader: Reader,
    bus: Bus,
    metrics: Arc<Metrics>,
) -> Vec<String> {
    let url_file = home.http_url_file();
    // We hold the pid lock: a file left here is a dead daemon's.
    let _ = std::fs::remove_file(&url_file);
    let mut status = ccd_protocol::types::HttpStatus {
        enabled: cfg.enabled,
        bind: cfg.bind.clone(),
        url: None,
        reason: None,
    };
    let mut warnings = Vec::new();
    if !cfg.enabled {
        status.reason = Some("disabled (http.enabled = false)".into());
    } else {
        match http::start(cfg, gateway, reader, bus, metrics) {
            Ok(addr) => {
                let url = format!("http://{addr}");
                tracing::info!("HTTP API on {url}");
                if let Err(e) = std::fs::write(&url_file, format!("{url}\n")) {
                    tracing::warn!("writing {}: {e}", url_file.display());
                }
                status.url = Some(url);
            }
            Err(e) => {
                let in_use = e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
                });
                let reason = if in_use {
                    format!(
                        "{} is in use by another process (another ccd daemon, or a dev \
                         server); set http.bind to a free port, or to 127.0.0.1:0 for any free \
                         one",
                        cfg.bind
                    )
                } else {
                    format!("{e:#}")
                };
                tracing::warn!("the HTTP API is off: {reason}");
                warnings.push(format!("the HTTP API is off: {reason}"));
                status.reason = Some(reason);
            }
        }
    }
    let _ = info.http.set(status);
    warnings
}

/// The session TTL sweep: open sessions unused for `ttl_s` expire.
async fn expire_sessions(writer: Addr<WriterActor>, cfg: SessionConfig) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.sweep_interval_s));
    loop {
        tick.tick().await;
        let cutoff = ccd_actors::store::now_ms()
            .saturating_sub((cfg.ttl_s.min(i64::MAX as u64 / 1000) * 1000) as i64);
        match writer
            .send(Call(DbWrite(ExpireSessions {
                idle_before_ms: cutoff,
            })))
            .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("expired {} idle", crate::cli::count(n, "session")),
            Ok(Err(e)) => tracing::warn!("expiring idle sessions: {e}"),
            Err(e) => tracing::warn!("expiring idle sessions: {e}"),
        }
    }
}

fn bind(home: &Home) -> anyhow::Result<interprocess::local_socket::tokio::Listener> {
    let path = home.socket();
    // We hold the pid lock, so a socket file left here belongs to a dead daemon.
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::warn!("removed a stale socket left by a previous daemon"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()));
        }
    }
    let name = path
        .as_path()
        .to_fs_name::<GenericFilePath>()
        .context("socket path")?;
    let listener = ListenerOptions::new()
        .name(name)
        .reclaim_name(true)
        .create_tokio()
        .with_context(|| format!("listening on {}", path.display()))?;
    // The home is 0700 already; the socket itself is 0600 as well.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting {} to mode 0600", path.display()))?;
    Ok(listener)
}

fn spawn_signal_handlers(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // The daemon has no terminal to lose: a SIGHUP (a terminal it opened by mistake hanging up,
    // or a stray `kill -HUP`) is logged and otherwise ignored instead of killing it uncleanly.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    actix_rt::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
                _ = hup.recv() => {
                    tracing::warn!("SIGHUP ignored (stop the daemon with SIGTERM or `ccd daemon stop`)");
                    continue;
                }
            }
            break;
        }
        shutdown.cancel();
    });
    Ok(())
}

/// Who starts the daemon: `ccd daemon start|restart`, or a command that needs it
/// (auto-start), which does not hand it `CCD_AGENT_CMD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Explicit,
    Auto,
}

/// How `daemon start` hands its `--set` values to the `daemon run` it spawns: a JSON array of
/// `[key, value]` pairs.
pub const OVERRIDES_ENV: &str = "CCD_SET";

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
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2), which
    // is async-signal-safe and touches no memory of the parent. It detaches the daemon from the
    // terminal's session so that closing the terminal or Ctrl-C there does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
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
    // SAFETY: kill(2) takes plain integers and shares no memory with us; the pid is positive
    // (never a process group) and read from the pid file whose lock a live daemon holds.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
        bail!(
            "signalling daemon pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(pid)
}

/// Print the last `n` lines of the log, then with `follow` keep printing what is appended
/// (across rotations) until interrupted.
pub fn logs(home: &Home, n: usize, follow: bool) -> anyhow::Result<()> {
    let path = home.log_file();
    if !path.exists() && !follow {
        bail!("no log yet at {}", path.display());
    }
    let mut out = std::io::stdout().lock();
    // Following starts exactly where the tail ended, so nothing appended in between is lost.
    let (lines, mut pos) = tail(&path, n, follow).unwrap_or_default();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut buf = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut file) = std::fs::File::open(&path) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < pos {
            pos = 0; // rotated: the file is new
        }
        if len == pos {
            continue;
        }
        file.seek(SeekFrom::Start(pos))?;
        buf.clear();
        file.read_to_end(&mut buf)?;
        pos += buf.len() as u64;
        out.write_all(&buf)?;
        out.flush()?;
    }
}

/// The last `n` lines of a file (reads at most the last 4 MiB). Never fails on what the file
/// holds: bytes that are not UTF-8 (a line cut off mid-character when the disk filled, or
/// garbage) are shown as U+FFFD, a line without its end is shown as it is, and when the read
/// starts inside the file its first, partial line is dropped.
pub fn tail_lines(path: &std::path::Path, n: usize) -> anyhow::Result<Vec<String>> {
    tail(path, n, false).map(|(lines, _)| lines)
}

/// [`tail_lines`], and the offset where following should go on. With `whole_lines`, a last
/// line still being written is left for the follower (which prints it once, as it grows).
fn tail(path: &std::path::Path, n: usize, whole_lines: bool) -> anyhow::Result<(Vec<String>, u64)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(4 * 1024 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    BufReader::new(file).read_to_end(&mut bytes).ok();
    if whole_lines {
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(keep);
    }
    let end = start + bytes.len() as u64;
    Ok((last_lines(&bytes, n, start > 0), end))
}

/// The last `n` lines of `bytes`, read lossily; `mid_file`: `bytes` may begin inside a line,
/// which is then left out.
fn last_lines(bytes: &[u8], n: usize, mid_file: bool) -> Vec<String> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        lines.pop();
    }
    if mid_file && !lines.is_empty() {
        lines.remove(0);
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| String::from_utf8_lossy(l.strip_suffix(b"\r").unwrap_or(l)).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn a_cut_or_garbled_line_is_shown_not_fatal() {
        let log = b"one\ntwo cut \xe2\x82 off\xff\xfethree\nfour\n";
        assert_eq!(
            last_lines(log, 10, false),
            ["one", "two cut \u{fffd} off\u{fffd}\u{fffd}three", "four"]
        );
        assert_eq!(last_lines(log, 1, false), ["four"]);
        // No newline at the end: the last line as it is.
        assert_eq!(last_lines(b"a\nb", 5, false), ["a", "b"]);
        // Read from inside the file: its first, partial line is dropped.
        assert_eq!(last_lines(b"tail of a line\nb\n", 5, true), ["b"]);
        assert!(last_lines(b"", 5, false).is_empty());
    }
}
