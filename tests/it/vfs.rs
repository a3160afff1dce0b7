//! The agent filesystem, mounted for real with FUSE: contents, manifest, read-only everywhere,
//! owner-only, live updates, unsealing (not across a restart), unmount on stop and after kill -9,
//! a panic in the VfsActor under load, concurrent readers, `ccd launch`. Skipped, saying so,
//! where /dev/fuse is absent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::*;

const SECRET: &str = "okapi-lantern-5519, the tester's secret instruction";

fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!("skipped: /dev/fuse does not exist on this machine, so nothing can be mounted");
    false
}

fn vfs_daemon() -> (Daemon, PathBuf) {
    let d = Daemon::builder()
        .fault_injection()
        .env("CCD_VFS_ENABLED", "true")
        .start();
    let st = d.call("vfs.status", json!({})).unwrap();
    assert_eq!(st["mounted"], true, "{st}");
    let mount = PathBuf::from(st["mountpoint"].as_str().unwrap());
    (d, mount)
}

fn import(d: &Daemon) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tester.md"),
        format!("---\nname: tester\ndescription: Tests things\ntools: Bash\n---\n{SECRET}\n"),
    )
    .unwrap();
    d.call("agent.import", json!({"path": dir.path()})).unwrap();
    dir
}

/// Import the `tester` agent and wait until the filesystem shows it.
fn import_and_wait(d: &Daemon, mount: &Path) -> tempfile::TempDir {
    let dir = import(d);
    wait_until(
        "the new agent in the filesystem",
        Duration::from_secs(30),
        || mount.join("agents/tester.md").exists(),
    );
    dir
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path.to_str().unwrap()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn contents_manifest_read_only_live_updates_and_unsealing() {
    if !fuse_available() {
        return;
    }
    let (d, mount) = vfs_daemon();
    assert_eq!(
        std::fs::read_to_string(mount.join("health")).unwrap(),
        "OK\n"
    );
    assert!(
        std::fs::read_to_string(mount.join("README.txt"))
            .unwrap()
            .contains("read-only")
    );
    let mut names: Vec<String> = std::fs::read_dir(&mount)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".manifest",
            "README.txt",
            "agents",
            "agents.sealed",
            "health",
            "hooks.sealed",
            "orchestrator.sealed"
        ]
    );

    // Imported definitions appear without a remount; the manifest follows.
    let _src = import_and_wait(&d, &mount);
    let md = std::fs::read_to_string(mount.join("agents/tester.md")).unwrap();
    assert!(
        md.starts_with("---\nname: tester\n") && md.contains(SECRET),
        "{md}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(mount.join(".manifest")).unwrap()).unwrap();
    assert_eq!(manifest["agent_count"], 1);
    assert!(
        manifest["version"].is_string() && manifest["build_commit"].is_string(),
        "{manifest}"
    );
    assert!(
        manifest["build_date"].as_str().unwrap().len() >= 10,
        "{manifest}"
    );
    for f in ["agents.sealed", "orchestrator.sealed", "hooks.sealed"] {
        let bytes = std::fs::read(mount.join(f)).unwrap();
        assert_eq!(manifest["sha256"][f], sha256_hex(&bytes), "{f}");
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{f} is not sealed"
        );
    }

    // Every kind of write fails with EROFS: the `ro` mount makes the kernel refuse them all
    // before FUSE is asked.
    every_kind_of_write_is_refused(&mount);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(mount.join("health"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o400, "owner-only");
    only_the_owner_gets_in(&mount);

    // Unsealing: a copy with its name opens; renamed, tampered or from another boot (below) does
    // not.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("agents.sealed");
    std::fs::copy(mount.join("agents.sealed"), &copy).unwrap();
    let earlier_boot = tempfile::tempdir().unwrap();
    let kept = earlier_boot.path().join("agents.sealed");
    std::fs::copy(&copy, &kept).unwrap();
    let bundle = d.call("vfs.unseal", json!({"file": copy})).unwrap();
    assert_eq!(bundle["agents"][0]["name"], "tester");
    let out = d.ccd_ok(&["vfs", "unseal", copy.to_str().unwrap()]);
    assert!(out.contains("tester"), "{out}");
    let renamed = tmp.path().join("hooks.sealed");
    std::fs::copy(&copy, &renamed).unwrap();
    assert_eq!(
        code(&d.call("vfs.unseal", json!({"file": renamed})).unwrap_err()),
        -32602
    );
    let other_name = tmp.path().join("copy.sealed");
    std::fs::copy(&copy, &other_name).unwrap();
    let e = d
        .call("vfs.unseal", json!({"file": other_name}))
        .unwrap_err();
    assert!(
        code(&e) == -32602
            && e["message"]
                .as_str()
                .unwrap()
                .contains("a copy must keep it"),
        "{e}"
    );
    let missing = tmp.path().join("agents-gone").join("agents.sealed");
    let e = d.call("vfs.unseal", json!({"file": missing})).unwrap_err();
    assert!(
        code(&e) == -32602 && e["message"].as_str().unwrap().contains("No such file"),
        "{e}"
    );
    let mut bytes = std::fs::read(&copy).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    let e = d.call("vfs.unseal", json!({"file": copy})).unwrap_err();
    assert!(
        e["message"].as_str().unwrap().contains("does not open"),
        "{e}"
    );

    // Stop: unmounted, and no plaintext anywhere under CCD_HOME.
    let status = d.ccd_ok(&["vfs", "status"]);
    assert!(status.contains("mounted at"), "{status}");
    d.stop();
    assert!(!mounted(&mount), "still mounted after stop");
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", "okapi-lantern"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "plaintext found: {}",
        String::from_utf8_lossy(&grep.stdout)
    );

    // After a restart (a new boot key), the intact copy from the earlier boot does not open,
    // while the new boot's own file does.
    let out = d.command(&["daemon", "start"]).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let out = d.ccd(&["vfs", "unseal", kept.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not open") && err.contains("wrong key"),
        "{}",
        describe(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tester"));
    let e = d.call("vfs.unseal", json!({"file": kept})).unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    std::fs::copy(mount.join("agents.sealed"), &kept).unwrap();
    let bundle = d.call("vfs.unseal", json!({"file": kept})).unwrap();
    assert_eq!(bundle["agents"][0]["name"], "tester");
}

fn c_path(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// A libc call's `-1` as the `io::Error` of its errno.
fn os_result(rc: libc::c_int) -> std::io::Result<()> {
    if rc == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn every_kind_of_write_is_refused(mount: &Path) {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let expect = |r: std::io::Result<()>, what: &str, errno: i32| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(errno), "{what}: {e}");
    };
    let refused = |r: std::io::Result<()>, what: &str| expect(r, what, libc::EROFS);
    let file = mount.join("health");
    let dir = mount.join("agents");
    let (cfile, cdir) = (c_path(&file), c_path(&dir));
    let unchanged = std::fs::read(&file).unwrap();

    refused(std::fs::write(&file, "x"), "write");
    refused(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .map(drop),
        "open for appending",
    );
    refused(std::fs::write(mount.join("new-file"), "x"), "create");
    refused(std::fs::rename(&file, mount.join("h2")), "rename");
    refused(
        std::fs::rename(&dir, mount.join("a2")),
        "rename a directory",
    );
    refused(std::fs::remove_file(&file), "unlink");
    refused(std::fs::create_dir(mount.join("dir")), "mkdir");
    refused(std::fs::remove_dir(&dir), "rmdir");
    refused(
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o777)),
        "chmod",
    );
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    refused(
        std::os::unix::fs::chown(&file, Some(uid), Some(gid)),
        "chown",
    );
    refused(
        std::os::unix::fs::chown(&dir, Some(uid), None),
        "chown a directory",
    );
    refused(
        std::os::unix::fs::symlink("health", mount.join("link")),
        "symlink",
    );
    refused(std::fs::hard_link(&file, mount.join("h2")), "hard link");
    // Truncation, by path (truncate(2)) and by opening with O_TRUNC, even read-only.
    // SAFETY: a valid NUL-terminated path.
    refused(
        os_result(unsafe { libc::truncate(cfile.as_ptr(), 0) }),
        "truncate",
    );
    refused(
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file)
            .map(drop),
        "open with O_TRUNC",
    );
    refused(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(&file)
            .map(drop),
        "open read-only with O_TRUNC",
    );
    // No handle on the filesystem can be writable, and ftruncate(2) on a read-only one is
    // EINVAL: the kernel checks the handle's mode before the mount.
    let read_only = std::fs::File::open(&file).unwrap();
    expect(read_only.set_len(0), "File::set_len", libc::EINVAL);
    drop(read_only);
    // Extended attributes: set and remove.
    let (name, value) = (c"user.ccd-test", b"x");
    // SAFETY: valid NUL-terminated path and name; `value` outlives the call.
    refused(
        os_result(unsafe {
            libc::setxattr(cfile.as_ptr(), name.as_ptr(), value.as_ptr().cast(), 1, 0)
        }),
        "setxattr",
    );
    // SAFETY: as above.
    refused(
        os_result(unsafe {
            libc::setxattr(cdir.as_ptr(), name.as_ptr(), value.as_ptr().cast(), 1, 0)
        }),
        "setxattr on a directory",
    );
    // SAFETY: valid NUL-terminated path and name.
    refused(
        os_result(unsafe { libc::removexattr(cfile.as_ptr(), name.as_ptr()) }),
        "removexattr",
    );
    // Times (touch) and special files.
    // SAFETY: a valid NUL-terminated path; a null `times` means "now".
    refused(
        os_result(unsafe { libc::utimensat(libc::AT_FDCWD, cfile.as_ptr(), std::ptr::null(), 0) }),
        "utimensat",
    );
    let fifo = c_path(&mount.join("fifo"));
    // SAFETY: a valid NUL-terminated path.
    refused(
        os_result(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }),
        "mkfifo",
    );

    assert_eq!(std::fs::read(&file).unwrap(), unchanged, "the file changed");
    for gone in ["new-file", "h2", "a2", "dir", "link", "fifo"] {
        assert!(
            std::fs::symlink_metadata(mount.join(gone)).is_err(),
            "{gone} exists"
        );
    }
}

