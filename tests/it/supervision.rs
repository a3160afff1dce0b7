//! Supervision: a panic injected into each actor while other requests keep being answered,
//! restart intensity reaching `failed` and recovering, and kill -9 during a write storm.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

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
