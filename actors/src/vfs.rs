//! The VfsActor (`vfs`): a read-only FUSE filesystem, mounted while the daemon runs, that serves
//! the sealed agent definitions to agent processes as plain files.
//!
//! Contents: `health`, `.manifest`, `README.txt`, `agents.sealed`, `orchestrator.sealed`,
//! `hooks.sealed` (JSON bundles sealed under a key generated at boot and held only in memory),
//! and `agents/<name>.md` (each definition as a Claude Code subagent file). The definitions are
//! opened from the database's sealed copies when the snapshot is built (at start and whenever
//! they change), and the snapshot keeps them in plain text in the daemon's memory, from which
//! reads are served. Nothing is ever written to disk in plain text.
//!
//! The filesystem is served by fuser on its own thread from a [`Snapshot`] shared by `Arc`; the
//! actor rebuilds the snapshot when definitions change. A restart of the actor keeps the mount
//! and the snapshot, so readers never lose the filesystem. The kernel enforces read-only (the
//! `ro` mount option: every kind of write fails with EROFS) and owner-only access: the mount
//! has no `allow_other`/`allow_root`, so the kernel lets only processes whose ids are all the
//! daemon's user into it (not even root), and `default_permissions` with modes 0500/0400 keeps
//! even those to reading.
//!
//! fusermount3's `auto_unmount` is not used: it needs `allow_other` (its setuid-root helper could
//! not otherwise look into the mount; fuser refuses the combination). An [`UnmountWatchdog`]
//! takes its place.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest;

use crate::agents::{AgentService, HOOKS_FILE, RULES_FILE};
use crate::seal::{self, MasterKey};
use crate::supervise::{
    Handle, Reply, Request as ActorRequest, Supervise, Supervision, supervised,
};

/// `[vfs]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VfsConfig {
    pub enabled: bool,
    /// Where to mount; empty: `$CCD_HOME/vfs`.
    pub mountpoint: String,
}

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            enabled: true,
            mountpoint: String::new(),
        }
    }
}

pub const SEALED_FILES: [&str; 3] = ["agents.sealed", "orchestrator.sealed", "hooks.sealed"];

const README: &str = "This is ccd's agent filesystem: a read-only view, served by the ccd daemon \
while it runs, of the agent definitions, orchestration rules and hooks it keeps sealed.\n\n\
- health: OK, or ERROR with the reason\n\
- .manifest: version, build, agent count, and the sha256 of each sealed file\n\
- agents/<name>.md: each agent as a Claude Code subagent file\n\
- *.sealed: JSON bundles sealed under a key that exists only in the daemon's memory for this \
boot; `ccd vfs unseal FILE` opens one\n\n\
Nothing here can be changed except through ccd (`ccd agent import`, ...).\n";

/// What the filesystem shows, rebuilt as a whole.
#[derive(Default)]
pub struct Snapshot {
    /// Top-level files by name.
    files: BTreeMap<String, Vec<u8>>,
    /// `agents/<name>.md` contents by file name.
    agents: BTreeMap<String, Vec<u8>>,
    built: Option<SystemTime>,
}

const ROOT: u64 = 1;
const AGENTS_DIR: u64 = 2;
const FIRST_FILE: u64 = 16;
const FIRST_AGENT: u64 = 1 << 20;

impl Snapshot {
    /// Inode numbers follow the sorted names, so they are stable for a given set of names.
    fn file_ino(&self, name: &str) -> Option<u64> {
        self.files
            .keys()
            .position(|k| k == name)
            .map(|i| FIRST_FILE + i as u64)
    }

    fn agent_ino(&self, name: &str) -> Option<u64> {
        self.agents
            .keys()
            .position(|k| k == name)
            .map(|i| FIRST_AGENT + i as u64)
    }

    fn content(&self, ino: u64) -> Option<&[u8]> {
        if (FIRST_AGENT..FIRST_AGENT + self.agents.len() as u64).contains(&ino) {
            return self
                .agents
                .values()
                .nth((ino - FIRST_AGENT) as usize)
                .map(Vec::as_slice);
        }
        if (FIRST_FILE..FIRST_FILE + self.files.len() as u64).contains(&ino) {
            return self
                .files
                .values()
                .nth((ino - FIRST_FILE) as usize)
                .map(Vec::as_slice);
        }
        None
    }

    /// The current bytes of a top-level file.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }
}

pub type SharedSnapshot = Arc<RwLock<Snapshot>>;

