//! Limits that keep one client's behaviour from costing the others: open files, reply memory.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// Open-file limit the daemon is started with here: after the descriptors it keeps for itself
/// (64 + 4 per executor; 4 executors), room for (200 - 80) / 2 = 60 connections.
const NOFILE: u64 = 200;

/// Start `d`'s daemon under an open-file limit of [`NOFILE`].
fn start_under_nofile(d: &Daemon) {
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
}

#[test]
fn idle_connections_never_lock_new_clients_out_under_a_low_open_file_limit() {
    let d = Daemon::builder().prepare();
    start_under_nofile(&d);

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
    d.log_containing("ipc.max_connections lowered from 1024 to 60");
    // The idle ones were closed oldest first to make room; the newest are still served.
    let mut newest = idle.into_iter().last().expect("connections");
    assert_eq!(newest.call("system.ping", json!({})).unwrap(), "pong");
}

/// The HTTP API's connections (one descriptor each) come out of the same budget: it gets at most
/// half of the 120 left, 60, and the socket's connections (two each) share the other half.
#[test]
fn http_connections_are_counted_in_the_open_file_budget() {
    let d = Daemon::builder()
        .env("CCD_HTTP_ENABLED", "true")
        .env("CCD_HTTP_BIND", "127.0.0.1:0")
        .prepare();
    start_under_nofile(&d);
    let config = d.call("system.config", json!({})).unwrap();
    let value = |key: &str| {
        config["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in {config}"))
            .clone()
    };
    for (key, now, was) in [
        ("http.max_connections", 60, 256),
        ("http.max_event_streams", 59, 64),
        ("ipc.max_connections", 30, 1024),
    ] {
        let v = value(key);
        assert_eq!(v["value"], now, "{v}");
        assert!(
            v["source"]
                .as_str()
                .unwrap()
                .ends_with(&format!("then lowered at start (was {was})")),
            "{v}"
        );
    }
    d.log_containing("http.max_connections lowered from 256 to 60");
}

/// Settings committed so far, read straight from the database.
fn settings_count(d: &Daemon) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(
        d.path().join("ccd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("opening the database read-only");
    conn.query_row("SELECT count(*) FROM settings", [], |r| r.get(0))
        .expect("counting settings")
}

#[test]
fn a_client_that_does_not_read_its_big_replies_is_not_read_either() {
    // Replies of about 100 kB each (an upsert echoes its value). With at most 64 requests in
    // flight and reading paused while more than 1 MiB of replies wait to be written, a client
    // that never reads gets about 64 + 10 requests served (plus what the socket buffer holds)
    // before the daemon stops reading from it: its memory is bounded by bytes, not only by a
    // count of replies (which allowed 64 in flight + 128 queued, whatever their size).
    const N: usize = 250;
    const MAX_SERVED_UNREAD: u64 = 85;
    let d = Daemon::builder()
        .config("[ipc]\nmax_message_bytes = 1048576\nmax_inflight_per_connection = 64\n")
        .start();
    let value = "v".repeat(100_000);
    let mut conn = d.connect();
    let mut sender = conn.stream().try_clone().expect("cloning the socket");
    // Requests go out from a thread of their own: once the daemon stops reading, writes block.
    let writing = std::thread::spawn(move || {
        use std::io::Write;
        for i in 0..N {
            let mut line = json!({
                "jsonrpc": "2.0", "id": i, "method": "setting.upsert",
                "params": {"key": format!("big.{i}"), "value": value},
            })
            .to_string();
            line.push('\n');
            sender
                .write_all(line.as_bytes())
                .expect("sending a request");
        }
    });
    // Wait until the daemon has stopped serving the connection: the count stays put.
    let mut last = u64::MAX;
    let mut steady = 0;
    wait_until(
        "the daemon to stop reading the connection",
        Duration::from_secs(60),
        || {
            let now = settings_count(&d);
            steady = if now == last { steady + 1 } else { 0 };
            last = now;
            std::thread::sleep(Duration::from_millis(200));
            steady >= 5 || now == N as u64
        },
    );
    assert!(
        last <= MAX_SERVED_UNREAD,
        "{last} of {N} requests were served for a client that read none of its replies"
    );
    // Other clients are served meanwhile.
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
    // Once the client reads, everything is served and nothing was lost.
    conn.set_read_timeout(Duration::from_secs(30));
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..N {
        let reply = conn.recv().expect("a reply");
        assert!(reply.get("result").is_some(), "{reply}");
        answered.insert(reply["id"].as_u64().expect("a numeric id"));
    }
    assert_eq!(answered, (0..N as u64).collect());
    writing.join().unwrap();
    assert_eq!(settings_count(&d), N as u64);
}
