//! Sessions and their turns: reads, and the writes the query path and the TTL sweep make.

use ccd_protocol::types::{ErrorClass, Session, SessionStatus, Turn, TurnStatus, Usage};
use rusqlite::{Connection, OptionalExtension, params};

use super::{ExecCached, WriteOp, db_err, now_ms, rfc3339};
use crate::error::ActorError;

const SESSION_COLUMNS: &str = "id, project, tags, model, agent_session_id, status, created_at, last_used_at, turns, \
     input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd, cwd";

/// Column `i` of a row as one of a protocol enum's words (stored as its `as_str`): a stored
/// word it does not know is a conversion error naming it, not a panic.
fn word<T>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr<Err = ccd_protocol::types::UnknownValue>,
{
    let text: String = r.get(i)?;
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// As [`word`], for a column that may be NULL.
fn optional_word<T>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<T>>
where
    T: std::str::FromStr<Err = ccd_protocol::types::UnknownValue>,
{
    match r.get_ref(i)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => word(r, i).map(Some),
    }
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    let tags: String = r.get(2)?;
    Ok(Session {
        id: r.get(0)?,
        project: r.get(1)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        model: r.get(3)?,
        agent_session_id: r.get(4)?,
        status: word(r, 5)?,
        created_at: rfc3339(r.get(6)?),
        last_used_at: rfc3339(r.get(7)?),
        turns: r.get::<_, i64>(8)?.max(0) as u64,
        usage: Usage {
            input_tokens: r.get::<_, i64>(9)?.max(0) as u64,
            output_tokens: r.get::<_, i64>(10)?.max(0) as u64,
            cache_creation_input_tokens: r.get::<_, i64>(11)?.max(0) as u64,
            cache_read_input_tokens: r.get::<_, i64>(12)?.max(0) as u64,
        },
        cost_usd: r.get(13)?,
        cwd: r.get(14)?,
    })
}

const TURN_COLUMNS: &str = "id, query_id, prompt, result, status, error_class, error, input_tokens, output_tokens, \
     cache_creation_input_tokens, cache_read_input_tokens, cost_usd, duration_ms, num_turns, attempts, model, started_at";

fn turn_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Turn> {
    Ok(Turn {
        id: r.get(0)?,
        query_id: r.get(1)?,
        prompt: r.get(2)?,
        result: r.get(3)?,
        status: word(r, 4)?,
        error_class: optional_word(r, 5)?,
        error: r.get(6)?,
        usage: Usage {
            input_tokens: r.get::<_, i64>(7)?.max(0) as u64,
            output_tokens: r.get::<_, i64>(8)?.max(0) as u64,
            cache_creation_input_tokens: r.get::<_, i64>(9)?.max(0) as u64,
            cache_read_input_tokens: r.get::<_, i64>(10)?.max(0) as u64,
        },
        cost_usd: r.get(11)?,
        duration_ms: r.get::<_, i64>(12)?.max(0) as u64,
        num_turns: r.get::<_, i64>(13)?.clamp(0, u32::MAX as i64) as u32,
        attempts: r.get::<_, i64>(14)?.clamp(0, u32::MAX as i64) as u32,
        model: r.get(15)?,
        started_at: rfc3339(r.get(16)?),
    })
}

pub fn session(conn: &Connection, id: &str) -> anyhow::Result<Option<Session>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
        ))?
        .query_row([id], session_row)
        .optional()?)
}

/// Sessions, newest use first, filtered by any of status, tag and project.
/// Which sessions to list, and which page of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionFilter<'a> {
    pub status: Option<SessionStatus>,
    pub tag: Option<&'a str>,
    pub project: Option<&'a str>,
    /// Only sessions whose conversation is in this directory.
    pub cwd: Option<&'a str>,
    /// At most this many (`None`: all).
    pub limit: Option<u32>,
    pub offset: u64,
}

/// Sessions matching `f`, newest first (by last use), and whether more match past the page.
pub fn sessions(conn: &Connection, f: SessionFilter<'_>) -> anyhow::Result<(Vec<Session>, bool)> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions
         WHERE (?1 IS NULL OR status = ?1)
           AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(sessions.tags) WHERE value = ?2))
           AND (?3 IS NULL OR project = ?3)
           AND (?6 IS NULL OR cwd = ?6)
         ORDER BY last_used_at DESC, created_at DESC, id DESC
         LIMIT ?4 OFFSET ?5"
    ))?;
    // One more than asked, to know whether there are more; -1 is SQLite's "no limit".
    let limit = f.limit.map_or(-1, |l| i64::from(l) + 1);
    let offset = i64::try_from(f.offset).unwrap_or(i64::MAX);
    let mut rows: Vec<Session> = st
        .query_map(
            params![
                f.status.map(SessionStatus::as_str),
                f.tag,
                f.project,
                limit,
                offset,
                f.cwd
            ],
            session_row,
        )?
        .collect::<Result<_, _>>()?;
    let more = f.limit.is_some_and(|l| rows.len() > l as usize);
    if let Some(l) = f.limit {
        rows.truncate(l as usize);
    }
    Ok((rows, more))
}

