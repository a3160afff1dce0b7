//! The `session.*` methods (ids by unique prefix).

use ccd_protocol::types::{
    EventKind, Session, SessionCleanupResult, SessionCreate, SessionDetail, SessionList,
    SessionListParams,
};

use super::place::{agent_args_fit, checked_dir};
use super::{QueryService, SessionBusy, invalid};
use crate::error::ActorError;
use crate::{store, validate};

impl QueryService {
    pub async fn create_session(self, p: SessionCreate) -> Result<Session, ActorError> {
        const M: &str = "session.create";
        // The session's model becomes an argument of every agent run in it.
        agent_args_fit(M, &[("model", "--model", p.model.as_slice(), false)])?;
        if p.project.is_some() && p.cwd.is_some() {
            return Err(invalid(M, "give `project` or `cwd`, not both"));
        }
        let project = match &p.project {
            Some(name) => Some(self.find_project(name).await?.name),
            None => None,
        };
        let cwd = match p.cwd {
            Some(dir) => Some(checked_dir("cwd", dir).await?),
            None => None,
        };
        let id = uuid::Uuid::new_v4().to_string();
        let s = self
            .write(store::CreateSession {
                id,
                project,
                cwd,
                tags: p.tags.unwrap_or_default(),
                model: p.model,
            })
            .await?;
        self.bus.publish(EventKind::SessionCreated {
            session_id: s.id.clone(),
            project: s.project.clone(),
        });
        Ok(s)
    }

    /// A session's full id from any unique prefix of it.
    pub async fn resolve_session(&self, prefix: &str) -> Result<String, ActorError> {
        let lookup = prefix.to_string();
        self.reader
            .read("finding a session", move |c| {
                Ok(store::resolve_session_id(c, &lookup))
            })
            .await?
    }

    pub async fn get_session(self, id: String) -> Result<SessionDetail, ActorError> {
        let id = self.resolve_session(&id).await?;
        let lookup = id.clone();
        let found = self
            .reader
            .read("reading a session", move |c| {
                let Some(session) = store::session(c, &lookup)? else {
                    return Ok(None);
                };
                let turns = store::turns(c, &lookup)?;
                Ok(Some(SessionDetail { session, turns }))
            })
            .await?;
        found.ok_or_else(|| ActorError::NotFound(format!("no session `{id}`")))
    }

    pub async fn list_sessions(self, p: SessionListParams) -> Result<SessionList, ActorError> {
        let limit = validate::page_limit("session.list", p.limit)?;
        let (sessions, more) = self
            .reader
            .read("listing sessions", move |c| {
                store::sessions(
                    c,
                    store::SessionFilter {
                        status: p.status,
                        tag: p.tag.as_deref(),
                        project: p.project.as_deref(),
                        cwd: None,
                        limit: Some(limit),
                        offset: p.offset.unwrap_or(0),
                    },
                )
            })
            .await?;
        Ok(SessionList { sessions, more })
    }

    pub async fn close_session(self, id: String) -> Result<Session, ActorError> {
        let id = self.resolve_session(&id).await?;
        let s = self.write(store::CloseSession { id }).await?;
        self.bus.publish(EventKind::SessionClosed {
            session_id: s.id.clone(),
        });
        Ok(s)
    }

    /// `session.delete`: a session and its turns, unless a query is running in it.
    pub async fn delete_session(self, id: String) -> Result<Session, ActorError> {
        let id = self.resolve_session(&id).await?;
        // Claimed while it is deleted: no query can start in it meanwhile.
        let _busy = SessionBusy::claim(&self.busy_sessions, &id)?;
        self.write(store::DeleteSession { id }).await
    }

    pub async fn cleanup_sessions(
        self,
        older_than_s: u64,
    ) -> Result<SessionCleanupResult, ActorError> {
        let cutoff = store::now_ms()
            .saturating_sub((older_than_s.min(i64::MAX as u64 / 1000) * 1000) as i64);
        let removed = self
            .write(store::CleanupSessions {
                used_before_ms: cutoff,
            })
            .await?;
        Ok(SessionCleanupResult {
            removed: removed as u64,
        })
    }
}
