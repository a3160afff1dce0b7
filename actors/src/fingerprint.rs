//! The state of a project's files as one hash, so that a cached answer is used only while the
//! files it was given are unchanged (issue 16's response cache keys on it).
//!
//! - In a git work tree: the commit `HEAD` names, the work tree's status (`git status
//!   --porcelain -z`, untracked files included), the staged and unstaged changes (`git diff`,
//!   binary included) and the contents of untracked files. Any edit, new file, stage or commit
//!   changes the hash; a change undone restores it.
//! - Elsewhere: the size and modification time of each file the prompt mentions (missing ones
//!   count as missing), since there is no cheaper way to know what the agent will read.
//!
//! Blocking: it runs git and reads files, so callers run it off the event loop.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// Untracked files whose contents are hashed, at most (by count and in all); past these, their
/// size and modification time stand in for their contents.
pub const MAX_UNTRACKED_FILES: usize = 10_000;
pub const MAX_UNTRACKED_BYTES: u64 = 64 * 1024 * 1024;

/// How a fingerprint was taken, and the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// `git` or `files`.
    pub kind: &'static str,
    /// SHA-256, hex.
    pub hash: String,
}

/// The fingerprint of the files under `cwd`; `mentioned`: the files the prompt names (relative
/// to `cwd` or absolute), used outside git.
pub fn fingerprint(cwd: &Path, mentioned: &[String]) -> anyhow::Result<Fingerprint> {
    let mut h = Sha256::new();
    let kind = if is_work_tree(cwd) {
        git_state(cwd, &mut h)?;
        "git"
    } else {
        files_state(cwd, mentioned, &mut h);
        "files"
    };
    Ok(Fingerprint {
        kind,
        hash: hex(&h.finalize()),
    })
}

fn git(cwd: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(cwd)
        .args(["-c", "core.quotepath=off", "--no-pager"])
        // No index refresh written back, no lock taken: a fingerprint never changes the tree.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn is_work_tree(cwd: &Path) -> bool {
    git(cwd)
        .args(["rev-parse", "--is-inside-work-tree"])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"true"))
}

/// Run git with `args`, feeding what it prints into `h` as one section; with `keep`, also
/// return what it printed (a diff is only hashed: it can be large).
fn hash_git(cwd: &Path, args: &[&str], keep: bool, h: &mut Sha256) -> anyhow::Result<Vec<u8>> {
    let what = || format!("running `git {}` in {}", args.join(" "), cwd.display());
    let mut child = git(cwd)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(what)?;
    let mut out = child.stdout.take().context("git's output")?;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n_total = 0u64;
    h.update(args.join(" ").as_bytes());
    loop {
        let n = out.read(&mut buf).with_context(what)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
        if keep {
            kept.extend_from_slice(&buf[..n]);
        }
    }
    h.update(n_total.to_le_bytes());
    let status = child.wait().with_context(what)?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut err).ok();
        }
        bail!("{}: {}", what(), err.trim());
    }
    Ok(kept)
}

fn git_state(cwd: &Path, h: &mut Sha256) -> anyhow::Result<()> {
    h.update(b"git\0");
    let head = git(cwd)
        .args(["rev-parse", "--verify", "-q", "HEAD"])
        .output()
        .with_context(|| format!("reading HEAD in {}", cwd.display()))?;
    // An unborn branch (no commit yet) has no HEAD: the section is then empty.
    h.update(&head.stdout);
    h.update(b"\0");
    // The status is kept to find the untracked files.
    let status = hash_git(
        cwd,
        &["status", "--porcelain=v1", "-z", "--untracked-files=all"],
        true,
        h,
    )?;
    for args in [
        &["diff", "--binary", "--no-ext-diff", "--no-textconv"][..],
        &[
            "diff",
            "--cached",
            "--binary",
            "--no-ext-diff",
            "--no-textconv",
        ][..],
    ] {
        hash_git(cwd, args, false, h)?;
    }
    // Untracked files: their contents (git diff does not show them).
    let top = git(cwd)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .with_context(|| format!("finding the top of the work tree of {}", cwd.display()))?;
    let top = String::from_utf8_lossy(&top.stdout).trim_end().to_string();
    let mut budget = MAX_UNTRACKED_BYTES;
    let untracked = status
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"?? "))
        .take(MAX_UNTRACKED_FILES);
    for rel in untracked {
        let path = Path::new(&top).join(String::from_utf8_lossy(rel).as_ref());
        h.update(rel);
        h.update(b"\0");
        let meta = std::fs::symlink_metadata(&path);
        match meta {
            Ok(m) if m.is_file() && m.len() <= budget => {
                budget -= m.len();
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        h.update((bytes.len() as u64).to_le_bytes());
                        h.update(&bytes);
                    }
                    Err(_) => h.update(b"unreadable"),
                }
            }
            Ok(m) => hash_metadata(&m, h),
            Err(_) => h.update(b"missing"),
        }
    }
    Ok(())
}