/// Build the snapshot from the sealed store; `boot_key` seals the `*.sealed` bundles. The
/// definitions are opened, rendered and sealed again on the blocking pool (they may be
/// hundreds of MiB), never on the event loop.
pub async fn build(agents: &AgentService, boot_key: &Arc<MasterKey>) -> Snapshot {
    let fetched: Result<_, String> = async {
        let defs = agents.all().await.map_err(|e| e.to_string())?;
        let damaged = agents.damaged();
        let rules = agents
            .clone()
            .get_doc(RULES_FILE)
            .await
            .map_err(|e| e.to_string())?;
        let hooks = agents
            .clone()
            .get_doc(HOOKS_FILE)
            .await
            .map_err(|e| e.to_string())?;
        Ok((defs, rules, hooks, damaged))
    }
    .await;
    let key = boot_key.clone();
    let assembled = crate::blocking::off_loop("building the agent filesystem", move || {
        assemble(fetched, &key)
    })
    .await
    .map_err(|e| e.to_string());
    assembled.unwrap_or_else(|e| assemble(Err(e), boot_key))
}

/// The snapshot of what was read from the store (or of why it could not be).
fn assemble(
    fetched: Result<
        (
            Vec<ccd_protocol::types::AgentDef>,
            serde_json::Value,
            serde_json::Value,
            Vec<String>,
        ),
        String,
    >,
    boot_key: &MasterKey,
) -> Snapshot {
    let mut s = Snapshot {
        built: Some(SystemTime::now()),
        ..Default::default()
    };
    let mut damaged = Vec::new();
    let outcome = fetched.and_then(|(defs, rules, hooks, left_out)| {
        damaged = left_out;
        for d in &defs {
            s.agents.insert(
                format!("{}.md", d.name),
                crate::agents::to_markdown(d).into_bytes(),
            );
        }
        let bundles = [
            ("agents.sealed", json!({ "agents": defs })),
            ("orchestrator.sealed", json!({ "rules": rules })),
            ("hooks.sealed", json!({ "hooks": hooks })),
        ];
        let mut sums = serde_json::Map::new();
        for (name, value) in bundles {
            let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
            let blob = seal::seal(boot_key, name, &bytes).map_err(|e| format!("{e:#}"))?;
            sums.insert(name.into(), json!(hex(&sha2::Sha256::digest(&blob))));
            s.files.insert(name.into(), blob);
        }
        let manifest = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "build_commit": env!("CCDBUILD_COMMIT"),
            "build_date": env!("CCDBUILD_DATE"),
            "agent_count": defs.len(),
            "sha256": sums,
        });
        s.files.insert(
            ".manifest".into(),
            serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?,
        );
        Ok(())
    });
    let health = match &outcome {
        Ok(()) if damaged.is_empty() => "OK\n".to_string(),
        // Served, but without these: the first word stays OK for `ccd launch`.
        Ok(()) => format!("OK (damaged, left out: {})\n", damaged.join(", ")),
        Err(e) => format!("ERROR: {}\n", e.replace('\n', " ")),
    };
    s.files.insert("health".into(), health.into_bytes());
    s.files
        .insert("README.txt".into(), README.as_bytes().to_vec());
    s
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The FUSE side

struct CcdFs {
    snapshot: SharedSnapshot,
    uid: u32,
    gid: u32,
    /// Lives as long as the session: dropped (and stopped) when the filesystem is.
    _watchdog: Option<UnmountWatchdog>,
}

const TTL: Duration = Duration::ZERO;

impl CcdFs {
    fn attr(&self, ino: u64, kind: FileType, size: u64, mtime: SystemTime) -> FileAttr {
        let dir = kind == FileType::Directory;
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: if dir { 0o500 } else { 0o400 },
            nlink: if dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }

    fn lookup_attr(&self, ino: u64) -> Option<FileAttr> {
        let s = self.snapshot.read().ok()?;
        let t = s.built.unwrap_or(SystemTime::UNIX_EPOCH);
        match ino {
            ROOT | AGENTS_DIR => Some(self.attr(ino, FileType::Directory, 0, t)),
            _ => s
                .content(ino)
                .map(|c| self.attr(ino, FileType::RegularFile, c.len() as u64, t)),
        }
    }
}

