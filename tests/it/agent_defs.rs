//! Agent definitions, orchestration rules and hooks: import (all or nothing), list, show,
//! remove, and sealing at rest: no plaintext of a definition anywhere under CCD_HOME.

use serde_json::{Value, json};

use crate::support::daemon::*;

const SECRET: &str = "zebra-quartz-7731 is the reviewer's secret instruction";

fn agent_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reviewer.md"),
        format!("---\nname: reviewer\ndescription: Reviews diffs\ntools: Read, Grep\nmodel: sonnet\n---\n\n{SECRET}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("writer.md"),
        "---\nname: writer\ndescription: Writes docs\n---\nWrite clearly.\n",
    )
    .unwrap();
    dir
}

/// Every file under `root` whose bytes contain `needle`.
fn files_containing(root: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn import_list_show_remove_and_nothing_in_plain_text_at_rest() {
    let d = Daemon::start();
    let dir = agent_dir();
    let out = d.ccd_ok(&["agent", "import", dir.path().to_str().unwrap()]);
    assert!(out.contains("imported 2 agents"), "{out}");
    let list: Value = serde_json::from_str(&d.ccd_ok(&["agent", "list", "--json"])).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["reviewer", "writer"]);
    let shown = d.ccd_ok(&["agent", "show", "reviewer"]);
    assert!(
        shown.starts_with("---\nname: reviewer\n") && shown.contains(SECRET),
        "{shown}"
    );
    let got = d.call("agent.get", json!({"name": "reviewer"})).unwrap();
    assert_eq!(got["agent"]["tools"], json!(["Read", "Grep"]));

    // Re-importing replaces; rules and hooks round-trip.
    let again = d.call("agent.import", json!({"path": dir.path()})).unwrap();
    assert_eq!(again["replaced"], json!(["reviewer", "writer"]));
    d.call(
        "orchestrator.set_rules",
        json!({"rules": {"route": [{"match": "review", "agent": "reviewer", "note": SECRET}]}}),
    )
    .unwrap();
    assert_eq!(
        d.call("orchestrator.get_rules", json!({})).unwrap()["rules"]["route"][0]["agent"],
        "reviewer"
    );
    assert_eq!(
        d.call("hooks.get", json!({})).unwrap()["hooks"],
        Value::Null
    );
    d.call("hooks.set", json!({"hooks": {"PreToolUse": []}}))
        .unwrap();
    assert_eq!(
        d.call("hooks.get", json!({})).unwrap()["hooks"],
        json!({"PreToolUse": []})
    );

    // Nothing under CCD_HOME holds the plaintext: not the database, its WAL, the logs, a backup.
    d.call("backup.create", json!({})).unwrap();
    d.stop();
    let hits = files_containing(d.path(), SECRET.as_bytes());
    assert!(
        hits.is_empty(),
        "plaintext of a sealed definition found in {hits:?}"
    );
    let key = std::fs::metadata(d.path().join("master.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );

    d.ccd_ok(&["daemon", "start"]);
    d.ccd_ok(&["agent", "rm", "writer"]);
    assert_eq!(
        code(&d.call("agent.get", json!({"name": "writer"})).unwrap_err()),
        -32004
    );
    assert_eq!(
        code(
            &d.call("agent.delete", json!({"name": "writer"}))
                .unwrap_err()
        ),
        -32004
    );
}

#[test]
fn a_bad_import_names_file_and_line_and_stores_nothing() {
    let d = Daemon::start();
    let dir = agent_dir();
    std::fs::write(
        dir.path().join("zz-bad.md"),
        "---\nname: bad\ndescription: x\ncolour red\n---\nhi\n",
    )
    .unwrap();
    let e = d
        .call("agent.import", json!({"path": dir.path()}))
        .unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("zz-bad.md:4")
            && msg.contains("expected `key: value`")
            && msg.contains("nothing stored"),
        "{msg}"
    );
    assert!(
        d.call("agent.list", json!({})).unwrap()["agents"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A name used twice: refused at the `name:` line of the second, naming the first.
    std::fs::write(
        dir.path().join("zz-bad.md"),
        "---\n# the same agent again\ndescription: again\nname: reviewer\n---\nhi\n",
    )
    .unwrap();
    let e = d
        .call("agent.import", json!({"path": dir.path()}))
        .unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    let want = format!(
        "{}:4: duplicate agent name `reviewer` (first defined at {}:2)",
        dir.path().join("zz-bad.md").display(),
        dir.path().join("reviewer.md").display()
    );
    assert!(e["message"].as_str().unwrap().contains(&want), "{e}");
    assert_eq!(
        d.call("agent.list", json!({})).unwrap()["agents"],
        json!([])
    );

    let bundle = dir.path().join("bundle.json");
    std::fs::write(
        &bundle,
        r#"{"agents": [{"name": "j", "description": "d", "prompt": "p", "colour": 1}]}"#,
    )
    .unwrap();
    let e = d.call("agent.import", json!({"path": bundle})).unwrap_err();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("bundle.json:1: unknown field `colour`"),
        "{e}"
    );
    // A bad entry of a bundle is refused at its line.
    std::fs::write(
        &bundle,
        "{\"agents\": [\n  {\"name\": \"j\", \"description\": \"d\", \"prompt\": \"p\"},\n  {\"name\": \"k\", \"description\": \"d\", \"prompt\": \"p\"},\n  {\"name\": \"j\", \"description\": \"d\", \"prompt\": \" \"}\n]}\n",
    )
    .unwrap();
    let e = d.call("agent.import", json!({"path": bundle})).unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "{}:4: agents[2]: `prompt` is empty",
            bundle.display()
        )),
        "{msg}"
    );
    let text = std::fs::read_to_string(&bundle).unwrap();
    std::fs::write(&bundle, text.replace("\" \"", "\"p\"")).unwrap();
    let e = d.call("agent.import", json!({"path": bundle})).unwrap_err();
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "{b}:4: agents[2]: duplicate agent name `j` (first defined at {b}:2)",
            b = bundle.display()
        )),
        "{msg}"
    );
    assert_eq!(
        d.call("agent.list", json!({})).unwrap()["agents"],
        json!([])
    );
    std::fs::write(
        &bundle,
        r#"{"agents": [{"name": "j", "description": "d", "prompt": "p"}]}"#,
    )
    .unwrap();
    assert_eq!(
        d.call("agent.import", json!({"path": bundle})).unwrap()["imported"],
        json!(["j"])
    );
    let e = d
        .call("agent.import", json!({"path": "relative/dir"}))
        .unwrap_err();
    assert_eq!(code(&e), -32602);
}

