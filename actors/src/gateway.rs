//! The GatewayActor: turns a JSON-RPC method call into typed actor messages.
//!
//! The socket side ([`crate::server`]) frames and parses lines and sends each request here as a
//! [`Route`]. The gateway looks the method up among the typed markers of
//! [`ccd_protocol::methods`], validates the params against the method's type (-32602 naming the
//! parameter), and either answers itself (`system.*`) or forwards a typed message to the actor
//! that owns the work: writes go to the WriterActor, reads straight to SQLite via [`Reader`].
//! Anything unregistered is -32601.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self, ActorState};
use ccd_protocol::{ErrorCode, Method, RpcError, parse_params};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::blocking::{off_loop, try_off_loop};
use crate::conn::ConnCtx;
use crate::error::ActorError;
use crate::executor::{Member, PoolStatus, SharedProbe};
use crate::query::QueryService;
use crate::reader::Reader;
use crate::resilience::{
    BreakerStatuses, Configure, LimiterConfig, LimiterStatus as LimiterStatusMsg, Reset, Scope,
};
use crate::store::{self, WriteOp};
use crate::supervise::{
    Call, Crash, Handle, HealthRegistry, Pending, Reply, Request, Supervise, Supervision, ask,
    mailbox_closed, supervised,
};
use crate::validate;
use crate::writer::{Write, WriterActor};

/// Facts about the running daemon that the gateway reports and acts on.
pub struct DaemonInfo {
    pub pid: u32,
    pub version: &'static str,
    pub started_at: SystemTime,
    pub started: Instant,
    pub fault_injection: bool,
    pub home: PathBuf,
    /// Cancelled to begin a graceful stop.
    pub shutdown: CancellationToken,
    /// Queue length of each event subscriber (`events.subscriber_queue`).
    pub subscriber_queue: usize,
    /// The HTTP API's state, once its bind was tried (or it is disabled).
    pub http: std::sync::OnceLock<types::HttpStatus>,
    /// The agent filesystem's state, once the mount was tried.
    pub vfs: std::sync::OnceLock<types::VfsStatus>,
    /// The configuration it runs with, every value with its source (`system.config`).
    pub config: Vec<types::ConfigValue>,
}

/// One JSON-RPC call to route.
pub struct Route {
    pub method: String,
    pub params: Option<Value>,
    pub conn: ConnCtx,
}

impl Request for Route {
    type Output = Routed;
}

/// The gateway's answer to a [`Route`]: ready, or still to come from the actor that owns the
/// work. The caller awaits a pending answer itself, so that no task is spawned per request.
pub enum Routed {
    Ready(Answer),
    Pending(Pending<Answer>),
}

/// A method's result, serialized once, as the JSON text that goes into the reply.
pub type Answer = Box<RawValue>;

/// Send one call through the gateway and wait for its answer, as a client's request.
///
/// The call is queued at once. Made of combinators, which hold each step's state only while it
/// runs: this future is part of every request's.
pub fn route(
    gateway: &Addr<GatewayActor>,
    route: Route,
) -> impl Future<Output = Result<Answer, ActorError>> + use<> {
    use futures_util::FutureExt as _;
    use futures_util::future::{Either, ready};
    gateway.send(Call(route)).then(|sent| match sent {
        Ok(Ok(Routed::Ready(v))) => Either::Left(ready(Ok(v))),
        Ok(Ok(Routed::Pending(fut))) => Either::Right(
            std::panic::AssertUnwindSafe(fut)
                .catch_unwind()
                .map(|answer| {
                    answer.unwrap_or_else(|payload| {
                        let message = crate::supervise::panic_message(payload.as_ref());
                        tracing::error!("answering a request panicked: {message}");
                        Err(ActorError::Internal(format!(
                            "answering this request panicked: {message}"
                        )))
                    })
                }),
        ),
        Ok(Err(e)) => Either::Left(ready(Err(e))),
        Err(_) => Either::Left(ready(Err(mailbox_closed("gateway")))),
    })
}

pub struct GatewayActor {
    sup: Supervision,
    writer: Addr<WriterActor>,
    reader: Reader,
    query: QueryService,
    agent: SharedProbe,
    info: Arc<DaemonInfo>,
    health: Arc<HealthRegistry>,
    /// The answers of `system.describe` and `rpc.discover`, serialized once.
    describe: Result<Answer, ActorError>,
    discover: Result<Answer, ActorError>,
    config: Result<Answer, ActorError>,
    /// For `debug.crash eventbus`; set once the bus actor runs.
    eventbus: Option<Addr<crate::eventbus::EventBusActor>>,
    agents: crate::agents::AgentService,
    vfs_actor: Option<Addr<crate::vfs::VfsActor>>,
}

supervised!(GatewayActor);