impl Filesystem for CcdFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        let ino = {
            let Ok(s) = self.snapshot.read() else {
                return reply.error(Errno::EIO);
            };
            match u64::from(parent) {
                ROOT if name == "agents" => Some(AGENTS_DIR),
                ROOT => s.file_ino(name),
                AGENTS_DIR => s.agent_ino(name),
                _ => None,
            }
        };
        match ino.and_then(|i| self.lookup_attr(i)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lookup_attr(u64::from(ino)) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Ok(s) = self.snapshot.read() else {
            return reply.error(Errno::EIO);
        };
        match s.content(u64::from(ino)) {
            Some(c) => {
                let start = (offset as usize).min(c.len());
                let end = start.saturating_add(size as usize).min(c.len());
                reply.data(&c[start..end]);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Ok(s) = self.snapshot.read() else {
            return reply.error(Errno::EIO);
        };
        let ino = u64::from(ino);
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino, FileType::Directory, ".".into()),
            (ROOT, FileType::Directory, "..".into()),
        ];
        match ino {
            ROOT => {
                entries.push((AGENTS_DIR, FileType::Directory, "agents".into()));
                for (i, name) in s.files.keys().enumerate() {
                    entries.push((FIRST_FILE + i as u64, FileType::RegularFile, name.clone()));
                }
            }
            AGENTS_DIR => {
                for (i, name) in s.agents.keys().enumerate() {
                    entries.push((FIRST_AGENT + i as u64, FileType::RegularFile, name.clone()));
                }
            }
            _ => return reply.error(Errno::ENOTDIR),
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// If `path` is a FUSE mount left by a daemon that died, lazily unmount it.
fn clean_stale_mount(path: &Path) {
    let stale =
        matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
    if stale {
        tracing::warn!("cleaning up a stale mount at {}", path.display());
        let _ = crate::executor::process::child_command("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(path)
            .status();
    }
}

/// Whether `path` is a mount point now (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(target.as_ref()))
}

/// Unmount: end the session, then make sure the kernel mount is gone.
pub fn unmount(mountpoint: &Path, session: fuser::BackgroundSession) {
    drop(session);
    for _ in 0..50 {
        if !is_mounted(mountpoint) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(
        "{} still mounted; unmounting it with fusermount3",
        mountpoint.display()
    );
    let _ = crate::executor::process::child_command("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status();
}

/// What `auto_unmount` would do, for an owner-only mount: a small shell process, with the
/// daemon's own ids, that waits for the end of a pipe the daemon holds (its write end is
/// close-on-exec, so agent processes do not inherit it). When the daemon dies, however it dies,
/// the pipe closes; if the mount is then dead (it cannot even be stat'ed: ENOTCONN), the helper
/// unmounts it with `fusermount3 -u -z`. A live mount (say a new daemon's) is left alone.
/// fusermount3's own `auto_unmount` cannot do this without `allow_other`: its helper runs as
/// setuid root, and the kernel answers EACCES, not ENOTCONN, to a process whose ids are not all
/// the owner's. In its own process group, so a signal to the daemon's group does not reach it.
struct UnmountWatchdog(std::process::Child);

const WATCHDOG_SCRIPT: &str = r#"read -r _ ; [ -e "$1" ] || exec fusermount3 -u -z -- "$1""#;

impl UnmountWatchdog {
    fn spawn(mountpoint: &Path) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        use std::process::Stdio;
        crate::executor::process::child_command("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("ccd-vfs-unmount-watchdog")
            .arg(mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/")
            .process_group(0)
            .spawn()
            .map(UnmountWatchdog)
    }
}

impl Drop for UnmountWatchdog {
    /// The daemon unmounts on its way out: the helper is no longer needed.
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mount the filesystem; [`unmount`] takes it down (and an [`UnmountWatchdog`] does, if the
/// daemon dies).
pub fn mount(
    mountpoint: &Path,
    snapshot: SharedSnapshot,
) -> anyhow::Result<fuser::BackgroundSession> {
    use anyhow::Context as _;
    anyhow::ensure!(
        Path::new("/dev/fuse").exists(),
        "FUSE is not available: /dev/fuse does not exist (load the fuse module, or run where FUSE is allowed)"
    );
    clean_stale_mount(mountpoint);
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("creating the mount point {}", mountpoint.display()))?;
    let watchdog = UnmountWatchdog::spawn(mountpoint)
        .inspect_err(|e| {
            tracing::warn!(
                "no unmount watchdog ({e}): if the daemon dies, its mount stays until the next start"
            )
        })
        .ok();
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = CcdFs {
        snapshot,
        uid,
        gid,
        _watchdog: watchdog,
    };
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("ccd".into()),
        MountOption::Subtype("ccd".into()),
        MountOption::DefaultPermissions,
        MountOption::NoExec,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    // Owner-only: no `allow_other`, so the kernel itself keeps every other user out, root
    // included, and no `user_allow_other` is needed in /etc/fuse.conf.
    cfg.acl = fuser::SessionACL::Owner;
    let root = uid == 0;
    fuser::spawn_mount(fs, mountpoint, &cfg).with_context(|| {
        let needs = if root {
            "root mounts with mount(2): it needs /dev/fuse and, in a container, CAP_SYS_ADMIN"
        } else {
            "a user other than root needs read and write access to /dev/fuse (normally mode \
             0666) and fusermount3, setuid root (Debian package fuse3)"
        };
        format!(
            "mounting the agent filesystem at {} ({needs}; or set vfs.enabled = false)",
            mountpoint.display()
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct VfsActor {
    sup: Supervision,
    snapshot: SharedSnapshot,
    agents: AgentService,
    boot_key: Arc<MasterKey>,
    changed: Arc<crate::agents::Changes>,
}

supervised!(VfsActor);

impl VfsActor {
    pub fn new(
        sup: Supervision,
        snapshot: SharedSnapshot,
        agents: AgentService,
        boot_key: Arc<MasterKey>,
        changed: Arc<crate::agents::Changes>,
    ) -> Self {
        VfsActor {
            sup,
            snapshot,
            agents,
            boot_key,
            changed,
        }
    }
}

impl Supervise for VfsActor {
    fn supervision(&self) -> &Supervision {
        &self.sup
    }

    fn on_started(&mut self, ctx: &mut Context<Self>) {
        // Rebuild whenever definitions change (and once now).
        let (agents, key, snapshot, changed) = (
            self.agents.clone(),
            self.boot_key.clone(),
            self.snapshot.clone(),
            self.changed.clone(),
        );
        ctx.spawn(
            async move {
                let mut requested = changed.requested();
                loop {
                    // The generation asked for before this build reads the store: the view
                    // built shows it (and perhaps later ones).
                    let generation = *requested.borrow_and_update();
                    let fresh = build(&agents, &key).await;
                    if let Ok(mut s) = snapshot.write() {
                        *s = fresh;
                    }
                    changed.served(generation);
                    if requested.changed().await.is_err() {
                        return;
                    }
                }
            }
            .into_actor(self),
        );
    }
}

/// `vfs.unseal`: open a sealed file (a copy of one of the `*.sealed` files) with this boot's key.
pub struct Unseal {
    pub path: PathBuf,
}

impl ActorRequest for Unseal {
    type Output = serde_json::Value;
}

/// Largest file `vfs.unseal` reads: the sealed bundles of a few thousand agents.
const MAX_UNSEAL_BYTES: u64 = 64 * 1024 * 1024;

impl Handle<Unseal> for VfsActor {
    fn handle(&mut self, msg: Unseal, _: &mut Context<Self>) -> Reply<serde_json::Value> {
        use crate::error::ActorError;
        let bad = |why: String| {
            ActorError::Rpc(ccd_protocol::RpcError::invalid_params(format!(
                "invalid params for vfs.unseal: `file`: {why}"
            )))
        };
        let name = msg
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let key = self.boot_key.clone();
        // The path is the client's: read it on the blocking pool, and only a regular file of
        // bounded size (a FIFO or a device would hold the actor's thread or its memory).
        Reply::later(async move {
            let path = msg.path.clone();
            // Read, then opened (decrypted, decompressed, parsed: up to 64 MiB), off the loop.
            crate::blocking::try_off_loop("opening the sealed file", move || {
                let blob = crate::files::read_regular(&path, MAX_UNSEAL_BYTES)
                    .map_err(|e| bad(format!("{}: {e}", msg.path.display())))?;
                if !SEALED_FILES.contains(&name.as_str()) {
                    return Err(bad(format!(
                        "`{name}` is not one of {}; the name is sealed with the contents, so a \
                         copy must keep it",
                        SEALED_FILES.join(", ")
                    )));
                }
                seal::open(&key, &name, &blob)
                    .and_then(|j| Ok(serde_json::from_slice(&j)?))
                    .map_err(|e| {
                        ActorError::Rpc(ccd_protocol::RpcError::invalid_params(format!(
                            "vfs.unseal refused {}: {e:#}",
                            msg.path.display()
                        )))
                    })
            })
            .await
        })
    }
}
