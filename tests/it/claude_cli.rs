//! Agent runs through the daemon with the real Claude Code CLI, pointed at the mock Messages
//! API (`support/mock_api.rs`): streaming, tool calls, resume, error classes, kills, timeouts,
//! cancellation, disconnects, a missing CLI, the pool's limits, query params and `ccd query`.
//! `sessions`, `batch` and `agent_process` (stub agents) hold the rest of the agent tests.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::agent_daemon::*;
use crate::support::daemon::*;
use crate::support::mock_api::Behaviour;

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

/// Write `reviewer.md` and `tester.md` subagent files into a new directory.
fn two_definitions() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reviewer.md"),
        "---\nname: reviewer\ndescription: Reviews Rust code for soundness\ntools: Read, Grep\n---\nYou review code.\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tester.md"),
        "---\nname: tester\ndescription: Writes property tests first\n---\nYou write tests.\n",
    )
    .unwrap();
    dir
}

/// Everything the mock received in the conversation's turns, as JSON text.
fn turns_text(d: &AgentDaemon) -> String {
    d.mock
        .requests()
        .iter()
        .map(|r| r.messages.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn imported_agents_are_offered_to_claude_code_in_every_run() {
    let d = agent_daemon(Behaviour::Text("done".into()), "");
    let _dir = d.project();
    let defs = two_definitions();
    d.ccd_ok(&["agent", "import", defs.path().to_str().unwrap()]);
    let mut c = d.connect();
    c.call(
        "query.run",
        json!({"prompt": "review the code", "project": "proj"}),
    )
    .unwrap();
    // The real CLI lists custom subagents (name, description, tools) in the request it sends.
    let sent = turns_text(&d);
    for want in [
        "reviewer",
        "Reviews Rust code for soundness",
        "tester",
        "Writes property tests first",
    ] {
        assert!(sent.contains(want), "`{want}` not offered:\n{sent}");
    }
    // Never in plain text on disk: not in the database, the log or anywhere under the home.
    let mut plain = Vec::new();
    for entry in walk(d.path()) {
        if std::fs::read(&entry).is_ok_and(|b| {
            b.windows(16)
                .any(|w| w == b"You review code."[..16].as_ref())
        }) {
            plain.push(entry);
        }
    }
    assert!(plain.is_empty(), "a prompt body in plain text: {plain:?}");
}

#[test]
fn agents_expose_chooses_which_definitions_runs_are_offered() {
    for (config, offered, withheld) in [
        (
            "[agents]\nexpose = \"none\"\n",
            &[][..],
            &["reviewer", "tester"][..],
        ),
        (
            "[agents]\nexpose = [\"tester\"]\n",
            &["tester"][..],
            &["reviewer"][..],
        ),
    ] {
        let d = agent_daemon(Behaviour::Text("done".into()), config);
        let _dir = d.project();
        let defs = two_definitions();
        d.ccd_ok(&["agent", "import", defs.path().to_str().unwrap()]);
        d.call(
            "query.run",
            json!({"prompt": "write the tests", "project": "proj"}),
        )
        .unwrap();
        let sent = turns_text(&d);
        let description = |name: &str| match name {
            "reviewer" => "Reviews Rust code for soundness",
            _ => "Writes property tests first",
        };
        for name in offered {
            assert!(
                sent.contains(description(name)),
                "{config}: {name} not offered:\n{sent}"
            );
        }
        for name in withheld {
            assert!(
                !sent.contains(description(name)),
                "{config}: {name} offered:\n{sent}"
            );
        }
    }
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
