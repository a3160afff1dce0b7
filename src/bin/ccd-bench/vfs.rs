//! Reads through the daemon's FUSE agent filesystem, next to the same bytes on local disk.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::cli::DaemonOpts;
use crate::client::{Client, clip};
use crate::daemon::{Daemon, TempDir, start_timeout};
use crate::fmt::{Out, fmt_lat, fmt_ns, fmt_ratio, group_thousands, lat_ratios, nanos};
use crate::interrupt::{check_interrupted, interrupted};
use crate::latency::Latency;

/// Target for the p50 of reading `health` from the mount.
const VFS_HEALTH_TARGET_MS: f64 = 1.0;

/// Target for the p50 of reading the ~1 MiB `agents.sealed` from the mount.
const VFS_BIG_TARGET_MS: f64 = 5.0;

/// What `health` holds while the daemon is fine.
const VFS_HEALTH_OK: &[u8] = b"OK\n";

/// The name of the big agent the VFS benchmark imports.
const VFS_AGENT: &str = "big";

pub(crate) struct VfsPlan {
    pub(crate) health_reads: u32,
    pub(crate) big_reads: u32,
    pub(crate) block: u32,
    pub(crate) prompt_bytes: u32,
    pub(crate) warmup: u32,
    pub(crate) timeout: Duration,
    pub(crate) max_time: Duration,
}

/// Latencies of reading one file over and over (each read: open, read to end, close).
struct ReadRun {
    label: String,
    /// Measured reads that returned bytes (equal to the expected ones or not).
    ok: u64,
    /// Reads (warm-up included) that failed with an I/O error.
    errors: u64,
    /// Reads (warm-up included) whose bytes differ from the expected ones.
    mismatches: u64,
    /// Measured reads not done because of --max-time or a signal.
    skipped: u64,
    lat: Option<Latency>,
    messages: BTreeMap<String, u32>,
}

impl ReadRun {
    fn failed(&self) -> u64 {
        self.errors + self.mismatches
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{:<28} {} reads, {} I/O errors, {} mismatches",
            self.label, self.ok, self.errors, self.mismatches
        );
        if self.skipped > 0 {
            let _ = write!(s, ", {} skipped (time limit)", self.skipped);
        }
        match &self.lat {
            Some(l) => {
                let _ = write!(
                    s,
                    "; p50 {}  p99 {}  max {}",
                    fmt_ns(l.p50),
                    fmt_ns(l.p99),
                    fmt_ns(l.max)
                );
            }
            None => s.push_str("; no latency samples"),
        }
        for (msg, n) in &self.messages {
            let _ = write!(s, "\n    {n}× {msg}");
        }
        s
    }
}

/// Times `std::fs::read` of one path and checks what it returns.
struct ReadSampler<'a> {
    label: &'a str,
    path: &'a Path,
    expect: &'a [u8],
    planned: u64,
    /// Measured reads attempted (failed ones included).
    attempts: u64,
    samples: Vec<u64>,
    errors: u64,
    mismatches: u64,
    messages: BTreeMap<String, u32>,
}

impl<'a> ReadSampler<'a> {
    fn new(label: &'a str, path: &'a Path, expect: &'a [u8], planned: u32) -> ReadSampler<'a> {
        ReadSampler {
            label,
            path,
            expect,
            planned: u64::from(planned),
            attempts: 0,
            samples: Vec::with_capacity(planned as usize),
            errors: 0,
            mismatches: 0,
            messages: BTreeMap::new(),
        }
    }

    fn note(&mut self, msg: String) {
        *self.messages.entry(msg).or_insert(0) += 1;
    }

    /// One read; its latency is kept when `measure`.
    fn read(&mut self, measure: bool) {
        let t = Instant::now();
        let got = fs::read(self.path);
        let dt = t.elapsed();
        if measure {
            self.attempts += 1;
        }
        match got {
            Ok(bytes) => {
                if measure {
                    self.samples.push(nanos(dt));
                }
                if bytes != self.expect {
                    self.mismatches += 1;
                    self.note(format!(
                        "{}: read {} bytes that differ from the expected {} bytes",
                        self.path.display(),
                        bytes.len(),
                        self.expect.len()
                    ));
                }
            }
            Err(e) => {
                self.errors += 1;
                self.note(format!("reading {}: {e}", self.path.display()));
            }
        }
    }

    fn done(&self) -> bool {
        self.attempts >= self.planned
    }

    fn finish(self) -> ReadRun {
        let ok = self.samples.len() as u64;
        ReadRun {
            label: self.label.to_string(),
            ok,
            errors: self.errors,
            mismatches: self.mismatches,
            skipped: self.planned.saturating_sub(self.attempts),
            lat: Latency::from_samples(self.samples),
            messages: self.messages,
        }
    }
}

pub(crate) struct VfsSuite {
    mountpoint: PathBuf,
    /// Filesystem type of the directory holding the local copy (from /proc/self/mountinfo).
    local_fs: String,
    prompt_bytes: usize,
    sealed_bytes: usize,
    block: u32,
    health: ReadRun,
    big_vfs: ReadRun,
    big_local: ReadRun,
    /// Problems found after the measurements (the daemon did not stop, the mount stayed).
    teardown: Vec<String>,
}

impl VfsSuite {
    pub(crate) fn failures(&self) -> u64 {
        self.health.failed()
            + self.big_vfs.failed()
            + self.big_local.failed()
            + self.teardown.len() as u64
    }