/// The full id of the one session whose id starts with `prefix` (an id is its own prefix), as
/// git and docker take ids: an error that names the matches when there are several, not
/// found when none.
pub fn resolve_session_id(conn: &Connection, prefix: &str) -> Result<String, ActorError> {
    const SHOWN: usize = 10;
    let mut st = conn
        .prepare_cached(
            "SELECT id FROM sessions WHERE id >= ?1 AND substr(id, 1, length(?1)) = ?1
             ORDER BY id LIMIT ?2",
        )
        .map_err(db_err("finding a session by id"))?;
    let matches: Vec<String> = st
        .query_map(params![prefix, SHOWN as i64 + 1], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(db_err("finding a session by id"))?;
    match matches.as_slice() {
        _ if prefix.is_empty() => Err(ActorError::NotFound("no session ``".into())),
        [] => Err(ActorError::NotFound(format!("no session `{prefix}`"))),
        [one] => Ok(one.clone()),
        // An exact id wins over the longer ids it is a prefix of.
        [first, ..] if first == prefix => Ok(first.clone()),
        many => {
            let shown = many
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = if many.len() > SHOWN { ", ..." } else { "" };
            Err(ActorError::Rpc(ccd_protocol::RpcError::invalid_params(
                format!(
                    "session id prefix `{prefix}` is ambiguous: it matches {shown}{more}; give more \
                 of the id"
                ),
            )))
        }
    }
}

pub fn turns(conn: &Connection, session_id: &str) -> anyhow::Result<Vec<Turn>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {TURN_COLUMNS} FROM turns WHERE session_id = ?1 ORDER BY id"
    ))?;
    let rows = st
        .query_map([session_id], turn_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

fn read_session(conn: &Connection, id: &str) -> Result<Session, ActorError> {
    session(conn, id)
        .map_err(|e| ActorError::Internal(format!("reading session {id}: {e:#}")))?
        .ok_or_else(|| ActorError::NotFound(format!("no session `{id}`")))
}

pub struct CreateSession {
    pub id: String,
    pub project: Option<String>,
    /// Where its turns run (`None`: decided by its first turn).
    pub cwd: Option<String>,
    pub tags: Vec<String>,
    pub model: Option<String>,
}

impl WriteOp for CreateSession {
    type Output = Session;
    fn apply(self, conn: &Connection) -> Result<Session, ActorError> {
        let now = now_ms();
        let tags = serde_json::to_string(&self.tags).unwrap_or_else(|_| "[]".into());
        conn.execute_cached(
            "INSERT INTO sessions (id, project, tags, model, status, created_at, last_used_at, cwd)
             VALUES (?1, ?2, ?3, ?4, 'open', ?5, ?5, ?6)",
            params![self.id, self.project, tags, self.model, now, self.cwd],
        )
        .map_err(db_err("creating session"))?;
        read_session(conn, &self.id)
    }
}

pub struct CloseSession {
    pub id: String,
}

impl WriteOp for CloseSession {
    type Output = Session;
    fn apply(self, conn: &Connection) -> Result<Session, ActorError> {
        read_session(conn, &self.id)?;
        conn.execute_cached(
            "UPDATE sessions SET status = 'closed' WHERE id = ?1 AND status = 'open'",
            [&self.id],
        )
        .map_err(db_err("closing session"))?;
        read_session(conn, &self.id)
    }
}

/// Delete one session and its turns (they cascade); returns it as it was.
pub struct DeleteSession {
    pub id: String,
}

impl WriteOp for DeleteSession {
    type Output = Session;
    fn apply(self, conn: &Connection) -> Result<Session, ActorError> {
        let s = read_session(conn, &self.id)?;
        conn.execute_cached("DELETE FROM sessions WHERE id = ?1", [&self.id])
            .map_err(db_err("deleting a session"))?;
        Ok(s)
    }
}

/// One finished (or failed) query, recorded as a turn of its session, with the session's
/// totals and its agent session id updated in the same transaction.
pub struct RecordTurn {
    pub session_id: String,
    pub query_id: String,
    pub prompt: String,
    pub result: Option<String>,
    pub status: TurnStatus,
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    pub usage: Usage,
    pub cost_usd: f64,
    pub duration_ms: u64,
    pub num_turns: u32,
    pub attempts: u32,
    pub model: Option<String>,
    pub started_at_ms: i64,
    pub agent_session_id: Option<String>,
    /// The directory the turn ran in: the session's from now on if it had none.
    pub cwd: Option<String>,
}

/// A count from the agent as SQLite's integer: saturating, never wrapping to a negative.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl WriteOp for RecordTurn {
    type Output = Turn;
    fn apply(self, conn: &Connection) -> Result<Turn, ActorError> {
        let u = &self.usage;
        let changed = conn
            .execute_cached(
                // Token totals saturate at i64::MAX instead of overflowing (which SQLite
                // would turn into a REAL the STRICT table refuses, failing the turn).
                "UPDATE sessions SET turns = turns + 1,
                     input_tokens = input_tokens
                         + MIN(?2, 9223372036854775807 - input_tokens),
                     output_tokens = output_tokens
                         + MIN(?3, 9223372036854775807 - output_tokens),
                     cache_creation_input_tokens = cache_creation_input_tokens
                         + MIN(?4, 9223372036854775807 - cache_creation_input_tokens),
                     cache_read_input_tokens = cache_read_input_tokens
                         + MIN(?5, 9223372036854775807 - cache_read_input_tokens),
                     cost_usd = cost_usd + ?6, last_used_at = ?7,
                     agent_session_id = COALESCE(?8, agent_session_id),
                     cwd = COALESCE(cwd, ?9)
                 WHERE id = ?1",
                params![
                    self.session_id,
                    count(u.input_tokens),
                    count(u.output_tokens),
                    count(u.cache_creation_input_tokens),
                    count(u.cache_read_input_tokens),
                    self.cost_usd,
                    now_ms(),
                    self.agent_session_id,
                    self.cwd,
                ],
            )
            .map_err(db_err("updating session totals"))?;
        if changed == 0 {
            return Err(ActorError::NotFound(format!(
                "no session `{}`",
                self.session_id
            )));
        }
        conn.execute_cached(
            "INSERT INTO turns (session_id, query_id, prompt, result, status, error_class, error,
                 input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
                 cost_usd, duration_ms, num_turns, attempts, model, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                self.session_id,
                self.query_id,
                self.prompt,
                self.result,
                self.status.as_str(),
                self.error_class.map(ErrorClass::as_str),
                self.error,
                count(u.input_tokens),
                count(u.output_tokens),
                count(u.cache_creation_input_tokens),
                count(u.cache_read_input_tokens),
                self.cost_usd,
                count(self.duration_ms),
                self.num_turns,
                self.attempts,
                self.model,
                self.started_at_ms,
            ],
        )
        .map_err(db_err("recording a turn"))?;
        let id = conn.last_insert_rowid();
        conn.query_row(
            &format!("SELECT {TURN_COLUMNS} FROM turns WHERE id = ?1"),
            [id],
            turn_row,
        )
        .map_err(db_err("reading back the turn"))
    }
}