impl GatewayActor {
    pub fn new(
        sup: Supervision,
        writer: Addr<WriterActor>,
        reader: Reader,
        query: QueryService,
        agent: SharedProbe,
        info: Arc<DaemonInfo>,
        agents: crate::agents::AgentService,
    ) -> Self {
        // Built once at start: describe, discover and the configuration are the same for the
        // daemon's whole life.
        let methods = ccd_protocol::registry(info.fault_injection);
        // Typed as the methods' results, so that the answers keep their declared schemas.
        let describe = to_answer::<<m::SystemDescribe as Method>::Result>(types::Describe {
            methods: methods.clone(),
            error_codes: m::error_codes(),
        });
        let discover = to_answer::<<m::RpcDiscover as Method>::Result>(
            ccd_protocol::openrpc_document(&methods, info.version),
        );
        let config = to_answer::<<m::SystemConfig as Method>::Result>(types::ConfigReport {
            values: info.config.clone(),
        });
        let health = sup.registry().clone();
        GatewayActor {
            sup,
            writer,
            reader,
            query,
            agent,
            info,
            health,
            describe,
            discover,
            config,
            eventbus: None,
            agents,
            vfs_actor: None,
        }
    }

    /// Serve `vfs.unseal` (and `debug.crash vfs`) through the VfsActor.
    pub fn with_vfs(mut self, addr: Addr<crate::vfs::VfsActor>) -> Self {
        self.vfs_actor = Some(addr);
        self
    }

    /// Let `debug.crash` reach the event bus actor.
    pub fn with_eventbus(mut self, addr: Addr<crate::eventbus::EventBusActor>) -> Self {
        self.eventbus = Some(addr);
        self
    }

