//! The SQLite store: schema and migrations, connection set-up, the read queries (shared by the
//! daemon and the CLI's direct reads) and the write operations (run only by the WriterActor).
//!
//! Architecture invariant: only the WriterActor opens a connection with write access; every
//! other connection is opened read-only (`SQLITE_OPEN_READ_ONLY`). Reads see committed data
//! only (WAL mode), so they need no round trip through the writer.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use std::collections::BTreeMap;

use ccd_protocol::types::{Backup, ColumnInfo, DescribeModels, Project, Setting, TableInfo};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use serde::{Deserialize, Serialize};

use crate::error::ActorError;

mod events;
mod sealed;
mod sessions;
pub use events::*;
pub use sealed::*;
pub use sessions::*;

/// SQLite's `synchronous` setting for the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Off,
    Normal,
    Full,
    Extra,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// NORMAL (default): an acknowledged write survives a crash of the daemon process;
    /// FULL: it also survives power loss.
    pub synchronous: Synchronous,
    pub busy_timeout_ms: u64,
    /// Most writes committed in one group transaction.
    pub max_batch: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            synchronous: Synchronous::Normal,
            busy_timeout_ms: 5_000,
            max_batch: 1_024,
        }
    }
}

/// Versioned migrations; `PRAGMA user_version` holds how many have run. Append only.
const MIGRATIONS: &[M<'static>] = &[
    M::up(
        "CREATE TABLE projects (
        name TEXT PRIMARY KEY NOT NULL,
        path TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE settings (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE backups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        size_bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;",
    ),
    M::up(
        "ALTER TABLE projects ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY NOT NULL,
        project TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        model TEXT,
        agent_session_id TEXT,
        status TEXT NOT NULL DEFAULT 'open',
        created_at INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL,
        turns INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX sessions_by_last_use ON sessions (status, last_used_at);
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        query_id TEXT NOT NULL,
        prompt TEXT NOT NULL,
        result TEXT,
        status TEXT NOT NULL,
        error_class TEXT,
        error TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        num_turns INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 1,
        model TEXT,
        started_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX turns_by_session ON turns (session_id, id);",
    ),
    M::up(
        "CREATE TABLE events (
        seq INTEGER PRIMARY KEY NOT NULL,
        ts INTEGER NOT NULL,
        type TEXT NOT NULL,
        session_id TEXT,
        project TEXT,
        subject TEXT,
        data TEXT NOT NULL
    ) STRICT;
    CREATE INDEX events_by_time ON events (ts);",
    ),
    M::up(
        "CREATE TABLE sealed (
        name TEXT PRIMARY KEY NOT NULL,
        blob BLOB NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;",
    ),
    // Settings are looked up by key only: keyed by it alone, a write changes one B-tree
    // instead of the table and its key index (a third less work for the writer per upsert).
    M::up(
        "CREATE TABLE settings_by_key (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    INSERT INTO settings_by_key (key, value, updated_at)
        SELECT key, value, updated_at FROM settings;
    DROP TABLE settings;
    ALTER TABLE settings_by_key RENAME TO settings;",
    ),
    // The directory a session's conversation lives in: Claude Code keeps conversations per
    // working directory, so every turn after the first must run where the first ran.
    M::up("ALTER TABLE sessions ADD COLUMN cwd TEXT;"),
];

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

pub fn db_path(home: &Path) -> PathBuf {
    home.join("ccd.db")
}

/// Open the write connection: WAL, foreign keys, busy timeout, `synchronous`, then migrate.
const WRITER_STATEMENT_CACHE: usize = 64;