/// Mark open sessions unused since before `idle_before_ms` as expired (the TTL sweep).
pub struct ExpireSessions {
    pub idle_before_ms: i64,
}

impl WriteOp for ExpireSessions {
    type Output = usize;
    fn apply(self, conn: &Connection) -> Result<usize, ActorError> {
        conn.execute_cached(
            "UPDATE sessions SET status = 'expired' WHERE status = 'open' AND last_used_at < ?1",
            [self.idle_before_ms],
        )
        .map_err(db_err("expiring idle sessions"))
    }
}

/// Delete closed and expired sessions (their turns cascade) last used before the cutoff.
pub struct CleanupSessions {
    pub used_before_ms: i64,
}

impl WriteOp for CleanupSessions {
    type Output = usize;
    fn apply(self, conn: &Connection) -> Result<usize, ActorError> {
        conn.execute_cached(
            "DELETE FROM sessions WHERE status IN ('closed', 'expired') AND last_used_at < ?1",
            [self.used_before_ms],
        )
        .map_err(db_err("cleaning up sessions"))
    }
}

/// Query statistics since `since_ms`, by UTC day, project and model, with totals.
pub fn stats(
    conn: &Connection,
    since_ms: i64,
    project: Option<&str>,
) -> anyhow::Result<ccd_protocol::types::Stats> {
    use ccd_protocol::types::{Stats, StatsRow};
    let mut st = conn.prepare_cached(
        "SELECT date(t.started_at / 1000, 'unixepoch'), s.project, t.model,
                count(*), sum(t.status = 'ok'),
                sum(t.status = 'error' AND t.error_class = 'retryable'),
                sum(t.status = 'error' AND t.error_class = 'non_retryable'),
                sum(t.status = 'error' AND t.error_class = 'unavailable'),
                sum(t.status = 'timeout'), sum(t.status = 'cancelled'), sum(t.status = 'refused'),
                sum(t.input_tokens), sum(t.output_tokens), sum(t.cache_creation_input_tokens),
                sum(t.cache_read_input_tokens), sum(t.cost_usd), sum(t.duration_ms)
         FROM turns t JOIN sessions s ON s.id = t.session_id
         WHERE t.started_at >= ?1 AND (?2 IS NULL OR s.project = ?2)
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )?;
    let n = |r: &rusqlite::Row<'_>, i: usize| -> rusqlite::Result<u64> {
        Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
    };
    let rows: Vec<StatsRow> = st
        .query_map(params![since_ms, project], |r| {
            Ok(StatsRow {
                day: r.get(0)?,
                project: r.get(1)?,
                model: r.get(2)?,
                queries: n(r, 3)?,
                ok: n(r, 4)?,
                errors_retryable: n(r, 5)?,
                errors_non_retryable: n(r, 6)?,
                errors_unavailable: n(r, 7)?,
                timeouts: n(r, 8)?,
                cancelled: n(r, 9)?,
                refused: n(r, 10)?,
                usage: Usage {
                    input_tokens: n(r, 11)?,
                    output_tokens: n(r, 12)?,
                    cache_creation_input_tokens: n(r, 13)?,
                    cache_read_input_tokens: n(r, 14)?,
                },
                cost_usd: r.get::<_, Option<f64>>(15)?.unwrap_or(0.0),
                duration_ms: n(r, 16)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut totals = StatsRow {
        project: project.map(String::from),
        model: None,
        ..Default::default()
    };
    for r in &rows {
        totals.queries += r.queries;
        totals.ok += r.ok;
        totals.errors_retryable += r.errors_retryable;
        totals.errors_non_retryable += r.errors_non_retryable;
        totals.errors_unavailable += r.errors_unavailable;
        totals.timeouts += r.timeouts;
        totals.cancelled += r.cancelled;
        totals.refused += r.refused;
        totals.usage.add(&r.usage);
        totals.cost_usd += r.cost_usd;
        totals.duration_ms += r.duration_ms;
    }
    Ok(Stats {
        since: super::rfc3339(since_ms),
        rows,
        totals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WriterConfig;
    use crate::store::{db_path, open_writer};

    /// A session with nothing but its id.
    fn create(conn: &Connection, id: &str) {
        CreateSession {
            id: id.into(),
            project: None,
            cwd: None,
            tags: vec![],
            model: None,
        }
        .apply(conn)
        .unwrap();
    }

    fn turn(session_id: &str, tokens: u64) -> RecordTurn {
        RecordTurn {
            session_id: session_id.into(),
            query_id: "q".into(),
            prompt: "p".into(),
            result: Some("r".into()),
            status: TurnStatus::Ok,
            error_class: None,
            error: None,
            usage: Usage {
                input_tokens: tokens,
                output_tokens: 1,
                ..Default::default()
            },
            cost_usd: 0.5,
            duration_ms: 10,
            num_turns: 1,
            attempts: 1,
            model: Some("m".into()),
            started_at_ms: now_ms(),
            agent_session_id: Some("agent-1".into()),
            cwd: Some("/first".into()),
        }
    }

    #[test]
    fn turns_accumulate_into_session_totals() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&db_path(dir.path()), &WriterConfig::default()).unwrap();
        let s = CreateSession {
            id: "s1".into(),
            project: None,
            cwd: None,
            tags: vec!["a".into()],
            model: None,
        }
        .apply(&conn)
        .unwrap();
        assert_eq!((s.status, s.turns), (SessionStatus::Open, 0));
        turn("s1", 10).apply(&conn).unwrap();
        turn("s1", 5).apply(&conn).unwrap();
        let s = session(&conn, "s1").unwrap().unwrap();
        assert_eq!(
            (s.turns, s.usage.input_tokens, s.usage.output_tokens),
            (2, 15, 2)
        );
        assert_eq!(s.cost_usd, 1.0);
        assert_eq!(s.agent_session_id.as_deref(), Some("agent-1"));
        assert_eq!(turns(&conn, "s1").unwrap().len(), 2);
        assert!(matches!(
            turn("nope", 1).apply(&conn),
            Err(ActorError::NotFound(_))
        ));

        let count = |status, tag| {
            let f = SessionFilter {
                status,
                tag,
                ..Default::default()
            };
            sessions(&conn, f).unwrap().0.len()
        };
        assert_eq!(count(None, Some("a")), 1);
        assert_eq!(count(None, Some("b")), 0);
        assert_eq!(count(Some(SessionStatus::Closed), None), 0);
        CloseSession { id: "s1".into() }.apply(&conn).unwrap();
        assert_eq!(count(Some(SessionStatus::Closed), None), 1);

        assert_eq!(
            CleanupSessions {
                used_before_ms: now_ms() + 1
            }
            .apply(&conn)
            .unwrap(),
            1
        );
        assert!(turns(&conn, "s1").unwrap().is_empty(), "turns cascade");
    }

    #[test]
    fn absurd_token_counts_saturate_instead_of_failing_the_turn() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&db_path(dir.path()), &WriterConfig::default()).unwrap();
        create(&conn, "s");
        let t = turn("s", u64::MAX).apply(&conn).unwrap();
        assert_eq!(t.usage.input_tokens, i64::MAX as u64);
        turn("s", u64::MAX).apply(&conn).unwrap();
        turn("s", 7).apply(&conn).unwrap();
        let s = session(&conn, "s").unwrap().unwrap();
        assert_eq!((s.turns, s.usage.input_tokens), (3, i64::MAX as u64));
        // The first turn's directory stays the session's.
        assert_eq!(s.cwd.as_deref(), Some("/first"));
        assert_eq!(s.usage.output_tokens, 3);
    }

    #[test]
    fn expiry_only_touches_idle_open_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&db_path(dir.path()), &WriterConfig::default()).unwrap();
        for id in ["a", "b"] {
            create(&conn, id);
        }
        CloseSession { id: "b".into() }.apply(&conn).unwrap();
        assert_eq!(
            ExpireSessions {
                idle_before_ms: now_ms() + 1
            }
            .apply(&conn)
            .unwrap(),
            1
        );
        assert_eq!(
            session(&conn, "a").unwrap().unwrap().status,
            SessionStatus::Expired
        );
        assert_eq!(
            session(&conn, "b").unwrap().unwrap().status,
            SessionStatus::Closed
        );
    }

    #[test]
    fn a_session_is_found_by_any_unique_prefix_of_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&db_path(dir.path()), &WriterConfig::default()).unwrap();
        for id in ["abc1", "abc2", "abd", "ab"] {
            create(&conn, id);
        }
        assert_eq!(resolve_session_id(&conn, "abd").unwrap(), "abd");
        assert_eq!(resolve_session_id(&conn, "abc1").unwrap(), "abc1");
        // An exact id wins over the longer ones it starts.
        assert_eq!(resolve_session_id(&conn, "ab").unwrap(), "ab");
        let err = resolve_session_id(&conn, "abc").unwrap_err().to_string();
        assert!(
            err.contains("abc1") && err.contains("abc2") && err.contains("ambiguous"),
            "{err}"
        );
        assert!(matches!(
            resolve_session_id(&conn, "x"),
            Err(ActorError::NotFound(_))
        ));
        assert!(matches!(
            resolve_session_id(&conn, ""),
            Err(ActorError::NotFound(_))
        ));
        // LIKE's wildcards are plain characters here.
        assert!(matches!(
            resolve_session_id(&conn, "a%"),
            Err(ActorError::NotFound(_))
        ));
    }

    #[test]
    fn stored_words_are_read_as_enums_and_an_unknown_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&db_path(dir.path()), &WriterConfig::default()).unwrap();
        create(&conn, "s");
        let mut failed = turn("s", 1);
        failed.status = TurnStatus::Error;
        failed.error_class = Some(ErrorClass::NonRetryable);
        failed.apply(&conn).unwrap();
        // Stored as the same words as ever.
        let stored: (String, String) = conn
            .query_row("SELECT status, error_class FROM turns", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(stored, ("error".to_string(), "non_retryable".to_string()));
        let t = &turns(&conn, "s").unwrap()[0];
        assert_eq!(
            (t.status, t.error_class),
            (TurnStatus::Error, Some(ErrorClass::NonRetryable))
        );

        conn.execute("UPDATE sessions SET status = 'paused'", [])
            .unwrap();
        let err = session(&conn, "s").unwrap_err().to_string();
        assert!(err.contains("unknown session status `paused`"), "{err}");
        conn.execute("UPDATE turns SET error_class = 'odd'", [])
            .unwrap();
        let err = turns(&conn, "s").unwrap_err().to_string();
        assert!(err.contains("unknown error class `odd`"), "{err}");
    }
}