    fn write<O: WriteOp>(
        &self,
        op: O,
    ) -> impl Future<Output = Result<O::Output, ActorError>> + 'static {
        let writer = self.writer.clone();
        async move { ask(&writer, "writer", Write(op)).await }
    }

    /// The agent filesystem's state, with the definitions it leaves out for being damaged.
    fn vfs_status(&self) -> types::VfsStatus {
        let mut st = self.info.vfs.get().cloned().unwrap_or_default();
        st.damaged = self.agents.damaged();
        st
    }

    fn health(&self) -> impl Future<Output = Result<types::Health, ActorError>> + 'static {
        let actors = self.health.snapshot();
        let vfs = self.vfs_status();
        let agent = self.agent.lock().map(|p| p.clone()).unwrap_or_default();
        let info = self.info.clone();
        let pool = self.query.pool().clone();
        async move {
            let executor = match ask(&pool, "executor", PoolStatus).await {
                Ok(p) => types::ExecutorHealth {
                    size: p.size,
                    busy: p.busy,
                    queued: p.queued,
                },
                _ => types::ExecutorHealth {
                    size: 0,
                    busy: 0,
                    queued: 0,
                },
            };
            let agent = types::AgentHealth {
                command: agent.command,
                path: agent.path.map(|p| p.to_string_lossy().into_owned()),
                available: agent.version.as_ref().map(|v| v.is_ok()),
                version: agent
                    .version
                    .as_ref()
                    .and_then(|v| v.as_ref().ok().cloned()),
                reason: agent
                    .version
                    .as_ref()
                    .and_then(|v| v.as_ref().err().cloned()),
            };
            let ok = actors.iter().all(|a| a.state == ActorState::Running)
                && agent.available != Some(false);
            Ok(types::Health {
                status: if ok { "ok" } else { "degraded" }.into(),
                pid: info.pid,
                version: info.version.into(),
                started_at: store::rfc3339(
                    info.started_at
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0),
                ),
                uptime_ms: info.started.elapsed().as_millis() as u64,
                fault_injection: info.fault_injection,
                actors,
                agent,
                executor,
                http: info.http.get().and_then(|h| h.url.clone()),
                http_api: info.http.get().cloned().unwrap_or_default(),
                vfs,
            })
        }
    }

    /// `system.*` and `rpc.discover`.
    fn system(&mut self, method: &str, p: Option<Value>) -> Option<Reply<Answer>> {
        Some(match method {
            m::SystemPing::NAME => now::<m::SystemPing>(p, |_| Ok("pong".to_string())),
            m::SystemVersion::NAME => now::<m::SystemVersion>(p, |_| {
                Ok(types::VersionInfo {
                    version: self.info.version.into(),
                    protocol_version: ccd_protocol::PROTOCOL_VERSION,
                    schema_version: store::SCHEMA_VERSION,
                })
            }),
            m::SystemHealth::NAME => {
                let fut = self.health();
                later::<m::SystemHealth, _>(p, move |_| fut)
            }
            m::SystemDescribe::NAME => cached::<m::SystemDescribe>(p, &self.describe),
            m::RpcDiscover::NAME => cached::<m::RpcDiscover>(p, &self.discover),
            m::SystemConfig::NAME => cached::<m::SystemConfig>(p, &self.config),
            m::SystemDescribeModels::NAME => {
                let reader = self.reader.clone();
                later::<m::SystemDescribeModels, _>(p, move |_| async move {
                    reader
                        .read("describing the database", store::describe_models)
                        .await
                })
            }
            m::SystemShutdown::NAME => now::<m::SystemShutdown>(p, |_| {
                tracing::info!("shutdown requested over IPC");
                self.info.shutdown.cancel();
                Ok(types::ShutdownResult { stopping: true })
            }),
            _ => return None,
        })
    }

    /// `debug.*` (only with fault injection).
    fn debug(&mut self, method: &str, p: Option<Value>) -> Option<Reply<Answer>> {
        if method != m::DebugCrash::NAME || !self.info.fault_injection {
            return None;
        }
        Some(match parse_params::<m::DebugCrash>(p) {
            Ok(params) => self.crash(&params.actor),
            Err(e) => Reply::err(e),
        })
    }

    fn crash(&mut self, actor: &str) -> Reply<Answer> {
        async fn crash<A>(addr: Addr<A>, name: String) -> Result<Answer, ActorError>
        where
            A: Handle<Crash> + actix::Handler<Call<Crash>>,
            A::Context: actix::dev::ToEnvelope<A, Call<Crash>>,
        {
            ask(&addr, name, Crash).await?;
            to_answer(())
        }
        match actor {
            "gateway" => panic!("debug.crash: injected panic in gateway"),
            "writer" => Reply::later(crash(self.writer.clone(), actor.into())),
            "executor" => Reply::later(crash(self.query.pool().clone(), actor.into())),
            "limiter" => Reply::later(crash(self.query.limiter().clone(), actor.into())),
            "breaker" => Reply::later(crash(self.query.breaker().clone(), actor.into())),
            "vfs" => match &self.vfs_actor {
                Some(addr) => Reply::later(crash(addr.clone(), actor.into())),
                None => Reply::err(unknown_actor(actor)),
            },
            "eventbus" => match &self.eventbus {
                Some(addr) => Reply::later(crash(addr.clone(), actor.into())),
                None => Reply::err(unknown_actor(actor)),
            },
            other => {
                let member = other
                    .strip_prefix("executor-")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n >= 1);
                match member {
                    Some(n) => {
                        let pool = self.query.pool().clone();
                        let name = other.to_string();
                        Reply::later(async move {
                            let addr = ask(&pool, "executor", Member(n - 1)).await.ok().flatten();
                            let addr = addr.ok_or_else(|| unknown_actor(&name))?;
                            crash(addr, name).await
                        })
                    }
                    None => Reply::err(unknown_actor(other)),
                }
            }
        }
    }

    fn project(&mut self, method: &str, p: Option<Value>) -> Option<Reply<Answer>> {
        Some(match method {
            m::ProjectCreate::NAME => self.write_method_checked::<m::ProjectCreate, _>(p, |params| {
                validate::project_name("name", &params.name)?;
                let path = validate::dir("path", &params.path)?;
                let env = params.env.unwrap_or_default();
                validate::env("env", &env)?;
                Ok(store::CreateProject { name: params.name, path, env })
            }),
            m::ProjectUpdate::NAME => self.write_method_checked::<m::ProjectUpdate, _>(p, |params| {
                if params.path.is_none() && params.new_name.is_none() && params.env.is_none() {
                    return Err(RpcError::invalid_params(
                        "invalid params for project.update: give at least one of `path`, `new_name`, `env`",
                    ));
                }
                if let Some(n) = &params.new_name {
                    validate::project_name("new_name", n)?;
                }
                if let Some(env) = &params.env {
                    validate::env("env", env)?;
                }
                let path = params.path.as_deref().map(|p| validate::dir("path", p)).transpose()?;
                Ok(store::UpdateProject { name: params.name, path, new_name: params.new_name, env: params.env })
            }),
            m::ProjectDelete::NAME => self.write_method::<m::ProjectDelete, _>(p, |params| {
                Ok(store::DeleteProject { name: params.name })
            }),
            m::ProjectGetAll::NAME => {
                let reader = self.reader.clone();
                later::<m::ProjectGetAll, _>(p, move |_| async move {
                    let projects = reader.read("listing projects", store::projects).await?;
                    Ok(types::ProjectList { projects })
                })
            }
            _ => return None,
        })
    }

    fn setting(&mut self, method: &str, p: Option<Value>) -> Option<Reply<Answer>> {
        Some(match method {
            m::SettingUpsert::NAME => self.write_method::<m::SettingUpsert, _>(p, |params| {
                validate::setting(&params.key, Some(&params.value))?;
                Ok(store::UpsertSetting {
                    key: params.key,
                    value: params.value,
                })
            }),
            m::SettingGet::NAME => {
                let reader = self.reader.clone();
                later::<m::SettingGet, _>(p, move |p| async move {
                    let key = p.key.clone();
                    reader
                        .read("reading a setting", move |c| store::setting(c, &p.key))
                        .await?
                        .ok_or_else(|| ActorError::NotFound(format!("no setting `{key}`")))
                })
            }
            m::SettingDelete::NAME => self.write_method::<m::SettingDelete, _>(p, |params| {
                Ok(store::DeleteSetting { key: params.key })
            }),
            m::SettingList::NAME => {
                let reader = self.reader.clone();
                later::<m::SettingList, _>(p, move |_| async move {
                    let settings = reader.read("listing settings", store::settings).await?;
                    Ok(types::SettingList { settings })
                })
            }
            _ => return None,
        })
    }

    fn backup(&mut self, method: &str, p: Option<Value>) -> Option<Reply<Answer>> {
        Some(match method {
            m::BackupCreate::NAME => match parse_params::<m::BackupCreate>(p) {
                Ok(params) => {
                    let home = self.info.home.clone();
                    let db = store::db_path(&self.info.home);
                    let record = self.writer.clone();
                    Reply::later(async move {
                        // Checking the destination touches the file system, and the copy is
                        // long: both on the blocking pool.
                        let (dest, size) = try_off_loop("backup task", move || {
                            let named = params.path.is_some();
                            let first = backup_destination(&home, params.path.as_deref())?;
                            let mut dest = first.clone();
                            let failed = |dest: &Path, e: anyhow::Error| {
                                ActorError::Internal(format!(
                                    "creating backup {}: {e:#}",
                                    dest.display()
                                ))
                            };
                            let dir = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
                            let mut snapshot =
                                store::snapshot_in(&db, &dir).map_err(|e| failed(&dest, e))?;
                            // A name of our own choosing that another backup took meanwhile
                            // gets a number; a name the caller chose is never replaced.
                            for n in 1.. {
                                match store::place_snapshot(snapshot, &dest)
                                    .map_err(|e| failed(&dest, e))?
                                {
                                    Ok(size) => return Ok((dest, size)),
                                    Err(back) if !named && n <= 1000 => {
                                        snapshot = back;
                                        dest = default_backup_name(&first, n);
                                    }
                                    Err(_) => break,
                                }
                            }
                            Err(ActorError::Conflict(format!(
                                "{} already exists",
                                dest.display()
                            )))
                        })
                        .await?;
                        let op = store::RecordBackup {
                            path: dest.to_string_lossy().into_owned(),
                            size_bytes: size,
                        };
                        let backup = ask(&record, "writer", Write(op)).await?;
                        to_answer(backup)
                    })
                }
                Err(e) => Reply::err(e),
            },
            m::BackupList::NAME => {
                let reader = self.reader.clone();
                later::<m::BackupList, _>(p, move |_| async move {
                    let backups = reader.read("listing backups", store::backups).await?;
                    Ok(types::BackupList { backups })
                })
            }
            m::BackupDelete::NAME => match parse_params::<m::BackupDelete>(p) {
                Ok(params) => {
                    let fut = self.write(store::DeleteBackup { id: params.id });
                    Reply::later(async move {
                        let backup = fut.await?;
                        let path = backup.path.clone();
                        let removed =
                            off_loop("removing a backup file", move || std::fs::remove_file(path))
                                .await;
                        match removed {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Ok(Err(e)) => {
                                tracing::warn!("removing backup file {}: {e}", backup.path)
                            }
                            Err(e) => tracing::warn!("removing backup file {}: {e}", backup.path),
                        }
                        to_answer(backup)
                    })
                }
                Err(e) => Reply::err(e),
            },
            _ => return None,
        })
    }

    /// `query.*` and `session.*`.
    fn query(&mut self, method: &str, p: Option<Value>, conn: ConnCtx) -> Option<Reply<Answer>> {
        let q = self.query.clone();
        Some(match method {
            m::QueryRun::NAME => later::<m::QueryRun, _>(p, move |p| q.run(p, conn)),
            m::QueryCancel::NAME => now::<m::QueryCancel>(p, |p| q.cancel(&p.query_id)),
            m::QueryList::NAME => now::<m::QueryList>(p, |_| Ok(q.list())),
            m::SessionDelete::NAME => {
                later::<m::SessionDelete, _>(p, move |p| q.delete_session(p.id))
            }
            m::SessionCreate::NAME => later::<m::SessionCreate, _>(p, move |p| q.create_session(p)),
            m::SessionGet::NAME => later::<m::SessionGet, _>(p, move |p| q.get_session(p.id)),
            m::SessionList::NAME => later::<m::SessionList, _>(p, move |p| q.list_sessions(p)),
            m::SessionClose::NAME => later::<m::SessionClose, _>(p, move |p| q.close_session(p.id)),
            m::SessionCleanup::NAME => {
                later::<m::SessionCleanup, _>(p, move |p| q.cleanup_sessions(p.older_than_s))
            }
            _ => return None,
        })
    }

    /// `vfs.*`.
    fn vfs(&mut self, method: &str, p: Option<Value>) -> Option<Reply<Answer>> {
        Some(match method {
            m::VfsStatus::NAME => now::<m::VfsStatus>(p, |_| Ok(self.vfs_status())),
            m::VfsUnseal::NAME => match (parse_params::<m::VfsUnseal>(p), self.vfs_actor.clone()) {
                (Ok(params), _) if !std::path::Path::new(&params.file).is_absolute() => {
                    Reply::err(ActorError::from(RpcError::invalid_params(format!(
                        "invalid params for vfs.unseal: `file`: must be absolute, got `{}`",
                        params.file
                    ))))
                }
                (Ok(params), Some(vfs)) => Reply::later(async move {
                    let unsealed = ask(
                        &vfs,
                        "vfs",
                        crate::vfs::Unseal {
                            path: params.file.into(),
                        },
                    )
                    .await?;
                    to_answer(unsealed)
                }),
                (Ok(_), None) => Reply::err(ActorError::Unavailable {
                    actor: "vfs".into(),
                    state: ActorState::Failed,
                    reason: "the agent filesystem is not running".into(),
                }),
                (Err(e), _) => Reply::err(e),
            },
            _ => return None,
        })
    }

    /// `agent.*`, `orchestrator.*`, `hooks.*`.
    fn agents(&mut self, method: &str, p: Option<Value>) -> Option<Reply<Answer>> {
        use crate::agents::{HOOKS_FILE, RULES_FILE};
        let a = self.agents.clone();
        Some(match method {
            m::AgentImport::NAME => later::<m::AgentImport, _>(p, move |p| a.import(p.path)),
            m::AgentList::NAME => later::<m::AgentList, _>(p, move |_| async move {
                let agents = a
                    .all()
                    .await?
                    .into_iter()
                    .map(|d| types::AgentSummary {
                        name: d.name,
                        description: d.description,
                        tools: d.tools,
                        model: d.model,
                    })
                    .collect();
                Ok(types::AgentList {
                    agents,
                    damaged: a.damaged(),
                })
            }),
            m::AgentGet::NAME => later::<m::AgentGet, _>(p, move |p| a.get(p.name)),
            m::AgentDelete::NAME => later::<m::AgentDelete, _>(p, move |p| a.delete(p.name)),
            m::OrchestratorSetRules::NAME => {
                later::<m::OrchestratorSetRules, _>(p, move |p| async move {
                    Ok(types::Rules {
                        rules: a.set_doc(RULES_FILE, p.rules).await?,
                    })
                })
            }
            m::OrchestratorGetRules::NAME => {
                later::<m::OrchestratorGetRules, _>(p, move |_| async move {
                    Ok(types::Rules {
                        rules: a.get_doc(RULES_FILE).await?,
                    })
                })
            }
            m::HooksSet::NAME => later::<m::HooksSet, _>(p, move |p| async move {
                Ok(types::Hooks {
                    hooks: a.set_doc(HOOKS_FILE, p.hooks).await?,
                })
            }),
            m::HooksGet::NAME => later::<m::HooksGet, _>(p, move |_| async move {
                Ok(types::Hooks {
                    hooks: a.get_doc(HOOKS_FILE).await?,
                })
            }),
            _ => return None,
        })
    }

    /// `event.*`.
    /// `stats.get`: the same figures as `ccd stats` and `/api/stats`.
    fn stats(&mut self, method: &str, p: Option<Value>) -> Option<Reply<Answer>> {
        if method != m::StatsGet::NAME {
            return None;
        }
        let params = parse_params::<m::StatsGet>(p).and_then(|p| {
            let since_ms = validate::since("since", p.since.as_deref().unwrap_or("7d"))?;
            Ok((since_ms, p.project))
        });
        let (since_ms, project) = match params {
            Ok(v) => v,
            Err(e) => return Some(Reply::err(e)),
        };
        let reader = self.reader.clone();
        let started = self.info.started;
        Some(Reply::later(async move {
            let stats = reader
                .read("reading stats", move |c| {
                    store::stats(c, since_ms, project.as_deref())
                })
                .await?;
            to_answer(types::StatsReport {
                stats,
                machine: crate::procstat::machine(started),
            })
        }))
    }

    fn events(&mut self, method: &str, p: Option<Value>, conn: ConnCtx) -> Option<Reply<Answer>> {
        let bus = self.query.bus().clone();
        Some(match method {
            m::EventSubscribe::NAME => match parse_params::<m::EventSubscribe>(p).and_then(|f| {
                validate::event_types("types", f.types.as_deref())?;
                Ok(f)
            }) {
                Ok(filter) => {
                    let queue = self.info.subscriber_queue;
                    let overloaded = || {
                        ActorError::Overloaded(format!(
                            "this connection has {MAX_SUBSCRIPTIONS_PER_CONNECTION} event \
                             subscriptions, the most one may have; unsubscribe one first"
                        ))
                    };
                    let Some(after) = filter.after_seq else {
                        let Some(s) = bus.try_subscribe_from(
                            conn.id,
                            filter,
                            queue,
                            MAX_SUBSCRIPTIONS_PER_CONNECTION,
                            u64::MAX,
                        ) else {
                            return Some(Reply::err(overloaded()));
                        };
                        let answer = types::Subscribed {
                            subscription_id: s.sub.id,
                            last_seq: s.last_seq,
                        };
                        conn.subscriptions
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        actix_rt::spawn(deliver(bus, s.sub, conn, Vec::new()));
                        return Some(Reply::Ready(to_answer(answer)));
                    };
                    // Replay, then live.
                    let reader = self.reader.clone();
                    Reply::later(async move {
                        let (s, replay) = bus
                            .subscribe_replaying(
                                &reader,
                                conn.id,
                                filter,
                                queue,
                                MAX_SUBSCRIPTIONS_PER_CONNECTION,
                                crate::eventbus::ReplayFrom {
                                    after_seq: after,
                                    max_events: REPLAY_MAX,
                                },
                            )
                            .await?
                            .ok_or_else(overloaded)?;
                        let answer = types::Subscribed {
                            subscription_id: s.sub.id,
                            last_seq: s.last_seq,
                        };
                        conn.subscriptions
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        actix_rt::spawn(deliver(bus, s.sub, conn, replay));
                        to_answer(answer)
                    })
                }
                Err(e) => Reply::err(e),
            },
            m::EventUnsubscribe::NAME => now::<m::EventUnsubscribe>(p, |p| {
                Ok(types::Unsubscribed {
                    unsubscribed: bus.unsubscribe(conn.id, p.subscription_id),
                })
            }),
            m::EventList::NAME => match parse_params::<m::EventList>(p).and_then(|p| {
                validate::event_types("types", p.types.as_deref())?;
                let since_ms = match &p.since {
                    None => 0,
                    Some(s) => validate::since("since", s)?,
                };
                let limit = validate::page_limit("event.list", p.limit)?;
                Ok((
                    p.after_seq.unwrap_or(0),
                    since_ms,
                    p.types.unwrap_or_default(),
                    limit,
                ))
            }) {
                Ok((after, since, types, limit)) => {
                    let reader = self.reader.clone();
                    Reply::later(async move {
                        let events = reader
                            .read("listing events", move |c| {
                                store::events(c, after, since, &types, limit)
                            })
                            .await?;
                        to_answer(types::EventList { events })
                    })
                }
                Err(e) => Reply::err(e),
            },
            _ => return None,
        })
    }

    /// `limiter.*` and `breaker.*`.
    fn resilience(&mut self, method: &str, p: Option<Value>) -> Option<Reply<Answer>> {
        fn status(limits: LimiterConfig, keys: Vec<types::KeyStatus>) -> types::LimiterStatus {
            let limits = types::ScopeLimits {
                global: limits.spec(Scope::Global),
                model: limits.spec(Scope::Model),
                project: limits.spec(Scope::Project),
            };
            types::LimiterStatus { limits, keys }
        }
        let limiter = self.query.limiter().clone();
        let breaker = self.query.breaker().clone();
        Some(match method {
            m::LimiterStatus::NAME => later::<m::LimiterStatus, _>(p, move |_| async move {
                let (limits, keys) = ask(&limiter, "limiter", LimiterStatusMsg).await?;
                Ok(status(limits, keys))
            }),
            m::LimiterConfigure::NAME => {
                match parse_params::<m::LimiterConfigure>(p).and_then(|c| {
                    // Named as the params name them (`limits.burst`), like type errors.
                    c.limits.validate("limits").map_err(|e| {
                        RpcError::invalid_params(format!(
                            "invalid params for limiter.configure: {e}"
                        ))
                    })?;
                    Ok(c)
                }) {
                    Ok(c) => Reply::later(async move {
                        ask(
                            &limiter,
                            "limiter",
                            Configure {
                                scope: c.scope,
                                spec: c.limits,
                            },
                        )
                        .await?;
                        let (limits, keys) = ask(&limiter, "limiter", LimiterStatusMsg).await?;
                        to_answer(status(limits, keys))
                    }),
                    Err(e) => Reply::err(e),
                }
            }
            m::BreakerStatus::NAME => later::<m::BreakerStatus, _>(p, move |_| async move {
                let breakers = ask(&breaker, "breaker", BreakerStatuses).await?;
                Ok(types::BreakerList { breakers })
            }),
            m::BreakerReset::NAME => later::<m::BreakerReset, _>(p, move |p| async move {
                let n = ask(&breaker, "breaker", Reset { key: p.key }).await?;
                Ok(types::BreakerResetResult { reset: n as u64 })
            }),
            _ => return None,
        })
    }

    /// Method `M` as one write: parse its params, turn them into the write (validating them),
    /// commit it and answer with its output. Bad params change nothing.
    fn write_method<M: Method, O: WriteOp>(
        &self,
        params: Option<Value>,
        op: impl FnOnce(M::Params) -> Result<O, RpcError>,
    ) -> Reply<Answer>
    where
        O::Output: serde::Serialize,
    {
        match parse_params::<M>(params).and_then(op) {
            Ok(op) => {
                let fut = self.write(op);
                Reply::later(async move { to_answer(fut.await?) })
            }
            Err(e) => Reply::err(e),
        }
    }

    /// As [`Self::write_method`], for checks that touch the file system (a path the client
    /// named, which may sit on a slow or hung mount): they run on the blocking pool, not on
    /// the event loop.
    fn write_method_checked<M: Method, O: WriteOp + Send + 'static>(
        &self,
        params: Option<Value>,
        op: impl FnOnce(M::Params) -> Result<O, RpcError> + Send + 'static,
    ) -> Reply<Answer>
    where
        M::Params: Send + 'static,
        O::Output: serde::Serialize,
    {
        match parse_params::<M>(params) {
            Ok(params) => {
                let writer = self.writer.clone();
                Reply::later(async move {
                    let op = off_loop("checking the params", move || op(params)).await??;
                    let out = ask(&writer, "writer", Write(op)).await?;
                    to_answer(out)
                })
            }
            Err(e) => Reply::err(e),
        }
    }
}

