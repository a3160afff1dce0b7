//! Limits that keep one client's behaviour from costing the others: open files, reply memory.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use serde_json::json;

use crate::support::daemon::*;

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

/// `VmHWM` (peak resident memory) or `VmRSS` of a process, in bytes, from /proc.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {line}"));
    kib * 1024
}

/// Open a connection, send it `bytes` without blocking (what the daemon does not read stays
/// unsent) and never read from it.
fn never_reading(d: &Daemon, bytes: &[u8]) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).expect("connect");
    s.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < bytes.len() {
        match s.write(&bytes[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("sending: {e}"),
        }
    }
    s
}

#[test]
fn replies_nobody_reads_stay_within_the_daemon_wide_budget() {
    // rpc.discover replies are about 60 kB. Sixteen connections pipeline 2,000 of them each and
    // two send a batch of 1,000, and none reads a byte. Before the budget, each pipelining
    // connection held its unread replies up to `ipc.max_message_bytes` (8 MiB) plus 64 in
    // flight, and each batch built all of its 1,000 replies (about 120 MB): about 500 MB in all.
    // With a budget of 4 MiB the daemon stops reading them (and cuts the batches short) at
    // about that, plus one reply per connection.
    const BUDGET: u64 = 4 * 1024 * 1024;
    const MARGIN: u64 = 96 * 1024 * 1024;
    let d = Daemon::builder()
        .env("CCD_IPC_MAX_PENDING_REPLY_BYTES", &BUDGET.to_string())
        .env("CCD_IPC_WRITE_TIMEOUT_MS", "2000")
        .start();
    let pid = d.pid();
    let discover = r#"{"jsonrpc":"2.0","id":1,"method":"rpc.discover"}"#;
    // Warm up (the first replies allocate what the daemon keeps), then take the baseline.
    let mut warm = d.connect();
    for _ in 0..3 {
        assert!(warm.call("rpc.discover", json!({})).is_ok());
    }
    let idle = proc_status_bytes(pid, "VmRSS:");

    let pipeline = format!("{discover}\n").repeat(2000);
    let batch = format!("[{}]\n", vec![discover; 1000].join(","));
    let mut hogs = Vec::new();
    for _ in 0..16 {
        hogs.push(never_reading(&d, pipeline.as_bytes()));
    }
    for _ in 0..2 {
        hogs.push(never_reading(&d, batch.as_bytes()));
    }
    // Other clients are still served: a fresh connection, and one that was open before.
    let mut fresh = d.connect();
    fresh.set_read_timeout(Duration::from_secs(30));
    assert_eq!(fresh.call("system.ping", json!({})).unwrap(), "pong");
    assert_eq!(warm.call("system.ping", json!({})).unwrap(), "pong");

    // Every connection that does not read is dropped after the write timeout.
    wait_until(
        "the daemon to drop every connection that does not read",
        Duration::from_secs(120),
        || {
            let log = std::fs::read_to_string(d.path().join("logs/ccd.log")).unwrap_or_default();
            log.matches("did not read its replies").count() >= hogs.len()
        },
    );
    let peak = proc_status_bytes(pid, "VmHWM:");
    eprintln!("idle RSS {} MiB, peak {} MiB", idle >> 20, peak >> 20);
    assert!(
        peak < idle + BUDGET + MARGIN,
        "peak RSS {} MiB with {} MiB idle: more than the {} MiB budget plus {} MiB",
        peak >> 20,
        idle >> 20,
        BUDGET >> 20,
        MARGIN >> 20
    );
    drop(hogs);

    // The budget is whole again once they are gone: a batch of 50 (about 3 MB, under the
    // budget) is answered in full, in order.
    let small_batch: Vec<_> = (0..50)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "rpc.discover"}))
        .collect();
    fresh.send(&json!(small_batch));
    let replies = fresh.recv().expect("the batch's reply");
    let replies = replies.as_array().expect("an array");
    assert_eq!(replies.len(), 50);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["id"], i, "in order");
        assert!(r.get("result").is_some(), "{}", r["error"]);
    }
}

#[test]
fn a_batch_whose_replies_would_pass_the_per_connection_bound_is_cut_short() {
    // 1,000 rpc.discover (about 60 kB each) would make a 60 MB reply line; with 1 MiB of
    // replies allowed per connection, those that would pass it are not run and get -32009.
    const LIMIT: usize = 1024 * 1024;
    let d = Daemon::builder()
        .config(&format!("[ipc]\nmax_message_bytes = {LIMIT}\n"))
        .start();
    let mut c = d.connect();
    c.set_read_timeout(Duration::from_secs(30));
    let batch: Vec<_> = (0..1000)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "rpc.discover"}))
        .collect();
    c.send(&json!(batch));
    let replies = c.recv().expect("the batch's reply");
    let replies = replies.as_array().expect("an array");
    assert_eq!(replies.len(), 1000, "one reply per request");
    let mut ran = 0;
    let mut bytes = 0;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["id"], i, "in order");
        if r.get("result").is_some() {
            assert_eq!(ran, i, "the requests that ran come first");
            ran += 1;
            bytes += r.to_string().len();
        } else {
            assert_eq!(code(&r["error"]), -32009, "{r}");
            assert_eq!(r["error"]["data"]["limit"], "ipc.max_message_bytes", "{r}");
        }
    }
    assert!(ran >= 1, "the first request always runs");
    assert!(
        bytes <= LIMIT,
        "{ran} replies of {bytes} bytes in all passed the bound"
    );
    // The connection stays usable, and a request on its own is answered in full.
    assert!(c.call("rpc.discover", json!({})).is_ok());
}
