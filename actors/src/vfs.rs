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
//! takes its place. Whoever mounts, cleans or unmounts at the mount point holds the home's
//! `vfs.lock` while doing so (see [`mount`]), so that a daemon that died, its watchdog and the
//! next daemon never act on the mount point at once.

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
use crate::supervise::{ActorRequest, Handle, Reply, Supervise, Supervision, supervised};

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

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq)]
struct MountEntry {
    /// The mount ID, unique among the mounts that exist at one time.
    id: String,
    parent: String,
    /// `major:minor` of the mounted filesystem.
    dev: String,
    /// The mount point as mountinfo writes it (space, tab, newline and backslash escaped).
    point: String,
    fstype: String,
    source: String,
}

impl MountEntry {
    fn parse(line: &str) -> Option<MountEntry> {
        let (left, right) = line.split_once(" - ")?;
        let mut l = left.split(' ');
        let (id, parent, dev, _root, point) =
            (l.next()?, l.next()?, l.next()?, l.next()?, l.next()?);
        let mut r = right.split(' ');
        let (fstype, source) = (r.next()?, r.next()?);
        Some(MountEntry {
            id: id.into(),
            parent: parent.into(),
            dev: dev.into(),
            point: point.into(),
            fstype: fstype.into(),
            source: source.into(),
        })
    }

    /// An agent filesystem (`FSName` "ccd"; `fuse`, or `fuse.ccd` where the subtype shows).
    fn is_ccd(&self) -> bool {
        self.source == "ccd" && (self.fstype == "fuse" || self.fstype.starts_with("fuse."))
    }
}

/// `path` as /proc/self/mountinfo writes mount points (read as UTF-8, lossily, like mountinfo).
fn mountinfo_escape(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut raw = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => raw.extend(format!("\\{b:03o}").into_bytes()),
            _ => raw.push(b),
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The mounts at `path`, in the order mountinfo lists them.
fn mounts_at(path: &Path) -> Vec<MountEntry> {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let point = mountinfo_escape(path);
    String::from_utf8_lossy(&info)
        .lines()
        .filter_map(MountEntry::parse)
        .filter(|m| m.point == point)
        .collect()
}

/// The mount that `path` leads to: of the mounts at `path`, the one no other is mounted on.
fn top_mount(path: &Path) -> Option<MountEntry> {
    top_of(mounts_at(path))
}

fn top_of(here: Vec<MountEntry>) -> Option<MountEntry> {
    here.iter()
        .find(|m| !here.iter().any(|o| o.parent == m.id))
        .cloned()
}

/// Whether `path` is a mount point now (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    !mounts_at(path).is_empty()
}