/// The YAML that subagent files use in practice: quoted values, lists of tools, comments.
#[test]
fn imports_the_yaml_forms_of_real_subagent_files() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("planner.md"),
        "---\n# Plans work.\nname: planner\n\ndescription: \"Use when: the task is big\"  # quoted\ntools:\n  - Read\n  - Grep\nmodel: opus\n---\nPlan.\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tester.md"),
        "---\nname: tester\ndescription: >\n  Runs the tests\n  and reports.\ntools: [Bash, 'Read']\n---\nTest.\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("writer.md"),
        "---\nname: writer\ndescription: Writes docs\ntools: Read, Grep, Glob\ncolor: blue\npermissionMode: acceptEdits\n---\nWrite.\n",
    )
    .unwrap();
    let out = d.call("agent.import", json!({"path": dir.path()})).unwrap();
    assert_eq!(out["imported"], json!(["planner", "tester", "writer"]));
    let agent = |name: &str| d.call("agent.get", json!({"name": name})).unwrap();
    let planner = agent("planner");
    assert_eq!(
        planner["agent"],
        json!({"name": "planner", "description": "Use when: the task is big",
               "tools": ["Read", "Grep"], "model": "opus", "prompt": "Plan."})
    );
    // What the VFS serves reads back the same.
    assert!(
        planner["markdown"]
            .as_str()
            .unwrap()
            .contains("description: \"Use when: the task is big\"\ntools: Read, Grep\n"),
        "{planner}"
    );
    let tester = agent("tester");
    assert_eq!(
        tester["agent"]["description"],
        "Runs the tests and reports."
    );
    assert_eq!(tester["agent"]["tools"], json!(["Bash", "Read"]));
    // Fields ccd does not use (Claude Code's `/agents` writes `color`) are kept and served.
    let writer = agent("writer");
    assert_eq!(writer["agent"]["tools"], json!(["Read", "Grep", "Glob"]));
    assert_eq!(
        writer["agent"]["extra"],
        json!({"color": "blue", "permissionMode": "acceptEdits"})
    );
    let md = writer["markdown"].as_str().unwrap();
    assert!(
        md.contains("\ncolor: blue\n") && md.contains("\npermissionMode: acceptEdits\n"),
        "{md}"
    );

    // A bad value in one file refuses them all, at its line; nothing more is stored.
    std::fs::write(
        dir.path().join("zz.md"),
        "---\nname: zz\ndescription: d\ntools:\n  - Read\n  Grep\n---\nhi\n",
    )
    .unwrap();
    d.call("agent.delete", json!({"name": "writer"})).unwrap();
    let e = d
        .call("agent.import", json!({"path": dir.path()}))
        .unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "{}:6: expected a `- item` line in the list, got `Grep`",
            dir.path().join("zz.md").display()
        )),
        "{msg}"
    );
    let names: Vec<Value> = d.call("agent.list", json!({})).unwrap()["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(names, [json!("planner"), json!("tester")]);
}

