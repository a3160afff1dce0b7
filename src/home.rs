//! `CCD_HOME` and the files in it, the single-instance lock on `ccd.pid`, and direct reads of
//! the database in it.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ccd_actors::store;

/// The daemon's home directory and the paths inside it.
#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    /// `$CCD_HOME`, or `~/.ccd`.
    pub fn from_env() -> anyhow::Result<Home> {
        let root = match std::env::var_os("CCD_HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h),
            _ => {
                let home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .context("neither CCD_HOME nor HOME is set; set CCD_HOME to ccd's directory")?;
                PathBuf::from(home).join(".ccd")
            }
        };
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .context("reading the current directory")?
                .join(root)
        };
        Ok(Home { root })
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("ccd.sock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.root.join("ccd.pid")
    }

    /// The HTTP API's base URL while the daemon serves it (written at bind, removed at stop).
    pub fn http_url_file(&self) -> PathBuf {
        self.root.join("http.url")
    }

    pub fn db(&self) -> PathBuf {
        ccd_actors::store::db_path(&self.root)
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn log_file(&self) -> PathBuf {
        self.logs().join("ccd.log")
    }

    /// Create the home (0700) and its logs directory; tighten an existing home to 0700.
    pub fn ensure(&self) -> anyhow::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let mode = fs::metadata(&self.root)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("setting {} to mode 0700", self.root.display()))?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.logs())
            .with_context(|| format!("creating {}", self.logs().display()))?;
        Ok(())
    }
}

/// The exclusive lock a running daemon holds on `ccd.pid` for its whole life. The kernel drops
/// it when the process dies, however it dies, so a stale pid file never blocks a new daemon.
pub struct PidLock {
    file: File,
    path: PathBuf,
}

pub enum Lock {
    Acquired(PidLock),
    /// Another daemon holds the lock; its pid as written in the file, if readable.
    Held(Option<u32>),
}

/// How many times `acquire` tries again, 10 ms apart, before it takes the lock as held.
const PROBE_RETRIES: u32 = 5;

impl PidLock {
    pub fn acquire(path: &Path) -> anyhow::Result<Lock> {
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            // `probe` (any CLI command that finds no daemon answering) holds the lock for an
            // instant: a few tries apart tell that from a daemon that holds it.
            let mut tries = 0;
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(TryLockError::WouldBlock) if tries < PROBE_RETRIES => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(TryLockError::WouldBlock) => {
                        return Ok(Lock::Held(read_pid(&mut file)));
                    }
                    Err(TryLockError::Error(e)) => {
                        return Err(e).with_context(|| format!("locking {}", path.display()));
                    }
                }
            }
            // A daemon that was stopping may have removed the file between our open and lock:
            // then we hold a lock on an unlinked file. Start over on the path's current file.
            let same = fs::metadata(path)
                .ok()
                .zip(file.metadata().ok())
                .is_some_and(|(on_disk, ours)| {
                    on_disk.ino() == ours.ino() && on_disk.dev() == ours.dev()
                });
            if !same {
                continue;
            }
            file.set_len(0).context("truncating the pid file")?;
            file.rewind()?;
            write!(file, "{}", std::process::id()).context("writing the pid file")?;
            file.sync_all().ok();
            return Ok(Lock::Acquired(PidLock {
                file,
                path: path.to_path_buf(),
            }));
        }
    }

    /// Whether some process holds the lock right now, and its pid.
    pub fn probe(path: &Path) -> Option<Option<u32>> {
        let mut file = OpenOptions::new().read(true).write(true).open(path).ok()?;
        match file.try_lock() {
            Ok(()) => None,
            Err(TryLockError::WouldBlock) => Some(read_pid(&mut file)),
            Err(TryLockError::Error(_)) => None,
        }
    }

    /// Remove the pid file, then release the lock.
    pub fn release(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// A direct, read-only query of the database; the default (empty) when there is none yet.
pub fn read<T: Default>(
    home: &Home,
    f: impl FnOnce(&rusqlite::Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match store::open_reader(&home.db())? {
        Some(conn) => f(&conn),
        None => Ok(T::default()),
    }
}
