//! Supervision: a panic injected into each actor while other requests keep being answered,
//! restart intensity reaching `failed` and recovering, and kill -9 during a write storm.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::*;
use crate::support::stub_agents::*;

fn actor<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap()
}

/// Crash `name` while other clients keep pinging and writing: every one of their requests is
/// answered successfully, the crash request gets -32001 naming the actor, and it restarts.
fn crash_while_serving(name: &str) {
    let d = Daemon::builder().fault_injection().start();
    let stop = AtomicBool::new(false);
    let served = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let (d, stop, served) = (&d, &stop, &served);
                s.spawn(move || {
                    let mut c = d.connect();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) || i < 20 {
                        let r = if w == 0 {
                            c.call("system.ping", json!({}))
                        } else {
                            c.call(
                                "setting.upsert",
                                json!({"key": format!("w{w}.{i}"), "value": "v"}),
                            )
                        };
                        if let Err(e) = &r {
                            // Only the request that was in the actor when it panicked may fail.
                            assert_eq!(code(e), -32001, "{e}");
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    i
                })
            })
            .collect();
        wait_until("traffic to flow", Duration::from_secs(20), || {
            served.load(Ordering::Relaxed) > 50
        });
        for _ in 0..3 {
            let e = d.call("debug.crash", json!({"actor": name})).unwrap_err();
            assert_eq!(code(&e), -32001, "{e}");
            assert_eq!(e["data"]["actor"], name);
            assert!(e["message"].as_str().unwrap().contains("panicked"), "{e}");
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            assert!(w.join().unwrap() >= 20);
        }
    });
    let health = d.call("system.health", json!({})).unwrap();
    let a = actor(&health, name);
    assert_eq!(a["restarts"], 3);
    assert_eq!(a["state"], "running");
    assert!(a["last_panic"].as_str().unwrap().contains("injected panic"));
    assert!(all_actors_running(&health), "{health}");
}

#[test]
fn gateway_panic_restarts_while_others_are_served() {
    crash_while_serving("gateway");
}

#[test]
fn writer_panic_restarts_while_others_are_served() {
    crash_while_serving("writer");
}

#[test]
fn writes_queued_behind_a_writer_panic_are_committed_by_the_restarted_writer() {
    let d = Daemon::builder().fault_injection().start();
    let mut c = d.connect();
    let mut lines = Vec::new();
    for i in 0..50 {
        let (method, params) = if i == 25 {
            ("debug.crash", json!({"actor": "writer"}))
        } else {
            (
                "setting.upsert",
                json!({"key": format!("q{i}"), "value": "v"}),
            )
        };
        lines.extend(
            serde_json::to_vec(
                &json!({"jsonrpc": "2.0", "id": i, "method": method, "params": params}),
            )
            .unwrap(),
        );
        lines.push(b'\n');
    }
    c.send_raw(&lines);
    let mut acked = HashSet::new();
    for _ in 0..50 {
        let r = c.recv().unwrap();
        let id = r["id"].as_u64().unwrap();
        if id == 25 {
            assert_eq!(code(&r["error"]), -32001);
        } else if r.get("result").is_some() {
            acked.insert(format!("q{id}"));
        } else {
            assert_eq!(code(&r["error"]), -32001, "{r}");
        }
    }
    let stored: HashSet<String> = d.call("setting.list", json!({})).unwrap()["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect();
    assert!(acked.is_subset(&stored), "an acknowledged write was lost");
    assert_eq!(
        acked.len(),
        49,
        "every write queued around the panic is served"
    );
}

fn intensity_daemon(backoff_ms: u64) -> Daemon {
    let d = Daemon::builder()
        .fault_injection()
        .config(&format!(
            "[supervisor]\nmax_restarts = 2\nwindow_ms = 600000\nbackoff_initial_ms = {backoff_ms}\nbackoff_max_ms = {backoff_ms}\n"
        ))
        .start();
    for expected in ["restarting", "restarting", "failed"] {
        let e = d
            .call("debug.crash", json!({"actor": "writer"}))
            .unwrap_err();
        assert_eq!(e["data"]["state"], expected, "{e}");
    }
    d
}

#[test]
fn restart_intensity_marks_the_actor_failed_while_the_rest_serves() {
    // A retry delay far longer than this test: the writer stays failed throughout.
    let d = intensity_daemon(600_000);
    let health = d.call("system.health", json!({})).unwrap();
    assert_eq!(health["status"], "degraded");
    let w = actor(&health, "writer");
    assert_eq!(w["state"], "failed");
    assert!(
        w["reason"].as_str().unwrap().contains("restarted 3 times"),
        "{w}"
    );
    let e = d
        .call("setting.upsert", json!({"key": "k", "value": "v"}))
        .unwrap_err();
    assert_eq!(code(&e), -32001);
    assert_eq!(
        (e["data"]["actor"].as_str(), e["data"]["state"].as_str()),
        (Some("writer"), Some("failed"))
    );
    assert!(
        e["message"].as_str().unwrap().contains("restarted 3 times"),
        "{e}"
    );
    // Everything that does not need the writer keeps serving.
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
    assert!(
        d.call("setting.list", json!({})).is_ok(),
        "reads do not need the writer"
    );
    assert_eq!(
        actor(&d.call("system.health", json!({})).unwrap(), "gateway")["state"],
        "running"
    );
    let status = d.ccd(&["daemon", "status"]);
    assert_eq!(status.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&status.stdout).contains("failed"));
}