#[test]
fn a_wrong_master_key_refuses_to_open_sealed_definitions() {
    let key_a = "11".repeat(32);
    let d = Daemon::builder().env("CCD_MASTER_KEY", &key_a).start();
    let dir = agent_dir();
    d.call("agent.import", json!({"path": dir.path()})).unwrap();
    d.stop();
    // The same home under another key: the definitions do not open.
    let out = d
        .command(&["daemon", "start"])
        .env("CCD_MASTER_KEY", "22".repeat(32))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let e = d
        .call("agent.get", json!({"name": "reviewer"}))
        .unwrap_err();
    assert_eq!(code(&e), -32603);
    assert!(
        e["message"].as_str().unwrap().contains("does not open"),
        "{e}"
    );
    d.stop();
    // A malformed key refuses the start, saying which.
    let out = d
        .command(&["daemon", "start"])
        .env("CCD_MASTER_KEY", "not hex")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CCD_MASTER_KEY"),
        "{}",
        describe(&out)
    );
}

#[test]
fn one_file_imports_and_reading_definitions_never_starts_the_daemon() {
    let d = Daemon::builder().prepare();
    for args in [&["agent", "list"][..], &["agent", "show", "reviewer"]] {
        let out = d.ccd(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not running"),
            "{}",
            describe(&out)
        );
        assert!(!d.socket().exists(), "{args:?} started the daemon");
    }
    // An import is a write: it starts the daemon. One .md file is one agent.
    let dir = agent_dir();
    let file = dir.path().join("writer.md");
    let out = d.ccd_ok(&["agent", "import", file.to_str().unwrap()]);
    assert!(out.contains("imported 1 agent: writer"), "{out}");
    assert!(d.socket().exists());
    let list = d.ccd_ok(&["agent", "list"]);
    assert!(
        list.contains("writer") && !list.contains("reviewer"),
        "{list}"
    );
}

#[test]
fn a_fifo_or_a_device_is_refused_without_holding_the_daemon() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("hooks.sealed");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    let md_fifo = dir.path().join("agent.md");
    std::fs::rename(&fifo, &md_fifo).unwrap();
    let zero_link = dir.path().join("agents.sealed");
    std::os::unix::fs::symlink("/dev/zero", &zero_link).unwrap();
    // Nothing ever writes to the FIFO: before, the daemon's thread waited in open(2) forever.
    for (method, path) in [
        ("agent.import", md_fifo.clone()),
        ("agent.import", dir.path().to_path_buf()),
        ("vfs.unseal", zero_link.clone()),
    ] {
        let key = if method == "vfs.unseal" {
            "file"
        } else {
            "path"
        };
        let e = d.call(method, json!({ key: path })).unwrap_err();
        assert!(
            code(&e) == -32602
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("not a regular file"),
            "{method} {path:?}: {e}"
        );
    }
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
}

/// The terminal the daemon's process is attached to (field 7 of /proc/PID/stat; 0: none).
fn controlling_tty(pid: u32) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(4).unwrap().parse().unwrap()
}

#[test]
fn a_terminal_named_in_a_request_does_not_become_the_daemons_and_sighup_is_ignored() {
    let d = Daemon::start();
    let pid = d.pid();
    assert_eq!(controlling_tty(pid), 0, "a detached daemon has no terminal");
    // A pseudo-terminal pair of this test's; its slave's path goes to the daemon.
    // SAFETY: posix_openpt/grantpt/unlockpt take a flag or an fd we own; ptsname_r writes at
    // most `buf.len()` bytes into our buffer.
    let (master, slave) = unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0);
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut buf = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, buf.as_mut_ptr(), buf.len()), 0);
        let name = std::ffi::CStr::from_ptr(buf.as_ptr());
        (master, name.to_str().unwrap().to_string())
    };
    let e = d.call("vfs.unseal", json!({ "file": slave })).unwrap_err();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{e}"
    );
    assert_eq!(
        controlling_tty(pid),
        0,
        "opening {slave} made it the daemon's terminal"
    );
    // SAFETY: closing the master fd we opened above, once.
    unsafe { libc::close(master) };
    // A hangup signal is logged and ignored.
    // SAFETY: kill(2) on the daemon's pid, a positive integer.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    d.log_containing("SIGHUP ignored");
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
    assert_eq!(d.pid(), pid);
}