fn files_state(cwd: &Path, mentioned: &[String], h: &mut Sha256) {
    h.update(b"files\0");
    let mut files: Vec<&String> = mentioned.iter().collect();
    files.sort();
    files.dedup();
    for f in files {
        h.update(f.as_bytes());
        h.update(b"\0");
        match std::fs::metadata(cwd.join(f)) {
            Ok(m) => hash_metadata(&m, h),
            Err(_) => h.update(b"missing"),
        }
    }
}

fn hash_metadata(m: &std::fs::Metadata, h: &mut Sha256) {
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    h.update(m.len().to_le_bytes());
    h.update(mtime.to_le_bytes());
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("git runs")
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn a_git_tree_changes_its_fingerprint_with_every_edit_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        run_git(d, &["init", "-q"]);
        let unborn = fingerprint(d, &[]).unwrap();
        assert_eq!(unborn.kind, "git");
        std::fs::write(d.join("a.rs"), "fn a() {}\n").unwrap();
        let untracked = fingerprint(d, &[]).unwrap();
        assert_ne!(untracked, unborn);
        run_git(d, &["add", "a.rs"]);
        run_git(d, &["commit", "-q", "-m", "one"]);
        let clean = fingerprint(d, &[]).unwrap();
        assert_eq!(
            fingerprint(d, &[]).unwrap(),
            clean,
            "stable when nothing changes"
        );

        std::fs::write(d.join("a.rs"), "fn a() { changed() }\n").unwrap();
        let edited = fingerprint(d, &[]).unwrap();
        assert_ne!(edited, clean);
        std::fs::write(d.join("a.rs"), "fn a() {}\n").unwrap();
        assert_eq!(fingerprint(d, &[]).unwrap(), clean, "an edit undone");

        // An untracked file counts by its contents, in a subdirectory too.
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/new.txt"), "one").unwrap();
        let new = fingerprint(d, &[]).unwrap();
        assert_ne!(new, clean);
        std::fs::write(d.join("sub/new.txt"), "two").unwrap();
        assert_ne!(fingerprint(d, &[]).unwrap(), new);
        // Asked from the subdirectory, the whole tree counts.
        assert_eq!(fingerprint(&d.join("sub"), &[]).unwrap().kind, "git");
        std::fs::remove_dir_all(d.join("sub")).unwrap();
        assert_eq!(fingerprint(d, &[]).unwrap(), clean);

        run_git(d, &["commit", "-q", "--allow-empty", "-m", "two"]);
        assert_ne!(fingerprint(d, &[]).unwrap(), clean, "a new commit");
    }

    #[test]
    fn outside_git_the_mentioned_files_count() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("notes.md"), "x").unwrap();
        let files = vec!["notes.md".to_string(), "gone.md".to_string()];
        let before = fingerprint(d, &files).unwrap();
        assert_eq!(before.kind, "files");
        assert_eq!(fingerprint(d, &files).unwrap(), before);
        // Files the prompt does not mention do not count.
        std::fs::write(d.join("other.md"), "y").unwrap();
        assert_eq!(fingerprint(d, &files).unwrap(), before);
        std::fs::write(d.join("notes.md"), "xy").unwrap();
        assert_ne!(fingerprint(d, &files).unwrap(), before);
        std::fs::write(d.join("gone.md"), "").unwrap();
        let created = fingerprint(d, &files).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(d.join("gone.md"))
            .unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
        assert_ne!(fingerprint(d, &files).unwrap(), created, "a new mtime");
    }
}