/// The mount has no `allow_other`, so the kernel lets in only processes whose ids are all the
/// owner's: here root with another group is refused, although root passes every permission
/// check on ordinary files (the temporary CCD_HOME is 0700). Run as root only (setgid).
fn only_the_owner_gets_in(mount: &Path) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: geteuid/getgid have no preconditions and cannot fail.
    let (euid, gid) = unsafe { (libc::geteuid(), libc::getgid()) };
    if euid != 0 {
        eprintln!("skipped the other-ids check: it needs root to change group");
        return;
    }
    let other_gid = if gid == 65534 { 65533 } else { 65534 };
    let out = std::process::Command::new("cat")
        .arg(mount.join("health"))
        .gid(other_gid)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        describe(&out)
    );
    let out = std::process::Command::new("cat")
        .arg(mount.join("health"))
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"OK\n", "{}", describe(&out));
}

#[test]
fn a_killed_daemon_leaves_no_mount_and_a_restart_mounts_again() {
    if !fuse_available() {
        return;
    }
    let (d, mount) = vfs_daemon();
    d.kill9();
    wait_until(
        "the watchdog's unmount after kill -9",
        Duration::from_secs(30),
        || !mounted(&mount),
    );
    let out = d.command(&["daemon", "start"]).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        std::fs::read_to_string(mount.join("health")).unwrap(),
        "OK\n"
    );
}

