//! Sealed documents (agent definitions, rules, hooks): opaque blobs by name. Only ciphertext is
//! ever written here; sealing and opening happen in [`crate::agents`].

use rusqlite::{Connection, OptionalExtension, params};

use super::{ExecCached, WriteOp, db_err, now_ms};
use crate::error::ActorError;

/// Insert or replace blobs, all in one savepoint; returns the names that existed before.
pub struct PutSealed {
    pub items: Vec<(String, Vec<u8>)>,
}

impl WriteOp for PutSealed {
    type Output = Vec<String>;
    fn apply(self, conn: &Connection) -> Result<Vec<String>, ActorError> {
        let mut replaced = Vec::new();
        let now = now_ms();
        for (name, blob) in self.items {
            let existed: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sealed WHERE name = ?1)",
                    [&name],
                    |r| r.get(0),
                )
                .map_err(db_err("reading sealed documents"))?;
            conn.execute_cached(
                "INSERT INTO sealed (name, blob, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET blob = excluded.blob, updated_at = excluded.updated_at",
                params![name, blob, now],
            )
            .map_err(db_err("writing a sealed document"))?;
            if existed {
                replaced.push(
                    name.rsplit('/')
                        .next()
                        .unwrap_or(&name)
                        .trim_end_matches(".md")
                        .to_string(),
                );
            }
        }
        Ok(replaced)
    }
}

/// Delete a blob; false when there was none.
pub struct DeleteSealed {
    pub name: String,
}

impl WriteOp for DeleteSealed {
    type Output = bool;
    fn apply(self, conn: &Connection) -> Result<bool, ActorError> {
        let n = conn
            .execute_cached("DELETE FROM sealed WHERE name = ?1", [&self.name])
            .map_err(db_err("deleting a sealed document"))?;
        Ok(n > 0)
    }
}

pub fn sealed(conn: &Connection, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row("SELECT blob FROM sealed WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Every blob whose name starts with `prefix`, by name.
pub fn sealed_with_prefix(
    conn: &Connection,
    prefix: &str,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut st = conn.prepare_cached(
        "SELECT name, blob FROM sealed WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
    )?;
    let rows = st
        .query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