    /// Mount / local copy, for `agents.sealed`: (p50, p99).
    fn ratios(&self) -> (Option<f64>, Option<f64>) {
        lat_ratios(self.big_vfs.lat.as_ref(), self.big_local.lat.as_ref())
    }

    fn describe(&self) -> String {
        format!(
            "agent `{VFS_AGENT}` with a {} incompressible prompt ({} bytes); agents.sealed is {} \
             ({} bytes); local copy on {}",
            fmt_bytes(self.prompt_bytes),
            group_thousands(self.prompt_bytes as f64),
            fmt_bytes(self.sealed_bytes),
            group_thousands(self.sealed_bytes as f64),
            self.local_fs
        )
    }
}

/// A VFS benchmark that ran, or why it did not.
pub(crate) enum VfsReport {
    Skipped(String),
    Ran(Box<VfsSuite>),
}

fn fmt_bytes(n: usize) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", n / 1024.0)
    }
}

/// "met" / "MISSED" for a p50 against a target in milliseconds.
fn vfs_verdict(lat: Option<&Latency>, target_ms: f64) -> String {
    match lat {
        Some(l) if (l.p50 as f64) / 1e6 < target_ms => {
            format!("p50 {} < {target_ms} ms: met", fmt_ns(l.p50))
        }
        Some(l) => format!("p50 {} ≥ {target_ms} ms: MISSED", fmt_ns(l.p50)),
        None => format!("target p50 < {target_ms} ms: no samples"),
    }
}

/// `bytes` characters of deterministic pseudo-random text from the base64 alphabet (so about
/// 6 bits of entropy per byte), in lines of 76 characters.
fn incompressible_text(bytes: usize, seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // splitmix64
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut s = String::with_capacity(bytes);
    let mut col = 0;
    while s.len() < bytes {
        let mut x = next();
        for _ in 0..10 {
            if s.len() >= bytes {
                break;
            }
            if col == 76 {
                s.push('\n');
                col = 0;
            } else {
                s.push(char::from(ALPHABET[(x & 63) as usize]));
                x >>= 6;
                col += 1;
            }
        }
    }
    s
}

/// (mount point, filesystem type) of every line of /proc/self/mountinfo.
fn mounts() -> Vec<(PathBuf, String)> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?.replace("\\040", " ");
            let fstype = right.split(' ').next()?;
            Some((PathBuf::from(point), fstype.to_string()))
        })
        .collect()
}

fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|(p, _)| p == path)
}

/// The type of the filesystem holding `path` (the longest mount point that contains it).
fn fs_type_of(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mounts()
        .into_iter()
        .filter(|(p, _)| path.starts_with(p))
        .max_by_key(|(p, _)| p.as_os_str().len())
        .map_or_else(
            || "?".to_string(),
            |(p, t)| format!("{} ({t})", p.display()),
        )
}