#[test]
fn a_vfs_panic_does_not_take_the_filesystem_away() {
    if !fuse_available() {
        return;
    }
    let (d, mount) = vfs_daemon();
    let _src = import_and_wait(&d, &mount);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (reads, failures) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut reads, mut failures) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads < 50 {
                match std::fs::read_to_string(mount.join("agents/tester.md")) {
                    Ok(t) => assert!(t.contains(SECRET)),
                    Err(_) => failures += 1,
                }
                reads += 1;
            }
            (reads, failures)
        });
        for _ in 0..3 {
            let e = d.call("debug.crash", json!({"actor": "vfs"})).unwrap_err();
            assert_eq!(code(&e), -32001);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(failures <= 1, "{failures} of {reads} reads failed");
    assert_eq!(
        std::fs::read_to_string(mount.join("health")).unwrap(),
        "OK\n"
    );
}

#[test]
fn many_concurrent_readers() {
    if !fuse_available() {
        return;
    }
    let (d, mount) = vfs_daemon();
    let _src = import_and_wait(&d, &mount);
    let expected = std::fs::read(mount.join("agents/tester.md")).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..200 {
                    assert_eq!(
                        std::fs::read(mount.join("agents/tester.md")).unwrap(),
                        expected
                    );
                    assert_eq!(std::fs::read(mount.join("health")).unwrap(), b"OK\n");
                }
            });
        }
    });
}

