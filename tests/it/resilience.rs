//! Resilience through the daemon: the breaker opening on a failing agent and recovering, the
//! real CLI against a 529 retried with backoff until the breaker trips, a batch held to its
//! rate limit, and permits that survive restarts of the limiter and of executors.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::claude::claude_bin;
use crate::support::daemon::*;
use crate::support::mock_api::{Behaviour, MockApi};
use crate::support::stub_agents::*;

/// A stub agent: a script that counts its calls in `calls` and, by the word in `mode`, prints a
/// real CLI transcript (`ok`), dies by SIGKILL (`fail`, a retryable failure) or prints the init
/// message and sleeps (`hang`).
struct Stub {
    dir: tempfile::TempDir,
}

impl Stub {
    fn new(mode: &str) -> Stub {
        let dir = tempfile::tempdir().unwrap();
        let transcript = include_str!("../../protocol/fixtures/text.jsonl");
        std::fs::write(dir.path().join("transcript.jsonl"), transcript).unwrap();
        std::fs::write(dir.path().join("calls"), "").unwrap();
        let script = r#"#!/bin/sh
here="$(dirname "$0")"
if [ "$1" = "--version" ]; then echo "0.0.0 (stub agent)"; exit 0; fi
cat > /dev/null
echo call >> "$here/calls"
case "$(cat "$here/mode")" in
  ok) cat "$here/transcript.jsonl" ;;
  hang) head -n 1 "$here/transcript.jsonl"; exec sleep 60 ;;
  *) kill -9 $$ ;;
esac
"#;
        let path = dir.path().join("agent");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let s = Stub { dir };
        s.set_mode(mode);
        s
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap();
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap()
            .lines()
            .count()
    }

    fn daemon(&self, config: &str) -> Daemon {
        Daemon::builder()
            .fault_injection()
            .agent(self.path())
            .config(config)
            .start()
    }
}

fn breaker(d: &Daemon) -> Value {
    let list = d.call("breaker.status", json!({})).unwrap();
    assert_eq!(list["breakers"].as_array().unwrap().len(), 1, "{list}");
    list["breakers"][0].clone()
}

