//! What the gateway's handlers serve from: the facts about the running daemon and the actors
//! and services that own the work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use actix::prelude::*;
use ccd_protocol::types;
use tokio_util::sync::CancellationToken;

use crate::agents::AgentService;
use crate::backup::BackupService;
use crate::error::ActorError;
use crate::eventbus::EventBusActor;
use crate::executor::SharedProbe;
use crate::query::QueryService;
use crate::reader::Reader;
use crate::store::WriteOp;
use crate::supervise::{HealthRegistry, ask};
use crate::vfs::VfsActor;
use crate::writer::{Commit, WriterActor};

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

/// The actors and services a handler hands its work to.
pub struct Services {
    pub writer: Addr<WriterActor>,
    pub reader: Reader,
    pub query: QueryService,
    pub agents: AgentService,
    pub backup: BackupService,
    /// The agent CLI as last probed.
    pub agent: SharedProbe,
    pub info: Arc<DaemonInfo>,
    pub health: Arc<HealthRegistry>,
    /// For `vfs.unseal` and `debug.crash vfs`; set once the agent filesystem runs.
    pub vfs: Option<Addr<VfsActor>>,
    /// For `debug.crash eventbus`; set once the bus actor runs.
    pub eventbus: Option<Addr<EventBusActor>>,
}

impl Services {
    /// Commit `op` through the WriterActor.
    pub fn write<O: WriteOp>(
        &self,
        op: O,
    ) -> impl Future<Output = Result<O::Output, ActorError>> + 'static + use<O> {
        ask(&self.writer, "writer", Commit(op))
    }

    /// The agent filesystem's state, with the definitions it leaves out for being damaged.
    pub fn vfs_status(&self) -> types::VfsStatus {
        let mut st = self.info.vfs.get().cloned().unwrap_or_default();
        st.damaged = self.agents.damaged();
        st
    }
}