impl Supervise for GatewayActor {
    fn supervision(&self) -> &Supervision {
        &self.sup
    }
}

impl Handle<Route> for GatewayActor {
    fn handle(&mut self, call: Route, _: &mut Context<Self>) -> Reply<Routed> {
        let Route {
            method,
            params,
            conn,
        } = call;
        let namespace = method.split('.').next().unwrap_or("");
        let reply = match namespace {
            "system" | "rpc" => self.system(&method, params),
            "debug" => self.debug(&method, params),
            "project" => self.project(&method, params),
            "setting" => self.setting(&method, params),
            "backup" => self.backup(&method, params),
            "query" | "session" => self.query(&method, params, conn),
            "limiter" | "breaker" => self.resilience(&method, params),
            "event" => self.events(&method, params, conn),
            "stats" => self.stats(&method, params),
            "agent" | "orchestrator" | "hooks" => self.agents(&method, params),
            "vfs" => self.vfs(&method, params),
            _ => None,
        };
        let reply = reply.unwrap_or_else(|| {
            Reply::err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("method not found: `{method}`"),
            ))
        });
        match reply {
            Reply::Ready(r) => Reply::Ready(r.map(Routed::Ready)),
            Reply::Later(fut) => Reply::ok(Routed::Pending(fut)),
            Reply::Local(fut) => Reply::local(async move { fut.await.map(Routed::Ready) }),
            Reply::Deferred(slot) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                crate::supervise::attach(&slot, tx);
                Reply::ok(Routed::Pending(Box::pin(async move {
                    rx.await.unwrap_or_else(|_| Err(mailbox_closed("gateway")))
                })))
            }
        }
    }
}

