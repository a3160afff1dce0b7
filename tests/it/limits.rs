//! Limits that keep one client's behaviour from costing the others: open files, reply memory.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// Open-file limit the daemon is started with here: after the descriptors it keeps for itself
/// (64 + 4 per executor; 4 executors), room for (200 - 80) / 2 = 60 connections.
const NOFILE: u64 = 200;

#[test]
fn idle_connections_never_lock_new_clients_out_under_a_low_open_file_limit() {
    let d = Daemon::builder().prepare();
    let mut start = d.command(&["daemon", "start"]);
    // SAFETY: the closure runs in the child between fork and exec; it only calls setrlimit(2),
    // which is async-signal-safe, on a value on its own stack.
    unsafe {
        start.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = start.output().expect("running ccd daemon start");
    assert!(out.status.success(), "{}", describe(&out));

    // More connections than the 200 descriptors could hold even at one each: without the cap,
    // accept(2) fails with EMFILE, the backlog fills, and new clients wait forever. The clients
    // run on a thread of their own so that such a hang fails the test instead of stalling it.
    let socket = d.socket();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let idle: Vec<Conn> = (0..250).map(|_| Conn::open(&socket)).collect();
        let mut fresh = Conn::open(&socket);
        fresh.set_read_timeout(Duration::from_secs(30));
        let pong = fresh.call("system.ping", json!({}));
        let _ = done_tx.send((pong, idle));
    });
    let (pong, idle) = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("250 idle connections locked a new client out");
    assert_eq!(pong.expect("a new client is served"), "pong");
    wait_until(
        "the log to say the limit was lowered",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(d.path().join("logs/ccd.log"))
                .unwrap_or_default()
                .contains("ipc.max_connections lowered from 1024 to 60")
        },
    );
    // The idle ones were closed oldest first to make room; the newest are still served.
    let mut newest = idle.into_iter().last().expect("connections");
    assert_eq!(newest.call("system.ping", json!({})).unwrap(), "pong");
}