pub fn open_writer(path: &Path, cfg: &WriterConfig) -> anyhow::Result<Connection> {
    let mut conn = Connection::open(path)
        .with_context(|| format!("opening database {} for writing", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .context("enabling WAL")?;
    conn.pragma_update(None, "foreign_keys", true)
        .context("enabling foreign keys")?;
    conn.pragma_update(None, "synchronous", cfg.synchronous.pragma())
        .context("setting synchronous")?;
    conn.busy_timeout(Duration::from_millis(cfg.busy_timeout_ms))
        .context("setting busy timeout")?;
    // Every write op and the writer's transaction statements stay prepared (the default
    // cache of 16 would evict some of them under a mixed load).
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENT_CACHE);
    Migrations::from_slice(MIGRATIONS)
        .to_latest(&mut conn)
        .with_context(|| {
            format!(
                "migrating database {} to version {SCHEMA_VERSION}",
                path.display()
            )
        })?;
    Ok(conn)
}

/// Open a read-only connection. `None` when the database does not exist yet.
pub fn open_reader(path: &Path) -> anyhow::Result<Option<Connection>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening database {} read-only", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))
        .context("setting busy timeout")?;
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .with_context(|| format!("reading the schema version of {}", path.display()))?;
    anyhow::ensure!(
        version <= SCHEMA_VERSION,
        "database {} has schema version {version}, newer than this ccd understands ({SCHEMA_VERSION}); upgrade ccd",
        path.display()
    );
    if version < SCHEMA_VERSION {
        // Not migrated yet (the daemon migrates at start): nothing to read.
        return Ok(None);
    }
    Ok(Some(conn))
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// RFC 3339 back to milliseconds since the epoch (0 when unreadable).
pub fn rfc3339_to_ms(ts: &str) -> i64 {
    humantime::parse_rfc3339_weak(ts)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Reads

const PROJECT_COLUMNS: &str = "name, path, created_at, updated_at, env";

fn project_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    let env: String = r.get(4)?;
    Ok(Project {
        name: r.get(0)?,
        path: r.get(1)?,
        env: serde_json::from_str(&env).unwrap_or_default(),
        created_at: rfc3339(r.get(2)?),
        updated_at: rfc3339(r.get(3)?),
    })
}

fn setting_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Setting> {
    Ok(Setting {
        key: r.get(0)?,
        value: r.get(1)?,
        updated_at: rfc3339(r.get(2)?),
    })
}

fn backup_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Backup> {
    Ok(Backup {
        id: r.get(0)?,
        path: r.get(1)?,
        size_bytes: r.get::<_, i64>(2)?.max(0) as u64,
        created_at: rfc3339(r.get(3)?),
    })
}

pub fn projects(conn: &Connection) -> anyhow::Result<Vec<Project>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects ORDER BY name"
    ))?;
    let rows = st.query_map([], project_row)?.collect::<Result<_, _>>();
    rows.context("listing projects")
}

pub fn project(conn: &Connection, name: &str) -> anyhow::Result<Option<Project>> {
    conn.query_row(
        &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE name = ?1"),
        [name],
        project_row,
    )
    .optional()
    .with_context(|| format!("reading project {name}"))
}

pub fn settings(conn: &Connection) -> anyhow::Result<Vec<Setting>> {
    let mut st = conn.prepare_cached("SELECT key, value, updated_at FROM settings ORDER BY key")?;
    let rows = st.query_map([], setting_row)?.collect::<Result<_, _>>();
    rows.context("listing settings")
}

pub fn setting(conn: &Connection, key: &str) -> anyhow::Result<Option<Setting>> {
    conn.prepare_cached("SELECT key, value, updated_at FROM settings WHERE key = ?1")?
        .query_row([key], setting_row)
        .optional()
        .with_context(|| format!("reading setting {key}"))
}

pub fn backups(conn: &Connection) -> anyhow::Result<Vec<Backup>> {
    let mut st = conn
        .prepare_cached("SELECT id, path, size_bytes, created_at FROM backups ORDER BY id DESC")?;
    let rows = st.query_map([], backup_row)?.collect::<Result<_, _>>();
    rows.context("listing backups")
}

