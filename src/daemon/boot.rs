//! `ccd daemon run`: the daemon process itself. `run` takes the pid lock and loads the
//! configuration; `serve` wires the actors together at boot (the best place to see the whole
//! daemon on one screen), binds the socket, starts the HTTP API and waits for the stop.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
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
use ccd_actors::writer::{Commit, Drain, WriterActor};
use ccd_actors::{Call, Config};
use ccd_protocol::types::EventKind;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use tokio_util::sync::CancellationToken;

use super::handshake::{ALREADY, ERROR, READY, WARN};
use crate::home::{Home, Lock, PidLock};

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
    // Everything the daemon creates (database, logs, backups) is owner-only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
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
    // The agent definitions: served to the gateway, and offered to every run as subagents.
    let key = ccd_actors::seal::MasterKey::load_or_create(&home.root)
        .context("loading the master key")?;
    let agents = AgentService::new(writer.clone(), reader.clone(), Arc::new(key))
        .with_expose(config.agents.expose.clone());
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
            definitions: agents.clone(),
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
        match vfs::mount(&mountpoint, &home.root.join("vfs.lock"), snapshot.clone()) {
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
        ccd_actors::server::GracefulStop {
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
            .send(Call(Commit(ExpireSessions {
                idle_before_ms: cutoff,
            })))
            .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("expired {} idle", crate::table::count(n, "session")),
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
