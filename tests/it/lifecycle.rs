//! Daemon lifecycle: start, double start, stale state, stop, status, restart, logs.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[test]
fn start_answers_and_double_start_says_so() {
    let d = Daemon::builder().prepare();
    let out = d.ccd_ok(&["daemon", "start"]);
    assert!(out.starts_with("ccd daemon started (pid "), "{out}");
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");

    let again = d.ccd(&["daemon", "start"]);
    assert!(again.status.success(), "{}", describe(&again));
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("already running"), "{text}");
    assert!(text.contains(&d.pid().to_string()), "{text}");
}

#[test]
fn home_is_private_and_socket_is_owner_only() {
    let d = Daemon::start();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(d.path()), 0o700);
    assert_eq!(mode(&d.socket()), 0o600);
    let pid: u32 = std::fs::read_to_string(d.path().join("ccd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, d.pid());
    assert!(d.path().join("ccd.db").exists());
    assert!(d.path().join("logs/ccd.log").exists());
}

#[test]
fn stop_removes_socket_and_pid_file_and_status_exits_3() {
    let d = Daemon::start();
    let status = d.ccd(&["daemon", "status"]);
    assert_eq!(status.status.code(), Some(0), "{}", describe(&status));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("gateway") && text.contains("writer") && text.contains("running"),
        "{text}"
    );

    let out = d.ccd_ok(&["daemon", "stop"]);
    assert!(out.contains("stopped"), "{out}");
    assert!(!d.socket().exists(), "socket left behind");
    assert!(!d.path().join("ccd.pid").exists(), "pid file left behind");

    let status = d.ccd(&["daemon", "status"]);
    assert_eq!(status.status.code(), Some(3), "{}", describe(&status));
    let status = d.ccd(&["daemon", "status", "--json"]);
    assert_eq!(status.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["running"], false);

    // Stopping a stopped daemon is fine.
    let out = d.ccd_ok(&["daemon", "stop"]);
    assert!(out.contains("not running"), "{out}");
}

#[test]
fn stale_pid_and_socket_after_kill_9_are_replaced() {
    let d = Daemon::start();
    let old = d.pid();
    d.kill9();
    assert!(
        d.socket().exists(),
        "a killed daemon leaves its socket file"
    );
    assert!(d.path().join("ccd.pid").exists());
    // Not answering, not holding the lock: status says not running.
    assert_eq!(d.ccd(&["daemon", "status"]).status.code(), Some(3));

    let out = d.ccd_ok(&["daemon", "start"]);
    assert!(out.contains("started"), "{out}");
    let new = d.pid();
    assert_ne!(old, new);
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
}

#[test]
fn garbage_pid_file_and_stray_socket_file_do_not_block_a_start() {
    let d = Daemon::builder().prepare();
    std::fs::write(d.path().join("ccd.pid"), "not a pid").unwrap();
    std::fs::write(d.socket(), "").unwrap();
    d.ccd_ok(&["daemon", "start"]);
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
}

#[test]
fn restart_gives_a_new_daemon_and_keeps_data() {
    let d = Daemon::start();
    d.call("setting.upsert", json!({"key": "k", "value": "v"}))
        .unwrap();
    let old = d.pid();
    d.ccd_ok(&["daemon", "restart"]);
    assert_ne!(d.pid(), old);
    assert_eq!(
        d.call("setting.get", json!({"key": "k"})).unwrap()["value"],
        "v"
    );
}

#[test]
fn sigterm_stops_gracefully() {
    let d = Daemon::start();
    let pid = d.pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    wait_until(
        "the daemon to exit on SIGTERM",
        Duration::from_secs(20),
        || !d.path().join("ccd.pid").exists(),
    );
    assert!(!d.socket().exists());
    let log = std::fs::read_to_string(d.path().join("logs/ccd.log")).unwrap();
    assert!(log.contains("SIGTERM"), "{log}");
}

#[test]
fn a_bad_config_fails_the_start_with_the_key_named() {
    let d = Daemon::builder()
        .config("[ipc]\nmax_conections = 3\n")
        .prepare();
    let out = d.ccd(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_conections"), "{err}");
    assert!(!d.socket().exists());
}

#[test]
fn logs_prints_the_daemon_log() {
    let d = Daemon::start();
    // The log is written by a background thread: the line may land just after the start.
    wait_until("the start in the log", Duration::from_secs(30), || {
        std::fs::read_to_string(d.path().join("logs/ccd.log"))
            .is_ok_and(|l| l.contains("listening"))
    });
    let out = d.ccd_ok(&["daemon", "logs", "-n", "50"]);
    assert!(out.contains("listening"), "{out}");
    let two = d.ccd_ok(&["daemon", "logs", "-n", "2"]);
    assert!((1..=2).contains(&two.lines().count()), "{two}");
}

#[test]
fn foreground_run_stops_on_shutdown_request() {
    let d = Daemon::builder().prepare();
    let mut child = d
        .command(&["daemon", "run"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the foreground daemon to listen",
        Duration::from_secs(20),
        || Conn::try_open(&d.socket()).is_some(),
    );
    assert_eq!(
        d.call("system.shutdown", json!({})).unwrap()["stopping"],
        true
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!d.socket().exists());
}
