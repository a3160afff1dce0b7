//! Backups of the database: `backup.create` copies it with SQLite's online backup API while
//! the daemon keeps serving and records the copy; `backup.delete` forgets a backup and removes
//! its file. Reads of the record (`backup.list`) go straight to the store.

use std::path::{Path, PathBuf};

use actix::prelude::*;
use ccd_protocol::RpcError;
use ccd_protocol::types::Backup;

use crate::blocking::{off_loop, try_off_loop};
use crate::error::ActorError;
use crate::store;
use crate::supervise::ask;
use crate::writer::{Commit, WriterActor};

/// Makes and removes backups of the database of `$CCD_HOME`.
#[derive(Clone)]
pub struct BackupService {
    home: PathBuf,
    writer: Addr<WriterActor>,
}

impl BackupService {
    pub fn new(home: PathBuf, writer: Addr<WriterActor>) -> Self {
        BackupService { home, writer }
    }

    /// `backup.create`: copy the database to `path` (absolute, not there yet) or to a new file
    /// under `$CCD_HOME/backups/`, and record the copy.
    pub async fn create(self, path: Option<String>) -> Result<Backup, ActorError> {
        let home = self.home.clone();
        let db = store::db_path(&self.home);
        // Checking the destination touches the file system, and the copy is long: both on the
        // blocking pool.
        let (dest, size) = try_off_loop("backup task", move || {
            let named = path.is_some();
            let first = backup_destination(&home, path.as_deref())?;
            let mut dest = first.clone();
            let failed = |dest: &Path, e: anyhow::Error| {
                ActorError::Internal(format!("creating backup {}: {e:#}", dest.display()))
            };
            let dir = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
            let mut snapshot = store::snapshot_in(&db, &dir).map_err(|e| failed(&dest, e))?;
            // A name of our own choosing that another backup took meanwhile gets a number; a
            // name the caller chose is never replaced.
            for n in 1.. {
                match store::place_snapshot(snapshot, &dest).map_err(|e| failed(&dest, e))? {
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
        ask(&self.writer, "writer", Commit(op)).await
    }

    /// `backup.delete`: forget backup `id` and remove its file (already gone is fine; a file
    /// that cannot be removed is logged, the record is gone either way).
    pub async fn delete(self, id: i64) -> Result<Backup, ActorError> {
        let backup = ask(&self.writer, "writer", Commit(store::DeleteBackup { id })).await?;
        let path = backup.path.clone();
        let removed = off_loop("removing a backup file", move || std::fs::remove_file(path)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => tracing::warn!("removing backup file {}: {e}", backup.path),
            Err(e) => tracing::warn!("removing backup file {}: {e}", backup.path),
        }
        Ok(backup)
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
