//! `system.*` and `rpc.discover`: answered by the gateway itself, from what it knows of the
//! daemon (health asks the executor pool for its figures).

use std::time::UNIX_EPOCH;

use ccd_protocol::methods as m;
use ccd_protocol::types::{self, ActorState, HealthStatus};

use super::context::Services;
use super::dispatch::Dispatcher;
use crate::error::ActorError;
use crate::executor::PoolStatus;
use crate::store;
use crate::supervise::ask;

pub fn register(d: &mut Dispatcher, s: &Services) {
    // Built once: describe, discover and the configuration are the same for the daemon's
    // whole life.
    let methods = ccd_protocol::registry(s.info.fault_injection);
    let describe = types::Describe {
        methods: methods.clone(),
        error_codes: m::error_codes(),
    };
    let discover = ccd_protocol::openrpc_document(&methods, s.info.version);
    let config = types::ConfigReport {
        values: s.info.config.clone(),
    };
    d.sync::<m::SystemPing>(|_, _, _| Ok("pong".to_string()))
        .sync::<m::SystemVersion>(version)
        .future::<m::SystemHealth, _>(|s, _, _| health(s))
        .cached::<m::SystemDescribe>(Ok(describe))
        .cached::<m::RpcDiscover>(Ok(discover))
        .cached::<m::SystemConfig>(Ok(config))
        .future::<m::SystemDescribeModels, _>(|s, _, _| {
            let reader = s.reader.clone();
            async move {
                reader
                    .read("describing the database", store::describe_models)
                    .await
            }
        })
        .sync::<m::SystemShutdown>(|s, _, _| {
            tracing::info!("shutdown requested over IPC");
            s.info.shutdown.cancel();
            Ok(types::ShutdownResult { stopping: true })
        });
}

fn version(
    s: &Services,
    _: types::NoParams,
    _: &crate::conn::ConnCtx,
) -> Result<types::VersionInfo, ActorError> {
    Ok(types::VersionInfo {
        version: s.info.version.into(),
        protocol_version: ccd_protocol::PROTOCOL_VERSION,
        schema_version: store::SCHEMA_VERSION,
    })
}

/// `system.health`: the actors' states taken now, the executor pool's figures asked of it.
pub fn health(
    s: &Services,
) -> impl Future<Output = Result<types::Health, ActorError>> + 'static + use<> {
    let actors = s.health.snapshot();
    let vfs = s.vfs_status();
    let agent = s.agent.lock().map(|p| p.clone()).unwrap_or_default();
    let info = s.info.clone();
    let pool = s.query.pool().clone();
    async move {
        let executor = match ask(&pool, "executor", PoolStatus).await {
            Ok(p) => types::ExecutorHealth {
                size: p.size,
                busy: p.busy,
                queued: p.queued,
            },
            Err(_) => types::ExecutorHealth {
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
        let ok =
            actors.iter().all(|a| a.state == ActorState::Running) && agent.available != Some(false);
        Ok(types::Health {
            status: if ok {
                HealthStatus::Ok
            } else {
                HealthStatus::Degraded
            },
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
