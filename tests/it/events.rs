//! The event bus through the daemon: the events of a full query in order, type filters, a
//! subscriber that never reads, the persisted log with its retention, and `ccd stats`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::claude::claude_bin;
use crate::support::daemon::*;
use crate::support::mock_api::{Behaviour, MockApi};

fn subscribe(d: &Daemon, params: Value) -> Conn {
    let mut c = d.connect();
    let id = c.request("event.subscribe", params);
    let m = c.reply_to(id);
    assert!(m["result"]["subscription_id"].as_u64().is_some(), "{m}");
    c
}

/// Read `event` notifications until `done` says so (bounded by the read timeout).
fn events_until(c: &mut Conn, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    while !done(&got) {
        let m = c.recv().expect("subscription closed");
        if m["method"] == "event" {
            got.push(m["params"].clone());
        }
    }
    got
}

#[test]
fn a_full_query_publishes_its_events_in_order() {
    let mock = MockApi::start(Behaviour::ToolThenText {
        command: "echo hi".into(),
        text: "done".into(),
    });
    let d = Daemon::builder()
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEY", "k")
        .agent(claude_bin())
        .start();
    let mut all = subscribe(&d, json!({}));
    let mut completed = subscribe(&d, json!({"types": ["turn.completed"]}));
    let r = d
        .call(
            "query.run",
            json!({"prompt": "go", "allowed_tools": ["Bash"]}),
        )
        .unwrap();

    let events = events_until(&mut all, |got| {
        got.iter().any(|e| e["type"] == "turn.completed")
    });
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["session_id"] == r["session_id"])
        .collect();
    let kinds: Vec<&str> = mine.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "session.created",
            "turn.started",
            "tool.called",
            "tool.result",
            "tokens.used",
            "cost.incurred",
            "turn.completed"
        ],
        "{events:?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "sequence numbers without gaps: {seqs:?}"
    );
    let tool = mine.iter().find(|e| e["type"] == "tool.called").unwrap();
    assert_eq!(tool["tool"], "Bash");
    let done = mine.last().unwrap();
    assert_eq!(
        (done["status"].as_str(), done["query_id"].as_str()),
        (Some("ok"), r["query_id"].as_str())
    );
    assert!(done["ts"].as_str().unwrap().ends_with('Z'));

    // The filtered subscription saw only that.
    let only = events_until(&mut completed, |got| !got.is_empty());
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["type"], "turn.completed");

    // The log has them too, with the same numbers.
    wait_until(
        "the events to reach the log",
        Duration::from_secs(30),
        || {
            d.call("event.list", json!({"types": ["turn.completed"]}))
                .unwrap()["events"]
                .as_array()
                .unwrap()
                .len()
                == 1
        },
    );
    let logged = d
        .call(
            "event.list",
            json!({"after_seq": seqs[0] - 1, "limit": 100}),
        )
        .unwrap();
    let logged_seqs: Vec<u64> = logged["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.iter().all(|s| logged_seqs.contains(s)),
        "{seqs:?} vs {logged_seqs:?}"
    );
    // Nothing comes after the largest sequence numbers (they used to wrap to negative).
    for after in [u64::MAX, 1 << 63, i64::MAX as u64] {
        let none = d
            .call("event.list", json!({"after_seq": after, "limit": 100}))
            .unwrap();
        assert_eq!(none["events"], json!([]), "after_seq {after}");
    }
}