#[test]
fn launch_runs_the_agent_with_the_orchestrator_environment() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent");
    std::fs::write(
        &agent,
        "#!/bin/sh\necho \"args:$*\"\nenv | grep '^ORCHESTRATOR_' | sort\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let d = Daemon::builder()
        .env("CCD_VFS_ENABLED", "true")
        .agent(&agent)
        .prepare();
    let out = d.ccd(&["launch", "--", "--model", "sonnet"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let mount = d.path().join("vfs");
    assert!(text.contains("args:--model sonnet"), "{text}");
    assert!(text.contains("ORCHESTRATOR_ENABLED=true"), "{text}");
    assert!(
        text.contains(&format!("ORCHESTRATOR_VFS_MOUNT={}", mount.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("ORCHESTRATOR_AGENTS={}/agents", mount.display())),
        "{text}"
    );
    assert!(text.contains("ORCHESTRATOR_RULES="), "{text}");

    // Imported definitions are offered to the launched agent (as to every run), unless the
    // caller gives its own --agents.
    let defs = dir.path().join("reviewer.md");
    std::fs::write(
        &defs,
        "---\nname: reviewer\ndescription: Reviews code\ntools: Read\n---\nYou review.\n",
    )
    .unwrap();
    d.ccd_ok(&["agent", "import", defs.to_str().unwrap()]);
    let text = d.ccd_ok(&["launch", "--", "--model", "sonnet"]);
    let args = text
        .lines()
        .find(|l| l.starts_with("args:"))
        .unwrap_or_default();
    let offered = r#"--agents={"reviewer":{"description":"Reviews code","prompt":"You review.","tools":["Read"]}} --model sonnet"#;
    assert_eq!(args, format!("args:{offered}"), "{text}");
    let text = d.ccd_ok(&["launch", "--", "--agents", "{}"]);
    assert!(text.contains("args:--agents {}\n"), "{text}");

    // Without the filesystem, launch says what is wrong.
    let d2 = Daemon::builder().agent(agent).start();
    let out = d2.ccd(&["launch"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not mounted") && err.contains("vfs.enabled"),
        "{err}"
    );
    let status = d2.ccd(&["vfs", "status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("disabled"));
}

#[test]
fn launch_exports_the_http_api_only_when_it_is_this_daemons_and_up() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent");
    std::fs::write(&agent, "#!/bin/sh\nenv | grep '^ORCHESTRATOR_' | sort\n").unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // Ours and up: its URL (the port 0 picked) and its token.
    let d = Daemon::builder()
        .env("CCD_VFS_ENABLED", "true")
        .env("CCD_HTTP_ENABLED", "true")
        .env("CCD_HTTP_BIND", "127.0.0.1:0")
        .env("CCD_HTTP_TOKEN", "tok-3141")
        .agent(&agent)
        .start();
    let url = std::fs::read_to_string(d.path().join("http.url")).unwrap();
    let out = d.ccd(&["launch"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("ORCHESTRATOR_API_URL={}", url.trim())),
        "{text}"
    );
    assert!(text.contains("ORCHESTRATOR_API_TOKEN=tok-3141"), "{text}");

    // The configured port is another process's: nothing about the API is exported (not even
    // a URL inherited from the caller's environment), and launch says why.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = squatter.local_addr().unwrap().to_string();
    let d2 = Daemon::builder()
        .env("CCD_VFS_ENABLED", "true")
        .env("CCD_HTTP_ENABLED", "true")
        .env("CCD_HTTP_BIND", &bind)
        .env("CCD_HTTP_TOKEN", "tok-3141")
        .agent(&agent)
        .start();
    let out = d2
        .command(&["launch"])
        .env("ORCHESTRATOR_API_URL", format!("http://{bind}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ORCHESTRATOR_ENABLED=true"), "{text}");
    assert!(!text.contains("ORCHESTRATOR_API_"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ORCHESTRATOR_API_URL") && err.contains("in use"),
        "{err}"
    );
    drop(squatter);
}

#[test]
fn a_stale_mount_found_at_start_is_cleaned_up() {
    if !fuse_available() {
        return;
    }
    let (d, mount) = vfs_daemon();
    // Kill the unmount watchdog first, then the daemon: the mount is left behind, dead.
    let helpers = started_watchdogs(mount.to_str().unwrap());
    for pid in &helpers {
        std::process::Command::new("kill")
            .args(["-9", pid])
            .status()
            .unwrap();
    }
    d.kill9();
    assert!(
        mounted(&mount),
        "the mount should be left behind for this test"
    );
    assert!(
        std::fs::metadata(&mount).is_err(),
        "a dead FUSE mount cannot be read"
    );

    let out = d.command(&["daemon", "start"]).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        std::fs::read_to_string(mount.join("health")).unwrap(),
        "OK\n"
    );
    // The log is written by a background thread: give it a moment.
    wait_until("the clean-up in the log", Duration::from_secs(30), || {
        std::fs::read_to_string(d.path().join("logs/ccd.log"))
            .is_ok_and(|l| l.contains("stale mount"))
    });
}

#[test]
fn the_unmount_watchdog_does_not_inherit_the_daemons_secrets() {
    if !fuse_available() {
        return;
    }
    let key = "cd".repeat(32);
    let d = Daemon::builder()
        .env("CCD_VFS_ENABLED", "true")
        .env("CCD_MASTER_KEY", &key)
        .start();
    let st = d.call("vfs.status", json!({})).unwrap();
    assert_eq!(st["mounted"], true, "{st}");
    let mount = st["mountpoint"].as_str().unwrap().to_string();
    let environs: Vec<Vec<u8>> = started_watchdogs(&mount)
        .iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/environ")).ok())
        .collect();
    assert_eq!(environs.len(), 1, "one watchdog for {mount}");
    let names: Vec<String> = environs[0]
        .split(|b| *b == 0)
        .filter_map(|kv| kv.split(|b| *b == b'=').next())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.to_ascii_uppercase().starts_with("CCD_")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "PATH"), "{names:?}");
}

/// The pids of the unmount watchdogs of `mount`, once there is one. A watchdog is started
/// just after the mount, and right after its fork its command line can still be empty (the
/// kernel has not set up the new program's arguments yet): look until one shows.
fn started_watchdogs(mount: &str) -> Vec<String> {
    let mut found = Vec::new();
    wait_until(
        &format!("an unmount watchdog for {mount}"),
        Duration::from_secs(30),
        || {
            found = watchdogs(mount);
            !found.is_empty()
        },
    );
    found
}

/// The pids of the unmount watchdogs of `mount`.
fn watchdogs(mount: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().into_string().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains("ccd-vfs-unmount-watchdog") && cmd.contains(mount)).then_some(pid)
        })
        .collect()
}