/// The schema as `system.describe_models` reports it, read from the database itself.
/// Hints follow the column naming convention: `*_at` is a datetime (milliseconds since the
/// epoch), `path` a filesystem path, `value` free text.
pub fn describe_models(conn: &Connection) -> anyhow::Result<DescribeModels> {
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let mut st = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let names: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    let mut tables = Vec::new();
    for name in names {
        let mut st =
            conn.prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1)")?;
        let columns = st
            .query_map([&name], |r| {
                let col: String = r.get(0)?;
                let hint = if col.ends_with("_at") {
                    Some("datetime")
                } else if col == "path" {
                    Some("path")
                } else if col == "value" {
                    Some("text")
                } else {
                    None
                };
                Ok(ColumnInfo {
                    hint: hint.map(String::from),
                    name: col,
                    ty: r.get(1)?,
                    nullable: !r.get::<_, bool>(2)?,
                    primary_key: r.get::<_, i64>(3)? > 0,
                })
            })?
            .collect::<Result<_, _>>()?;
        tables.push(TableInfo { name, columns });
    }
    Ok(DescribeModels {
        schema_version: version,
        tables,
    })
}

// ---------------------------------------------------------------------------------------------
// Writes: each runs inside the writer's group transaction, in a savepoint of its own.

/// One write. `apply` runs inside a savepoint: an `Err` rolls back this write alone.
pub trait WriteOp: Send + 'static {
    type Output: Send + 'static;
    /// The op changes the database with at most one SQL statement, and fails before it or in
    /// it. SQLite applies or undoes a statement as a whole, so the writer runs such an op in its
    /// group transaction without a savepoint of its own.
    const ONE_STATEMENT: bool = false;
    fn apply(self, conn: &Connection) -> Result<Self::Output, ActorError>;
}

