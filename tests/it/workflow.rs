//! The daily query workflow as a user runs it: `ccd query` and `ccd session` from the shell, in
//! whatever directory the user happens to be, with the real Claude Code CLI against the mock
//! Messages API. Each test here was a bug a new user hit.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::agent_daemon::agent_daemon;
use crate::support::claude::claude_bin;
use crate::support::daemon::*;
use crate::support::mock_api::{Behaviour, MockApi};

/// The session id from the summary `ccd query` prints on stderr.
fn session_of(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    err.split("session ")
        .last()
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() == 36)
        .unwrap_or_else(|| panic!("no session id in the summary:\n{}", describe(out)))
}

/// The `cwd` of the agent's `init` message in `ccd query --json` output.
fn init_cwd(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m["type"] == "system" && m["subtype"] == "init")
        .and_then(|m| m["cwd"].as_str().map(String::from))
        .expect("an init message")
}

/// The lines a child writes to `pipe`, as they come, from a thread of their own.
fn lines_of(pipe: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    rx
}

fn canonical(p: &std::path::Path) -> String {
    std::fs::canonicalize(p)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_session_resumes_in_its_own_directory_from_anywhere() {
    let d = agent_daemon(Behaviour::text("Answer."), "");
    let web = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    d.ccd_ok(&["project", "add", "web", web.path().to_str().unwrap()]);

    // The README's two steps: the second from another directory.
    let first = d
        .command(&["query", "explain src/main.rs", "--project", "web"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", describe(&first));
    let id = session_of(&first);
    let second = d
        .command(&["query", "now add a test", "--session", &id, "--json"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", describe(&second));
    assert_eq!(init_cwd(&second.stdout), canonical(web.path()));
    // The conversation really was resumed: the second turn carries the first.
    let turns = d.mock.requests();
    assert_eq!(turns.last().unwrap().message_count(), 4, "{turns:?}");
    assert!(
        turns
            .last()
            .unwrap()
            .messages
            .to_string()
            .contains("explain src/main.rs")
    );

    // A session made empty with a project runs its first query there, from anywhere; any
    // unique prefix of its id works.
    let new = d.ccd_ok(&["session", "new", "--project", "web"]);
    let new = new.trim();
    let out = d
        .command(&["query", "hello", "--session", &new[..8], "--json"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(init_cwd(&out.stdout), canonical(web.path()));
    let shown: Value =
        serde_json::from_str(&d.ccd_ok(&["session", "show", &new[..8], "--json"])).unwrap();
    assert_eq!(shown["session"]["id"], new);
    assert_eq!(shown["session"]["cwd"], canonical(web.path()));

    // A session started in a plain directory resumes there too, and --continue finds it.
    let plain = tempfile::tempdir().unwrap();
    let out = d
        .command(&["query", "first"])
        .current_dir(plain.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let plain_id = session_of(&out);
    let out = d
        .command(&["query", "second", "--continue", "--json"])
        .current_dir(plain.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(init_cwd(&out.stdout), canonical(plain.path()));
    let result: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(result["result"]["session_id"], plain_id.as_str());
    // --continue where no session is open is a usage error that says so.
    let empty = tempfile::tempdir().unwrap();
    let out = d
        .command(&["query", "x", "--continue"])
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no open session"),
        "{}",
        describe(&out)
    );
}

#[test]
fn an_ambiguous_session_prefix_lists_the_matches() {
    let d = agent_daemon(Behaviour::text("x"), "");
    // Enough sessions that two share a first hex digit.
    let mut ids: Vec<String> = (0..17)
        .map(|_| d.ccd_ok(&["session", "new"]).trim().to_string())
        .collect();
    ids.sort();
    let pair = ids
        .windows(2)
        .find(|w| w[0][..1] == w[1][..1])
        .expect("17 ids over 16 digits share one");
    let err = d
        .call("session.get", json!({"id": &pair[0][..1]}))
        .unwrap_err();
    assert_eq!(code(&err), -32602, "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("ambiguous") && message.contains(&pair[0]) && message.contains(&pair[1]),
        "{message}"
    );
    let err = d.call("session.get", json!({"id": "zzzz"})).unwrap_err();
    assert_eq!(code(&err), -32004, "{err}");
}

#[test]
fn the_agents_own_error_reaches_the_user() {
    let d = agent_daemon(Behaviour::text("Answer."), "");
    let here = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let out = d
        .command(&["query", "hello"])
        .current_dir(here.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let id = session_of(&out);
    // Resumed explicitly somewhere else, Claude Code finds no such conversation: the user is
    // told so, not only an error class.
    let out = d.ccd(&[
        "query",
        "again",
        "--session",
        &id,
        "--cwd",
        other.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No conversation found"), "{err}");

    let e = d
        .call(
            "query.run",
            json!({"prompt": "again", "session": id, "cwd": other.path()}),
        )
        .unwrap_err();
    assert_eq!(code(&e), -32007, "{e}");
    assert!(
        e["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("No conversation found"),
        "{e}"
    );
}

#[test]
fn a_missing_project_directory_is_the_callers_error_and_trips_no_breaker() {
    let d = agent_daemon(Behaviour::text("Fine."), "");
    let gone = tempfile::tempdir().unwrap();
    let gone_path = canonical(gone.path());
    d.ccd_ok(&["project", "add", "gone", &gone_path]);
    let good = tempfile::tempdir().unwrap();
    d.ccd_ok(&["project", "add", "good", good.path().to_str().unwrap()]);
    drop(gone);
    // More than the breaker's threshold of tries.
    for _ in 0..6 {
        let out = d.ccd(&["query", "hi", "--project", "gone"]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("project `gone`") && err.contains(&gone_path) && !err.contains("install"),
            "{err}"
        );
    }
    assert_eq!(d.mock.request_count(), 0, "no agent may have run");
    let breakers = d.call("breaker.status", json!({})).unwrap();
    assert!(
        breakers.to_string().matches("OPEN").count() == 0,
        "{breakers}"
    );
    // Every other project's queries still run.
    let out = d.ccd(&["query", "hi", "--project", "good"]);
    assert!(out.status.success(), "{}", describe(&out));
    // What the error says to do works: the project pointed at a directory that exists.
    let moved = tempfile::tempdir().unwrap();
    let set: Value = serde_json::from_str(&d.ccd_ok(&[
        "project",
        "set",
        "gone",
        "--path",
        moved.path().to_str().unwrap(),
        "--env",
        "A=1",
        "--json",
    ]))
    .unwrap();
    assert_eq!(set["path"], canonical(moved.path()));
    assert_eq!(set["env"], json!({"A": "1"}));
    let set: Value = serde_json::from_str(&d.ccd_ok(&[
        "project",
        "set",
        "gone",
        "--unset-env",
        "A",
        "--env",
        "B=2",
        "--json",
    ]))
    .unwrap();
    assert_eq!(set["env"], json!({"B": "2"}));
    let out = d.ccd(&["query", "hi", "--project", "gone"]);
    assert!(out.status.success(), "{}", describe(&out));
    // A project is also found by the path of its directory.
    let out = d
        .command(&["query", "hi", "--project", ".", "--json"])
        .current_dir(good.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let sessions: Value = serde_json::from_str(&d.ccd_ok(&["session", "list", "--json"])).unwrap();
    assert_eq!(sessions[0]["project"], "good", "{sessions}");
}

#[test]
fn each_query_carries_its_callers_environment() {
    // The daemon's own ANTHROPIC_BASE_URL points at a mock that fails every request; the
    // caller's at one that answers.
    let d = agent_daemon(Behaviour::status(400), "");
    let callers = MockApi::start(Behaviour::text("From the caller's API."));
    let out = d
        .command(&["query", "hello"])
        .env("ANTHROPIC_BASE_URL", callers.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "From the caller's API."
    );
    assert_eq!(callers.request_count(), 1);
    assert_eq!(d.mock.request_count(), 0);

    // A variable the caller does not have is not taken from the daemon either: with no
    // ANTHROPIC_BASE_URL the CLI would go to the real API, so unset the key instead and see
    // the agent refuse for want of credentials, not use the daemon's key.
    let out = d
        .command(&["query", "hello"])
        .env("ANTHROPIC_BASE_URL", callers.url())
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert_eq!(callers.request_count(), 1, "no request without a key");
}

#[test]
fn the_agent_command_is_resolved_by_the_daemon_not_by_a_projects_path() {
    let mock = MockApi::start(Behaviour::text("The real one."));
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(claude_bin(), bin.path().join("claude")).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = Daemon::builder()
        .env("PATH", &path)
        .env("CCD_AGENT_CMD", "claude")
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEY", "test-key")
        .start();
    wait_until("the agent check", Duration::from_secs(60), || {
        !d.call("system.health", json!({})).unwrap()["agent"]["available"].is_null()
    });
    let health = d.call("system.health", json!({})).unwrap();
    assert_eq!(
        health["agent"]["path"],
        bin.path().join("claude").to_str().unwrap(),
        "{health}"
    );
    // A project whose PATH holds another `claude`, and a caller whose PATH does too.
    let evil = tempfile::tempdir().unwrap();
    let marker = evil.path().join("ran");
    let fake = evil.path().join("claude");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let work = tempfile::tempdir().unwrap();
    d.call(
        "project.create",
        json!({"name": "p", "path": work.path(), "env": {"PATH": evil.path()}}),
    )
    .unwrap();
    let out = d.ccd(&["query", "hi", "--project", "p"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = d
        .command(&["query", "hi"])
        .env("PATH", format!("{}:{path}", evil.path().display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!marker.exists(), "the project's or caller's `claude` ran");
    let status = d.ccd_ok(&["daemon", "status"]);
    assert!(
        status.contains("2.1.197") && status.contains(bin.path().to_str().unwrap()),
        "{status}"
    );
}

#[test]
fn answers_stream_delta_by_delta() {
    let d = agent_daemon(
        Behaviour::Gated {
            first: "First part, ".into(),
            rest: "then the rest.".into(),
        },
        "",
    );
    let mut child = d
        .command(&["query", "stream please"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // The mock holds the rest back until the first part has been printed: a CLI that prints
    // whole messages only would never print it, and this read would wait for EOF.
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("First part, ") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stdout ended before the first part: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    d.mock.open_gate();
    stdout.read_to_end(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    // Exactly the answer, once.
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "First part, then the rest.\n"
    );
}

#[test]
fn prompts_come_from_stdin_and_files_of_any_size() {
    let d = agent_daemon(Behaviour::text("Read it."), "");
    let big: String = "All work and no play makes a long prompt. ".repeat(300 * 1024 / 42 + 1);
    assert!(big.len() > 300 * 1024);
    let run_with_stdin = |args: &[&str], input: &str| {
        let mut child = d
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        out
    };
    for args in [&["query", "-"][..], &["query"][..]] {
        let out = run_with_stdin(args, &big);
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        let sent = d.mock.requests().last().unwrap().last_user_text();
        assert!(
            sent.trim_end().ends_with(big.trim()),
            "{args:?}: the agent got {} bytes, not the whole prompt",
            sent.len()
        );
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "from a file").unwrap();
    let out = d.ccd(&["query", "-f", file.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let sent = d.mock.requests().last().unwrap().last_user_text();
    assert!(sent.trim_end().ends_with("from a file"), "{sent}");
    // No prompt at all, or an empty one: a usage error, and nothing runs.
    let before = d.mock.request_count();
    let out = run_with_stdin(&["query"], "  \n");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(d.mock.request_count(), before);

    // `ccd batch -` reads its prompts from stdin.
    let out = run_with_stdin(&["batch", "-"], "one\ntwo\n");
    assert!(out.status.success(), "{}", describe(&out));
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
}

#[test]
fn ps_lists_what_runs_and_cancel_takes_a_prefix() {
    let d = agent_daemon(
        Behaviour::Gated {
            first: "Thinking".into(),
            rest: " never sent".into(),
        },
        "",
    );
    let out = d.ccd(&["ps"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no queries running"));

    let child = d
        .command(&["query", "hold on", "--model", "opus"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Value::Null;
    wait_until("the query to be running", Duration::from_secs(60), || {
        let list: Value = serde_json::from_str(&d.ccd_ok(&["ps", "--json"])).unwrap();
        running = list[0].clone();
        running["state"] == "running"
    });
    assert_eq!(running["model"], "opus");
    let id = running["query_id"].as_str().unwrap();
    let table = d.ccd_ok(&["ps"]);
    assert!(table.contains(id) && table.contains("running"), "{table}");

    let cancelled: Value =
        serde_json::from_str(&d.ccd_ok(&["cancel", &id[..6], "--json"])).unwrap();
    assert_eq!(cancelled, json!({"query_id": id, "cancelled": true}));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled"));
    // Nothing left to cancel: said so, exit 1.
    let out = d.ccd(&["cancel", id]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    d.mock.open_gate();
}

#[test]
fn sessions_list_newest_first_by_default_and_rm_removes_one() {
    let d = agent_daemon(Behaviour::text("x"), "");
    let ids: Vec<String> = (0..22)
        .map(|_| d.ccd_ok(&["session", "new"]).trim().to_string())
        .collect();
    let list = d.ccd(&["session", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert_eq!(text.lines().count(), 21, "a header and 20 rows:\n{text}");
    assert!(String::from_utf8_lossy(&list.stderr).contains("--all"));
    let all: Value =
        serde_json::from_str(&d.ccd_ok(&["session", "list", "--all", "--json"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 22);
    let two: Value =
        serde_json::from_str(&d.ccd_ok(&["session", "list", "-n", "2", "--json"])).unwrap();
    assert_eq!(two.as_array().unwrap().len(), 2);

    let removed: Value =
        serde_json::from_str(&d.ccd_ok(&["session", "rm", &ids[0], "--json"])).unwrap();
    assert_eq!(removed["id"], ids[0].as_str());
    let out = d.ccd(&["session", "show", &ids[0]]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let out = d.ccd(&["session", "rm", &ids[0]]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}

#[test]
fn doctor_says_what_is_missing_and_how_to_fix_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let d = Daemon::builder()
        .agent(claude_bin())
        .env("ANTHROPIC_API_KEY", "sk-ant-secret-value")
        .prepare();
    // Not running, and the HTTP port it would use is taken by someone else.
    let out = d
        .command(&["doctor", "--json"])
        .env("CCD_HTTP_ENABLED", "true")
        .env("CCD_HTTP_BIND", taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret-value"));
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {checks}"))
            .clone()
    };
    assert_eq!(check("daemon")["ok"], false);
    assert!(
        check("daemon")["fix"]
            .as_str()
            .unwrap()
            .contains("ccd daemon start")
    );
    assert_eq!(check("http")["ok"], false, "{checks}");
    assert!(
        check("http")["fix"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:0")
    );
    assert_eq!(check("agent")["ok"], true, "{checks}");
    assert!(
        check("agent")["detail"]
            .as_str()
            .unwrap()
            .contains("2.1.197")
    );
    assert_eq!(check("credentials")["ok"], true);

    // Without credentials: that check fails, and says how to log in.
    let out = d
        .command(&["doctor", "--json"])
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let creds = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "credentials")
        .unwrap();
    assert_eq!(creds["ok"], false);
    assert!(creds["fix"].as_str().unwrap().contains("ANTHROPIC_API_KEY"));

    // Running, with the API and the agent filesystem off: every check passes.
    d.ccd_ok(&["daemon", "start"]);
    wait_until("the agent check", Duration::from_secs(60), || {
        !d.call("system.health", json!({})).unwrap()["agent"]["available"].is_null()
    });
    let out = d.ccd(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}

#[test]
fn session_show_prints_whole_turns_without_driving_the_terminal() {
    let long = "word ".repeat(100);
    let answer = format!("{long}\u{1b}]0;pwned\u{7}\u{1b}[2J the end");
    let d = agent_daemon(Behaviour::text(answer), "");
    let out = d.ccd(&["query", "show me"]);
    assert!(out.status.success(), "{}", describe(&out));
    let id = session_of(&out);
    let show = d.ccd_ok(&["session", "show", &id[..8]]);
    assert!(
        !show.contains('\u{1b}') && !show.contains('\u{7}'),
        "{show:?}"
    );
    assert!(show.contains("\\u{1b}]0;pwned"), "{show}");
    // Whole, wrapped: every word is there, no line is longer than the wrap width.
    assert_eq!(show.matches("word").count(), 100, "{show}");
    assert!(show.contains("the end"));
    assert!(show.lines().all(|l| l.chars().count() <= 100), "{show}");
    // Times for people, in local time; JSON keeps UTC.
    let created = show
        .lines()
        .find(|l| l.trim_start().starts_with("created:"))
        .unwrap();
    assert!(
        !created.contains('T') && !created.ends_with('Z'),
        "{created}"
    );
    let json: Value = serde_json::from_str(&d.ccd_ok(&["session", "show", &id, "--json"])).unwrap();
    assert!(
        json["session"]["created_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(
        json["turns"][0]["result"]
            .as_str()
            .unwrap()
            .contains('\u{1b}')
    );
}

#[test]
fn a_query_that_waits_for_an_executor_says_so() {
    let d = agent_daemon(
        Behaviour::Gated {
            first: "Busy".into(),
            rest: " done.".into(),
        },
        "[executor]\npool_size = 1\n",
    );
    let first = d
        .command(&["query", "one"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the first query to run", Duration::from_secs(60), || {
        let list: Value = serde_json::from_str(&d.ccd_ok(&["ps", "--json"])).unwrap();
        list[0]["state"] == "running"
    });
    let mut second = d
        .command(&["query", "two"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its stderr, line by line, until it says what it waits for (the first query holds the
    // only executor until the gate opens, which only happens after that).
    let rx = lines_of(second.stderr.take().unwrap());
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no waiting notice; stderr so far: {seen:?}"));
        seen.push(line.clone());
        if line.contains("waiting for a free executor") {
            break;
        }
    }
    assert!(seen.last().unwrap().contains("1 busy"), "{seen:?}");
    d.mock.open_gate();
    assert!(first.wait_with_output().unwrap().status.success());
    assert!(second.wait().unwrap().success());
}

#[test]
fn commands_that_change_something_print_the_object_with_json() {
    let d = Daemon::start();
    let s: Value =
        serde_json::from_str(&d.ccd_ok(&["setting", "set", "editor", "vim", "--json"])).unwrap();
    assert_eq!(
        (s["key"].as_str(), s["value"].as_str()),
        (Some("editor"), Some("vim"))
    );
    let b: Value = serde_json::from_str(&d.ccd_ok(&["backup", "create", "--json"])).unwrap();
    assert!(
        std::path::Path::new(b["path"].as_str().unwrap()).is_file(),
        "{b}"
    );
    let s: Value = serde_json::from_str(&d.ccd_ok(&["session", "new", "--json"])).unwrap();
    assert_eq!(s["status"], "open");
    assert!(s["project"].is_null() && s["cwd"].is_string(), "{s}");
    let r: Value = serde_json::from_str(&d.ccd_ok(&["breaker", "reset", "--json"])).unwrap();
    assert_eq!(r["reset"], 0);
}

#[test]
fn absent_values_are_null_in_json_not_a_dash() {
    let d = agent_daemon(Behaviour::text("x"), "");
    let out = d.ccd(&["query", "no project"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stats: Value = serde_json::from_str(&d.ccd_ok(&["stats", "--json"])).unwrap();
    assert!(stats["rows"][0]["project"].is_null(), "{stats}");
    assert!(stats["totals"]["project"].is_null() && stats["totals"]["model"].is_null());
    let table = d.ccd_ok(&["stats"]);
    assert!(table.contains("all") && table.contains(" - "), "{table}");
    assert!(!d.ccd_ok(&["session", "list", "--json"]).contains("\"-\""));
}

#[test]
fn a_session_whose_first_query_never_reached_the_agent_is_marked() {
    // One query's worth of tokens an hour: the second is refused at once (--no-wait).
    let d = agent_daemon(
        Behaviour::text("x"),
        "[limiter]\nglobal_rate_per_s = 0.0003\nglobal_burst = 1\n",
    );
    let out = d.ccd(&["query", "first"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = d.ccd(&["query", "refused", "--no-wait"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let list = d.ccd_ok(&["session", "list"]);
    let marked: Vec<&str> = list
        .lines()
        .filter(|l| l.contains("nothing to resume"))
        .collect();
    assert_eq!(marked.len(), 1, "{list}");
}

#[test]
fn a_stop_says_which_queries_it_waits_for() {
    let d = agent_daemon(
        Behaviour::Gated {
            first: "Working".into(),
            rest: " done.".into(),
        },
        "[daemon]\nshutdown_timeout_ms = 60000\n",
    );
    let query = d
        .command(&["query", "long"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = String::new();
    wait_until("the query to run", Duration::from_secs(60), || {
        let list: Value = serde_json::from_str(&d.ccd_ok(&["ps", "--json"])).unwrap();
        id = list[0]["query_id"].as_str().unwrap_or_default().to_string();
        list[0]["state"] == "running"
    });
    let mut stop = d
        .command(&["daemon", "stop"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The stop says what it waits for before it waits: read that, then let the query finish.
    let rx = lines_of(stop.stderr.take().unwrap());
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the stop said nothing");
    assert!(
        line.contains("waiting for 1 running query") && line.contains(&id[..8]),
        "{line}"
    );
    d.mock.open_gate();
    assert!(stop.wait().unwrap().success());
    assert!(query.wait_with_output().unwrap().status.success());
}

#[test]
fn a_one_off_agent_command_does_not_become_the_auto_started_daemons() {
    let mock = MockApi::start(Behaviour::text("Configured agent."));
    let d = Daemon::builder()
        .config(&format!(
            "[executor]\ncommand = \"{}\"\n",
            claude_bin().display()
        ))
        .env("ANTHROPIC_BASE_URL", &mock.url())
        .env("ANTHROPIC_API_KEY", "test-key")
        .prepare();
    // A command run with a one-off CCD_AGENT_CMD starts the daemon...
    let out = d
        .command(&["setting", "set", "k", "v"])
        .env("CCD_AGENT_CMD", "/nonexistent/agent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without this shell's CCD_AGENT_CMD"),
        "{}",
        describe(&out)
    );
    // ...which runs the configured agent for every later query.
    let out = d.ccd(&["query", "hi"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Configured agent."
    );
    let health = d.call("system.health", json!({})).unwrap();
    assert_eq!(health["agent"]["command"], claude_bin().to_str().unwrap());
}

#[test]
fn limiter_set_changes_only_the_limits_given() {
    let d = Daemon::start();
    let st: Value = serde_json::from_str(&d.ccd_ok(&[
        "limiter",
        "set",
        "model",
        "--concurrency",
        "2",
        "--json",
    ]))
    .unwrap();
    assert_eq!(st["limits"]["model"]["concurrency"], 2, "{st}");
    let st: Value = serde_json::from_str(&d.ccd_ok(&[
        "limiter",
        "set",
        "model",
        "--window-max",
        "10",
        "--window",
        "1m",
        "--json",
    ]))
    .unwrap();
    let model = &st["limits"]["model"];
    assert_eq!(
        (
            &model["concurrency"],
            &model["window_max"],
            &model["window_ms"]
        ),
        (&json!(2), &json!(10), &json!(60000)),
        "{st}"
    );
    for bad in [
        &["limiter", "set", "model"][..],
        &["limiter", "set", "model", "--window-max", "3"][..],
        &["limiter", "set", "planet", "--rate", "1"][..],
    ] {
        let out = d.ccd(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", describe(&out));
    }
}

#[test]
fn bad_flag_values_are_usage_errors_that_say_the_accepted_form() {
    let d = Daemon::builder().prepare();
    for (args, form) in [
        (&["query", "x", "--timeout", "25h"][..], "at most 24h"),
        (&["session", "cleanup", "--older-than", "bogus"][..], "7d"),
        (&["events", "--since", "1x"][..], "units"),
    ] {
        let out = d.ccd(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(form),
            "{args:?}: {}",
            describe(&out)
        );
    }
    // An unknown key given with --set is blamed on --set, not on a config file.
    let out = d.ccd(&["config", "show", "--set", "bogus.key=1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--set") && !err.contains("config.toml"),
        "{err}"
    );
}