/// Event subscriptions one connection may hold at once (each has its own queue and task).
const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 64;

/// Most logged events one subscription replays (`after_seq`); older ones are reported as a
/// `lagged` event.
pub const REPLAY_MAX: u32 = 100_000;

/// Deliver a subscription's events as `event` notifications until it ends or the client goes.
/// Waiting on a slow client blocks only this task: the bus drops the subscriber's oldest events
/// and reports them as `lagged`.
async fn deliver(
    bus: crate::eventbus::Bus,
    sub: Arc<crate::eventbus::Subscriber>,
    conn: ConnCtx,
    replay: Vec<types::Event>,
) {
    'deliver: {
        for event in &replay {
            if !send_event(&sub, &conn, event).await {
                break 'deliver;
            }
        }
        drop(replay);
        loop {
            let (events, missed) = tokio::select! {
                batch = sub.next_batch() => batch,
                _ = conn.closed.cancelled() => break,
                _ = conn.closing.cancelled() => break,
                _ = sub.ended.cancelled() => break,
            };
            let lagged = (missed > 0).then(|| types::Event {
                seq: events.first().map(|e| e.seq.saturating_sub(1)).unwrap_or(0),
                ts: store::rfc3339(store::now_ms()),
                kind: types::EventKind::Lagged { missed },
            });
            for event in lagged.iter().chain(events.iter()) {
                if !send_event(&sub, &conn, event).await {
                    break 'deliver;
                }
            }
        }
    }
    bus.remove(sub.id);
    conn.subscriptions
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Send one `event` notification; false when the subscription or the connection ended.
async fn send_event(
    sub: &crate::eventbus::Subscriber,
    conn: &ConnCtx,
    event: &types::Event,
) -> bool {
    let note =
        ccd_protocol::Notification::new("event", serde_json::to_value(event).unwrap_or_default());
    tokio::select! {
        r = conn.outbound.send(ccd_protocol::to_line(&note)) => r.is_ok(),
        _ = conn.closed.cancelled() => false,
        _ = conn.closing.cancelled() => false,
        _ = sub.ended.cancelled() => false,
    }
}