/// `Connection::execute` through the statement cache: the writer runs the same few statements
/// over and over, and parsing one costs about as much as running it.
pub(crate) trait ExecCached {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl ExecCached for Connection {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

pub(crate) fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

pub(crate) fn db_err(what: &str) -> impl FnOnce(rusqlite::Error) -> ActorError + '_ {
    move |e| ActorError::Internal(format!("{what}: {e}"))
}

pub struct CreateProject {
    pub name: String,
    pub path: String,
    pub env: BTreeMap<String, String>,
}

fn env_json(env: &BTreeMap<String, String>) -> String {
    serde_json::to_string(env).unwrap_or_else(|_| "{}".into())
}

impl WriteOp for CreateProject {
    type Output = Project;
    fn apply(self, conn: &Connection) -> Result<Project, ActorError> {
        let now = now_ms();
        conn.execute_cached(
            "INSERT INTO projects (name, path, created_at, updated_at, env) VALUES (?1, ?2, ?3, ?3, ?4)",
            params![self.name, self.path, now, env_json(&self.env)],
        )
        .map_err(|e| {
            if is_constraint(&e) {
                ActorError::Conflict(format!("project `{}` already exists", self.name))
            } else {
                ActorError::Internal(format!("creating project {}: {e}", self.name))
            }
        })?;
        Ok(Project {
            name: self.name,
            path: self.path,
            env: self.env,
            created_at: rfc3339(now),
            updated_at: rfc3339(now),
        })
    }
}

pub struct UpdateProject {
    pub name: String,
    pub path: Option<String>,
    pub new_name: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
}

impl WriteOp for UpdateProject {
    type Output = Project;
    fn apply(self, conn: &Connection) -> Result<Project, ActorError> {
        let what = format!("updating project {}", self.name);
        let current = project(conn, &self.name)
            .map_err(|e| ActorError::Internal(format!("{what}: {e:#}")))?
            .ok_or_else(|| ActorError::NotFound(format!("no project named `{}`", self.name)))?;
        let new_name = self.new_name.unwrap_or_else(|| current.name.clone());
        let path = self.path.unwrap_or(current.path);
        let env = self.env.unwrap_or(current.env);
        conn.execute_cached(
            "UPDATE projects SET name = ?1, path = ?2, updated_at = ?3, env = ?4 WHERE name = ?5",
            params![new_name, path, now_ms(), env_json(&env), self.name],
        )
        .map_err(|e| {
            if is_constraint(&e) {
                ActorError::Conflict(format!("project `{new_name}` already exists"))
            } else {
                ActorError::Internal(format!("{what}: {e}"))
            }
        })?;
        if new_name != self.name {
            // Sessions keep following the project under its new name.
            conn.execute_cached(
                "UPDATE sessions SET project = ?1 WHERE project = ?2",
                params![new_name, self.name],
            )
            .map_err(|e| ActorError::Internal(format!("{what}: renaming it in sessions: {e}")))?;
        }
        project(conn, &new_name)
            .map_err(|e| ActorError::Internal(format!("{what}: {e:#}")))?
            .ok_or_else(|| ActorError::Internal(format!("{what}: the row vanished")))
    }
}

pub struct DeleteProject {
    pub name: String,
}

impl WriteOp for DeleteProject {
    type Output = Project;
    fn apply(self, conn: &Connection) -> Result<Project, ActorError> {
        let found = project(conn, &self.name)
            .map_err(|e| ActorError::Internal(format!("deleting project {}: {e:#}", self.name)))?
            .ok_or_else(|| ActorError::NotFound(format!("no project named `{}`", self.name)))?;
        conn.execute_cached("DELETE FROM projects WHERE name = ?1", [&self.name])
            .map_err(db_err("deleting project"))?;
        Ok(found)
    }
}

pub struct UpsertSetting {
    pub key: String,
    pub value: String,
}

impl WriteOp for UpsertSetting {
    type Output = Setting;
    const ONE_STATEMENT: bool = true;
    fn apply(self, conn: &Connection) -> Result<Setting, ActorError> {
        let now = now_ms();
        conn.prepare_cached(
            "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .and_then(|mut st| st.execute(params![self.key, self.value, now]))
        .map_err(db_err("upserting setting"))?;
        Ok(Setting {
            key: self.key,
            value: self.value,
            updated_at: rfc3339(now),
        })
    }
}

pub struct DeleteSetting {
    pub key: String,
}

impl WriteOp for DeleteSetting {
    type Output = Setting;
    const ONE_STATEMENT: bool = true;
    fn apply(self, conn: &Connection) -> Result<Setting, ActorError> {
        let found = setting(conn, &self.key)
            .map_err(|e| ActorError::Internal(format!("deleting setting: {e:#}")))?
            .ok_or_else(|| ActorError::NotFound(format!("no setting `{}`", self.key)))?;
        conn.execute_cached("DELETE FROM settings WHERE key = ?1", [&self.key])
            .map_err(db_err("deleting setting"))?;
        Ok(found)
    }
}

pub struct RecordBackup {
    pub path: String,
    pub size_bytes: u64,
}

impl WriteOp for RecordBackup {
    type Output = Backup;
    fn apply(self, conn: &Connection) -> Result<Backup, ActorError> {
        let now = now_ms();
        conn.execute_cached(
            "INSERT INTO backups (path, size_bytes, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(path) DO UPDATE SET size_bytes = excluded.size_bytes, created_at = excluded.created_at",
            params![self.path, self.size_bytes as i64, now],
        )
        .map_err(db_err("recording backup"))?;
        conn.query_row(
            "SELECT id, path, size_bytes, created_at FROM backups WHERE path = ?1",
            [&self.path],
            backup_row,
        )
        .map_err(db_err("reading back the backup record"))
    }
}

pub struct DeleteBackup {
    pub id: i64,
}

impl WriteOp for DeleteBackup {
    type Output = Backup;
    fn apply(self, conn: &Connection) -> Result<Backup, ActorError> {
        let found = conn
            .query_row(
                "SELECT id, path, size_bytes, created_at FROM backups WHERE id = ?1",
                [self.id],
                backup_row,
            )
            .optional()
            .map_err(db_err("reading backup"))?
            .ok_or_else(|| ActorError::NotFound(format!("no backup with id {}", self.id)))?;
        conn.execute_cached("DELETE FROM backups WHERE id = ?1", [self.id])
            .map_err(db_err("deleting backup record"))?;
        Ok(found)
    }
}

/// A copy of the database made by [`snapshot_in`], waiting for [`place_snapshot`] to give it its
/// name. It lives in a private directory (0700) of its own beside the destination: SQLite
/// names its journal after the file (`<name>-journal`), and in a directory other users may
/// write (a shared backups folder, /tmp) one of them could plant a symlink by that name; in a
/// directory only we can enter, nobody can. Dropped unplaced, it is removed.
#[derive(Debug)]
pub struct Snapshot {
    file: tempfile::NamedTempFile,
    _dir: tempfile::TempDir,
}

/// A consistent copy of the database at `src`, made with SQLite's online backup API in one
/// step from a read-only connection (WAL readers never block the writer, which keeps
/// committing), into a new file in a private directory made inside `dir` (the destination's
/// directory, so that placing it is a rename; concurrent backups never share one, and no file
/// already there is touched).
pub fn snapshot_in(src: &Path, dir: &Path) -> anyhow::Result<Snapshot> {
    use std::os::unix::fs::PermissionsExt;
    let from = open_reader(src)?.context("the database does not exist yet")?;
    let private = tempfile::Builder::new()
        .prefix(".ccd-backup-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(dir)
        .with_context(|| format!("creating a private directory in {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("backup-")
        .suffix(".partial")
        .tempfile_in(private.path())
        .with_context(|| format!("creating a temporary file in {}", private.path().display()))?;
    let mut to = Connection::open(tmp.path())
        .with_context(|| format!("opening {}", tmp.path().display()))?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to).context("starting backup")?;
        backup.step(-1).context("copying pages")?;
    }
    to.close()
        .map_err(|(_, e)| e)
        .context("closing backup file")?;
    Ok(Snapshot {
        file: tmp,
        _dir: private,
    })
}

/// Give `snapshot` the name `dest` if nothing has it, not even a dangling symlink (in one step,
/// so of two backups to the same name exactly one wins): its size. When the name is taken,
/// the snapshot comes back untouched, to try another name or drop.
pub fn place_snapshot(snapshot: Snapshot, dest: &Path) -> anyhow::Result<Result<u64, Snapshot>> {
    let Snapshot { file, _dir } = snapshot;
    let size = file
        .as_file()
        .metadata()
        .context("reading the backup's size")?
        .len();
    match file.persist_noclobber(dest) {
        Ok(_) => Ok(Ok(size)),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(Err(Snapshot { file: e.file, _dir }))
        }
        Err(e) => {
            Err(e.error).with_context(|| format!("moving backup into place at {}", dest.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path) -> Connection {
        open_writer(&db_path(dir), &WriterConfig::default()).unwrap()
    }

    #[test]
    fn settings_survive_the_migration_to_a_table_keyed_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(dir.path());
        {
            let mut conn = Connection::open(&path).unwrap();
            Migrations::from_slice(&MIGRATIONS[..5])
                .to_latest(&mut conn)
                .unwrap();
            conn.execute(
                "INSERT INTO settings (key, value, updated_at) VALUES ('kept', 'yes', 7)",
                [],
            )
            .unwrap();
        }
        let conn = writer(dir.path());
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let kept = setting(&conn, "kept").unwrap().unwrap();
        assert_eq!((kept.key.as_str(), kept.value.as_str()), ("kept", "yes"));
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'settings'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sql.contains("WITHOUT ROWID"), "{sql}");
    }

    #[test]
    fn migrates_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(dir.path());
        CreateProject {
            name: "a".into(),
            path: "/tmp".into(),
            env: Default::default(),
        }
        .apply(&conn)
        .unwrap();
        let err = CreateProject {
            name: "a".into(),
            path: "/".into(),
            env: Default::default(),
        }
        .apply(&conn)
        .unwrap_err();
        assert!(matches!(err, ActorError::Conflict(_)), "{err:?}");
        UpsertSetting {
            key: "k".into(),
            value: "v1".into(),
        }
        .apply(&conn)
        .unwrap();
        UpsertSetting {
            key: "k".into(),
            value: "v2".into(),
        }
        .apply(&conn)
        .unwrap();

        let reader = open_reader(&db_path(dir.path())).unwrap().unwrap();
        assert_eq!(projects(&reader).unwrap().len(), 1);
        assert_eq!(setting(&reader, "k").unwrap().unwrap().value, "v2");
        let models = describe_models(&reader).unwrap();
        assert_eq!(models.schema_version, SCHEMA_VERSION);
        let names: Vec<_> = models.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "backups", "events", "projects", "sealed", "sessions", "settings", "turns"
            ]
        );
        let proj = models.tables.iter().find(|t| t.name == "projects").unwrap();
        let created = proj
            .columns
            .iter()
            .find(|c| c.name == "created_at")
            .unwrap();
        assert_eq!(created.hint.as_deref(), Some("datetime"));
        assert!(
            reader.execute("DELETE FROM settings", []).is_err(),
            "reader must be read-only"
        );
    }

