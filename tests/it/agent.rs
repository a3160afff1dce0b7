//! Agent runs through the daemon with the real Claude Code CLI, pointed at the mock Messages
//! API (`support/mock_api.rs`): streaming, tool calls, sessions and resume, error classes, kills,
//! timeouts, cancellation, disconnects, a missing CLI, and the pool's limits.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::agent_daemon::*;
use crate::support::daemon::*;
use crate::support::mock_api::Behaviour;
use crate::support::stub_agents::*;

/// Run a query on `conn` with streaming; returns the notifications' events and the outcome.
fn run_streamed(conn: &mut Conn, params: Value) -> (Vec<Value>, Result<Value, Value>) {
    let mut params = params;
    params["stream"] = json!(true);
    let id = conn.request("query.run", params);
    let mut events = Vec::new();
    loop {
        let msg = conn
            .recv()
            .expect("the connection closed before the query's reply");
        if msg["method"] == "query.event" {
            events.push(msg["params"].clone());
            continue;
        }
        assert_eq!(msg["id"], json!(id), "{msg}");
        let outcome = match (msg.get("result"), msg.get("error")) {
            (Some(r), None) => Ok(r.clone()),
            (None, Some(e)) => Err(e.clone()),
            _ => panic!("{msg}"),
        };
        return (events, outcome);
    }
}

fn class(e: &Value) -> &str {
    e["data"]["class"]
        .as_str()
        .unwrap_or_else(|| panic!("no class in {e}"))
}