#[test]
fn a_failing_agent_opens_the_breaker_and_a_healed_one_closes_it() {
    let stub = Stub::new("fail");
    let d = stub
        .daemon("[retry]\nmax_retries = 0\n[breaker]\nconsecutive_failures = 3\nwait_ms = 1000\n");
    for _ in 0..3 {
        let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
        assert_eq!(code(&e), -32007, "{e}");
        assert_eq!(e["data"]["class"], "retryable");
    }
    assert_eq!(stub.calls(), 3);
    assert_eq!(breaker(&d)["state"], "OPEN");

    // Open: refused at once, without running the agent.
    let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
    assert_eq!(code(&e), -32003, "{e}");
    assert!(e["data"]["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(
        e["data"]["key"].as_str().unwrap().ends_with("|default"),
        "{e}"
    );
    assert_eq!(stub.calls(), 3);
    let out = d.ccd(&["query", "x"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let status = d.ccd_ok(&["breaker", "status"]);
    assert!(status.contains("OPEN"), "{status}");
    let listed: serde_json::Value =
        serde_json::from_str(&d.ccd_ok(&["breaker", "status", "--json"])).unwrap();
    assert_eq!(
        listed[0]["state"], "OPEN",
        "a bare array, as other listings: {listed}"
    );
    // Refused at once, and still on the record: two refused turns, and the breaker counts them.
    wait_until(
        "the refused queries to be recorded",
        Duration::from_secs(30),
        || d.call("stats.get", json!({})).unwrap()["stats"]["totals"]["refused"] == 2,
    );
    assert_eq!(breaker(&d)["rejected"], 2, "{}", breaker(&d));

    // Healed, and the wait is over: the trial call goes through and closes it.
    stub.set_mode("ok");
    wait_until(
        "the open breaker's wait to pass",
        Duration::from_secs(30),
        || breaker(&d)["retry_after_ms"] == 0,
    );
    // Its wait is over: it lets a trial call through, and says so before any call arrives.
    assert_eq!(breaker(&d)["state"], "HALF_OPEN", "{}", breaker(&d));
    let status = d.ccd_ok(&["breaker", "status"]);
    assert!(status.contains("HALF_OPEN"), "{status}");
    let r = d.call("query.run", json!({"prompt": "x"})).unwrap();
    assert_eq!(r["result"], "Hello from mock");
    assert_eq!(breaker(&d)["state"], "CLOSED");

    // A reset forgets it.
    let r = d.call("breaker.reset", json!({})).unwrap();
    assert_eq!(r["reset"], 1);
    assert!(
        d.call("breaker.status", json!({})).unwrap()["breakers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_breaker_opening_between_retries_says_how_many_attempts_ran() {
    let stub = Stub::new("fail");
    let d = stub.daemon(
        "[retry]\nmax_retries = 3\nbase_delay_ms = 10\nmax_delay_ms = 20\n\
         [breaker]\nconsecutive_failures = 2\nwait_ms = 600000\n",
    );
    let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
    // Two runs failed and opened the breaker, which refused the third attempt.
    assert_eq!(code(&e), -32003, "{e}");
    assert_eq!(stub.calls(), 2);
    assert_eq!(e["data"]["attempts"], 2, "{e}");
    let last = e["data"]["last_error"].as_str().unwrap();
    assert!(last.contains("killed by signal 9"), "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("after 2 attempts") && msg.contains("signal 9"),
        "{msg}"
    );
    assert!(e["data"]["key"].as_str().is_some() && e["data"]["retry_after_ms"].as_u64() > Some(0));
}

#[test]
fn non_retryable_errors_do_not_trip_the_breaker() {
    let mock = MockApi::start(Behaviour::Error {
        status: 400,
        error_type: "invalid_request_error".into(),
        message: "bad".into(),
    });
    let d = Daemon::builder()
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEY", "k")
        .agent(claude_bin())
        .config("[breaker]\nconsecutive_failures = 2\n")
        .start();
    for _ in 0..3 {
        let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
        assert_eq!(e["data"]["class"], "non_retryable");
        assert_eq!(
            e["data"]["attempts"], 1,
            "non_retryable errors are not retried"
        );
    }
    let b = breaker(&d);
    assert_eq!(
        (b["state"].as_str(), b["non_retryable"].as_u64()),
        (Some("CLOSED"), Some(3))
    );
}

#[test]
fn the_real_cli_on_529_is_retried_with_backoff_then_trips_the_breaker() {
    let mock = MockApi::start(Behaviour::Error {
        status: 529,
        error_type: "overloaded_error".into(),
        message: "busy".into(),
    });
    let d = Daemon::builder()
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEY", "k")
        .agent(claude_bin())
        .config(
            "[executor]\ncli_retry_limit = 0\n[retry]\nmax_retries = 2\nbase_delay_ms = 50\nmax_delay_ms = 200\n\
             [breaker]\nconsecutive_failures = 3\nwait_ms = 60000\n",
        )
        .start();
    let mut c = d.connect();
    let id = c.request("query.run", json!({"prompt": "x", "stream": true}));
    let mut retries = Vec::new();
    let reply = loop {
        let m = c.recv().unwrap();
        if m["method"] == "query.event" && m["params"]["event"]["subtype"] == "retry" {
            retries.push(m["params"]["event"]["attempt"].as_u64().unwrap());
        }
        if m["id"] == json!(id) {
            break m;
        }
    };
    let e = &reply["error"];
    assert_eq!(code(e), -32007, "{reply}");
    assert_eq!(e["data"]["class"], "retryable");
    assert_eq!(e["data"]["attempts"], 3);
    assert!(
        e["message"].as_str().unwrap().contains("after 3 attempts"),
        "{e}"
    );
    assert_eq!(retries, [2, 3], "each retry is announced on the stream");
    assert_eq!(mock.requests().len(), 3, "one API call per attempt");
    let s = d
        .call("session.get", json!({"id": e["data"]["session_id"]}))
        .unwrap();
    assert_eq!(s["turns"][0]["attempts"], 3);

    assert_eq!(breaker(&d)["state"], "OPEN");
    let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
    assert_eq!(code(&e), -32003, "{e}");
    assert_eq!(mock.requests().len(), 3);
}

#[test]
fn a_batch_under_a_rate_limit_takes_the_time_the_limit_implies() {
    let stub = Stub::new("ok");
    let d = stub.daemon(
        "[limiter]\nglobal_rate_per_s = 10.0\nglobal_burst = 1\n[executor]\npool_size = 4\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(
        &file,
        (0..100)
            .map(|i| format!("prompt {i}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let out_file = dir.path().join("out.jsonl");
    let start = Instant::now();
    let out = d.ccd(&[
        "batch",
        file.to_str().unwrap(),
        "-c",
        "8",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    let elapsed = start.elapsed();
    assert!(out.status.success(), "{}", describe(&out));
    let results = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(results.lines().count(), 100);
    assert_eq!(stub.calls(), 100);
    // 1 at once, then one per 100 ms: 99 intervals. (A lower bound only: never faster.)
    assert!(
        elapsed >= Duration::from_millis(9_900),
        "100 queries at 10/s took only {elapsed:?}"
    );
    let st = d.call("limiter.status", json!({})).unwrap();
    let global = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "global")
        .unwrap()
        .clone();
    assert_eq!(global["admitted"], 100);
    assert!(global["throttled"].as_u64().unwrap() > 0);

    // Each wait was announced on the bus, naming the session and the key that held it back.
    wait_until(
        "limiter.throttled events in the log",
        Duration::from_secs(30),
        || {
            !d.call("event.list", json!({"types": ["limiter.throttled"]}))
                .unwrap()["events"]
                .as_array()
                .unwrap()
                .is_empty()
        },
    );
    let events = d
        .call("event.list", json!({"types": ["limiter.throttled"]}))
        .unwrap();
    for e in events["events"].as_array().unwrap() {
        assert_eq!(e["key"], "global", "{e}");
        let session = e["session_id"].as_str().unwrap();
        let s = d.call("session.get", json!({"id": session})).unwrap();
        assert_eq!(s["session"]["id"], session);
    }
}

#[test]
fn no_wait_is_refused_at_once_with_retry_after() {
    let stub = Stub::new("ok");
    let d = stub.daemon("[limiter]\nglobal_rate_per_s = 0.1\nglobal_burst = 1\n");
    d.call("query.run", json!({"prompt": "x"})).unwrap();
    let e = d
        .call("query.run", json!({"prompt": "x", "no_wait": true}))
        .unwrap_err();
    assert_eq!(code(&e), -32002, "{e}");
    assert!(e["data"]["retry_after_ms"].as_u64().unwrap() > 1000, "{e}");
    let out = d.ccd(&["query", "x", "--no-wait"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    // Waiting past the deadline is refused too, instead of overrunning it.
    let e = d
        .call("query.run", json!({"prompt": "x", "timeout_ms": 500}))
        .unwrap_err();
    assert_eq!(code(&e), -32002, "{e}");
    assert_eq!(stub.calls(), 1);
}

#[test]
fn configure_changes_limits_and_rejects_bad_ones() {
    let stub = Stub::new("ok");
    let d = stub.daemon("");
    let st = d
        .call("limiter.configure", json!({"scope": "model", "limits": {"concurrency": 2, "window_max": 5, "window_ms": 1000}}))
        .unwrap();
    assert_eq!(st["limits"]["model"]["concurrency"], 2);
    let e = d
        .call(
            "limiter.configure",
            json!({"scope": "model", "limits": {"rate_per_s": -1.0}}),
        )
        .unwrap_err();
    assert_eq!(code(&e), -32602);
    let e = d
        .call(
            "limiter.configure",
            json!({"scope": "planet", "limits": {}}),
        )
        .unwrap_err();
    assert_eq!(code(&e), -32602);
    d.call("query.run", json!({"prompt": "x", "model": "m1"}))
        .unwrap();
    let st = d.call("limiter.status", json!({})).unwrap();
    let key = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "model:m1")
        .unwrap()
        .clone();
    assert_eq!(
        (
            key["admitted"].as_u64(),
            key["window_count"].as_u64(),
            key["in_flight"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert!(d.ccd_ok(&["limiter", "status"]).contains("model:m1"));
}

fn in_flight(d: &Daemon) -> u64 {
    let st = d.call("limiter.status", json!({})).unwrap();
    st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "global")
        .map(|k| k["in_flight"].as_u64().unwrap())
        .unwrap_or(0)
}

#[test]
fn restarts_of_limiter_and_executors_neither_leak_nor_add_permits() {
    let stub = Stub::new("hang");
    let d = stub.daemon(
        "[limiter]\nglobal_concurrency = 1\n[executor]\npool_size = 2\n[retry]\nmax_retries = 0\n",
    );
    let mut a = d.connect();
    let id = a.request("query.run", json!({"prompt": "a", "stream": true}));
    wait_until(
        "the first query to hold its permit",
        Duration::from_secs(30),
        || stub.calls() == 1,
    );
    assert_eq!(in_flight(&d), 1);

    // The limiter restarts: the permit is still accounted, no extra one is handed out.
    let e = d
        .call("debug.crash", json!({"actor": "limiter"}))
        .unwrap_err();
    assert_eq!(code(&e), -32001);
    let e = d
        .call("query.run", json!({"prompt": "b", "no_wait": true}))
        .unwrap_err();
    assert_eq!(code(&e), -32002, "{e}");
    assert_eq!(in_flight(&d), 1);

    // An executor crash ends the run holding it: the permit comes back.
    let e = d
        .call("debug.crash", json!({"actor": "executor-1"}))
        .unwrap_err();
    assert_eq!(code(&e), -32001);
    let reply = a.reply_to(id);
    assert_eq!(code(&reply["error"]), -32007, "{reply}");
    wait_until("the permit to be released", Duration::from_secs(30), || {
        in_flight(&d) == 0
    });

    // Exactly one permit again: one query runs, the next is refused; a cancel frees it.
    let mut b = d.connect();
    let id_b = b.request("query.run", json!({"prompt": "b", "stream": true}));
    let qid = b.recv().unwrap()["params"]["query_id"].clone();
    let e = d
        .call("query.run", json!({"prompt": "c", "no_wait": true}))
        .unwrap_err();
    assert_eq!(code(&e), -32002);
    d.call("query.cancel", json!({"query_id": qid})).unwrap();
    let reply = b.reply_to(id_b);
    assert_eq!(code(&reply["error"]), -32008);
    wait_until("the permit to be released", Duration::from_secs(30), || {
        in_flight(&d) == 0
    });

    // A timeout frees it.
    let e = d
        .call("query.run", json!({"prompt": "t", "timeout_ms": 1000}))
        .unwrap_err();
    assert_eq!(code(&e), -32006, "{e}");
    wait_until("the permit to be released", Duration::from_secs(30), || {
        in_flight(&d) == 0
    });

    // So does a client that goes away mid-query.
    let calls = stub.calls();
    let mut gone = d.connect();
    gone.request("query.run", json!({"prompt": "g"}));
    wait_until(
        "the query to hold its permit",
        Duration::from_secs(30),
        || stub.calls() == calls + 1,
    );
    assert_eq!(in_flight(&d), 1);
    drop(gone);
    wait_until("the permit to be released", Duration::from_secs(30), || {
        in_flight(&d) == 0
    });
    wait_until("the executor to be idle", Duration::from_secs(30), || {
        d.call("system.health", json!({})).unwrap()["executor"]["busy"] == 0
    });

    stub.set_mode("ok");
    d.call("query.run", json!({"prompt": "d", "no_wait": true}))
        .unwrap();
    assert_eq!(in_flight(&d), 0);
}

#[test]
fn a_client_cannot_forge_a_log_line() {
    let d = Daemon::builder()
        .env("CCD_AGENT_CMD", "/nonexistent/claude")
        .config("[breaker]\nconsecutive_failures = 1\n")
        .start();
    // The model is the client's, and is part of the breaker key that the log names.
    let model = "m1\n2026-01-01T00:00:00.000000Z ERROR ccd::forged: FORGED\r\u{1b}[2K";
    let e = d
        .call("query.run", json!({"prompt": "x", "model": model}))
        .unwrap_err();
    assert_eq!(code(&e), -32007, "{e}");
    let log = d.log_containing("breaker Closed");
    let line = log.lines().find(|l| l.contains("breaker Closed")).unwrap();
    assert!(line.contains(r"m1\n2026-01-01"), "{line}");
    assert!(line.contains(r"FORGED\r\x1b[2K"), "{line}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged line:\n{log}"
    );
    assert!(!log.contains('\u{1b}'));
}

#[test]
fn a_query_waiting_for_a_concurrency_slot_is_throttled_once_and_no_wait_says_what_it_waits_for() {
    // An agent that takes a second, under a limit of one query at once.
    let (_dir, agent) = script_agent(
        "cat > /dev/null\nsleep 1\ncat \"$here/transcript.jsonl\"",
        &[(
            "transcript.jsonl",
            include_str!("../../protocol/fixtures/text.jsonl"),
        )],
    );
    let d = Daemon::builder()
        .agent(agent)
        .config("[limiter]\nglobal_concurrency = 1\n")
        .start();
    std::thread::scope(|s| {
        let first = s.spawn(|| d.call("query.run", json!({"prompt": "one"})));
        wait_until("the first query to run", Duration::from_secs(30), || {
            d.call("limiter.status", json!({})).unwrap()["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["key"] == "global" && k["in_flight"] == 1)
        });
        // Refused at once: the message says what it waits for, not "retry in 50 ms".
        let e = d
            .call("query.run", json!({"prompt": "x", "no_wait": true}))
            .unwrap_err();
        assert_eq!(code(&e), -32002, "{e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("`global`")
                && message.contains("retry when one of them finishes")
                && !message.contains("50 ms"),
            "{e}"
        );
        assert_eq!(e["data"]["waits_for"], "a running query to finish", "{e}");
        // Waits about a second, polling meanwhile: one throttled query all the same.
        let second = d.call("query.run", json!({"prompt": "two"}));
        assert!(second.is_ok(), "{second:?}");
        assert!(first.join().unwrap().is_ok());
    });
    let st = d.call("limiter.status", json!({})).unwrap();
    let global = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "global")
        .unwrap()
        .clone();
    assert_eq!(global["admitted"], 2, "{global}");
    assert_eq!(
        global["throttled"], 2,
        "the no_wait refusal and the waiting query, each once: {global}"
    );
}

#[test]
fn a_bad_limiter_value_names_its_key_its_value_and_where_it_was_set() {
    let d = Daemon::builder().prepare();
    let out = d.ccd(&[
        "daemon",
        "start",
        "--set",
        "limiter.global_rate_per_s=2000000",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`limiter.global_rate_per_s` must be between 0 and 1000000")
            && err.contains("`limiter.global_rate_per_s` = 2000000")
            && err.contains("from flag (--set)")
            && !err.contains("limiter.global.rate_per_s"),
        "{err}"
    );
    // A burst of 0 with a rate would admit nothing: refused, not read as 1.
    let d = Daemon::builder()
        .config("[limiter]\nglobal_rate_per_s = 5.0\nglobal_burst = 0\n")
        .prepare();
    let out = d.ccd(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "`limiter.global_burst` must be at least 1 when `limiter.global_rate_per_s` is set"
        ) && err.contains("`limiter.global_burst` = 0 from"),
        "{err}"
    );
    assert!(!d.socket().exists());
}