/// `fusermount3 -u -z path`: detach whatever `path` leads to.
fn lazy_unmount(path: &Path) -> std::io::Result<std::process::ExitStatus> {
    crate::executor::process::child_command("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg("--")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()
}

/// Unmount what a daemon that died left at `path`: an agent filesystem (no daemon of this home
/// serves one while we hold its lock: see [`mount`]) or a dead FUSE mount (one that cannot even
/// be stat'ed: ENOTCONN), top first, until neither is left. A live mount of anything else is
/// left alone. An agent filesystem is recognised from mountinfo alone, without touching it: a
/// request to a mount whose server is still dying could wait.
fn clean_stale_mounts(path: &Path) {
    for _ in 0..8 {
        let ours = top_mount(path).is_some_and(|m| m.is_ccd());
        let dead = !ours
            && matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
        if !ours && !dead {
            return;
        }
        tracing::warn!("cleaning up a stale mount at {}", path.display());
        match lazy_unmount(path) {
            Ok(st) if st.success() => {}
            Ok(st) => {
                tracing::warn!("fusermount3 -u -z {}: {st}", path.display());
                return;
            }
            Err(e) => {
                tracing::warn!("running fusermount3 to unmount {}: {e}", path.display());
                return;
            }
        }
    }
}

/// The agent filesystem while it is mounted: the FUSE session, the unmount watchdog, and the
/// lock on the mount point. [`unmount`] takes it down.
pub struct Mount {
    session: fuser::BackgroundSession,
    watchdog: Option<UnmountWatchdog>,
    lock: std::fs::File,
}

/// Unmount: end the session, make sure the kernel mount is gone, then stop the watchdog and
/// release the lock (in that order: a new daemon waits for the lock before it touches the
/// mount point).
pub fn unmount(mountpoint: &Path, mount: Mount) {
    let Mount {
        session,
        watchdog,
        lock,
    } = mount;
    drop(session);
    let mut gone = false;
    for _ in 0..50 {
        if !is_mounted(mountpoint) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !gone {
        tracing::warn!(
            "{} still mounted; unmounting it with fusermount3",
            mountpoint.display()
        );
        if let Err(e) = lazy_unmount(mountpoint) {
            tracing::warn!(
                "running fusermount3 to unmount {}: {e}",
                mountpoint.display()
            );
        }
    }
    drop(watchdog);
    drop(lock);
}

/// What `auto_unmount` would do, for an owner-only mount: a small shell process, with the
/// daemon's own ids, that waits for the end of a pipe the daemon holds (its write end is
/// close-on-exec, so agent processes do not inherit it). When the daemon dies, however it dies,
/// the pipe closes, and the helper unmounts the mount it was made for with `fusermount3 -u -z`:
/// only if that mount (its mount ID and device, recorded from /proc/self/mountinfo right after
/// mounting) is still the one the mount point leads to. It holds the daemon's lock on the mount
/// point (a copy of the locked file on its stdout) until it has finished, so a new daemon,
/// which takes that lock before it cleans up and mounts, can neither be unmounted by it nor
/// race it. fusermount3's own `auto_unmount` cannot do this without `allow_other`: its helper
/// runs as setuid root, and the kernel answers EACCES, not ENOTCONN, to a process whose ids are
/// not all the owner's. In its own process group, so a signal to the daemon's group does not
/// reach it.
struct UnmountWatchdog(std::process::Child);

/// `$1` the mount point, `$2`/`$3` the mount's ID and device, `$4` the mount point as
/// mountinfo writes it. Its stdout is the lock: nothing is written there.
const WATCHDOG_SCRIPT: &str = r#"read -r _
ours= over=
while read -r id parent dev _ point _; do
  [ "$point" = "$4" ] || continue
  [ "$id" = "$2" ] && [ "$dev" = "$3" ] && ours=1
  [ "$parent" = "$2" ] && over=1
done </proc/self/mountinfo
if [ -n "$ours" ] && [ -z "$over" ]; then fusermount3 -u -z -- "$1" >/dev/null; fi"#;

impl UnmountWatchdog {
    fn spawn(mountpoint: &Path, mount: &MountEntry, lock: &std::fs::File) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        use std::process::Stdio;
        crate::executor::process::child_command("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("ccd-vfs-unmount-watchdog")
            .arg(mountpoint)
            .arg(&mount.id)
            .arg(&mount.dev)
            .arg(&mount.point)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(lock.try_clone()?))
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

/// How long [`mount`] waits for the mount point's lock: its holder is a daemon that died
/// (its last moments) or its watchdog unmounting, which take milliseconds.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Take the exclusive lock on `path` (the home's `vfs.lock`), waiting up to [`LOCK_WAIT`].
fn lock_mountpoint(path: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let start = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "{} is still locked after {}: by the unmount watchdog of a daemon that died, \
                 or by another daemon using this mount point",
                path.display(),
                humantime::format_duration(LOCK_WAIT)
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// Mount the filesystem; [`unmount`] takes it down (and an [`UnmountWatchdog`] does, if the
/// daemon dies). `lock` is the home's `vfs.lock`: held from before the clean-up of what a dead
/// daemon left until the unmount, by the daemon and its watchdog, so that the clean-up and the
/// mount wait for a dead daemon's watchdog to finish.
pub fn mount(mountpoint: &Path, lock: &Path, snapshot: SharedSnapshot) -> anyhow::Result<Mount> {
    use anyhow::Context as _;
    anyhow::ensure!(
        Path::new("/dev/fuse").exists(),
        "FUSE is not available: /dev/fuse does not exist (load the fuse module, or run where FUSE is allowed)"
    );
    let lock = lock_mountpoint(lock)?;
    clean_stale_mounts(mountpoint);
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("creating the mount point {}", mountpoint.display()))?;
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let fs = CcdFs { snapshot, uid, gid };
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
    let session = fuser::spawn_mount(fs, mountpoint, &cfg).with_context(|| {
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
    })?;
    let watchdog = match top_mount(mountpoint).filter(MountEntry::is_ccd) {
        Some(entry) => UnmountWatchdog::spawn(mountpoint, &entry, &lock)
            .inspect(|w| {
                tracing::info!(
                    pid = w.0.id(),
                    mount_id = %entry.id,
                    dev = %entry.dev,
                    "unmount watchdog started"
                )
            })
            .inspect_err(|e| {
                tracing::warn!(
                    "no unmount watchdog ({e}): if the daemon dies, its mount stays until the next start"
                )
            })
            .ok(),
        None => {
            tracing::warn!(
                "no unmount watchdog: the new mount is not in /proc/self/mountinfo at {}; if \
                 the daemon dies, its mount stays until the next start",
                mountpoint.display()
            );
            None
        }
    };
    Ok(Mount {
        session,
        watchdog,
        lock,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_and_the_top_of_stacked_mounts() {
        let line = "45 27 0:40 / /tmp/a\\040b/vfs ro,nosuid,nodev,noexec,relatime shared:1 - fuse ccd \
                    ro,user_id=0,group_id=0,default_permissions";
        let m = MountEntry::parse(line).unwrap();
        assert_eq!(
            (
                m.id.as_str(),
                m.parent.as_str(),
                m.dev.as_str(),
                m.point.as_str()
            ),
            ("45", "27", "0:40", "/tmp/a\\040b/vfs")
        );
        assert!(m.is_ccd());
        assert_eq!(mountinfo_escape(Path::new("/tmp/a b/vfs")), m.point);
        assert_eq!(mountinfo_escape(Path::new("/x\\y\tz")), "/x\\134y\\011z");
        let other = MountEntry::parse("50 27 0:41 / /mnt rw - tmpfs tmpfs rw").unwrap();
        assert!(!other.is_ccd());
        let sub = MountEntry::parse("60 27 0:42 / /p rw - fuse.ccd ccd rw").unwrap();
        assert!(sub.is_ccd());
        // Mounted on top of the first: its parent is the first's ID.
        let over = MountEntry::parse(&line.replacen("45 27 0:40", "61 45 0:43", 1)).unwrap();
        assert_eq!(top_of(vec![over.clone(), m.clone()]), Some(over.clone()));
        assert_eq!(top_of(vec![m.clone(), over.clone()]), Some(over));
        assert_eq!(top_of(vec![m.clone()]), Some(m));
        assert_eq!(top_of(Vec::new()), None);
    }
}