#[test]
fn a_subscriber_that_never_reads_slows_nobody_and_learns_what_it_missed() {
    // Queues of 64 events per subscriber; the publisher waits for the reading subscriber after
    // every batch of 50, so the reader can never fall behind by more than its queue holds,
    // however the machine schedules its threads: it must get every event. The stalled
    // subscriber gets 3000, far more than its queue, channel and socket buffer hold.
    const QUEUE: usize = 64;
    const BATCH: usize = 50;
    const TOTAL: usize = 3000;
    let d = Daemon::builder()
        .config(&format!("[events]\nsubscriber_queue = {QUEUE}\n"))
        .start();
    let mut stalled = subscribe(&d, json!({"types": ["session.created"]}));
    let mut reader = subscribe(&d, json!({"types": ["session.created"]}));
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reading = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut missed = 0u64;
            while seen.load(std::sync::atomic::Ordering::SeqCst) + missed < TOTAL as u64 {
                let m = reader.recv().expect("the reading subscriber was cut off");
                if m["method"] != "event" {
                    continue;
                }
                match m["params"]["type"].as_str() {
                    Some("lagged") => missed += m["params"]["missed"].as_u64().unwrap(),
                    _ => {
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
            missed
        })
    };
    let mut c = d.connect();
    for chunk in 0..TOTAL / BATCH {
        let batch: Vec<Value> = (0..BATCH)
            .map(|i| json!({"jsonrpc": "2.0", "id": chunk * BATCH + i, "method": "session.create", "params": {}}))
            .collect();
        c.send(&Value::Array(batch));
        let replies = c.recv().unwrap();
        assert!(
            replies
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r.get("result").is_some()),
            "every write was served"
        );
        let want = ((chunk + 1) * BATCH) as u64;
        wait_until(
            "the reading subscriber to receive the batch's events",
            Duration::from_secs(30),
            || seen.load(std::sync::atomic::Ordering::SeqCst) >= want || reading.is_finished(),
        );
    }
    let missed = reading.join().unwrap();
    assert_eq!(
        (seen.load(std::sync::atomic::Ordering::SeqCst), missed),
        (TOTAL as u64, 0),
        "the reading subscriber got every event, whatever the stalled one did"
    );

    // The stalled one now reads: it lost the oldest, and is told how many.
    stalled.set_read_timeout(Duration::from_secs(10));
    let mut got = 0u64;
    let mut lagged = 0u64;
    while got + lagged < TOTAL as u64 {
        let m = stalled.recv().unwrap();
        if m["method"] != "event" {
            continue;
        }
        match m["params"]["type"].as_str() {
            Some("lagged") => lagged += m["params"]["missed"].as_u64().unwrap(),
            _ => got += 1,
        }
    }
    assert!(
        lagged > 0,
        "a subscriber that never read must be told it lagged"
    );
    assert_eq!(got + lagged, TOTAL as u64);
}

#[test]
fn unsubscribe_and_bad_filters() {
    let d = Daemon::start();
    let mut c = d.connect();
    let sub = c
        .call("event.subscribe", json!({"types": ["session.closed"]}))
        .unwrap();
    let id = sub["subscription_id"].as_u64().unwrap();
    assert_eq!(
        d.call("event.unsubscribe", json!({"subscription_id": id}))
            .unwrap()["unsubscribed"],
        false,
        "only its own connection may end it"
    );
    assert_eq!(
        c.call("event.unsubscribe", json!({"subscription_id": id}))
            .unwrap()["unsubscribed"],
        true
    );
    let e = c
        .call("event.subscribe", json!({"types": ["no.such.event"]}))
        .unwrap_err();
    assert_eq!(code(&e), -32602);
    assert!(e["message"].as_str().unwrap().contains("no.such.event"));
    let e = c
        .call("event.list", json!({"since": "yesterday-ish"}))
        .unwrap_err();
    assert_eq!(code(&e), -32602);
    let e = c.call("event.list", json!({"limit": 0})).unwrap_err();
    assert_eq!(code(&e), -32602);

    // At most 64 subscriptions per connection; ending one makes room.
    let ids: Vec<Value> = (0..64)
        .map(|_| c.call("event.subscribe", json!({})).unwrap()["subscription_id"].clone())
        .collect();
    let e = c.call("event.subscribe", json!({})).unwrap_err();
    assert_eq!(code(&e), -32009, "{e}");
    c.call("event.unsubscribe", json!({"subscription_id": ids[0]}))
        .unwrap();
    c.call("event.subscribe", json!({}))
        .expect("an unsubscribe makes room at once");
}