#[test]
fn an_import_or_removal_answers_once_the_mount_shows_it() {
    if !fuse_available() {
        return;
    }
    let (d, mount) = vfs_daemon();
    let dir = tempfile::tempdir().unwrap();
    // `ccd agent import X && ccd launch` must see X: no wait between the answer and the look.
    for i in 0..40 {
        let name = format!("agent-{i}");
        let file = dir.path().join(format!("{name}.md"));
        std::fs::write(
            &file,
            format!("---\nname: {name}\ndescription: Number {i}\n---\nDo {i}.\n"),
        )
        .unwrap();
        d.ccd_ok(&["agent", "import", file.to_str().unwrap()]);
        let shown = mount.join(format!("agents/{name}.md"));
        assert!(
            shown.exists(),
            "{} absent right after the import",
            shown.display()
        );
        d.ccd_ok(&["agent", "rm", &name]);
        assert!(
            !shown.exists(),
            "{} still there right after rm",
            shown.display()
        );
    }
}

#[test]
fn a_damaged_definition_is_named_and_the_others_are_still_served() {
    if !fuse_available() {
        return;
    }
    let (d, mount) = vfs_daemon();
    let dir = tempfile::tempdir().unwrap();
    for name in ["good", "broken"] {
        std::fs::write(
            dir.path().join(format!("{name}.md")),
            format!("---\nname: {name}\ndescription: The {name} one\n---\nPrompt.\n"),
        )
        .unwrap();
    }
    d.call("agent.import", json!({"path": dir.path()})).unwrap();
    // One sealed row damaged on disk, behind the daemon's back.
    let db = rusqlite::Connection::open(d.path().join("ccd.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute(
        "UPDATE sealed SET blob = X'00010203' WHERE name = 'agents/broken.md'",
        [],
    )
    .unwrap();
    drop(db);
    // The next change rebuilds the view: the intact definitions stay, the damaged one is named.
    d.call("hooks.set", json!({"hooks": {}})).unwrap();
    assert!(mount.join("agents/good.md").exists());
    assert!(!mount.join("agents/broken.md").exists());
    assert!(mount.join(".manifest").exists());
    let health = std::fs::read_to_string(mount.join("health")).unwrap();
    assert!(
        health.starts_with("OK") && health.contains("broken"),
        "{health}"
    );
    let list = d.call("agent.list", json!({})).unwrap();
    assert_eq!(list["agents"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["damaged"], json!(["broken"]));
    let out = d.ccd(&["agent", "list"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken"));
    let st = d.call("vfs.status", json!({})).unwrap();
    assert_eq!(st["damaged"], json!(["broken"]));
    let health = d.call("system.health", json!({})).unwrap();
    assert_eq!(health["vfs"]["damaged"], json!(["broken"]));
    assert!(d.ccd_ok(&["vfs", "status"]).contains("broken"));
}

/// kill -9 under a write storm, followed at once by `ccd daemon start`, many times over: after
/// each start, once the killed daemon's unmount watchdog has finished, the new daemon's mount
/// is the one at the mount point, live and listed once. The watchdog's `fusermount3 -u` is
/// slowed (a wrapper first on the daemon's PATH sleeps before the real one, except when a
/// daemon itself calls it), which holds open the window in which a watchdog that unmounted
/// whatever was mounted at its path by then took the new daemon's mount away (issue 20).
#[test]
fn kill_9_and_an_immediate_start_under_load_always_leave_the_new_mount_live() {
    if !fuse_available() {
        return;
    }
    let Some(real) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("fusermount3"))
        .find(|p| p.is_file())
    else {
        eprintln!("skipped: no fusermount3 on PATH");
        return;
    };
    let bin = tempfile::tempdir().unwrap();
    let wrapper = bin.path().join("fusermount3");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             case \" $* \" in *' -u '*)\n\
             \x20 case \"$(readlink /proc/$PPID/exe)\" in */ccd) ;; *) sleep 0.4 ;; esac ;;\n\
             esac\n\
             exec '{}' \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = Daemon::builder()
        .env("CCD_VFS_ENABLED", "true")
        .env("PATH", &path)
        .start();
    let st = d.call("vfs.status", json!({})).unwrap();
    assert_eq!(st["mounted"], true, "{st}");
    let mount = PathBuf::from(st["mountpoint"].as_str().unwrap());
    let target = mount.to_str().unwrap().to_string();

    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // The write storm: writers that reconnect whenever the daemon goes away.
        for w in 0..3 {
            let (d, stop) = (&d, &stop);
            s.spawn(move || {
                use std::io::{BufRead as _, Write as _};
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(stream) = std::os::unix::net::UnixStream::connect(d.socket()) else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut reader = std::io::BufReader::new(&stream);
                    let mut line = String::new();
                    // Until the daemon goes away: then connect to the next one.
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let request = json!({"jsonrpc": "2.0", "id": i, "method": "setting.upsert",
                            "params": {"key": format!("w{w}.k{}", i % 500), "value": i.to_string()}});
                        line.clear();
                        let answered = (&stream)
                            .write_all(format!("{request}\n").as_bytes())
                            .and_then(|()| reader.read_line(&mut line))
                            .is_ok_and(|n| n > 0);
                        if !answered {
                            break;
                        }
                        i += 1;
                    }
                }
            });
        }
        let rounds = 12;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for round in 1..=rounds {
                // The running daemon's watchdog, the one that acts after the kill. Waited for:
                // the daemon goes on once its exec has begun, and until the kernel has set up
                // the new program's arguments, /proc shows an empty command line.
                let mut old = Vec::new();
                wait_until(
                    &format!("round {round}: one unmount watchdog for {target}"),
                    Duration::from_secs(10),
                    || {
                        old = watchdogs(&target);
                        old.len() == 1
                    },
                );
                d.kill9();
                let out = d.command(&["daemon", "start"]).output().unwrap();
                assert!(out.status.success(), "round {round}: {}", describe(&out));
                wait_until(
                    "the killed daemon's watchdog to finish",
                    Duration::from_secs(10),
                    || old.iter().all(|pid| is_zombie(pid.parse().unwrap())),
                );
                let listed = std::fs::read_to_string("/proc/self/mountinfo")
                    .unwrap()
                    .lines()
                    .filter(|l| l.split_whitespace().nth(4) == Some(target.as_str()))
                    .count();
                assert_eq!(listed, 1, "round {round}: mounts listed at {target}");
                assert_eq!(
                    std::fs::read_to_string(mount.join("health"))
                        .unwrap_or_else(|e| panic!("round {round}: reading health: {e}")),
                    "OK\n",
                    "round {round}"
                );
            }
        }));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });
}
