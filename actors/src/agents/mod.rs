//! Agent definitions (Claude Code subagents), orchestration rules and hooks, kept sealed.
//!
//! Definitions are imported from a directory of subagent `.md` files or from a JSON bundle
//! ([`definitions`]: parsed strictly, all or nothing). Everything is sealed ([`crate::seal`])
//! before it reaches the writer, so the database, its WAL and backups hold only ciphertext;
//! [`AgentService`] seals and opens on the blocking pool.

mod definitions;
mod expose;

pub use definitions::{Parsed, load, parse_markdown, to_markdown};
pub use expose::{AgentsConfig, Expose, ExposeMode, cli_agents_json};

use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;
use ccd_protocol::RpcError;
use ccd_protocol::types::AgentDef;
use serde_json::Value;

use crate::blocking::try_off_loop;
use crate::error::ActorError;
use crate::reader::Reader;
use crate::seal::{self, MasterKey};
use crate::store;
use crate::supervise::ask;
use crate::writer::{Commit, WriterActor};

/// Names under which things are sealed: also the associated data of each blob.
fn agent_file(name: &str) -> String {
    format!("agents/{name}.md")
}

pub const RULES_FILE: &str = "orchestrator.json";
pub const HOOKS_FILE: &str = "hooks.json";

/// The agent, orchestrator and hooks methods.
#[derive(Clone)]
pub struct AgentService {
    writer: Addr<WriterActor>,
    reader: Reader,
    key: Arc<MasterKey>,
    /// Told after every change (the VFS rebuilds its view), and told back when it serves it.
    changed: Arc<Changes>,
    /// Definitions that did not open when last read (see [`AgentService::all`]).
    damaged: Arc<std::sync::Mutex<Vec<String>>>,
    /// Which definitions agent runs are offered (`agents.expose`).
    expose: Expose,
}

/// Changes of definitions, rules or hooks, counted: the writer of a change asks for a view of
/// generation N ([`Changes::changed`]), the agent filesystem says which generation it serves
/// ([`Changes::served`]), so an import or removal answers only once the mount shows it.
#[derive(Debug)]
pub struct Changes {
    requested: tokio::sync::watch::Sender<u64>,
    served: tokio::sync::watch::Sender<u64>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            requested: tokio::sync::watch::Sender::new(0),
            served: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// How long a change waits for the agent filesystem to serve it before answering anyway (the
/// filesystem restarting, or failed: the change is stored, and shows once it is back).
const SERVE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Changes {
    /// A change was stored: ask for a new view; returns its generation.
    pub fn changed(&self) -> u64 {
        let mut generation = 0;
        self.requested.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        generation
    }

    /// The generation the next view must show, once it changes (for the view's builder).
    pub fn requested(&self) -> tokio::sync::watch::Receiver<u64> {
        self.requested.subscribe()
    }

    /// The view of `generation` (or a later one) is served.
    pub fn served(&self, generation: u64) {
        self.served.send_modify(|g| *g = (*g).max(generation));
    }

    /// Wait until a view of `generation` is served, at most [`SERVE_WAIT`].
    pub async fn wait_served(&self, generation: u64) {
        let mut rx = self.served.subscribe();
        let served = tokio::time::timeout(SERVE_WAIT, rx.wait_for(|g| *g >= generation)).await;
        if served.is_err() {
            tracing::warn!(
                generation,
                "the agent filesystem did not show a change within {SERVE_WAIT:?}; it shows once \
                 the filesystem is back"
            );
        }
    }
}

impl AgentService {
    pub fn new(writer: Addr<WriterActor>, reader: Reader, key: Arc<MasterKey>) -> Self {
        AgentService {
            writer,
            reader,
            key,
            changed: Default::default(),
            damaged: Default::default(),
            expose: Expose::default(),
        }
    }

    /// Told of every change of definitions, rules or hooks.
    pub fn changes(&self) -> Arc<Changes> {
        self.changed.clone()
    }

    /// A change was stored: wait until the agent filesystem serves it.
    async fn publish_change(&self) {
        let generation = self.changed.changed();
        self.changed.wait_served(generation).await;
    }

    async fn write<O: store::WriteOp>(&self, op: O) -> Result<O::Output, ActorError> {
        ask(&self.writer, "writer", Commit(op)).await
    }

    /// `agent.import`.
    pub async fn import(
        self,
        path: String,
    ) -> Result<ccd_protocol::types::AgentImported, ActorError> {
        let p = Path::new(&path);
        if !p.is_absolute() {
            return Err(RpcError::invalid_params(format!(
                "invalid params for agent.import: `path`: must be absolute, got `{path}`"
            ))
            .into());
        }
        // The path is the client's: read on the blocking pool (see `files`), and sealed there
        // too (compressing and encrypting up to 16 MiB a definition).
        let at = p.to_path_buf();
        let key = self.key.clone();
        let (names, items) = try_off_loop("importing agent definitions", move || {
            let parsed = load(&at).map_err(|e| {
                ActorError::Rpc(RpcError::invalid_params(format!(
                    "agent.import refused, nothing stored: {e}"
                )))
            })?;
            let mut items = Vec::new();
            for p in &parsed {
                let file = agent_file(&p.def.name);
                items.push((file.clone(), seal_json(&key, &file, &p.def)?));
            }
            let names: Vec<String> = parsed.into_iter().map(|p| p.def.name).collect();
            Ok((names, items))
        })
        .await?;
        let replaced = self.write(store::PutSealed { items }).await?;
        self.publish_change().await;
        Ok(ccd_protocol::types::AgentImported {
            imported: names,
            replaced,
        })
    }