fn unknown_actor(name: &str) -> ActorError {
    RpcError::invalid_params(format!(
        "invalid params for debug.crash: `actor`: unknown actor `{name}` (known: gateway, writer, executor, executor-N, limiter, breaker, eventbus, vfs)"
    ))
    .into()
}

fn to_answer<T: serde::Serialize>(v: T) -> Result<Answer, ActorError> {
    serde_json::value::to_raw_value(&v).map_err(|e| ActorError::internal("encoding the result", e))
}

/// A method answered synchronously by the gateway itself.
fn now<M: Method>(
    params: Option<Value>,
    f: impl FnOnce(M::Params) -> Result<M::Result, ActorError>,
) -> Reply<Answer> {
    match parse_params::<M>(params) {
        Ok(p) => Reply::Ready(f(p).and_then(to_answer)),
        Err(e) => Reply::err(e),
    }
}

/// A method whose answer never changes, serialized once.
fn cached<M: Method>(params: Option<Value>, answer: &Result<Answer, ActorError>) -> Reply<Answer> {
    match parse_params::<M>(params) {
        Ok(_) => Reply::Ready(answer.clone()),
        Err(e) => Reply::err(e),
    }
}

/// A method whose answer comes from elsewhere (another actor, a blocking read).
fn later<M: Method, Fut>(params: Option<Value>, f: impl FnOnce(M::Params) -> Fut) -> Reply<Answer>
where
    Fut: Future<Output = Result<M::Result, ActorError>> + Send + 'static,
{
    match parse_params::<M>(params) {
        Ok(p) => {
            let fut = f(p);
            Reply::later(async move { to_answer(fut.await?) })
        }
        Err(e) => Reply::err(e),
    }
}