#[test]
fn a_plain_answer_is_streamed_and_recorded() {
    let d = agent_daemon(Behaviour::Text("The answer is 42.".into()), "");
    let _dir = d.project();
    let mut c = d.connect();
    let (events, outcome) = run_streamed(
        &mut c,
        json!({"prompt": "what is the answer?", "project": "proj"}),
    );
    let r = outcome.unwrap();
    assert_eq!(r["result"], "The answer is 42.");
    assert_eq!(r["is_error"], false);
    assert!(r["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(r["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(r["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(r["num_turns"], 1);
    assert_eq!(r["attempts"], 1);

    // Every message of the run, in order, tagged with the query id, before the reply.
    assert!(events.iter().all(|e| e["query_id"] == r["query_id"]));
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["event"]["type"].as_str().unwrap(),
                e["event"]["subtype"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("system/init"),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "assistant/"), "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("result/success"),
        "{kinds:?}"
    );
    assert_eq!(events[0]["event"]["session_id"], r["agent_session_id"]);

    // The prompt reached the API, and the turn is stored with the session's totals.
    assert!(
        d.mock.requests()[0]
            .last_user_text()
            .contains("what is the answer?")
    );
    let s = d
        .call("session.get", json!({"id": r["session_id"]}))
        .unwrap();
    assert_eq!(s["session"]["turns"], 1);
    assert_eq!(s["session"]["project"], "proj");
    assert_eq!(s["session"]["agent_session_id"], r["agent_session_id"]);
    assert_eq!(s["turns"][0]["status"], "ok");
    assert_eq!(s["turns"][0]["prompt"], "what is the answer?");
    assert_eq!(s["turns"][0]["usage"], r["usage"]);
    d.wait_no_agent_processes();
}

#[test]
fn a_tool_call_is_really_run_by_the_cli() {
    let d = agent_daemon(
        Behaviour::ToolThenText {
            command: "echo hi-from-tool".into(),
            text: "The tool said hi.".into(),
        },
        "",
    );
    let _dir = d.project();
    let mut c = d.connect();
    let (events, outcome) = run_streamed(
        &mut c,
        json!({"prompt": "run it", "project": "proj", "allowed_tools": ["Bash"]}),
    );
    let r = outcome.unwrap();
    assert_eq!(r["result"], "The tool said hi.");
    assert_eq!(r["num_turns"], 2);
    let requests = d.mock.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].last_has_tool_result());
    assert!(requests[1].messages.to_string().contains("hi-from-tool"));
    let tool_use = events
        .iter()
        .any(|e| e["event"]["type"] == "assistant" && e["event"].to_string().contains("tool_use"));
    let tool_result = events
        .iter()
        .any(|e| e["event"]["type"] == "user" && e["event"].to_string().contains("hi-from-tool"));
    assert!(tool_use && tool_result, "{events:?}");
}

#[test]
fn two_queries_in_one_session_resume_the_conversation() {
    let d = agent_daemon(Behaviour::Text("ok".into()), "");
    let first = d.call("query.run", json!({"prompt": "first"})).unwrap();
    let second = d
        .call(
            "query.run",
            json!({"prompt": "second", "session": first["session_id"]}),
        )
        .unwrap();
    assert_eq!(second["session_id"], first["session_id"]);
    let requests = d.mock.requests();
    assert_eq!(requests.len(), 2);
    // The CLI sends 2 messages on a first turn; resumed, the earlier turn comes along: 4.
    assert_eq!(requests[0].message_count(), 2);
    assert_eq!(
        requests[1].message_count(),
        4,
        "the second turn carries the first one's history"
    );
    assert!(requests[1].messages.to_string().contains("first"));
    let s = d
        .call("session.get", json!({"id": first["session_id"]}))
        .unwrap();
    assert_eq!(s["session"]["turns"], 2);
    let total = first["usage"]["input_tokens"].as_u64().unwrap()
        + second["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(s["session"]["usage"]["input_tokens"], total);
    // A new session does not carry the history.
    d.call("query.run", json!({"prompt": "fresh", "new_session": true}))
        .unwrap();
    assert_eq!(d.mock.requests()[2].message_count(), 2);
}

#[test]
fn http_400_is_non_retryable_at_once() {
    let d = agent_daemon(
        Behaviour::Error {
            status: 400,
            error_type: "invalid_request_error".into(),
            message: "bad thing".into(),
        },
        "",
    );
    let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
    assert_eq!(code(&e), -32007, "{e}");
    assert_eq!(class(&e), "non_retryable");
    assert!(e["message"].as_str().unwrap().contains("400"), "{e}");
    assert_eq!(d.mock.requests().len(), 1, "no retry of a bad request");
    // The failed turn is recorded.
    let s = d
        .call("session.get", json!({"id": e["data"]["session_id"]}))
        .unwrap();
    assert_eq!(
        (
            s["turns"][0]["status"].as_str(),
            s["turns"][0]["error_class"].as_str()
        ),
        (Some("error"), Some("non_retryable"))
    );
}

#[test]
fn http_401_is_non_retryable_without_waiting_out_the_cli_retries() {
    let d = agent_daemon(
        Behaviour::Error {
            status: 401,
            error_type: "authentication_error".into(),
            message: "invalid x-api-key".into(),
        },
        "",
    );
    let started = std::time::Instant::now();
    let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
    // Left alone the CLI retries a 401 with backoff for minutes; ccd stops it at its first
    // `api_retry`. (A generous bound: this is about minutes against seconds, not speed.)
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(code(&e), -32007, "{e}");
    assert_eq!(class(&e), "non_retryable");
    assert_eq!(e["data"]["attempts"], 1, "not retried by ccd: {e}");
    assert!(
        d.mock.requests().len() <= 2,
        "the CLI was stopped at its first retry, yet the API saw {} requests",
        d.mock.requests().len()
    );
    assert!(
        e["message"].as_str().unwrap().contains("authentication"),
        "{e}"
    );
    d.wait_no_agent_processes();
}

#[test]
fn http_529_and_429_are_retryable() {
    for (status, kind) in [(529, "overloaded_error"), (429, "rate_limit_error")] {
        let d = agent_daemon(
            Behaviour::Error {
                status,
                error_type: kind.into(),
                message: "later".into(),
            },
            "[executor]\ncli_retry_limit = 0\n",
        );
        let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
        assert_eq!(code(&e), -32007, "{status}: {e}");
        assert_eq!(class(&e), "retryable", "{status}: {e}");
        d.wait_no_agent_processes();
    }
}

#[test]
fn an_agent_killed_mid_stream_fails_retryable() {
    let d = agent_daemon(Behaviour::Hang, "[retry]\nmax_retries = 0\n");
    let mut c = d.connect();
    let id = c.request("query.run", json!({"prompt": "x", "stream": true}));
    assert!(d.mock.wait_for_requests(1, Duration::from_secs(30)));
    let agents = d.agent_processes();
    assert!(!agents.is_empty());
    for pid in &agents {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    let reply = c.reply_to(id);
    let e = &reply["error"];
    assert_eq!(code(e), -32007, "{reply}");
    assert_eq!(class(e), "retryable");
    assert!(e["message"].as_str().unwrap().contains("signal"), "{e}");
    d.wait_no_agent_processes();
}

#[test]
fn a_timeout_ends_the_whole_process_group() {
    let d = agent_daemon(Behaviour::Hang, "[executor]\nkill_grace_ms = 500\n");
    let e = d
        .call("query.run", json!({"prompt": "x", "timeout_ms": 1500}))
        .unwrap_err();
    assert_eq!(code(&e), -32006, "{e}");
    assert_eq!(
        e["message"], "query timed out: no result within 1s 500ms",
        "{e}"
    );
    assert_eq!(class(&e), "retryable");
    d.wait_no_agent_processes();
    let s = d
        .call("session.get", json!({"id": e["data"]["session_id"]}))
        .unwrap();
    assert_eq!(s["turns"][0]["status"], "timeout");
}

#[test]
fn cancel_stops_a_running_query() {
    let d = agent_daemon(Behaviour::Hang, "");
    let mut c = d.connect();
    let id = c.request("query.run", json!({"prompt": "x", "stream": true}));
    let first = c.recv().unwrap();
    assert_eq!(first["method"], "query.event", "{first}");
    let query_id = first["params"]["query_id"].clone();
    assert!(d.mock.wait_for_requests(1, Duration::from_secs(30)));

    let r = d
        .call("query.cancel", json!({"query_id": query_id}))
        .unwrap();
    assert_eq!(r["cancelled"], true);
    let reply = c.reply_to(id);
    assert_eq!(code(&reply["error"]), -32008, "{reply}");
    assert_eq!(
        reply["error"]["message"], "query cancelled: stopped while the agent ran",
        "{reply}"
    );
    d.wait_no_agent_processes();
    let r = d
        .call("query.cancel", json!({"query_id": query_id}))
        .unwrap();
    assert_eq!(
        r["cancelled"], false,
        "a finished query cannot be cancelled again"
    );
}

#[test]
fn a_stopping_daemon_reads_no_new_requests() {
    let d = agent_daemon(Behaviour::Hang, "[daemon]\nshutdown_timeout_ms = 2000\n");
    // A query in flight keeps the stop draining.
    let mut running = d.connect();
    running.request("query.run", json!({"prompt": "x", "stream": true}));
    assert!(d.mock.wait_for_requests(1, Duration::from_secs(30)));
    let mut late = d.connect();
    assert_eq!(late.call("system.ping", json!({})).unwrap(), "pong");
    d.call("system.shutdown", json!({})).unwrap();
    d.log_containing("stopped accepting; waiting for in-flight requests");
    // An open connection's next request is not read while the stop drains: the connection
    // closes without an answer, and the write never happens.
    let sent = late.try_request("setting.upsert", json!({"key": "late", "value": "v"}));
    assert!(
        sent.is_none() || late.is_closed(),
        "a request was read during the stop"
    );
    d.log_containing("daemon stopped");
    let out = d.ccd(&["setting", "get", "late"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}

#[test]
fn a_stop_cancels_the_queries_that_outlast_the_drain_and_records_them() {
    let d = agent_daemon(Behaviour::Hang, "[daemon]\nshutdown_timeout_ms = 300\n");
    let mut c = d.connect();
    let id = c.request("query.run", json!({"prompt": "x", "stream": true}));
    assert_eq!(c.recv().unwrap()["method"], "query.event");
    assert!(d.mock.wait_for_requests(1, Duration::from_secs(30)));
    d.call("system.shutdown", json!({})).unwrap();
    // The caller hears that its query was cancelled, not a dropped connection.
    let reply = c.reply_to(id);
    assert_eq!(code(&reply["error"]), -32008, "{reply}");
    d.log_containing("cancelling the queries still running");
    d.log_containing("daemon stopped");
    wait_until(
        "the agent to be terminated",
        Duration::from_secs(30),
        || d.agent_processes().is_empty(),
    );
    // The run is recorded as a cancelled turn (read straight from the database).
    let sessions: Value = serde_json::from_str(&d.ccd_ok(&["session", "list", "--json"])).unwrap();
    let sid = sessions[0]["id"].as_str().unwrap();
    let s: Value = serde_json::from_str(&d.ccd_ok(&["session", "show", sid, "--json"])).unwrap();
    assert_eq!(s["turns"][0]["status"], "cancelled", "{s}");
}

#[test]
fn a_client_that_disconnects_with_every_slot_taken_cancels_its_query() {
    // Its one slot is taken: the daemon reads nothing more from it, not even its EOF.
    disconnecting_cancels_the_query("[ipc]\nmax_inflight_per_connection = 1\n");
}

#[test]
fn a_session_whose_project_was_deleted_says_so() {
    let d = agent_daemon(Behaviour::Text("ok".into()), "");
    let _dir = d.project();
    let s = d
        .call("session.create", json!({"project": "proj"}))
        .unwrap();
    d.call("project.delete", json!({"name": "proj"})).unwrap();
    let e = d
        .call("query.run", json!({"prompt": "x", "session": s["id"]}))
        .unwrap_err();
    assert_eq!(code(&e), -32004, "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(s["id"].as_str().unwrap()) && msg.contains("no longer exists"),
        "{msg}"
    );
    assert!(d.mock.requests().is_empty());
}

#[test]
fn a_session_runs_one_query_at_a_time() {
    let d = agent_daemon(Behaviour::Hang, "");
    let s = d.call("session.create", json!({})).unwrap();
    let mut c = d.connect();
    let id = c.request(
        "query.run",
        json!({"prompt": "x", "session": s["id"], "stream": true}),
    );
    let first = c.recv().unwrap();
    let query_id = first["params"]["query_id"].clone();
    assert!(d.mock.wait_for_requests(1, Duration::from_secs(30)));
    // A second query in the same session would resume the same conversation at once.
    let e = d
        .call("query.run", json!({"prompt": "y", "session": s["id"]}))
        .unwrap_err();
    assert_eq!(code(&e), -32005, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("already has a query running"),
        "{e}"
    );
    d.call("query.cancel", json!({"query_id": query_id}))
        .unwrap();
    assert_eq!(code(&c.reply_to(id)["error"]), -32008);
    // A session the query made itself is claimed too, as soon as anyone can learn its id.
    let mut c3 = d.connect();
    let id3 = c3.request("query.run", json!({"prompt": "w", "stream": true}));
    let first = c3.recv().unwrap();
    let sessions = d.call("session.list", json!({})).unwrap();
    let made = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].clone())
        .find(|id| *id != s["id"])
        .unwrap_or_else(|| panic!("no session made by the query: {sessions}"));
    let e = d
        .call("query.run", json!({"prompt": "v", "session": made}))
        .unwrap_err();
    assert_eq!(code(&e), -32005, "{e}");
    d.call(
        "query.cancel",
        json!({"query_id": first["params"]["query_id"]}),
    )
    .unwrap();
    assert_eq!(code(&c3.reply_to(id3)["error"]), -32008);
    // Once it has ended, the session takes a query again.
    let mut c2 = d.connect();
    c2.request(
        "query.run",
        json!({"prompt": "z", "session": s["id"], "stream": true}),
    );
    assert_eq!(c2.recv().unwrap()["method"], "query.event");
}

#[test]
fn a_client_that_disconnects_cancels_its_query() {
    disconnecting_cancels_the_query("");
}

/// A client that starts a query and hangs up has it cancelled, and the turn says so.
fn disconnecting_cancels_the_query(config: &str) {
    let d = agent_daemon(Behaviour::Hang, config);
    {
        let mut c = d.connect();
        c.request("query.run", json!({"prompt": "x", "stream": true}));
        assert_eq!(c.recv().unwrap()["method"], "query.event");
        assert!(d.mock.wait_for_requests(1, Duration::from_secs(30)));
        assert!(!d.agent_processes().is_empty());
    }
    d.wait_no_agent_processes();
    let sessions = d.call("session.list", json!({})).unwrap();
    let id = sessions["sessions"][0]["id"].clone();
    let s = d.call("session.get", json!({"id": id})).unwrap();
    assert_eq!(s["turns"][0]["status"], "cancelled");
}

#[test]
fn a_missing_cli_is_unavailable_and_degrades_health() {
    let d = Daemon::builder()
        .env("CCD_AGENT_CMD", "/nonexistent/claude")
        .start();
    let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
    assert_eq!(code(&e), -32007, "{e}");
    assert_eq!(class(&e), "unavailable");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("/nonexistent/claude") && msg.contains("CCD_AGENT_CMD"),
        "{msg}"
    );
    wait_until("the agent check to finish", Duration::from_secs(30), || {
        !d.call("system.health", json!({})).unwrap()["agent"]["available"].is_null()
    });
    let h = d.call("system.health", json!({})).unwrap();
    assert_eq!(h["agent"]["available"], false);
    assert_eq!(h["status"], "degraded");
    assert!(
        h["agent"]["reason"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/claude")
    );
    // Everything else keeps working.
    d.call("setting.upsert", json!({"key": "k", "value": "v"}))
        .unwrap();
}

#[test]
fn health_reports_the_cli_version() {
    let d = agent_daemon(Behaviour::Text("ok".into()), "");
    wait_until("the agent check to finish", Duration::from_secs(60), || {
        !d.call("system.health", json!({})).unwrap()["agent"]["available"].is_null()
    });
    let h = d.call("system.health", json!({})).unwrap();
    assert_eq!(h["agent"]["available"], true, "{h}");
    assert!(
        h["agent"]["version"]
            .as_str()
            .unwrap()
            .contains("Claude Code"),
        "{h}"
    );
}

#[test]
fn an_executor_panic_kills_its_agent_and_the_pool_keeps_serving() {
    let d = agent_daemon(
        Behaviour::Hang,
        "[executor]\npool_size = 1\n[retry]\nmax_retries = 0\n",
    );
    let mut c = d.connect();
    let id = c.request("query.run", json!({"prompt": "x", "stream": true}));
    assert!(d.mock.wait_for_requests(1, Duration::from_secs(30)));
    let e = d
        .call("debug.crash", json!({"actor": "executor-1"}))
        .unwrap_err();
    assert_eq!(code(&e), -32001);
    let reply = c.reply_to(id);
    assert_eq!(class(&reply["error"]), "retryable", "{reply}");
    d.wait_no_agent_processes();
    d.mock
        .set_behaviour(Behaviour::Text("after the crash".into()));
    let r = d.call("query.run", json!({"prompt": "again"})).unwrap();
    assert_eq!(r["result"], "after the crash");
    let h = d.call("system.health", json!({})).unwrap();
    let member = named(&h["actors"], "executor-1").clone();
    assert_eq!(
        (member["restarts"].as_u64(), member["state"].as_str()),
        (Some(1), Some("running"))
    );
}

#[test]
fn a_full_queue_is_overloaded() {
    let d = agent_daemon(
        Behaviour::Hang,
        "[executor]\npool_size = 1\nqueue_size = 1\n",
    );
    let mut running = d.connect();
    running.request("query.run", json!({"prompt": "1", "stream": true}));
    assert!(d.mock.wait_for_requests(1, Duration::from_secs(30)));
    let mut queued = d.connect();
    queued.request("query.run", json!({"prompt": "2"}));
    wait_until(
        "the second query to be queued",
        Duration::from_secs(30),
        || d.call("system.health", json!({})).unwrap()["executor"]["queued"] == 1,
    );
    let e = d.call("query.run", json!({"prompt": "3"})).unwrap_err();
    assert_eq!(code(&e), -32009, "{e}");
    // The queued client goes away: its place is free for the next query, which queues instead
    // of being refused (a query whose caller had gone used to count until an executor freed).
    drop(queued);
    wait_until("the queue to look empty", Duration::from_secs(30), || {
        d.call("system.health", json!({})).unwrap()["executor"]["queued"] == 0
    });
    let mut next = d.connect();
    next.request("query.run", json!({"prompt": "4"}));
    wait_until(
        "the next query to be queued",
        Duration::from_secs(30),
        || d.call("system.health", json!({})).unwrap()["executor"]["queued"] == 1,
    );
    drop(running);
    drop(next);
    d.wait_no_agent_processes();
}

#[test]
fn a_queued_streaming_query_is_released_as_soon_as_its_client_goes() {
    let d = agent_daemon(
        Behaviour::Hang,
        "[executor]\npool_size = 1\nqueue_size = 4\n",
    );
    let mut running = d.connect();
    running.request("query.run", json!({"prompt": "1", "stream": true}));
    assert!(d.mock.wait_for_requests(1, Duration::from_secs(30)));
    {
        let mut queued = d.connect();
        queued.request("query.run", json!({"prompt": "2", "stream": true}));
        wait_until(
            "the second query to be queued",
            Duration::from_secs(30),
            || d.call("system.health", json!({})).unwrap()["executor"]["queued"] == 1,
        );
    }
    // Its turn is recorded as cancelled while the first query still holds the only executor:
    // the queued run (and the event stream it holds) is let go at once. It used to wait for an
    // executor to free up, and the agent here never finishes.
    wait_until(
        "the queued query to be recorded as cancelled",
        Duration::from_secs(30),
        || {
            d.call("event.list", json!({"types": ["turn.completed"]}))
                .unwrap()["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["status"] == "cancelled")
        },
    );
    assert_eq!(
        d.call("system.health", json!({})).unwrap()["executor"]["busy"],
        1,
        "the first query still runs"
    );
    drop(running);
    d.wait_no_agent_processes();
}

#[test]
fn arguments_over_the_kernels_limit_fail_the_query_without_blaming_the_agent() {
    // The project's environment is not bounded by ccd; the kernel refuses to start the agent
    // with it. That is no fault of the agent's: not retried, not counted by its breaker.
    let (_dir, agent) = stub_agent(TEXT_TRANSCRIPT);
    let d = agent_at(&agent, "[breaker]\nconsecutive_failures = 2\n");
    let work = tempfile::tempdir().unwrap();
    d.call(
        "project.create",
        json!({"name": "big", "path": work.path(), "env": {"HUGE": "h".repeat(200 << 10)}}),
    )
    .unwrap();
    for _ in 0..3 {
        let e = d
            .call("query.run", json!({"prompt": "x", "project": "big"}))
            .unwrap_err();
        assert_eq!(code(&e), -32007, "{e}");
        assert_eq!(e["data"]["class"], "non_retryable", "{e}");
        assert_eq!(e["data"]["attempts"], 1, "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("over the kernel's limit"),
            "{e}"
        );
    }
    // The breaker stayed closed: a query elsewhere runs.
    let r = d.call("query.run", json!({"prompt": "x"})).unwrap();
    assert_eq!(r["is_error"], false, "{r}");
}

#[test]
fn option_values_that_look_like_flags_stay_values() {
    // Each option is one `--flag=value` argument: a value that starts with `-` cannot become a
    // flag of its own, whatever parser the agent command uses.
    let (dir, agent) = stub_agent(TEXT_TRANSCRIPT);
    let d = agent_at(&agent, "");
    let extra = tempfile::tempdir().unwrap();
    let extra_dir = std::fs::canonicalize(extra.path()).unwrap();
    let r = d
        .call(
            "query.run",
            json!({
                "prompt": "x",
                "model": "--dangerously-skip-permissions",
                "append_system_prompt": "-p",
                "allowed_tools": ["-Bash"],
                "disallowed_tools": ["--verbose"],
                "mcp_config": "--debug",
                "max_turns": 2,
                "add_dirs": [extra.path()],
            }),
        )
        .unwrap();
    assert_eq!(r["is_error"], false, "{r}");
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    for want in [
        "--model=--dangerously-skip-permissions".to_string(),
        "--append-system-prompt=-p".into(),
        "--allowedTools=-Bash".into(),
        "--disallowedTools=--verbose".into(),
        "--mcp-config=--debug".into(),
        "--max-turns=2".into(),
        format!("--add-dir={}", extra_dir.display()),
    ] {
        assert!(args.contains(&want.as_str()), "{want}: {args:?}");
    }
    for flag in ["--dangerously-skip-permissions", "--debug", "-Bash"] {
        assert!(!args.contains(&flag), "{flag} became an argument: {args:?}");
    }
    assert_eq!(
        args.iter()
            .filter(|a| **a == "-p" || **a == "--verbose")
            .count(),
        2,
        "only ccd's own -p and --verbose: {args:?}"
    );

    // A session's model too.
    let s = d.call("session.create", json!({"model": "-m"})).unwrap();
    d.call("query.run", json!({"prompt": "x", "session": s["id"]}))
        .unwrap();
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert!(args.lines().any(|a| a == "--model=-m"), "{args}");
}

#[test]
fn the_real_cli_reads_every_option_in_the_equals_form() {
    let d = agent_daemon(Behaviour::Text("ok".into()), "");
    let extra = tempfile::tempdir().unwrap();
    let extra_dir = std::fs::canonicalize(extra.path()).unwrap();
    let r = d
        .call(
            "query.run",
            json!({
                "prompt": "x",
                "model": "-dash-model",
                "append_system_prompt": "-APPENDED-MARK",
                "add_dirs": [extra.path()],
                "disallowed_tools": ["Bash"],
                "max_turns": 3,
            }),
        )
        .unwrap();
    assert_eq!(r["is_error"], false, "{r}");
    let reqs = d.mock.requests();
    let first = reqs.first().expect("a request");
    assert_eq!(first.model, "-dash-model");
    let system = first.body["system"].to_string();
    assert!(system.contains("-APPENDED-MARK"), "{system}");
    assert!(
        system.contains(&extra_dir.display().to_string()),
        "{system}"
    );
    let tools: Vec<&str> = first.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(!tools.is_empty() && !tools.contains(&"Bash"), "{tools:?}");
}

#[test]
fn bad_query_params_are_refused_before_anything_runs() {
    let d = agent_daemon(Behaviour::Text("ok".into()), "");
    let file = tempfile::NamedTempFile::new().unwrap();
    for (params, needle) in [
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "x", "project": "nope"}), "nope"),
        (json!({"prompt": "x", "session": "nope"}), "nope"),
        (json!({"prompt": "x", "cwd": "/no/such/dir"}), "cwd"),
        (json!({"prompt": "x", "timeout_ms": 0}), "timeout_ms"),
        (
            json!({"prompt": "x", "permission_mode": "yolo"}),
            "permission_mode",
        ),
        (
            json!({"prompt": "x", "session": "a", "new_session": true}),
            "new_session",
        ),
        (
            json!({"prompt": "x", "append_system_prompt": "s".repeat(200 << 10)}),
            "`append_system_prompt`: 204800 bytes",
        ),
        (
            json!({"prompt": "x", "add_dirs": vec!["/tmp/".to_string() + &"d".repeat(100 << 10); 12]}),
            "add up to",
        ),
        // No program can be given a NUL byte in an argument.
        (
            json!({"prompt": "x", "append_system_prompt": "a\u{0}b"}),
            "`append_system_prompt`: must not contain a NUL byte",
        ),
        (json!({"prompt": "x", "model": "m\u{0}"}), "`model`"),
        (
            json!({"prompt": "x", "allowed_tools": ["Bash", "\u{0}"]}),
            "`allowed_tools`",
        ),
        (
            json!({"prompt": "x", "add_dirs": ["/tmp\u{0}"]}),
            "`add_dirs`",
        ),
        // Empty values, and directories that are not existing absolute ones.
        (
            json!({"prompt": "x", "model": ""}),
            "`model`: must not be empty",
        ),
        (
            json!({"prompt": "x", "mcp_config": ""}),
            "`mcp_config`: must not be empty",
        ),
        (
            json!({"prompt": "x", "append_system_prompt": ""}),
            "`append_system_prompt`: must not be empty",
        ),
        (
            json!({"prompt": "x", "allowed_tools": ["Bash", ""]}),
            "`allowed_tools`: an entry must not be empty",
        ),
        (
            json!({"prompt": "x", "disallowed_tools": [""]}),
            "`disallowed_tools`: an entry must not be empty",
        ),
        (
            json!({"prompt": "x", "add_dirs": [""]}),
            "`add_dirs`: an entry must not be empty",
        ),
        (
            json!({"prompt": "x", "add_dirs": ["-x"]}),
            "`add_dirs`: must be absolute",
        ),
        (
            json!({"prompt": "x", "add_dirs": ["/no/such/dir"]}),
            "`add_dirs`: /no/such/dir",
        ),
        (
            json!({"prompt": "x", "add_dirs": [file.path()]}),
            "is not a directory",
        ),
    ] {
        let e = d.call("query.run", params.clone()).unwrap_err();
        assert!([-32602, -32004].contains(&code(&e)), "{params} -> {e}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{params} -> {e}"
        );
    }
    assert!(d.mock.requests().is_empty());
    let closed = d.call("session.create", json!({})).unwrap();
    d.call("session.close", json!({"id": closed["id"]}))
        .unwrap();
    let e = d
        .call("query.run", json!({"prompt": "x", "session": closed["id"]}))
        .unwrap_err();
    assert_eq!(code(&e), -32005, "{e}");
    let e = d
        .call("session.create", json!({"model": "a\u{0}b"}))
        .unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    assert!(e["message"].as_str().unwrap().contains("`model`"), "{e}");
    let e = d.call("session.create", json!({"model": ""})).unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("`model`: must not be empty"),
        "{e}"
    );
    // None of it counted against a breaker.
    let breakers = d.call("breaker.status", json!({})).unwrap();
    let failures: Vec<&Value> = breakers["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["consecutive_failures"].as_u64() != Some(0))
        .collect();
    assert!(failures.is_empty(), "{breakers}");
}

#[test]
fn sessions_list_filter_close_cleanup_and_expire() {
    let d = agent_daemon(
        Behaviour::Text("ok".into()),
        "[session]\nttl_s = 1\nsweep_interval_s = 1\n",
    );
    let _dir = d.project();
    let a = d
        .call(
            "session.create",
            json!({"project": "proj", "tags": ["red"]}),
        )
        .unwrap();
    let b = d.call("session.create", json!({"tags": ["blue"]})).unwrap();
    assert_eq!(a["id"].as_str().unwrap().len(), 36);
    let ids = |params: Value| -> HashSet<String> {
        d.call("session.list", params).unwrap()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(json!({"tag": "red"})),
        HashSet::from([a["id"].as_str().unwrap().to_string()])
    );
    assert_eq!(ids(json!({"project": "proj"})).len(), 1);
    assert_eq!(
        code(
            &d.call("session.create", json!({"project": "nope"}))
                .unwrap_err()
        ),
        -32004
    );
    assert_eq!(
        code(
            &d.call("session.list", json!({"status": "weird"}))
                .unwrap_err()
        ),
        -32602
    );

    d.call("session.close", json!({"id": b["id"]})).unwrap();
    // The TTL sweep expires the idle open one.
    wait_until(
        "the idle session to expire",
        Duration::from_secs(30),
        || d.call("session.get", json!({"id": a["id"]})).unwrap()["session"]["status"] == "expired",
    );
    let r = d
        .call("session.cleanup", json!({"older_than_s": 0}))
        .unwrap();
    assert_eq!(r["removed"], 2);
    assert_eq!(
        code(&d.call("session.get", json!({"id": a["id"]})).unwrap_err()),
        -32004
    );
}

#[test]
fn the_cli_streams_the_answer_and_follows_the_exit_codes() {
    let d = agent_daemon(Behaviour::Text("Streamed via the CLI.".into()), "");
    let dir = d.project();
    let out = d.ccd(&["query", "hello", "--project", "proj"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Streamed via the CLI."
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("turns 1") && err.contains("session "), "{err}");

    let out = d.ccd(&["query", "hello", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "system");
    assert_eq!(lines.last().unwrap()["type"], "ccd_result");

    let sessions: Value = serde_json::from_str(&d.ccd_ok(&["session", "list", "--json"])).unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 2);
    let id = sessions[0]["id"].as_str().unwrap().to_string();
    let show = d.ccd_ok(&["session", "show", &id]);
    assert!(
        show.contains("hello") && show.contains("Streamed via the CLI."),
        "{show}"
    );

    d.mock.set_behaviour(Behaviour::Error {
        status: 400,
        error_type: "invalid_request_error".into(),
        message: "no".into(),
    });
    let out = d.ccd(&["query", "hello"]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    drop(dir);
}

#[test]
fn batch_runs_every_prompt_and_writes_jsonl() {
    let d = agent_daemon(
        Behaviour::Text("done".into()),
        "[executor]\npool_size = 2\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(
        &file,
        "first\n\n# a comment\n{\"prompt\": \"second\", \"max_turns\": 3}\nthird\nfourth\n",
    )
    .unwrap();
    let out_file = dir.path().join("results.jsonl");
    let out = d.ccd(&[
        "batch",
        file.to_str().unwrap(),
        "--concurrency",
        "3",
        "--output",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let results: Vec<Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 4);
    assert!(
        results
            .iter()
            .all(|r| r["ok"] == true && r["result"]["result"] == "done"),
        "{results:?}"
    );
    let lines: HashSet<u64> = results
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, HashSet::from([1, 4, 5, 6]));
    assert_eq!(d.mock.requests().len(), 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 ok, 0 failed"));
}

/// The JSONL records in `path`, one per line (panics on a line that is not JSON).
fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn batch_output_is_never_the_input_and_an_existing_one_needs_force() {
    let d = agent_daemon(Behaviour::Text("done".into()), "");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    let prompts = "one\ntwo\n";
    std::fs::write(&file, prompts).unwrap();
    let link = dir.path().join("link.txt");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let (f, l) = (file.to_str().unwrap(), link.to_str().unwrap());
    // The input itself, by its name or another: refused, --force or not, and nothing runs.
    for args in [
        vec!["batch", f, "-o", f],
        vec!["batch", f, "-o", l],
        vec!["batch", l, "-o", f, "--force"],
        vec!["batch", f, "-o", f, "--resume"],
    ] {
        let out = d.ccd(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is the input file"), "{args:?}: {err}");
        assert!(err.contains("another -o FILE"), "{args:?}: {err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), prompts);
    }
    // Standard input read from the output file is the input too.
    let out = d
        .command(&["batch", "-", "-o", f])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the input file (standard input)"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), prompts);

    // Earlier results are kept unless --force.
    let results = dir.path().join("results.jsonl");
    let r = results.to_str().unwrap();
    std::fs::write(&results, "earlier results\n").unwrap();
    let out = d.ccd(&["batch", f, "-o", r]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exists") && err.contains("--force") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&results).unwrap(),
        "earlier results\n"
    );
    assert!(d.mock.requests().is_empty(), "nothing ran");
    // --resume needs -o; --force and --resume do not go together.
    for args in [
        vec!["batch", f, "--resume"],
        vec!["batch", f, "-o", r, "--force", "--resume"],
    ] {
        let out = d.ccd(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    }
    let out = d.ccd(&["batch", f, "-o", r, "--force"]);
    assert!(out.status.success(), "{}", describe(&out));
    let written = records(&results);
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(
        written
            .iter()
            .all(|r| r["status"] == "ok" && r["ok"] == true),
        "{written:?}"
    );
    // An empty file has nothing to lose.
    std::fs::write(&results, "").unwrap();
    let out = d.ccd(&["batch", f, "-o", r]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(records(&results).len(), 2);
}

#[test]
fn batch_resume_runs_only_the_prompts_without_a_result_and_appends() {
    let d = agent_daemon(Behaviour::Text("done".into()), "");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "# prompts\none\ntwo\nthree\nfour\nfive\n").unwrap();
    let results = dir.path().join("results.jsonl");
    // An earlier run: line 2 answered, line 3 failed, line 4 was cancelled, line 5 answered a
    // prompt that has changed since, and the batch died while writing line 6's record.
    let earlier = [
        json!({"line": 2, "prompt": "one", "status": "ok", "ok": true, "result": {"result": "done"}}),
        json!({"line": 3, "prompt": "two", "status": "failed", "ok": false, "error": {"code": -32007}}),
        json!({"line": 4, "prompt": "three", "status": "cancelled", "ok": false, "error": {"code": -32008}}),
        json!({"line": 5, "prompt": "four, before it was edited", "status": "ok", "ok": true}),
    ]
    .iter()
    .map(|r| format!("{r}\n"))
    .collect::<String>()
        + "{\"line\": 6, \"pro";
    std::fs::write(&results, &earlier).unwrap();
    let out = d.ccd(&[
        "batch",
        file.to_str().unwrap(),
        "-o",
        results.to_str().unwrap(),
        "--resume",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of 5 prompts already has a result"), "{err}");
    assert!(err.contains("4 ok, 0 failed, 1 skipped"), "{err}");
    let mut asked: Vec<String> = d
        .mock
        .requests()
        .iter()
        .map(|r| r.last_user_text())
        .collect();
    asked.sort();
    assert_eq!(asked.len(), 4, "{asked:?}");
    for (asked, want) in asked.iter().zip(["five", "four", "three", "two"]) {
        assert!(asked.contains(want), "{asked:?}");
    }
    // The earlier records are kept as they were, the cut one on a line of its own; the new
    // ones follow.
    let text = std::fs::read_to_string(&results).unwrap();
    assert!(text.starts_with(&earlier), "{text}");
    let new: Vec<Value> = text[earlier.len()..]
        .strip_prefix('\n')
        .unwrap_or_else(|| panic!("{text}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: HashSet<u64> = new.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, HashSet::from([3, 4, 5, 6]), "{new:?}");
    assert!(new.iter().all(|r| r["status"] == "ok"), "{new:?}");

    // Once everything has a result, a resume runs nothing.
    let out = d.ccd(&[
        "batch",
        file.to_str().unwrap(),
        "-o",
        results.to_str().unwrap(),
        "--resume",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("5 of 5 prompts already have a result"),
        "{err}"
    );
    assert!(err.contains("nothing to run"), "{err}");
    assert_eq!(d.mock.requests().len(), 4);
}

#[test]
fn batch_tags_the_sessions_it_creates() {
    let d = agent_daemon(Behaviour::Text("done".into()), "");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "one\n{\"prompt\": \"two\", \"tags\": [\"own\"]}\n").unwrap();
    let out = d.ccd(&[
        "batch",
        file.to_str().unwrap(),
        "--tag",
        "nightly",
        "--tag",
        "run-7",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let tagged = |tag: &str| -> Vec<Value> {
        let list: Value =
            serde_json::from_str(&d.ccd_ok(&["session", "list", "--tag", tag, "--json"])).unwrap();
        list.as_array().unwrap().clone()
    };
    let nightly = tagged("nightly");
    assert_eq!(nightly.len(), 1, "{nightly:?}");
    assert_eq!(nightly[0]["tags"], json!(["nightly", "run-7"]));
    // A line's own tags win, as its other options do.
    let own = tagged("own");
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!(own[0]["tags"], json!(["own"]));
    // A line that continues a session keeps that session's tags.
    let sid = nightly[0]["id"].as_str().unwrap();
    std::fs::write(
        &file,
        format!("{{\"prompt\": \"three\", \"session\": \"{sid}\"}}\n"),
    )
    .unwrap();
    let out = d.ccd(&["batch", file.to_str().unwrap(), "--tag", "other"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(tagged("other").is_empty());
    // query.run refuses tags for a session it does not create.
    let e = d
        .call(
            "query.run",
            json!({"prompt": "x", "session": sid, "tags": ["t"]}),
        )
        .unwrap_err();
    assert_eq!(code(&e), -32602, "{e}");
    assert_eq!(d.mock.requests().len(), 3);
}

const TEXT_TRANSCRIPT: &str = include_str!("../../protocol/fixtures/text.jsonl");

#[test]
fn a_client_slow_to_read_still_gets_every_event() {
    // An agent that prints far more than the socket's buffers and a connection queue of 2 lines
    // hold: a run of a captured Claude Code transcript whose tool round is repeated 1000 times.
    const ROUNDS: usize = 1000;
    let fixture: Vec<&str> = include_str!("../../protocol/fixtures/tool.jsonl")
        .lines()
        .collect();
    let mut transcript = format!("{}\n", fixture[0]);
    for _ in 0..ROUNDS {
        for line in &fixture[1..4] {
            transcript.push_str(line);
            transcript.push('\n');
        }
    }
    transcript.push_str(fixture[4]);
    transcript.push('\n');
    let (dir, agent) = stub_agent(&transcript);
    let d = agent_at(&agent, "[ipc]\nmax_inflight_per_connection = 1\n");

    let mut c = d.connect();
    let id = c.request("query.run", json!({"prompt": "x", "stream": true}));
    // Read nothing until the agent has printed everything.
    wait_until("the agent to finish", Duration::from_secs(60), || {
        dir.path().join("done").exists()
    });
    let mut kinds = Vec::new();
    let reply = loop {
        let m = c.recv().expect("connection closed before the reply");
        if m["method"] == "query.event" {
            kinds.push(
                m["params"]["event"]["type"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            );
        } else {
            assert_eq!(m["id"], json!(id), "{m}");
            break m;
        }
    };
    assert!(reply.get("result").is_some(), "{reply}");
    let mut expected = vec!["system".to_string()];
    for _ in 0..ROUNDS {
        expected.extend(["assistant", "user", "assistant"].map(String::from));
    }
    expected.push("result".into());
    assert_eq!(kinds.len(), expected.len(), "events lost");
    assert_eq!(kinds, expected);
}

#[test]
fn non_json_lines_from_the_agent_are_skipped_and_logged() {
    let lines: Vec<&str> = TEXT_TRANSCRIPT.lines().collect();
    let transcript = format!(
        "{}\nnot json at all\n{{\"truncated\": \n\n{}\n\u{1b}[31mcolour\u{1b}[0m\n{}\n",
        lines[0], lines[1], lines[2]
    );
    let (_dir, agent) = stub_agent(&transcript);
    let d = agent_at(&agent, "");
    let r = d.call("query.run", json!({"prompt": "x"})).unwrap();
    let expected: Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(r["result"], expected["result"]);
    assert_eq!(r["is_error"], false);
    // The log is written by a background thread: give it a moment.
    wait_until(
        "the skipped line in the log",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(d.path().join("logs/ccd.log")).unwrap_or_default();
            log.contains("skipping a non-JSON line from the agent")
                && log.contains("not json at all")
        },
    );
}

#[test]
fn the_agents_stderr_reaches_the_error_and_the_log() {
    let (_dir, agent) = script_agent(
        "cat > /dev/null\necho 'warming up' >&2\necho 'fatal: no credentials found' >&2\nexit 3",
        &[],
    );
    let d = agent_at(&agent, "");
    let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
    assert_eq!(code(&e), -32007, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("fatal: no credentials found"),
        "{e}"
    );
    assert_eq!(
        e["data"]["stderr"],
        json!(["warming up", "fatal: no credentials found"])
    );
    // The log is written by a background thread: give it a moment.
    wait_until("the stderr in the log", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(d.path().join("logs/ccd.log")).unwrap_or_default();
        log.contains("agent stderr (last 2 lines)") && log.contains("fatal: no credentials found")
    });
}

#[test]
fn stderr_that_is_not_utf8_or_floods_is_read_to_the_end() {
    // A byte that is not UTF-8, then far more than a pipe holds (reading that stopped at the
    // bad byte left the agent to die of SIGPIPE), a line over the kept length, the reason.
    let (_dir, agent) = script_agent(
        "cat > /dev/null\nprintf 'caf\\351\\n' >&2\n\
         i=0; while [ $i -lt 3000 ]; do echo \"flood line $i: 0123456789012345678901234567890123456789012345678901234567890123456789\" >&2; i=$((i+1)); done\n\
         head -c 10000 /dev/zero | tr '\\0' y >&2; echo >&2\n\
         echo 'fatal: after the flood' >&2\nexit 3",
        &[],
    );
    let d = agent_at(&agent, "");
    let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
    assert_eq!(code(&e), -32007, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("fatal: after the flood"),
        "{e}"
    );
    let tail = e["data"]["stderr"].as_array().unwrap();
    assert_eq!(tail.len(), 20, "{e}");
    assert_eq!(tail[19], "fatal: after the flood");
    assert_eq!(
        tail[18].as_str().unwrap(),
        "y".repeat(4096),
        "a long line is cut"
    );
    assert!(tail[17].as_str().unwrap().starts_with("flood line 2999: "));
}

#[test]
fn an_agent_line_over_the_limit_fails_the_query_clearly() {
    let lines: Vec<&str> = TEXT_TRANSCRIPT.lines().collect();
    // A JSON line of 2 MiB against a limit of 1 MiB, then what would have been a success.
    let huge = format!(
        "{{\"type\":\"assistant\",\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let transcript = format!("{}\n{huge}\n{}\n", lines[0], lines[2]);
    let (_dir, agent) = stub_agent(&transcript);
    let d = agent_at(
        &agent,
        "[executor]\nmax_line_bytes = 1048576\n[retry]\nmax_retries = 0\n",
    );
    let e = d.call("query.run", json!({"prompt": "x"})).unwrap_err();
    assert_eq!(code(&e), -32007, "{e}");
    assert_eq!(class(&e), "non_retryable", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("1048576-byte limit") && msg.contains("executor.max_line_bytes"),
        "{msg}"
    );
    // The daemon is fine and the turn is recorded as failed.
    let s = d
        .call("session.get", json!({"id": e["data"]["session_id"]}))
        .unwrap();
    assert_eq!(s["turns"][0]["status"], "error", "{s}");
}

#[test]
fn runs_leak_no_file_descriptors() {
    let d = agent_daemon(Behaviour::Text("ok".into()), "");
    let pid = d.pid();
    // What an agent run could leak: pipes, sockets, pidfds. The daemon's read-only SQLite
    // connections (a bounded pool that grows with concurrent reads) are not counted.
    let db = d.path().join("ccd.db");
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| !target.to_string_lossy().starts_with(&*db.to_string_lossy()))
            .count()
    };
    // The start-up `claude --version` check holds pipes while it runs: let it finish first.
    wait_until("the agent check to finish", Duration::from_secs(60), || {
        !d.call("system.health", json!({})).unwrap()["agent"]["available"].is_null()
    });
    let mut c = d.connect();
    for i in 0..2 {
        c.call("query.run", json!({"prompt": format!("warm up {i}")}))
            .unwrap();
    }
    d.wait_no_agent_processes();
    let before = fds();
    for i in 0..5 {
        c.call("query.run", json!({"prompt": format!("q{i}")}))
            .unwrap();
    }
    d.wait_no_agent_processes();
    // The daemon closes a run's pipes as it reaps it; a leak is what stays open.
    let mut after = fds();
    let settle = std::time::Instant::now();
    while after > before && settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        after = fds();
    }
    assert!(
        after <= before,
        "file descriptors leaked by agent runs: {before} before, {after} after"
    );
}

#[test]
fn ctrl_c_in_batch_cancels_what_runs_and_keeps_what_finished() {
    let d = agent_daemon(Behaviour::Text("quick".into()), "");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "one\ntwo\nthree\nfour\n").unwrap();
    let out_file = dir.path().join("results.jsonl");
    let mut child = spawn_batch(&d, &file, &out_file, &["--concurrency", "1"]);
    // Once the first result is written, the API starts hanging: the second prompt never ends.
    wait_until("the first result", Duration::from_secs(60), || {
        std::fs::read_to_string(&out_file).is_ok_and(|t| t.lines().count() >= 1)
    });
    d.mock.set_behaviour(Behaviour::Hang);
    assert!(d.mock.wait_for_requests(2, Duration::from_secs(60)));
    assert_eq!(
        interrupt(&mut child),
        Some(1),
        "an interrupted batch is an error"
    );
    let results: Vec<Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results[0]["ok"], true, "{results:?}");
    assert_eq!(results[0]["status"], "ok", "{results:?}");
    assert_eq!(results[0]["result"]["result"], "quick");
    assert!(
        results.len() <= 2,
        "nothing after the interrupt runs: {results:?}"
    );
    // What was cancelled did not run, as what never started: neither failed.
    let summary = std::fs::read_to_string(out_file.with_extension("stderr")).unwrap();
    assert!(
        summary.contains("batch: 1 ok, 0 failed, 3 not run"),
        "{summary}"
    );
    if let Some(cancelled) = results.get(1) {
        assert_eq!(code(&cancelled["error"]), -32008, "{cancelled}");
        assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
        assert!(summary.contains("3 not run (1 cancelled)"), "{summary}");
    }
    d.wait_no_agent_processes();

    // --resume runs the rest, the cancelled one included, and adds their results.
    d.mock.set_behaviour(Behaviour::Text("quick".into()));
    let asked_before = d.mock.requests().len();
    let out = d.ccd(&[
        "batch",
        file.to_str().unwrap(),
        "--output",
        out_file.to_str().unwrap(),
        "--resume",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of 4 prompts already has a result"), "{err}");
    assert!(err.contains("3 ok, 0 failed, 1 skipped"), "{err}");
    assert_eq!(d.mock.requests().len(), asked_before + 3);
    let after: Vec<Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(after[..results.len()], results[..]);
    let ok_lines: HashSet<u64> = after
        .iter()
        .filter(|r| r["status"] == "ok")
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(ok_lines, HashSet::from([1, 2, 3, 4]), "{after:?}");
}

#[test]
fn session_list_pages_newest_first() {
    let d = Daemon::start();
    let made: Vec<String> = (0..5)
        .map(|_| {
            let s = d.call("session.create", json!({})).unwrap();
            s["id"].as_str().unwrap().to_string()
        })
        .collect();
    let page = |limit: u32, offset: u64| {
        let r = d
            .call("session.list", json!({"limit": limit, "offset": offset}))
            .unwrap();
        let ids: Vec<String> = r["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        (ids, r["more"].as_bool().unwrap())
    };
    let (all, more) = page(1000, 0);
    assert_eq!(all.len(), 5);
    assert!(!more);
    assert_eq!(
        all.iter().collect::<HashSet<_>>(),
        made.iter().collect::<HashSet<_>>()
    );
    // Pages of two follow the same order, and say when more follow.
    let mut paged = Vec::new();
    for (offset, want_more) in [(0, true), (2, true), (4, false)] {
        let (ids, more) = page(2, offset);
        assert_eq!(more, want_more, "page at {offset}");
        paged.extend(ids);
    }
    assert_eq!(paged, all);
    assert_eq!(page(2, 5), (vec![], false));
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 100_001}),
        json!({"offset": -1}),
    ] {
        let e = d.call("session.list", bad.clone()).unwrap_err();
        assert_eq!(code(&e), -32602, "{bad}: {e}");
    }
}

/// The variable names in an `env` dump.
fn env_names(dump: &str) -> Vec<&str> {
    dump.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn the_daemons_own_variables_reach_no_process_it_starts() {
    let (dir, agent) = script_agent(
        "cat > /dev/null\nenv > \"$here/run.env\"\ncat \"$here/transcript.jsonl\"",
        &[("transcript.jsonl", TEXT_TRANSCRIPT)],
    );
    let key = "ab".repeat(32);
    let d = Daemon::builder()
        .agent(agent)
        .env("CCD_MASTER_KEY", &key)
        .env("CCD_HTTP_TOKEN", "http-token-never-for-agents")
        .start();
    let work = tempfile::tempdir().unwrap();
    // A project may still give its agent a `CCD_` variable of its own.
    d.call(
        "project.create",
        json!({"name": "p", "path": work.path(), "env": {"CCD_FOR_THE_AGENT": "given"}}),
    )
    .unwrap();
    let r = d
        .call("query.run", json!({"prompt": "x", "project": "p"}))
        .unwrap();
    assert_eq!(r["is_error"], false, "{r}");
    let run = std::fs::read_to_string(dir.path().join("run.env")).unwrap();
    let names = env_names(&run);
    assert!(
        !run.contains(&key),
        "the master key reached the agent:\n{run}"
    );
    assert!(!run.contains("http-token-never-for-agents"), "{run}");
    assert_eq!(
        names
            .iter()
            .filter(|n| n.to_ascii_uppercase().starts_with("CCD_"))
            .collect::<Vec<_>>(),
        [&"CCD_FOR_THE_AGENT"],
        "{run}"
    );
    assert!(run.contains("CCD_FOR_THE_AGENT=given\n"), "{run}");
    assert!(
        names.contains(&"PATH"),
        "the rest of the environment is kept:\n{run}"
    );
    // The start-up `--version` check ran with the same environment.
    wait_until("the agent check to finish", Duration::from_secs(60), || {
        !d.call("system.health", json!({})).unwrap()["agent"]["available"].is_null()
    });
    let version = std::fs::read_to_string(dir.path().join("version.env")).unwrap();
    assert!(
        !env_names(&version)
            .iter()
            .any(|n| n.to_ascii_uppercase().starts_with("CCD_")),
        "{version}"
    );
}

#[test]
fn a_finished_agent_whose_background_process_holds_stdout_is_not_a_timeout() {
    // The agent prints a whole successful run, leaves a process behind that keeps its stdout
    // open, and exits. EOF on stdout would only come when that process ends.
    let (dir, agent) = script_agent(
        "cat > /dev/null\ncat \"$here/transcript.jsonl\"\nsleep 600 &\necho $! > \"$here/bg.pid\"\nexit 0",
        &[("transcript.jsonl", TEXT_TRANSCRIPT)],
    );
    let d = agent_at(&agent, "[retry]\nmax_retries = 0\n");
    // A deadline longer than the connection's read timeout: a run held open until then fails
    // the test on its own.
    let r = d
        .call("query.run", json!({"prompt": "x", "timeout_ms": 120_000}))
        .unwrap_or_else(|e| panic!("the finished run failed: {e}"));
    assert_eq!(r["result"], "Hello from mock", "{r}");
    // What the agent left running went with it.
    let bg = std::fs::read_to_string(dir.path().join("bg.pid")).unwrap();
    let bg = bg.trim();
    wait_until(
        "the agent's background process to be killed",
        Duration::from_secs(30),
        || is_zombie(bg.parse().unwrap()),
    );
}

#[test]
fn cancelling_an_agent_that_closed_its_stdout_but_runs_on_is_prompt() {
    // The agent prints its output, closes stdout and keeps running: after EOF the daemon waits
    // for it to exit, and a cancellation must still end that wait.
    let (dir, agent) = script_agent(
        "cat > /dev/null\ncat \"$here/transcript.jsonl\"\nexec >&-\ntouch \"$here/closed\"\nsleep 600",
        &[("transcript.jsonl", TEXT_TRANSCRIPT)],
    );
    let d = agent_at(&agent, "[retry]\nmax_retries = 0\n");
    let mut c = d.connect();
    let id = c.request(
        "query.run",
        json!({"prompt": "x", "stream": true, "timeout_ms": 120_000}),
    );
    let first = c.recv().unwrap();
    assert_eq!(first["method"], "query.event", "{first}");
    let query_id = first["params"]["query_id"].clone();
    wait_until(
        "the agent to close its stdout",
        Duration::from_secs(30),
        || dir.path().join("closed").exists(),
    );
    let r = d
        .call("query.cancel", json!({"query_id": query_id}))
        .unwrap();
    assert_eq!(r["cancelled"], true);
    // The connection's read timeout (30 s) is far below the query's deadline: a cancellation
    // that did not end the wait fails here.
    let reply = c.reply_to(id);
    assert_eq!(code(&reply["error"]), -32008, "{reply}");
}

#[test]
fn an_agents_text_is_kept_up_to_a_limit_and_marked_cut() {
    // One byte, then 17 MiB of assistant text in 1 MiB messages of two-byte characters, and a
    // result that carries no text of its own: the turn's result is the text, cut at 16 MiB,
    // which falls inside a character (so the cut is made one byte earlier).
    const MIB: usize = 1 << 20;
    let lines: Vec<&str> = TEXT_TRANSCRIPT.lines().collect();
    let assistant = |text: &str| {
        serde_json::to_string(&json!({
            "type": "assistant",
            "message": {"role": "assistant", "model": "claude-test",
                        "content": [{"type": "text", "text": text}]},
        }))
        .unwrap()
    };
    let chunk = assistant(&"é".repeat(MIB / 2));
    let mut transcript = format!("{}\n{}\n", lines[0], assistant("x"));
    for _ in 0..17 {
        transcript.push_str(&chunk);
        transcript.push('\n');
    }
    let mut result: Value = serde_json::from_str(lines[2]).unwrap();
    result.as_object_mut().unwrap().remove("result");
    transcript.push_str(&result.to_string());
    transcript.push('\n');
    let (_dir, agent) = stub_agent(&transcript);
    let d = agent_at(&agent, "");
    let r = d.call("query.run", json!({"prompt": "x"})).unwrap();
    let text = r["result"].as_str().unwrap();
    let cut = text
        .find("\n\n[ccd: the agent's text was cut here")
        .unwrap_or_else(|| panic!("no cut mark in a result of {} bytes", text.len()));
    assert_eq!(cut, 16 * MIB - 1, "what is kept");
    assert!(text[..cut].starts_with('x'));
    assert!(text[1..cut].chars().all(|c| c == 'é'));
    assert!(text.len() < 16 * MIB + 200, "{} bytes", text.len());
    let s = d
        .call("session.get", json!({"id": r["session_id"]}))
        .unwrap();
    assert_eq!(s["turns"][0]["result"], r["result"], "the turn is recorded");
}

#[test]
fn a_huge_reported_cost_cannot_make_totals_infinite() {
    let lines: Vec<&str> = TEXT_TRANSCRIPT.lines().collect();
    let mut result: Value = serde_json::from_str(lines[2]).unwrap();
    result["total_cost_usd"] = json!(1e308);
    let transcript = format!("{}\n{}\n{}\n", lines[0], lines[1], result);
    let (_dir, agent) = stub_agent(&transcript);
    let d = agent_at(&agent, "");
    let first = d.call("query.run", json!({"prompt": "x"})).unwrap();
    let second = d
        .call(
            "query.run",
            json!({"prompt": "y", "session": first["session_id"]}),
        )
        .unwrap();
    assert_eq!(second["cost_usd"], json!(1_000_000.0), "{second}");
    let s = d
        .call("session.get", json!({"id": first["session_id"]}))
        .unwrap();
    assert_eq!(s["session"]["cost_usd"], json!(2_000_000.0), "{s}");
    // The CLI decodes it.
    let out = d.ccd(&["session", "show", first["session_id"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn ctrl_c_in_batch_cancels_queries_that_have_not_said_anything_yet() {
    // An agent that prints nothing for a long time: the batch never learns its query's id.
    let (dir, agent) = script_agent("cat > /dev/null\nexec sleep 600", &[]);
    let d = agent_at(&agent, "");
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "one\ntwo\n").unwrap();
    let out_file = dir.path().join("results.jsonl");
    let mut child = spawn_batch(
        &d,
        &file,
        &out_file,
        &["--concurrency", "2", "--timeout", "90s"],
    );
    wait_until("both queries to run", Duration::from_secs(60), || {
        d.call("system.health", json!({})).unwrap()["executor"]["busy"] == 2
    });
    assert_eq!(
        interrupt(&mut child),
        Some(1),
        "an interrupted batch is an error"
    );
    // The daemon saw the batch hang up and cancelled both runs.
    wait_until("both runs to be cancelled", Duration::from_secs(30), || {
        let sessions = d.call("session.list", json!({})).unwrap();
        let cancelled = sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                let s = d.call("session.get", json!({"id": s["id"]})).unwrap();
                s["turns"][0]["status"] == "cancelled"
            })
            .count();
        cancelled == 2
    });
    assert_eq!(
        d.call("system.health", json!({})).unwrap()["executor"]["busy"],
        0
    );
    // Their records say what ended them.
    let results = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(results.lines().count(), 2, "{results}");
    for line in results.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["status"], "cancelled", "{r}");
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("interrupted"), "{r}");
    }
    let summary = std::fs::read_to_string(out_file.with_extension("stderr")).unwrap();
    assert!(
        summary.contains("batch: 0 ok, 0 failed, 2 not run (2 cancelled)"),
        "{summary}"
    );
}

/// `ccd batch FILE --output OUT ARGS...`, running; its stderr goes to `OUT.stderr`.
fn spawn_batch(
    d: &Daemon,
    file: &std::path::Path,
    out: &std::path::Path,
    args: &[&str],
) -> std::process::Child {
    let mut all = vec![
        "batch",
        file.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let stderr = std::fs::File::create(out.with_extension("stderr")).unwrap();
    d.command(&all).stderr(stderr).spawn().unwrap()
}

/// Ctrl-C (SIGINT) to `child`; its exit code.
fn interrupt(child: &mut std::process::Child) -> Option<i32> {
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap().code()
}

/// A daemon whose agent command is `agent`, with `config` as its config.toml.
fn agent_at(agent: &std::path::Path, config: &str) -> Daemon {
    Daemon::builder().agent(agent).config(config).start()
}