#[test]
fn old_events_are_pruned_past_the_retention() {
    let d = Daemon::builder()
        .config("[events]\nretention_days = 1\nprune_interval_s = 1\n")
        .start();
    // An event two days old, as if written back then.
    {
        let conn = rusqlite::Connection::open(d.path().join("ccd.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let old = chrono_free_now_ms() - 2 * 86_400_000;
        let data = json!({"seq": 1_000_000, "ts": "2000-01-01T00:00:00Z", "type": "session.closed", "session_id": "old"}).to_string();
        conn.execute(
            "INSERT INTO events (seq, ts, type, session_id, data) VALUES (1000000, ?1, 'session.closed', 'old', ?2)",
            rusqlite::params![old, data],
        )
        .unwrap();
    }
    wait_until(
        "the old event to be pruned",
        Duration::from_secs(30),
        || {
            let conn = rusqlite::Connection::open(d.path().join("ccd.db")).unwrap();
            let n: i64 = conn
                .query_row("SELECT count(*) FROM events WHERE seq = 1000000", [], |r| {
                    r.get(0)
                })
                .unwrap();
            n == 0
        },
    );
    // Recent ones stay (they reach the log on the bus's next flush).
    wait_until("recent events in the log", Duration::from_secs(30), || {
        d.call("event.list", json!({"types": ["daemon.started"]}))
            .unwrap()["events"]
            .as_array()
            .unwrap()
            .len()
            == 1
    });
}

fn chrono_free_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn events_and_stats_from_the_cli() {
    let mock = MockApi::start(Behaviour::Text("fine".into()));
    let d = Daemon::builder()
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEY", "k")
        .agent(claude_bin())
        .start();
    let dir = tempfile::tempdir().unwrap();
    d.call("project.create", json!({"name": "web", "path": dir.path()}))
        .unwrap();
    for _ in 0..2 {
        d.call("query.run", json!({"prompt": "x", "project": "web"}))
            .unwrap();
    }
    mock.set_behaviour(Behaviour::Error {
        status: 400,
        error_type: "invalid_request_error".into(),
        message: "no".into(),
    });
    d.call("query.run", json!({"prompt": "x", "project": "web"}))
        .unwrap_err();

    let stats: Value = serde_json::from_str(&d.ccd_ok(&["stats", "--json"])).unwrap();
    let t = &stats["totals"];
    assert_eq!(
        (
            t["queries"].as_u64(),
            t["ok"].as_u64(),
            t["errors_non_retryable"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert!(
        t["usage"]["input_tokens"].as_u64().unwrap() > 0 && t["cost_usd"].as_f64().unwrap() > 0.0
    );
    assert_eq!(stats["rows"][0]["project"], "web");
    let table = d.ccd_ok(&["stats", "--project", "web"]);
    assert!(table.contains("web") && table.contains("total"), "{table}");

    // The same figures over IPC (`stats.get`), with the daemon's own.
    let report = d.call("stats.get", json!({"since": "7d"})).unwrap();
    assert_eq!(report["stats"]["totals"], stats["totals"]);
    assert_eq!(report["stats"]["rows"], stats["rows"]);
    let web = d.call("stats.get", json!({"project": "web"})).unwrap();
    assert_eq!(web["stats"]["totals"]["queries"], 3);
    assert!(report["machine"]["rss_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(report["machine"]["uptime_s"].as_f64().unwrap() > 0.0);
    let none = d.call("stats.get", json!({"project": "other"})).unwrap();
    assert_eq!(none["stats"]["totals"]["queries"], 0);
    for bad in [json!({"since": "whenever"}), json!({"days": 3})] {
        let e = d.call("stats.get", bad).unwrap_err();
        assert_eq!(code(&e), -32602, "{e}");
    }

    wait_until(
        "the events to reach the log",
        Duration::from_secs(30),
        || {
            d.ccd_ok(&["events", "--type", "turn.completed", "--json"])
                .lines()
                .count()
                == 3
        },
    );
    let text = d.ccd_ok(&["events", "--type", "turn.completed"]);
    assert!(
        text.contains("turn.completed") && text.contains("status=ok"),
        "{text}"
    );
    let out = d.ccd(&["events", "--type", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn subscriptions_survive_a_restart_of_the_bus_actor() {
    let d = Daemon::builder().fault_injection().start();
    let mut sub = subscribe(&d, json!({"types": ["session.created", "actor.restarted"]}));
    let e = d
        .call("debug.crash", json!({"actor": "eventbus"}))
        .unwrap_err();
    assert_eq!(
        (code(&e), e["data"]["actor"].as_str()),
        (-32001, Some("eventbus"))
    );
    let s = d.call("session.create", json!({})).unwrap();
    let got = events_until(&mut sub, |got| {
        got.iter().any(|e| e["type"] == "session.created")
    });
    assert!(
        got.iter()
            .any(|e| e["type"] == "actor.restarted" && e["actor"] == "eventbus"),
        "{got:?}"
    );
    assert_eq!(got.last().unwrap()["session_id"], s["id"]);
    wait_until(
        "the log to keep filling after the restart",
        Duration::from_secs(30),
        || {
            d.call("event.list", json!({"types": ["session.created"]}))
                .unwrap()["events"]
                .as_array()
                .unwrap()
                .len()
                == 1
        },
    );
}

#[test]
fn a_subscriber_does_not_hold_up_a_stop() {
    let d = Daemon::start();
    let mut sub = subscribe(&d, json!({}));
    d.ccd_ok(&["daemon", "stop"]);
    // The subscription ended with the stop, and its connection closed without being waited on.
    assert!(
        std::iter::from_fn(|| sub.recv()).all(|m| m["method"] == "event"),
        "only events, then the end"
    );
    let log = d.log_containing("daemon stopped");
    assert!(!log.contains("did not close in time"), "{log}");
}

/// `ccd events --follow --json` as a child, its stdout lines parsed as they come.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Value>,
}

impl Follower {
    fn start(d: &Daemon, args: &[&str]) -> Follower {
        let mut child = d
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running ccd events --follow");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    fn next(&self, within: Duration) -> Option<Value> {
        self.lines.recv_timeout(within).ok()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn follow_carries_on_across_a_restart_with_every_event_once_in_order() {
    let d = Daemon::start();
    let old_pid = d.pid();
    let f = Follower::start(
        &d,
        &[
            "events",
            "--follow",
            "--json",
            "--type",
            "session.created",
            "--type",
            "daemon.stopping",
            "--type",
            "daemon.started",
        ],
    );
    let new_session = || {
        d.call("session.create", json!({})).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Once one session the follower was not subscribed for yet is past, every later one shows.
    let mut got = Vec::new();
    let mut expected = Vec::new();
    while got.is_empty() {
        let id = new_session();
        if let Some(e) = f.next(Duration::from_millis(500)) {
            assert_eq!(e["session_id"], id.as_str(), "{e}");
            expected.push(json!(["session.created", id]));
            got.push(e);
        }
    }
    for _ in 0..3 {
        expected.push(json!(["session.created", new_session()]));
    }

    d.ccd_ok(&["daemon", "restart"]);
    let new_pid = d.pid();
    expected.push(json!(["daemon.stopping", old_pid]));
    expected.push(json!(["daemon.started", new_pid]));
    for _ in 0..3 {
        expected.push(json!(["session.created", new_session()]));
    }
    while got.len() < expected.len() {
        match f.next(Duration::from_secs(30)) {
            Some(e) => got.push(e),
            None => panic!(
                "only {} of {} events came: {got:#?}",
                got.len(),
                expected.len()
            ),
        }
    }
    // Nothing more: no event repeated after the last one.
    if let Some(extra) = f.next(Duration::from_millis(500)) {
        panic!("an event more than expected: {extra}; before it: {got:#?}");
    }
    let seen: Vec<Value> = got
        .iter()
        .map(|e| {
            let subject = match e["type"].as_str().unwrap() {
                "session.created" => e["session_id"].clone(),
                _ => e["pid"].clone(),
            };
            json!([e["type"], subject])
        })
        .collect();
    assert_eq!(seen, expected, "{got:#?}");
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let mut f = f;
    assert!(
        f.child.try_wait().unwrap().is_none(),
        "the follower exited across the restart"
    );
    f.child.kill().unwrap();
    f.child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut f.child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("reconnected"), "{err}");
}
