//! Writes through the single writer: concurrency, group-commit isolation, backups, and the
//! CLI's direct reads.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use serde_json::{Value, json};

use crate::support::daemon::*;

#[test]
fn concurrent_writers_lose_no_write() {
    let d = Daemon::start();
    let clients = 16;
    let per_client = 50;
    let barrier = Arc::new(Barrier::new(clients));
    std::thread::scope(|s| {
        for c in 0..clients {
            let barrier = barrier.clone();
            let d = &d;
            s.spawn(move || {
                let mut conn = d.connect();
                barrier.wait();
                for i in 0..per_client {
                    let key = format!("c{c}.k{i}");
                    let r = conn
                        .call(
                            "setting.upsert",
                            json!({"key": key, "value": format!("{c}:{i}")}),
                        )
                        .unwrap();
                    assert_eq!(r["key"], key);
                }
            });
        }
    });
    let listed = d.call("setting.list", json!({})).unwrap();
    assert_eq!(
        listed["settings"].as_array().unwrap().len(),
        clients * per_client
    );
    // The CLI's direct read sees the same.
    let out: Value = serde_json::from_str(&d.ccd_ok(&["setting", "list", "--json"])).unwrap();
    assert_eq!(out.as_array().unwrap().len(), clients * per_client);
}

#[test]
fn a_failing_write_in_a_group_does_not_fail_the_others() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_string();
    // Many clients race to create the same 10 names: per name exactly one wins, the others
    // get -32005, and every unique write alongside them commits. Deletes of missing settings
    // (one-statement writes, which run without a savepoint) fail alone as well.
    type Outcome = (
        String,
        Result<Value, Value>,
        Result<Value, Value>,
        Result<Value, Value>,
    );
    let results: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let d = &d;
                let path = path.clone();
                s.spawn(move || {
                    let mut c = d.connect();
                    let name = format!("shared{}", i % 10);
                    let create = c.call("project.create", json!({"name": name, "path": path}));
                    let missing = c.call("setting.delete", json!({"key": format!("gone{i}")}));
                    let unique = c.call(
                        "setting.upsert",
                        json!({"key": format!("u{i}"), "value": "x"}),
                    );
                    (name, create, missing, unique)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut winners = HashSet::new();
    for (name, create, missing, unique) in &results {
        assert_eq!(code(missing.as_ref().unwrap_err()), -32004, "{missing:?}");
        match create {
            Ok(p) => assert!(
                winners.insert(name.clone()),
                "two creates of {name} succeeded: {p}"
            ),
            Err(e) => assert_eq!(code(e), -32005, "{e}"),
        }
        assert!(unique.is_ok(), "{unique:?}");
    }
    assert_eq!(winners.len(), 10);
    let projects = d.call("project.get_all", json!({})).unwrap();
    assert_eq!(projects["projects"].as_array().unwrap().len(), 10);
    assert_eq!(
        d.call("setting.list", json!({})).unwrap()["settings"]
            .as_array()
            .unwrap()
            .len(),
        40
    );
}

#[test]
fn projects_update_and_delete() {
    let d = Daemon::start();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let canon = |p: &std::path::Path| {
        std::fs::canonicalize(p)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    let p = d
        .call("project.create", json!({"name": "web", "path": a.path()}))
        .unwrap();
    assert_eq!(p["path"], canon(a.path()));
    let p = d
        .call(
            "project.update",
            json!({"name": "web", "path": b.path(), "new_name": "site"}),
        )
        .unwrap();
    assert_eq!(
        (p["name"].as_str(), p["path"].as_str()),
        (Some("site"), Some(canon(b.path()).as_str()))
    );
    let e = d
        .call("project.update", json!({"name": "site"}))
        .unwrap_err();
    assert_eq!(code(&e), -32602);
    let e = d
        .call("project.update", json!({"name": "web", "new_name": "x"}))
        .unwrap_err();
    assert_eq!(code(&e), -32004);
    assert_eq!(
        d.call("project.delete", json!({"name": "site"})).unwrap()["name"],
        "site"
    );
    assert_eq!(
        code(
            &d.call("project.delete", json!({"name": "site"}))
                .unwrap_err()
        ),
        -32004
    );
}

#[test]
fn settings_get_delete() {
    let d = Daemon::start();
    d.call("setting.upsert", json!({"key": "a", "value": "1"}))
        .unwrap();
    d.call("setting.upsert", json!({"key": "a", "value": "2"}))
        .unwrap();
    assert_eq!(
        d.call("setting.get", json!({"key": "a"})).unwrap()["value"],
        "2"
    );
    assert_eq!(
        d.call("setting.delete", json!({"key": "a"})).unwrap()["value"],
        "2"
    );
    assert_eq!(
        code(&d.call("setting.get", json!({"key": "a"})).unwrap_err()),
        -32004
    );
    assert_eq!(
        code(&d.call("setting.delete", json!({"key": "a"})).unwrap_err()),
        -32004
    );
    let e = d
        .call("setting.upsert", json!({"key": "", "value": "1"}))
        .unwrap_err();
    assert_eq!(code(&e), -32602);
}

#[test]
fn backups_while_writing_and_their_lifecycle() {
    let d = Daemon::start();
    for i in 0..100 {
        d.call(
            "setting.upsert",
            json!({"key": format!("k{i}"), "value": "v"}),
        )
        .unwrap();
    }
    let dest = tempfile::tempdir().unwrap();
    let path = dest.path().join("snap.db");
    let backup = std::thread::scope(|s| {
        // Writes keep flowing while the backup runs.
        let writer = s.spawn(|| {
            let mut c = d.connect();
            for i in 0..200 {
                c.call(
                    "setting.upsert",
                    json!({"key": format!("during{i}"), "value": "v"}),
                )
                .unwrap();
            }
        });
        let b = d.call("backup.create", json!({"path": path})).unwrap();
        writer.join().unwrap();
        b
    });
    assert_eq!(backup["path"], path.to_str().unwrap());
    assert!(backup["size_bytes"].as_u64().unwrap() > 0);
    let copy = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = copy
        .query_row(
            "SELECT count(*) FROM settings WHERE key LIKE 'k%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 100);
    let ok: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");

    let e = d.call("backup.create", json!({"path": path})).unwrap_err();
    assert_eq!(
        code(&e),
        -32005,
        "an existing file is never overwritten: {e}"
    );
    let e = d
        .call("backup.create", json!({"path": "relative.db"}))
        .unwrap_err();
    assert_eq!(code(&e), -32602);
    let long_name = format!("/tmp/{}.db", "x".repeat(300));
    let dir = d.path().to_str().unwrap().to_string();
    for (bad, says) in [
        ("/tmp/a\0b.db", "NUL byte"),
        ("/", "must name a file"),
        (dir.as_str(), "is a directory"),
        (long_name.as_str(), "at most 255"),
    ] {
        let e = d.call("backup.create", json!({ "path": bad })).unwrap_err();
        assert!(
            code(&e) == -32602 && e["message"].as_str().unwrap().contains(says),
            "{bad:?}: {e}"
        );
    }

    let default = d.call("backup.create", json!({})).unwrap();
    assert!(
        default["path"]
            .as_str()
            .unwrap()
            .starts_with(d.path().join("backups").to_str().unwrap())
    );
    let list = d.call("backup.list", json!({})).unwrap();
    assert_eq!(list["backups"].as_array().unwrap().len(), 2);

    let id = backup["id"].as_i64().unwrap();
    d.call("backup.delete", json!({"id": id})).unwrap();
    assert!(!path.exists());
    assert_eq!(
        code(&d.call("backup.delete", json!({"id": id})).unwrap_err()),
        -32004
    );
    assert_eq!(
        d.call("backup.list", json!({})).unwrap()["backups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn direct_reads_work_with_the_daemon_stopped_and_do_not_start_it() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    d.ccd_ok(&["project", "add", "p1", dir.path().to_str().unwrap()]);
    d.ccd_ok(&["setting", "set", "color", "blue"]);
    d.ccd_ok(&["setting", "set", "long", &"x".repeat(300)]);
    d.stop();

    let projects: Value = serde_json::from_str(&d.ccd_ok(&["project", "list", "--json"])).unwrap();
    assert_eq!(projects[0]["name"], "p1");
    assert_eq!(d.ccd_ok(&["setting", "get", "color"]).trim(), "blue");
    let table = d.ccd_ok(&["setting", "list"]);
    assert!(
        table.starts_with("KEY") && table.contains("color") && table.contains("blue"),
        "{table}"
    );
    // The value is the last column: a long one does not push the others out of line.
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["KEY", "UPDATED", "VALUE"], "{table}");
    let column = |line: &str, text: &str| line.find(text).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    let updated = column(lines[0], "UPDATED");
    assert!(
        lines
            .iter()
            .skip(1)
            .all(|l| l.len() > updated && l[updated..].starts_with("20")),
        "{table}"
    );
    assert!(d.ccd_ok(&["backup", "list"]).contains("no backups"));
    assert!(!d.socket().exists(), "a read must not start the daemon");
    assert_eq!(d.ccd(&["daemon", "status"]).status.code(), Some(3));
}

#[test]
fn describe_models_reports_the_schema() {
    let d = Daemon::start();
    let models = d.call("system.describe_models", json!({})).unwrap();
    let version = d.call("system.version", json!({})).unwrap();
    assert_eq!(models["schema_version"], version["schema_version"]);
    let tables: Vec<&str> = models["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in ["projects", "settings", "backups"] {
        assert!(tables.contains(&t), "{tables:?}");
    }
    let projects = named(&models["tables"], "projects");
    let path = projects["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "path")
        .unwrap();
    assert_eq!(
        (
            path["type"].as_str(),
            path["hint"].as_str(),
            path["nullable"].as_bool()
        ),
        (Some("TEXT"), Some("path"), Some(false))
    );
}

#[test]
fn concurrent_backups_to_one_name_make_one_backup_and_touch_nothing_else() {
    let d = Daemon::start();
    d.call("setting.upsert", json!({"key": "k", "value": "v"}))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.db");
    // A file with the name earlier versions used for the copy in progress is not ccd's.
    let beside = dir.path().join("two.db.partial");
    std::fs::write(&beside, "precious").unwrap();
    let mut c = d.connect();
    let batch = |c: &mut Conn, params: Value| -> Vec<Value> {
        let items: Vec<Value> = (0..8)
            .map(
                |i| json!({"jsonrpc": "2.0", "id": i, "method": "backup.create", "params": params}),
            )
            .collect();
        c.send(&Value::Array(items));
        let reply = c.recv().expect("a batch reply");
        reply.as_array().unwrap().clone()
    };
    let replies = batch(&mut c, json!({ "path": path }));
    let ok: Vec<&Value> = replies
        .iter()
        .filter(|r| r.get("result").is_some())
        .collect();
    assert_eq!(ok.len(), 1, "{replies:?}");
    for r in replies.iter().filter(|r| r.get("error").is_some()) {
        assert_eq!(code(&r["error"]), -32005, "{r}");
    }
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(ok[0]["result"]["size_bytes"].as_u64(), Some(size));
    assert_eq!(std::fs::read_to_string(&beside).unwrap(), "precious");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "nothing left behind: {names:?}");

    // A symlink to nowhere is something there too: never replaced.
    let dangling = dir.path().join("dangling.db");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let e = d
        .call("backup.create", json!({ "path": dangling }))
        .unwrap_err();
    assert_eq!(code(&e), -32005, "{e}");
    assert!(dangling.symlink_metadata().unwrap().is_symlink());
    assert!(!dir.path().join("nowhere").exists());

    // Backups to the default place at once each get a name of their own.
    let replies = batch(&mut c, json!({}));
    let mut paths: Vec<&str> = replies
        .iter()
        .map(|r| {
            r["result"]["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
        })
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 8, "{paths:?}");
    for p in paths {
        assert!(std::path::Path::new(p).is_file(), "{p}");
    }
}
