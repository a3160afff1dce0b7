//! `ccd batch` with the real Claude Code CLI against the mock Messages API (and a stub agent that
//! says nothing): every prompt run and written as JSONL, the output file's safety rules, resume,
//! session tags, and Ctrl-C cancelling what runs while keeping what finished.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::agent_daemon::*;
use crate::support::daemon::*;
use crate::support::mock_api::Behaviour;
use crate::support::stub_agents::*;

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