/// Polls `.manifest` on the mount until it counts at least one agent.
fn wait_for_agent(mountpoint: &Path, timeout: Duration) -> Result<()> {
    let manifest = mountpoint.join(".manifest");
    let deadline = Instant::now() + timeout;
    loop {
        let count = fs::read(&manifest)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("agent_count").and_then(Value::as_u64));
        if count.is_some_and(|n| n >= 1) {
            return Ok(());
        }
        check_interrupted()?;
        ensure!(
            Instant::now() < deadline,
            "{} did not count the imported agent within {} (agent_count: {})",
            manifest.display(),
            humantime::format_duration(timeout),
            count.map_or_else(|| "unreadable".to_string(), |n| n.to_string())
        );
        thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn vfs_suite(plan: &VfsPlan, opts: &DaemonOpts, out: &mut Out) -> Result<VfsReport> {
    if !Path::new("/dev/fuse").exists() {
        return Ok(VfsReport::Skipped(
            "/dev/fuse does not exist, so the agent filesystem cannot be mounted here".into(),
        ));
    }
    let scratch = TempDir::new("vfs", opts.keep_temp)?;
    // The agent definition to import: a large prompt that zstd cannot shrink much.
    let agents_dir = scratch.path.join("agents");
    fs::create_dir(&agents_dir).with_context(|| format!("creating {}", agents_dir.display()))?;
    let prompt = incompressible_text(plan.prompt_bytes as usize, 0x00cc_dbe4_c4f5);
    let md = format!(
        "---\nname: {VFS_AGENT}\ndescription: A large agent (ccd-bench vfs)\n---\n{prompt}\n"
    );
    let md_path = agents_dir.join(format!("{VFS_AGENT}.md"));
    fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;

    let env = vec![("CCD_VFS_ENABLED".to_string(), OsString::from("true"))];
    let (mut daemon, _) = Daemon::start_with_env(opts, start_timeout(plan.timeout), env)
        .context("starting a daemon with CCD_VFS_ENABLED=true")?;
    out.line(&daemon.describe());
    let mut client = Client::connect(&daemon.socket, plan.timeout)?;
    let status = client.call("vfs.status", json!({}))?;
    if status.get("mounted").and_then(Value::as_bool) != Some(true) {
        bail!(
            "the daemon did not mount the agent filesystem: vfs.status = {}",
            clip(&status.to_string())
        );
    }
    let mountpoint = PathBuf::from(
        status
            .get("mountpoint")
            .and_then(Value::as_str)
            .context("vfs.status has no `mountpoint`")?,
    );
    let agents_path = agents_dir
        .to_str()
        .context("the temporary directory's path is not UTF-8")?;
    client.call("agent.import", json!({ "path": agents_path }))?;
    drop(client);
    wait_for_agent(&mountpoint, plan.timeout)?;

    // The reference: agents.sealed as the mount serves it, copied to a regular file.
    let sealed_path = mountpoint.join("agents.sealed");
    let health_path = mountpoint.join("health");
    let sealed =
        fs::read(&sealed_path).with_context(|| format!("reading {}", sealed_path.display()))?;
    let copy_path = scratch.path.join("agents.sealed.copy");
    fs::write(&copy_path, &sealed).with_context(|| format!("writing {}", copy_path.display()))?;
    let local_fs = fs_type_of(&scratch.path);
    let suite_head = format!(
        "vfs: mounted at {} ({}); ",
        mountpoint.display(),
        mounts()
            .iter()
            .find(|(p, _)| *p == mountpoint)
            .map_or("?", |(_, t)| t.as_str())
    );

    // 1. `health`.
    let mut health = ReadSampler::new(
        "health (mount)",
        &health_path,
        VFS_HEALTH_OK,
        plan.health_reads,
    );
    for _ in 0..plan.warmup {
        health.read(false);
    }
    let started = Instant::now();
    while !health.done() && started.elapsed() < plan.max_time && !interrupted() {
        health.read(true);
    }
    let health = health.finish();
    check_interrupted()?;

    // 2. agents.sealed from the mount against its local copy, in alternating blocks.
    let mut vfs = ReadSampler::new(
        "agents.sealed (mount)",
        &sealed_path,
        &sealed,
        plan.big_reads,
    );
    let mut local = ReadSampler::new(
        "agents.sealed (local copy)",
        &copy_path,
        &sealed,
        plan.big_reads,
    );
    for _ in 0..plan.warmup.min(20) {
        vfs.read(false);
        local.read(false);
    }
    let started = Instant::now();
    let mut round = 0u64;
    'outer: while !(vfs.done() && local.done()) {
        let order: [&mut ReadSampler<'_>; 2] = if round.is_multiple_of(2) {
            [&mut vfs, &mut local]
        } else {
            [&mut local, &mut vfs]
        };
        for s in order {
            for _ in 0..plan.block {
                if started.elapsed() >= plan.max_time || interrupted() {
                    break 'outer;
                }
                if s.done() {
                    break;
                }
                s.read(true);
            }
        }
        round += 1;
    }
    let big_vfs = vfs.finish();
    let big_local = local.finish();
    check_interrupted()?;

    // Stop the daemon; its mount must go away with it.
    let mut teardown = Vec::new();
    if let Err(e) = daemon.stop() {
        teardown.push(format!("stopping the daemon: {e:#}"));
    }
    drop(daemon);
    if is_mount_point(&mountpoint) {
        teardown.push(format!(
            "{} is still mounted after the daemon stopped",
            mountpoint.display()
        ));
    }
    let suite = VfsSuite {
        mountpoint,
        local_fs,
        prompt_bytes: prompt.len(),
        sealed_bytes: sealed.len(),
        block: plan.block,
        health,
        big_vfs,
        big_local,
        teardown,
    };
    out.line(&format!("{suite_head}{}", suite.describe()));
    out.line(&vfs_summary(&suite));
    Ok(VfsReport::Ran(Box::new(suite)))
}