    /// Every definition, opened.
    /// Every definition that opens. One that does not (a damaged row) is left out, logged and
    /// named by [`AgentService::damaged`]: it must not take the others with it.
    pub async fn all(&self) -> Result<Vec<AgentDef>, ActorError> {
        let rows = self
            .reader
            .read("listing agents", |c| {
                store::sealed_with_prefix(c, "agents/")
            })
            .await?;
        let key = self.key.clone();
        let (defs, damaged) = try_off_loop("opening agent definitions", move || {
            let mut defs = Vec::new();
            let mut damaged = Vec::new();
            for (file, blob) in &rows {
                match open_json::<AgentDef>(&key, file, blob) {
                    Ok(d) => defs.push(d),
                    Err(e) => {
                        let name = file
                            .strip_prefix("agents/")
                            .and_then(|f| f.strip_suffix(".md"))
                            .unwrap_or(file);
                        tracing::error!("agent definition `{name}` is damaged and left out: {e}");
                        damaged.push(name.to_string());
                    }
                }
            }
            Ok((defs, damaged))
        })
        .await?;
        if let Ok(mut d) = self.damaged.lock() {
            *d = damaged;
        }
        Ok(defs)
    }

    /// Offer agent runs the definitions `expose` selects (default: all).
    pub fn with_expose(mut self, expose: Expose) -> Self {
        self.expose = expose;
        self
    }

    /// The `--agents` JSON offering the definitions `agents.expose` selects (opened in memory,
    /// never written anywhere); `None` when it selects none or there are none.
    pub async fn cli_agents(&self) -> Result<Option<Value>, ActorError> {
        if self.expose.is_none() {
            return Ok(None);
        }
        Ok(cli_agents_json(&self.all().await?, &self.expose))
    }

    /// The definitions the last [`AgentService::all`] found damaged, by name.
    pub fn damaged(&self) -> Vec<String> {
        self.damaged.lock().map(|d| d.clone()).unwrap_or_default()
    }

    pub async fn get(self, name: String) -> Result<ccd_protocol::types::AgentDetail, ActorError> {
        let file = agent_file(&name);
        let lookup = file.clone();
        let blob = self
            .reader
            .read("reading an agent", move |c| store::sealed(c, &lookup))
            .await?
            .ok_or_else(|| ActorError::NotFound(format!("no agent named `{name}`")))?;
        let key = self.key.clone();
        try_off_loop("opening an agent definition", move || {
            let def: AgentDef = open_json(&key, &file, &blob)?;
            Ok(ccd_protocol::types::AgentDetail {
                markdown: to_markdown(&def),
                agent: def,
            })
        })
        .await
    }

    pub async fn delete(
        self,
        name: String,
    ) -> Result<ccd_protocol::types::AgentDeleted, ActorError> {
        let removed = self
            .write(store::DeleteSealed {
                name: agent_file(&name),
            })
            .await?;
        if !removed {
            return Err(ActorError::NotFound(format!("no agent named `{name}`")));
        }
        self.publish_change().await;
        Ok(ccd_protocol::types::AgentDeleted { name })
    }

    /// Set a sealed JSON document (rules or hooks).
    pub async fn set_doc(self, file: &'static str, value: Value) -> Result<Value, ActorError> {
        let key = self.key.clone();
        let (value, blob) = try_off_loop("sealing a document", move || {
            let blob = seal_json(&key, file, &value)?;
            Ok((value, blob))
        })
        .await?;
        self.write(store::PutSealed {
            items: vec![(file.to_string(), blob)],
        })
        .await?;
        self.publish_change().await;
        Ok(value)
    }

    /// A sealed JSON document, or null when never set.
    pub async fn get_doc(self, file: &'static str) -> Result<Value, ActorError> {
        let blob = self
            .reader
            .read("reading a sealed document", move |c| store::sealed(c, file))
            .await?;
        let key = self.key.clone();
        match blob {
            Some(b) => try_off_loop("opening a document", move || open_json(&key, file, &b)).await,
            None => Ok(Value::Null),
        }
    }
}

fn seal_json(
    key: &MasterKey,
    file: &str,
    value: &impl serde::Serialize,
) -> Result<Vec<u8>, ActorError> {
    let json = serde_json::to_vec(value).map_err(|e| ActorError::internal("encoding", e))?;
    seal::seal(key, file, &json).map_err(|e| ActorError::Internal(format!("sealing {file}: {e:#}")))
}

fn open_json<T: serde::de::DeserializeOwned>(
    key: &MasterKey,
    file: &str,
    blob: &[u8],
) -> Result<T, ActorError> {
    let json = seal::open(key, file, blob).map_err(|e| {
        ActorError::Internal(format!(
            "{e:#} (is CCD_MASTER_KEY or master.key the key these were sealed with?)"
        ))
    })?;
    serde_json::from_slice(&json).map_err(|e| ActorError::internal(&format!("reading {file}"), e))
}