/// Where `backup.create` writes: the given absolute path, or a new file under
/// `$CCD_HOME/backups/`.
fn backup_destination(home: &Path, path: Option<&str>) -> Result<PathBuf, ActorError> {
    let dest = match path {
        Some(p) => {
            let bad = |why: String| -> ActorError {
                RpcError::invalid_params(format!("invalid params for backup.create: `path`: {why}"))
                    .into()
            };
            if p.contains('\0') {
                return Err(bad("must not contain a NUL byte".into()));
            }
            let p = PathBuf::from(p);
            if !p.is_absolute() {
                return Err(bad(format!("must be absolute, got `{}`", p.display())));
            }
            let Some(name) = p.file_name() else {
                return Err(bad(format!("must name a file, got `{}`", p.display())));
            };
            if name.len() > 255 {
                return Err(bad(format!(
                    "the file name is {} bytes; at most 255",
                    name.len()
                )));
            }
            if p.is_dir() {
                return Err(bad(format!(
                    "{} is a directory; name a new file in it",
                    p.display()
                )));
            }
            match p.parent() {
                Some(parent) if parent.is_dir() => {}
                _ => {
                    return Err(RpcError::invalid_params(format!(
                        "invalid params for backup.create: `path`: the directory of {} does not exist",
                        p.display()
                    ))
                    .into());
                }
            }
            p
        }
        None => {
            let dir = home.join("backups");
            std::fs::create_dir_all(&dir)
                .map_err(|e| ActorError::internal(&format!("creating {}", dir.display()), e))?;
            let stamp: String = store::rfc3339(store::now_ms())
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect();
            // Taken already (two backups in one second): the copy gets a number.
            return Ok(dir.join(format!("ccd-{stamp}.db")));
        }
    };
    // Anything there, even a symlink to nowhere, is not replaced. (Checked again when the
    // copy is put in place, in the same step as that.)
    if dest.symlink_metadata().is_ok() {
        return Err(ActorError::Conflict(format!(
            "{} already exists",
            dest.display()
        )));
    }
    Ok(dest)
}