fn vfs_summary(v: &VfsSuite) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", v.health.summary());
    let _ = writeln!(
        s,
        "  target: health {}",
        vfs_verdict(v.health.lat.as_ref(), VFS_HEALTH_TARGET_MS)
    );
    let _ = writeln!(s, "{}", v.big_vfs.summary());
    let _ = writeln!(s, "{}", v.big_local.summary());
    let (p50, p99) = v.ratios();
    let _ = writeln!(
        s,
        "  (alternating blocks of {} reads) ratio mount / local copy: p50 {}, p99 {}",
        v.block,
        fmt_ratio(p50),
        fmt_ratio(p99)
    );
    let _ = writeln!(
        s,
        "  target: agents.sealed ({}) {}",
        fmt_bytes(v.sealed_bytes),
        vfs_verdict(v.big_vfs.lat.as_ref(), VFS_BIG_TARGET_MS)
    );
    if v.teardown.is_empty() {
        let _ = write!(
            s,
            "  daemon stopped; {} is no longer mounted",
            v.mountpoint.display()
        );
    } else {
        for t in &v.teardown {
            let _ = writeln!(s, "  FAILED: {t}");
        }
    }
    s.trim_end().to_string()
}

pub(crate) fn vfs_markdown(r: &VfsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n### Agent filesystem (FUSE)\n");
    let v = match r {
        VfsReport::Skipped(why) => {
            let _ = writeln!(s, "Skipped: {why}.");
            return s;
        }
        VfsReport::Ran(v) => v,
    };
    let _ = writeln!(
        s,
        "A daemon with `CCD_VFS_ENABLED=true`; every read is `std::fs::read` (open, read to end, \
         close) of a file on its mount; {}. The mount and local-copy reads of `agents.sealed` \
         alternate in blocks of {}; every read is checked byte for byte.\n",
        v.describe(),
        v.block
    );
    let _ = writeln!(s, "| File | Reads | Errors | p50 | p99 | max |");
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
    for r in [&v.health, &v.big_vfs, &v.big_local] {
        let (p50, p99, max) = fmt_lat(r.lat.as_ref());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {p50} | {p99} | {max} |",
            r.label,
            r.ok,
            r.failed()
        );
    }
    let _ = writeln!(s);
    let (p50, p99) = v.ratios();
    let _ = writeln!(
        s,
        "- `agents.sealed` mount / local copy: p50 {}, p99 {}",
        fmt_ratio(p50),
        fmt_ratio(p99)
    );
    let _ = writeln!(
        s,
        "- Target `health`: {}",
        vfs_verdict(v.health.lat.as_ref(), VFS_HEALTH_TARGET_MS)
    );
    let _ = writeln!(
        s,
        "- Target `agents.sealed` ({}): {}",
        fmt_bytes(v.sealed_bytes),
        vfs_verdict(v.big_vfs.lat.as_ref(), VFS_BIG_TARGET_MS)
    );
    for t in &v.teardown {
        let _ = writeln!(s, "- **Failed:** {t}");
    }
    s
}
