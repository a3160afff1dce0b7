//! What the daemon makes of an agent process, with stub agents standing in for the CLI: its
//! arguments (the kernel's limit, values that look like flags), its environment, its output
//! (slow readers, non-JSON lines, over-long lines, cut text, absurd costs), its stderr, and
//! children that outlive it or hold its stdout.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::*;
use crate::support::stub_agents::*;

const TEXT_TRANSCRIPT: &str = include_str!("../../protocol/fixtures/text.jsonl");

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