/// The `n`th alternative to the default backup name `first` (`ccd-<time>.db`):
/// `ccd-<time>-<n>.db`.
fn default_backup_name(first: &Path, n: u32) -> PathBuf {
    let stem = first.file_stem().and_then(|s| s.to_str()).unwrap_or("ccd");
    first.with_file_name(format!("{stem}-{n}.db"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method of the protocol is routed: with bad params it answers -32602, never -32601.
    #[actix_rt::test]
    async fn every_registered_method_is_routed() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, db) = crate::writer::start_for_test(dir.path());
        let health = HealthRegistry::new(Default::default());
        let info = Arc::new(DaemonInfo {
            pid: 1,
            version: "test",
            started_at: SystemTime::now(),
            started: Instant::now(),
            fault_injection: true,
            home: dir.path().to_path_buf(),
            shutdown: CancellationToken::new(),
            subscriber_queue: 16,
            http: Default::default(),
            vfs: Default::default(),
            config: Vec::new(),
        });
        let pool =
            crate::executor::ExecutorPool::new(&health, 1, 1, std::time::Duration::from_secs(1));
        let pool = Supervisor::start(move |_| pool);
        let reader = Reader::new(db);
        let core = crate::resilience::limiter::LimiterCore::new();
        let limits: crate::resilience::SharedLimits = Default::default();
        let limiter = crate::resilience::LimiterActor::new(
            health.register("limiter"),
            core.clone(),
            limits.clone(),
        );
        let breaker_core = crate::resilience::breaker::BreakerCore::new();
        let bus = crate::eventbus::Bus::new();
        let breaker = crate::resilience::BreakerActor::new(
            health.register("breaker"),
            breaker_core,
            Default::default(),
            bus.clone(),
        );
        let resilience = crate::query::Resilience {
            limiter: Supervisor::start(move |_| limiter),
            limiter_core: core,
            breaker: Supervisor::start(move |_| breaker),
            retry: Default::default(),
        };
        let probe = Arc::new(std::sync::Mutex::new(crate::executor::AgentProbe::default()));
        let query = QueryService::new(
            writer.clone(),
            reader.clone(),
            pool,
            resilience,
            bus,
            crate::query::AgentSetup {
                cfg: Default::default(),
                probe: probe.clone(),
                default_cwd: dir.path().into(),
            },
        );
        let agents = crate::agents::AgentService::new(
            writer.clone(),
            reader.clone(),
            Arc::new(crate::seal::MasterKey::generate()),
        );
        let gw = GatewayActor::new(
            health.register("gateway"),
            writer,
            reader,
            query,
            probe,
            info,
            agents,
        );
        let gw = Supervisor::start(move |_| gw);
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let conn = ConnCtx::new(crate::conn::ConnInfo {
            id: 0,
            outbound: crate::outbound::Outbound::new(tx),
            closed: CancellationToken::new(),
            closing: CancellationToken::new(),
            subscriptions: Default::default(),
        });
        for name in m::ALL_METHODS {
            let params = Some(serde_json::json!({ "definitely_not_a_param": 1 }));
            let route = Route {
                method: name.to_string(),
                params,
                conn: conn.clone(),
            };
            let err = super::route(&gw, route).await.expect_err(name);
            assert_eq!(RpcError::from(err).code, -32602, "{name}");
        }
        let route = Route {
            method: "nope.nope".into(),
            params: None,
            conn,
        };
        let err = super::route(&gw, route).await.unwrap_err();
        assert_eq!(RpcError::from(err).code, -32601);
    }
}
