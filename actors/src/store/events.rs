//! The persisted event log: batched inserts from the event bus, pruning, and reads.

use std::sync::Arc;

use ccd_protocol::types::Event;
use rusqlite::{Connection, params};

use super::{ExecCached, WriteOp, db_err, rfc3339_to_ms};
use crate::error::ActorError;

/// A batch of published events, written in one transaction. The batch is shared (the bus
/// shares each event with its subscribers, and keeps the batch to put back if the write fails).
pub struct InsertEvents {
    pub events: Arc<Vec<Arc<Event>>>,
}

impl WriteOp for InsertEvents {
    type Output = ();
    fn apply(self, conn: &Connection) -> Result<(), ActorError> {
        insert_events(conn, &self.events)
    }
}

pub fn insert_events(conn: &Connection, events: &[Arc<Event>]) -> Result<(), ActorError> {
    let mut st = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO events (seq, ts, type, session_id, project, subject, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db_err("preparing the event insert"))?;
    for e in events {
        let data = serde_json::to_string(&**e)
            .map_err(|err| ActorError::internal("encoding an event", err))?;
        st.execute(params![
            e.seq as i64,
            rfc3339_to_ms(&e.ts),
            e.kind.type_name(),
            e.kind.session(),
            e.kind.project(),
            e.kind.subject(),
            data
        ])
        .map_err(db_err("writing an event"))?;
    }
    Ok(())
}

/// Delete events older than the cutoff.
pub struct PruneEvents {
    pub before_ms: i64,
}

impl WriteOp for PruneEvents {
    type Output = usize;
    fn apply(self, conn: &Connection) -> Result<usize, ActorError> {
        conn.execute_cached("DELETE FROM events WHERE ts < ?1", [self.before_ms])
            .map_err(db_err("pruning events"))
    }
}

pub fn last_event_seq(conn: &Connection) -> anyhow::Result<u64> {
    let seq: Option<i64> = conn.query_row("SELECT max(seq) FROM events", [], |r| r.get(0))?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

/// Events after `after_seq` and newer than `since_ms`, of the given types, oldest first.
pub fn events(
    conn: &Connection,
    after_seq: u64,
    since_ms: i64,
    types: &[String],
    limit: u32,
) -> anyhow::Result<Vec<Event>> {
    select_events(conn, Order::OldestFirst, after_seq, since_ms, types, limit)
}

/// The logged events with `after_seq < seq < before_seq` of the given types, oldest first: the
/// newest `limit` of them, and how many older ones that leaves out.
pub fn events_between(
    conn: &Connection,
    after_seq: u64,
    before_seq: u64,
    types: &[String],
    limit: u32,
) -> anyhow::Result<(Vec<Event>, u64)> {
    let types_json = serde_json::to_string(types)?;
    let seq = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    let mut st = conn.prepare_cached(
        "SELECT data FROM events
         WHERE seq > ?1 AND seq < ?2
           AND (json_array_length(?3) = 0 OR type IN (SELECT value FROM json_each(?3)))
         ORDER BY seq DESC LIMIT ?4",
    )?;
    let rows = st.query_map(
        params![seq(after_seq), seq(before_seq), types_json, limit],
        |r| r.get::<_, String>(0),
    )?;
    let mut out = readable(rows)?;
    out.reverse();
    let mut left_out = 0;
    if out.len() >= limit as usize {
        let oldest = out.first().map_or(before_seq, |e| e.seq);
        let n: i64 = conn.query_row(
            "SELECT count(*) FROM events
             WHERE seq > ?1 AND seq < ?2
               AND (json_array_length(?3) = 0 OR type IN (SELECT value FROM json_each(?3)))",
            params![seq(after_seq), seq(oldest), types_json],
            |r| r.get(0),
        )?;
        left_out = n.max(0) as u64;
    }
    Ok((out, left_out))
}

/// The newest `limit` events (of the given types, newer than `since_ms`), oldest first.
pub fn recent_events(
    conn: &Connection,
    since_ms: i64,
    types: &[String],
    limit: u32,
) -> anyhow::Result<Vec<Event>> {
    let mut newest = select_events(conn, Order::NewestFirst, 0, since_ms, types, limit)?;
    newest.reverse();
    Ok(newest)
}

/// Which end of the log a listing starts from.
enum Order {
    OldestFirst,
    NewestFirst,
}

/// The one query behind both listings.
fn select_events(
    conn: &Connection,
    order: Order,
    after_seq: u64,
    since_ms: i64,
    types: &[String],
    limit: u32,
) -> anyhow::Result<Vec<Event>> {
    let types_json = serde_json::to_string(types)?;
    let direction = match order {
        Order::OldestFirst => "ASC",
        Order::NewestFirst => "DESC",
    };
    let mut st = conn.prepare_cached(&format!(
        "SELECT data FROM events
         WHERE seq > ?1 AND ts >= ?2
           AND (json_array_length(?3) = 0 OR type IN (SELECT value FROM json_each(?3)))
         ORDER BY seq {direction} LIMIT ?4"
    ))?;
    let rows = st.query_map(
        params![
            i64::try_from(after_seq).unwrap_or(i64::MAX),
            since_ms,
            types_json,
            limit
        ],
        |r| r.get::<_, String>(0),
    )?;
    readable(rows)
}

/// The events of logged rows (their `data`), in order. A row this build cannot read (written
/// by a newer one) is skipped, not an error.
fn readable(rows: impl Iterator<Item = rusqlite::Result<String>>) -> anyhow::Result<Vec<Event>> {
    let mut out = Vec::new();
    for row in rows {
        if let Ok(e) = serde_json::from_str::<Event>(&row?) {
            out.push(e);
        }
    }
    Ok(out)
}