    #[test]
    fn missing_database_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open_reader(&db_path(dir.path())).unwrap().is_none());
    }

    #[test]
    fn update_and_delete_report_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(dir.path());
        let err = DeleteProject {
            name: "nope".into(),
        }
        .apply(&conn)
        .unwrap_err();
        assert!(matches!(err, ActorError::NotFound(_)));
        let err = UpdateProject {
            name: "nope".into(),
            path: None,
            new_name: None,
            env: None,
        }
        .apply(&conn)
        .unwrap_err();
        assert!(matches!(err, ActorError::NotFound(_)));
        CreateProject {
            name: "a".into(),
            path: "/tmp".into(),
            env: Default::default(),
        }
        .apply(&conn)
        .unwrap();
        CreateProject {
            name: "b".into(),
            path: "/tmp".into(),
            env: Default::default(),
        }
        .apply(&conn)
        .unwrap();
        let err = UpdateProject {
            name: "a".into(),
            path: None,
            new_name: Some("b".into()),
            env: None,
        }
        .apply(&conn)
        .unwrap_err();
        assert!(matches!(err, ActorError::Conflict(_)));
        let p = UpdateProject {
            name: "a".into(),
            path: Some("/".into()),
            new_name: Some("c".into()),
            env: None,
        }
        .apply(&conn)
        .unwrap();
        assert_eq!((p.name.as_str(), p.path.as_str()), ("c", "/"));
    }

    #[test]
    fn backup_copies_a_consistent_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(dir.path());
        UpsertSetting {
            key: "k".into(),
            value: "v".into(),
        }
        .apply(&conn)
        .unwrap();
        let dest = dir.path().join("b.db");
        // Files beside it, including one with the name earlier versions used for the copy in
        // progress, are not touched.
        let beside = dir.path().join("b.db.partial");
        std::fs::write(&beside, "mine").unwrap();
        let snap = snapshot_in(&db_path(dir.path()), dir.path()).unwrap();
        let size = place_snapshot(snap, &dest).unwrap().unwrap();
        assert_eq!(size, std::fs::metadata(&dest).unwrap().len());
        assert!(size > 0);
        assert_eq!(std::fs::read_to_string(&beside).unwrap(), "mine");
        let copy = Connection::open(&dest).unwrap();
        let v: String = copy
            .query_row("SELECT value FROM settings WHERE key='k'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, "v");
        // Never over anything: a file, or a symlink to nowhere. The snapshot comes back.
        let nowhere = dir.path().join("dangling.db");
        std::os::unix::fs::symlink(dir.path().join("no-such-file"), &nowhere).unwrap();
        for taken in [&dest, &nowhere] {
            let snap = snapshot_in(&db_path(dir.path()), dir.path()).unwrap();
            let back = place_snapshot(snap, taken).unwrap().unwrap_err();
            assert!(back.file.path().exists());
            // Made where only we can enter: nobody else can plant its journal's name.
            use std::os::unix::fs::PermissionsExt;
            let private = back.file.path().parent().unwrap();
            assert_ne!(private, dir.path());
            let mode = std::fs::metadata(private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), size);
        assert!(nowhere.symlink_metadata().unwrap().is_symlink());
        // Dropped snapshots leave nothing behind.
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial") || n.starts_with(".ccd-backup-"))
            .collect();
        left.sort();
        assert_eq!(left, ["b.db.partial"]);
    }
}