#[test]
fn a_failed_actor_is_brought_back_by_the_background_retry() {
    let d = intensity_daemon(200);
    wait_until("the writer to recover", Duration::from_secs(30), || {
        actor(&d.call("system.health", json!({})).unwrap(), "writer")["state"] == "running"
    });
    d.call("setting.upsert", json!({"key": "k", "value": "after"}))
        .unwrap();
    assert_eq!(
        d.call("setting.get", json!({"key": "k"})).unwrap()["value"],
        "after"
    );
    let health = d.call("system.health", json!({})).unwrap();
    assert!(all_actors_running(&health), "{health}");
    assert_eq!(actor(&health, "writer")["restarts"], 3);
}

#[test]
fn kill_9_during_a_write_storm_loses_no_acknowledged_write() {
    let d = Daemon::start();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let pid = d.pid();
    std::thread::scope(|s| {
        for w in 0..8 {
            let (d, acked) = (&d, acked.clone());
            s.spawn(move || {
                let Some(mut c) = Conn::try_open(&d.socket()) else {
                    return;
                };
                for i in 0.. {
                    let key = format!("w{w}.{i}");
                    let Some(id) =
                        c.try_request("setting.upsert", json!({"key": key, "value": "v"}))
                    else {
                        return; // the daemon is gone
                    };
                    match c.recv() {
                        Some(r) if r["id"] == json!(id) && r.get("result").is_some() => {
                            acked.lock().unwrap().push(key)
                        }
                        _ => return, // the daemon is gone: this write was never acknowledged
                    }
                }
            });
        }
        wait_until("writes to be acknowledged", Duration::from_secs(30), || {
            acked.lock().unwrap().len() > 2000
        });
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    });
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 2000);
    // The killed process must be gone (its lock released) before a new daemon can start.
    wait_until(
        "the killed daemon to be gone",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        },
    );

    d.ccd_ok(&["daemon", "start"]);
    assert_ne!(d.pid(), pid);
    let stored: HashSet<String> = d.call("setting.list", json!({})).unwrap()["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !stored.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    d.stop();
    let conn = rusqlite::Connection::open(d.path().join("ccd.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// Requests that keep other clients busy while an actor is crashed. Each kind is served by the
/// gateway plus the actors named in [`Traffic::actors`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Traffic {
    /// `system.ping`: the gateway alone.
    Ping,
    /// `setting.upsert` then `setting.get` of what it wrote: the writer, then a direct read.
    Settings,
    /// `limiter.status`: the limiter.
    Limiter,
    /// `breaker.status`: the breaker.
    Breaker,
}

impl Traffic {
    const ALL: [Traffic; 4] = [
        Traffic::Ping,
        Traffic::Settings,
        Traffic::Limiter,
        Traffic::Breaker,
    ];

    fn actors(self) -> &'static [&'static str] {
        match self {
            Traffic::Ping => &[],
            Traffic::Settings => &["writer"],
            Traffic::Limiter => &["limiter"],
            Traffic::Breaker => &["breaker"],
        }
    }

    /// One request (two for settings) and whether it got the normal answer: `Err` says what
    /// came back instead.
    fn exchange(self, c: &mut Conn, key: &str, i: usize) -> Result<(), String> {
        match self {
            Traffic::Ping => match c.call("system.ping", json!({})) {
                Ok(r) if r == "pong" => Ok(()),
                other => Err(format!("system.ping: {other:?}")),
            },
            Traffic::Settings => {
                let value = i.to_string();
                match c.call("setting.upsert", json!({"key": key, "value": value})) {
                    Ok(r) if r["key"] == key && r["value"] == value.as_str() => {}
                    other => return Err(format!("setting.upsert {key}: {other:?}")),
                }
                match c.call("setting.get", json!({"key": key})) {
                    Ok(r) if r["value"] == value.as_str() => Ok(()),
                    other => Err(format!(
                        "setting.get {key} after writing {value}: {other:?}"
                    )),
                }
            }
            Traffic::Limiter => match c.call("limiter.status", json!({})) {
                Ok(r) if r["limits"].is_object() && r["keys"].is_array() => Ok(()),
                other => Err(format!("limiter.status: {other:?}")),
            },
            Traffic::Breaker => match c.call("breaker.status", json!({})) {
                Ok(r) if r["breakers"].is_array() => Ok(()),
                other => Err(format!("breaker.status: {other:?}")),
            },
        }
    }
}

/// What the table-driven crash test runs against.
struct Rig {
    d: Daemon,
    /// The agent filesystem's mount point, when it is enabled.
    mount: Option<std::path::PathBuf>,
    _agent: tempfile::TempDir,
}

/// Shows that the actor named by the second argument, restarted, does its own work again.
type ServesAgain = fn(&Rig, &str);

/// A query through the limiter, the breaker, the pool and its only executor, `executor-1`.
fn query_succeeds(rig: &Rig, _: &str) {
    let r = rig
        .d
        .call("query.run", json!({"prompt": "are you back?"}))
        .unwrap_or_else(|e| panic!("query.run after the crash: {e}"));
    assert_eq!(r["result"], "Hello from mock", "{r}");
}

fn ping_succeeds(rig: &Rig, _: &str) {
    assert_eq!(rig.d.call("system.ping", json!({})).unwrap(), "pong");
    assert!(rig.d.call("system.describe", json!({})).is_ok());
}

fn write_succeeds(rig: &Rig, name: &str) {
    let key = format!("after.{name}");
    rig.d
        .call("setting.upsert", json!({"key": key, "value": "written"}))
        .unwrap_or_else(|e| panic!("setting.upsert after the crash: {e}"));
    assert_eq!(
        rig.d.call("setting.get", json!({"key": key})).unwrap()["value"],
        "written"
    );
}

fn limiter_serves(rig: &Rig, name: &str) {
    let st = rig
        .d
        .call("limiter.status", json!({}))
        .unwrap_or_else(|e| panic!("limiter.status after the crash: {e}"));
    assert!(st["limits"].is_object(), "{st}");
    // A query needs a permit from the limiter.
    query_succeeds(rig, name);
}

fn breaker_serves(rig: &Rig, name: &str) {
    // A query asks the breaker first and records its outcome there afterwards.
    query_succeeds(rig, name);
    let list = rig
        .d
        .call("breaker.status", json!({}))
        .unwrap_or_else(|e| panic!("breaker.status after the crash: {e}"));
    let breakers = list["breakers"].as_array().unwrap();
    assert_eq!(breakers.len(), 1, "{list}");
    assert_eq!(breakers[0]["state"], "CLOSED", "{list}");
}

/// The bus actor writes published events to the log: a session created after the crash shows
/// up in `event.list`.
fn eventbus_serves(rig: &Rig, _: &str) {
    let s = rig.d.call("session.create", json!({})).unwrap();
    let id = s["id"].clone();
    wait_until(
        "the restarted bus actor to write a new event to the log",
        Duration::from_secs(30),
        || {
            rig.d
                .call("event.list", json!({"types": ["session.created"]}))
                .unwrap()["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["session_id"] == id)
        },
    );
}

/// `vfs.unseal` is served by the VfsActor itself.
fn vfs_serves(rig: &Rig, _: &str) {
    let mount = rig
        .mount
        .as_ref()
        .expect("the vfs case runs only with a mount");
    assert_eq!(
        std::fs::read_to_string(mount.join("health")).unwrap(),
        "OK\n"
    );
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("agents.sealed");
    std::fs::copy(mount.join("agents.sealed"), &copy).unwrap();
    let bundle = rig
        .d
        .call("vfs.unseal", json!({"file": copy}))
        .unwrap_or_else(|e| panic!("vfs.unseal after the crash: {e}"));
    assert!(bundle["agents"].is_array(), "{bundle}");
}

/// Crash `name` twice while one client per kind of [`Traffic`] that does not need it keeps
/// calling: each of their requests gets its normal answer, before, during and after the
/// crashes; each crash request gets -32001 naming the actor; the actor is `running` again with
/// two more restarts; and `serves_again` shows it doing its own work.
fn crash_under_traffic(rig: &Rig, name: &str, serves_again: ServesAgain) {
    let d = &rig.d;
    let before = actor(&d.call("system.health", json!({})).unwrap(), name)["restarts"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} is not in system.health"));
    let kinds: Vec<Traffic> = Traffic::ALL
        .into_iter()
        .filter(|t| !t.actors().contains(&name))
        .collect();
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::<String>::new());
    let counts: Vec<AtomicUsize> = kinds.iter().map(|_| AtomicUsize::new(0)).collect();
    let enough = |target: &[usize]| {
        counts
            .iter()
            .zip(target)
            .all(|(c, t)| c.load(Ordering::Relaxed) >= *t)
    };
    std::thread::scope(|s| {
        for (w, kind) in kinds.iter().enumerate() {
            let (stop, failures, count) = (&stop, &failures, &counts[w]);
            s.spawn(move || {
                let mut c = d.connect();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("traffic.{name}.{w}.{i}");
                    if let Err(e) = kind.exchange(&mut c, &key, i) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{kind:?} while crashing {name}: {e}"));
                    }
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        wait_until(
            "every client to be served before the crash",
            Duration::from_secs(30),
            || enough(&vec![5; kinds.len()]),
        );
        for _ in 0..2 {
            let e = d
                .call("debug.crash", json!({"actor": name}))
                .expect_err("debug.crash must fail");
            assert_eq!(code(&e), -32001, "{e}");
            assert_eq!(e["data"]["actor"], name, "{e}");
            assert_eq!(e["data"]["state"], "restarting", "{e}");
            let message = e["message"].as_str().unwrap();
            assert!(
                message.contains(name) && message.contains("panicked"),
                "{e}"
            );
        }
        // Keep the clients going until each has been served a few more times after the crashes.
        let after: Vec<usize> = counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed) + 5)
            .collect();
        wait_until(
            "every client to be served after the crash",
            Duration::from_secs(30),
            || enough(&after),
        );
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "requests not needing {name} failed while it crashed:\n{}",
        failures.join("\n")
    );

    wait_until(
        &format!("{name} to be running again"),
        Duration::from_secs(30),
        || actor(&d.call("system.health", json!({})).unwrap(), name)["state"] == "running",
    );
    let health = d.call("system.health", json!({})).unwrap();
    let a = actor(&health, name);
    assert_eq!(a["restarts"], before + 2, "{a}");
    assert!(
        a["last_panic"]
            .as_str()
            .is_some_and(|p| p.contains(&format!("injected panic in {name}"))),
        "{a}"
    );
    assert!(all_actors_running(&health), "{health}");
    serves_again(rig, name);
}

#[test]
fn a_panic_in_each_actor_restarts_it_while_every_other_request_is_answered() {
    let fuse = std::path::Path::new("/dev/fuse").exists();
    // Replays a captured successful transcript, so that `query.run` goes through the limiter,
    // the breaker and the executors.
    let (agent, agent_cmd) = stub_agent(include_str!("../../protocol/fixtures/text.jsonl"));
    let mut builder = Daemon::builder()
        .fault_injection()
        .agent(agent_cmd)
        .config("[executor]\npool_size = 1\n[retry]\nmax_retries = 0\n");
    if fuse {
        builder = builder.env("CCD_VFS_ENABLED", "true");
    }
    let d = builder.start();
    let mount = fuse.then(|| {
        let st = d.call("vfs.status", json!({})).unwrap();
        assert_eq!(st["mounted"], true, "{st}");
        std::path::PathBuf::from(st["mountpoint"].as_str().unwrap())
    });
    let rig = Rig {
        d,
        mount,
        _agent: agent,
    };
    // The agent probe runs in the background at start; queries need its verdict.
    wait_until("the agent check to finish", Duration::from_secs(60), || {
        !rig.d.call("system.health", json!({})).unwrap()["agent"]["available"].is_null()
    });
    query_succeeds(&rig, "");

    let cases: [(&str, ServesAgain); 8] = [
        ("gateway", ping_succeeds),
        ("writer", write_succeeds),
        ("executor", query_succeeds),
        ("executor-1", query_succeeds),
        ("limiter", limiter_serves),
        ("breaker", breaker_serves),
        ("eventbus", eventbus_serves),
        ("vfs", vfs_serves),
    ];
    let names: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
    let listed: HashSet<String> = rig.d.call("system.health", json!({})).unwrap()["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    for name in &listed {
        assert!(
            names.contains(&name.as_str()),
            "actor {name} has no crash case"
        );
    }
    for (name, serves_again) in cases {
        if name == "vfs" && !fuse {
            eprintln!("skipped the vfs case: /dev/fuse does not exist, so nothing is mounted");
            continue;
        }
        crash_under_traffic(&rig, name, serves_again);
    }
}

#[test]
fn runs_that_end_while_the_pool_is_failed_give_their_executors_back() {
    // Two agents that wait for a file, so the test decides when they end.
    let (dir, agent) = script_agent(
        "cat > /dev/null\ntouch \"$here/started.$$\"\n\
         while [ ! -e \"$here/release\" ]; do sleep 0.05; done\n\
         cat \"$here/transcript.jsonl\"",
        &[(
            "transcript.jsonl",
            include_str!("../../protocol/fixtures/text.jsonl"),
        )],
    );
    // The failed pool is retried after 3 s: the runs end well before that.
    let d = Daemon::builder()
        .fault_injection()
        .agent(agent)
        .config(
            "[executor]\npool_size = 2\n[retry]\nmax_retries = 0\n\
             [supervisor]\nmax_restarts = 2\nwindow_ms = 600000\n\
             backoff_initial_ms = 3000\nbackoff_max_ms = 3000\n",
        )
        .start();
    // Two queries, each on a connection of its own, and then each answered with a result.
    let two_queries = |prefix: &str| -> Vec<(Conn, u64)> {
        (0..2)
            .map(|i| {
                let mut c = d.connect();
                let id = c.request("query.run", json!({"prompt": format!("{prefix}{i}")}));
                (c, id)
            })
            .collect()
    };
    let each_has_a_result = |queries: &mut Vec<(Conn, u64)>| {
        for (c, id) in queries {
            let reply = c.reply_to(*id);
            assert!(reply.get("result").is_some(), "{reply}");
        }
    };
    let mut clients = two_queries("q");
    let started = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("started."))
            .count()
    };
    wait_until("both agents to run", Duration::from_secs(30), || {
        started() == 2
    });
    for expected in ["restarting", "restarting", "failed"] {
        let e = d
            .call("debug.crash", json!({"actor": "executor"}))
            .unwrap_err();
        assert_eq!(e["data"]["state"], expected, "{e}");
    }
    // The runs end while the pool is failed: their executors must still be given back to it.
    std::fs::write(dir.path().join("release"), "").unwrap();
    each_has_a_result(&mut clients);
    wait_until("the pool to recover", Duration::from_secs(60), || {
        actor(&d.call("system.health", json!({})).unwrap(), "executor")["state"] == "running"
    });
    let health = d.call("system.health", json!({})).unwrap();
    assert_eq!(
        (&health["executor"]["busy"], &health["executor"]["queued"]),
        (&json!(0), &json!(0)),
        "{health}"
    );
    // Both executors take work again (a lost one would leave a query queued for good: the
    // connection's read timeout ends the test).
    each_has_a_result(&mut two_queries("again "));
}
