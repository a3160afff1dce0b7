//! The CLI as a user runs it: output, `--json`, auto-start, exit codes.

use serde_json::Value;

use crate::support::daemon::*;
use crate::support::stub_agents::*;

#[test]
fn writes_auto_start_the_daemon_unless_told_not_to() {
    let d = Daemon::builder().prepare();
    let out = d.ccd(&["--no-autostart", "setting", "set", "k", "v"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    assert!(!d.socket().exists());

    let out = d.ccd_ok(&["setting", "set", "k", "v"]);
    assert_eq!(out.trim(), "k = v");
    assert!(d.socket().exists(), "the write started the daemon");
    assert_eq!(d.ccd_ok(&["setting", "get", "k"]).trim(), "v");
}

#[test]
fn api_prints_results_as_json_and_errors_on_stderr_with_exit_codes() {
    let d = Daemon::start();
    let out = d.ccd_ok(&["api", "system.ping"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), "pong");
    // No params: nothing, {} or [] alike.
    for none in ["{}", "[]"] {
        let out = d.ccd_ok(&["api", "system.ping", none]);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), "pong");
    }
    let out = d.ccd_ok(&["api", "setting.upsert", r#"{"key":"a","value":"b"}"#]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["value"], "b");

    let out = d.ccd(&["api", "setting.get", r#"{"key":"missing"}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["code"], -32004);

    let out = d.ccd(&["api", "system.ping", "{not json"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));

    let out = d.ccd(&["project", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn projects_from_the_cli_with_relative_paths() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let out = d
        .command(&["project", "add", "rel", "sub"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let list: Value = serde_json::from_str(&d.ccd_ok(&["project", "list", "--json"])).unwrap();
    let canon = std::fs::canonicalize(dir.path().join("sub")).unwrap();
    assert_eq!(list[0]["path"], canon.to_str().unwrap());
    let table = d.ccd_ok(&["project", "list"]);
    assert!(
        table.starts_with("NAME") && table.contains("rel"),
        "{table}"
    );

    let out = d.ccd(&["project", "add", "bad name", "/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid project name"));
    let out = d.ccd(&["project", "add", "x", "/no/such/dir"]);
    assert_eq!(out.status.code(), Some(1));

    d.ccd_ok(&["project", "rm", "rel"]);
    assert!(d.ccd_ok(&["project", "list"]).contains("no projects"));
    let out = d.ccd(&["project", "rm", "rel"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no project named"));
}

#[test]
fn backups_from_the_cli() {
    let d = Daemon::start();
    d.ccd_ok(&["setting", "set", "k", "v"]);
    let out = d.ccd_ok(&["backup", "create"]);
    assert!(out.starts_with("backup 1 written to "), "{out}");
    let list: Value = serde_json::from_str(&d.ccd_ok(&["backup", "list", "--json"])).unwrap();
    let path = list[0]["path"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&path).exists());
    d.ccd_ok(&["backup", "rm", "1"]);
    assert!(!std::path::Path::new(&path).exists());
}

#[test]
fn help_is_there() {
    let d = Daemon::builder().prepare();
    let out = d.ccd_ok(&["--help"]);
    for cmd in [
        "daemon",
        "api",
        "project",
        "setting",
        "backup",
        "Exit codes",
    ] {
        assert!(out.contains(cmd), "--help lacks {cmd}:\n{out}");
    }
    assert!(d.ccd_ok(&["daemon", "--help"]).contains("logs"));
}

#[test]
fn shell_completions() {
    let d = Daemon::builder().prepare();
    let bash = d.ccd_ok(&["completions", "bash"]);
    assert!(
        bash.contains("_clap_complete_ccd") && bash.contains("COMPLETE=\"bash\""),
        "{}",
        &bash[..bash.len().min(400)]
    );
    let zsh = d.ccd_ok(&["completions", "zsh"]);
    assert!(zsh.contains("#compdef ccd"), "{zsh}");
    assert!(d.ccd_ok(&["completions", "fish"]).contains("complete"));
    assert_eq!(d.ccd(&["completions", "tcsh"]).status.code(), Some(2));
}

/// What bash offers for `WORDS` with the cursor on the last (partial) word: the script from
/// `ccd completions bash` sourced into a real bash, its function called as `complete -F`
/// would (COMP_WORDS, COMP_CWORD; $1 the command, $2 the word, $3 the one before).
fn bash_complete(d: &Daemon, words: &[&str]) -> Vec<String> {
    let script = d.ccd_ok(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ccd.bash");
    std::fs::write(&file, script).unwrap();
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect();
    let cword = words.len() - 1;
    let program = format!(
        "source '{}'\n\
         COMP_WORDS=({})\n\
         COMP_CWORD={cword}\n\
         COMP_TYPE=9\n\
         _clap_complete_ccd \"${{COMP_WORDS[0]}}\" \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        file.display(),
        quoted.join(" "),
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .env_clear()
        .envs(d.command(&[]).get_envs().filter_map(|(k, v)| Some((k, v?))))
        // The daemon's hermetic environment (CCD_HOME, HOME, PATH); the script runs `ccd` by
        // the path it was printed by.
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_projects_and_sessions_from_the_database() {
    let d = Daemon::start();
    let dir = d.path().join("web");
    std::fs::create_dir(&dir).unwrap();
    d.ccd_ok(&["project", "add", "webapp", dir.to_str().unwrap()]);
    d.ccd_ok(&["project", "add", "api", dir.to_str().unwrap()]);
    let session = d
        .ccd_ok(&["session", "new", "-p", "webapp"])
        .trim()
        .to_string();
    let closed = d.ccd_ok(&["session", "new"]).trim().to_string();
    d.ccd_ok(&["session", "close", &closed]);
    d.stop();

    // Read from the database: the daemon stays stopped.
    let got = bash_complete(&d, &["ccd", "query", "--project", ""]);
    assert_eq!(got, ["api", "webapp"], "{got:?}");
    let got = bash_complete(&d, &["ccd", "query", "-p", "we"]);
    assert_eq!(got, ["webapp"]);
    let got = bash_complete(&d, &["ccd", "batch", "f.txt", "--project", "a"]);
    assert_eq!(got, ["api"]);
    let got = bash_complete(&d, &["ccd", "project", "rm", "w"]);
    assert_eq!(got, ["webapp"]);
    // Open sessions only.
    let got = bash_complete(&d, &["ccd", "query", "--session", ""]);
    assert_eq!(got, [session.as_str()], "{got:?}");
    let got = bash_complete(&d, &["ccd", "session", "close", &session[..4]]);
    assert_eq!(got, [session.as_str()]);
    // Subcommands as before.
    let got = bash_complete(&d, &["ccd", "sess"]);
    assert_eq!(got, ["session"]);
    assert!(
        d.ccd(&["daemon", "status"]).status.code() == Some(3),
        "completing started the daemon"
    );
    // No database yet: nothing to offer, and no error.
    let fresh = Daemon::builder().prepare();
    assert!(bash_complete(&fresh, &["ccd", "query", "--project", ""]).is_empty());
    assert!(!fresh.path().join("ccd.db").exists());
}

/// Agent names need the daemon (it holds the key): offered while it runs.
#[test]
fn bash_completes_agent_names_while_the_daemon_runs() {
    let d = Daemon::start();
    let dir = d.path().join("agents");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("reviewer.md"),
        "---\nname: reviewer\ndescription: Reviews code\n---\nYou review code.\n",
    )
    .unwrap();
    d.ccd_ok(&["agent", "import", dir.to_str().unwrap()]);
    assert_eq!(
        bash_complete(&d, &["ccd", "agent", "show", "rev"]),
        ["reviewer"]
    );
    d.stop();
    assert!(bash_complete(&d, &["ccd", "agent", "rm", "rev"]).is_empty());
    assert_eq!(d.ccd(&["daemon", "status"]).status.code(), Some(3));
}

#[test]
fn a_reader_that_leaves_early_is_not_an_error() {
    let d = Daemon::builder().prepare();
    for args in [&["completions", "bash"][..], &["--help"], &["events"]] {
        // A pipe whose read end is closed before ccd writes: every write fails with EPIPE,
        // as with `ccd ... | head` once head has exited.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = d
            .command(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", describe(&out));
        assert!(out.stderr.is_empty(), "{args:?}: {}", describe(&out));
    }
}

#[test]
fn values_out_of_range_are_usage_errors_that_start_nothing() {
    let d = Daemon::builder().prepare();
    let cases: [&[&str]; 18] = [
        &["api", "system.ping", "null"],
        &["api", "system.ping", "\"text\""],
        &["api", "setting.get", "[\"k\"]"],
        &["session", "list", "--status", "bogus"],
        &["batch", "prompts.txt", "--concurrency", "0"],
        &["daemon", "start", "--timeout", "0"],
        &["daemon", "stop", "--timeout", "0"],
        &["daemon", "restart", "--timeout", "0"],
        &["daemon", "stop", "--timeout", "0s"],
        &["daemon", "start", "--timeout", "soon"],
        &["query", "x", "--timeout", "0s"],
        &["query", "x", "--timeout", "0"],
        &["query", "x", "--timeout", "-5"],
        &["batch", "prompts.txt", "--timeout", "0ms"],
        &["config", "show", "--set", "pool_size=3"],
        &["daemon", "start", "--set", "foo=1"],
        &["daemon", "run", "--set", "executor.pool.size=1"],
        &["daemon", "restart", "--set", "=1"],
    ];
    for args in cases {
        let out = d.ccd(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
    }
    let out = d.ccd(&["api", "system.ping", "3"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("JSON_PARAMS must be a JSON object of params by name"),
        "{}",
        describe(&out)
    );
    let out = d.ccd(&["daemon", "start", "--set", "foo=1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`foo` is not SECTION.KEY"),
        "{}",
        describe(&out)
    );
    // A key of the right shape that does not exist is the configuration's error, as it would
    // be in config.toml or the environment.
    let out = d.ccd(&["config", "show", "--set", "executor.foo=1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`executor.foo`: unknown key"),
        "{}",
        describe(&out)
    );
    assert!(!d.socket().exists(), "a usage error started the daemon");
    // An empty event log says so (nothing to read yet: no database either).
    assert_eq!(d.ccd_ok(&["events"]).trim(), "no events");
}

#[test]
fn every_timeout_takes_a_duration_or_seconds() {
    let d = Daemon::builder().prepare();
    // Seconds and durations alike; nothing runs, so each stop finds no daemon.
    for t in ["5", "5s", "1500ms", "1m"] {
        let out = d.ccd_ok(&["daemon", "stop", "--timeout", t]);
        assert_eq!(out.trim(), "ccd daemon is not running", "{t}");
    }
    d.ccd_ok(&["daemon", "start", "--timeout", "20"]);
    d.ccd_ok(&["daemon", "restart", "--timeout", "20s"]);
    let (_dir, agent) = stub_agent(include_str!("../../protocol/fixtures/text.jsonl"));
    let d = Daemon::builder().agent(agent).start();
    for t in ["30", "30s", "2m"] {
        d.ccd_ok(&["query", "hi", "--timeout", t]);
    }
    let help = d.ccd_ok(&["query", "--help"]);
    assert!(
        help.contains("a duration (90s, 500ms, 10m) or seconds"),
        "{help}"
    );
}

#[test]
fn a_daemon_that_lost_its_socket_is_named_and_restart_replaces_it() {
    let d = Daemon::start();
    let pid = d.pid();
    std::fs::remove_file(d.socket()).unwrap();
    let out = d.ccd(&["setting", "set", "k", "v"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "ccd: a daemon is running (pid {pid}) but its socket {} is gone",
            d.socket().display()
        )) && err.contains("run `ccd daemon restart`"),
        "{err}"
    );
    // A foreground run beside it refuses to run, and says so with a failing exit code.
    let out = d.ccd(&["daemon", "run"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with(&format!("ccd: the daemon is already running (pid {pid})")),
        "{}",
        describe(&out)
    );
    d.ccd_ok(&["daemon", "restart"]);
    assert_ne!(d.pid(), pid);
    assert_eq!(d.ccd_ok(&["setting", "set", "k", "v"]).trim(), "k = v");
}

#[test]
fn status_shows_the_agent_the_http_api_and_the_filesystem() {
    let d = Daemon::start();
    let out = d.ccd_ok(&["daemon", "status"]);
    let health = d.call("system.health", serde_json::json!({})).unwrap();
    let x = &health["executor"];
    let expected_executor = format!(
        "  executor: {} slot{}, {} busy, {} queued",
        x["size"],
        if x["size"] == 1 { "" } else { "s" },
        x["busy"],
        x["queued"]
    );
    assert!(out.contains(&expected_executor), "{out}");
    for label in ["  agent:    ", "  http:     ", "  vfs:      "] {
        assert!(out.contains(label), "no `{label}` in:\n{out}");
    }
    match health["http"].as_str() {
        Some(url) => assert!(out.contains(&format!("  http:     {url}")), "{out}"),
        None => assert!(out.contains("  http:     off"), "{out}"),
    }
}

#[test]
fn a_secret_set_value_can_come_from_a_file_or_stdin_and_stays_out_of_ps() {
    let d = Daemon::builder()
        .env("CCD_HTTP_ENABLED", "true")
        .env("CCD_HTTP_BIND", "127.0.0.1:0")
        .prepare();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret-fr0m-file\n").unwrap();
    let set_token = format!("http.token=@{}", file.display());
    // The pool size from stdin, the token from a file: neither is on any command line.
    let mut child = d
        .command(&[
            "daemon",
            "start",
            "--set",
            &set_token,
            "--set",
            "executor.pool_size=@-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"3\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let config: Value = serde_json::from_str(&d.ccd_ok(&["config", "show", "--json"])).unwrap();
    assert_eq!(
        config["executor.pool_size"]["daemon"]["value"], 3,
        "{config}"
    );
    assert_eq!(config["http.token"]["daemon"]["value"], "(set)", "{config}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", d.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("s3cret"));
    // The HTTP API takes the token read from the file, without its newline.
    let url = std::fs::read_to_string(d.path().join("http.url")).unwrap();
    let addr = url.trim().trim_start_matches("http://").to_string();
    let status = |auth: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /health HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {auth}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        raw.split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(status("s3cret-fr0m-file"), "200");
    assert_eq!(status("wrong"), "401");

    // A file that cannot be read is a usage error naming it.
    let out = d.ccd(&["config", "show", "--set", "http.token=@/no/such/file"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http.token=@/no/such/file"),
        "{}",
        describe(&out)
    );
    // And --help says how.
    let help = d.ccd_ok(&["daemon", "restart", "--help"]);
    assert!(help.contains("@FILE") && help.contains("@-"), "{help}");
}

#[test]
fn config_show_says_where_the_running_daemon_differs() {
    let d = Daemon::builder().prepare();
    d.ccd_ok(&[
        "daemon",
        "start",
        "--set",
        "executor.pool_size=2",
        "--set",
        "http.token=s3cret-t0ken",
    ]);
    let config = d.call("system.config", serde_json::json!({})).unwrap();
    // A secret is said to be set, never sent; nor is it on the daemon's command line, which
    // every user can read.
    assert!(!config.to_string().contains("s3cret"), "{config}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", d.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("s3cret"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    let token = config["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["key"] == "http.token")
        .cloned()
        .unwrap();
    assert_eq!(token["value"], "(set)");
    let pool = config["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["key"] == "executor.pool_size")
        .cloned()
        .unwrap();
    assert_eq!(
        pool,
        serde_json::json!({"key": "executor.pool_size", "value": 2, "source": "flag (--set)"})
    );

    let out = d.ccd(&["config", "show"]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "note: the running daemon (pid {}) started with other values: executor.pool_size = 2 (flag (--set))",
            d.pid()
        )),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
    let listed: Value = serde_json::from_str(&d.ccd_ok(&["config", "show", "--json"])).unwrap();
    assert_eq!(listed["executor.pool_size"]["value"], 4);
    assert_eq!(listed["executor.pool_size"]["daemon"]["value"], 2);
    assert!(listed["executor.queue_size"].get("daemon").is_none());

    // Shown with the same flag: nothing differs, nothing to note.
    let out = d.ccd(&[
        "config",
        "show",
        "--set",
        "executor.pool_size=2",
        "--set",
        "http.token=another",
    ]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        describe(&out)
    );
}

#[test]
fn permission_modes_are_spelled_as_the_api_spells_them() {
    let (dir, agent) = stub_agent(include_str!("../../protocol/fixtures/text.jsonl"));
    let d = Daemon::builder().agent(agent).start();
    for (given, passed) in [
        ("default", "default"),
        ("acceptEdits", "acceptEdits"),
        ("plan", "plan"),
        ("bypassPermissions", "bypassPermissions"),
        ("accept-edits", "acceptEdits"),
        ("bypass-permissions", "bypassPermissions"),
    ] {
        d.ccd_ok(&["query", "hi", "--permission-mode", given]);
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        let args: Vec<&str> = args.lines().collect();
        let want = format!("--permission-mode={passed}");
        assert!(args.contains(&want.as_str()), "{given}: {args:?}");
    }
    let out = d.ccd(&["query", "hi", "--permission-mode", "bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("default, acceptEdits, plan, bypassPermissions"),
        "{err}"
    );
}

#[test]
fn a_failed_query_prints_no_answer_and_one_plain_error() {
    // Claude Code not logged in: a made-up assistant message with the error's text, then a
    // result with subtype "success" and is_error.
    let (_dir, agent) = stub_agent(include_str!("../../protocol/fixtures/not_logged_in.jsonl"));
    let d = Daemon::builder().agent(agent).start();
    let out = d.ccd(&["query", "hi"]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "ccd: agent failed: the agent reported an error: Not logged in · Please run /login"
        ),
        "{err}"
    );
    assert!(!err.contains("(success)"), "{err}");
}

#[test]
fn breaker_reset_without_a_daemon_resets_nothing_and_starts_nothing() {
    let d = Daemon::builder().prepare();
    for args in [&["breaker", "reset"][..], &["breaker", "reset", "claude"]] {
        let out = d.ccd_ok(args);
        assert_eq!(
            out.trim(),
            "ccd daemon is not running, so no breaker is open",
            "{args:?}"
        );
    }
    assert!(!d.socket().exists(), "breaker reset started the daemon");
    let out = d.ccd(&["breaker", "status"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));

    // A daemon that holds the lock but does not answer may have open breakers: not "none".
    d.ccd_ok(&["daemon", "start"]);
    std::fs::remove_file(d.socket()).unwrap();
    let out = d.ccd(&["breaker", "reset"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));

    d.ccd_ok(&["daemon", "restart"]);
    assert_eq!(d.ccd_ok(&["breaker", "reset"]).trim(), "reset 0 breakers");
}

#[test]
fn counts_are_said_in_words() {
    let (_dir, agent) = stub_agent(include_str!("../../protocol/fixtures/text.jsonl"));
    let d = Daemon::builder().agent(agent).start();
    d.ccd_ok(&["query", "hi"]);
    let sessions: Value = serde_json::from_str(&d.ccd_ok(&["session", "list", "--json"])).unwrap();
    let id = sessions[0]["id"].as_str().unwrap().to_string();
    let show = d.ccd_ok(&["session", "show", &id]);
    assert!(show.contains("  totals:        1 turn, "), "{show}");
    d.ccd_ok(&["session", "close", &id]);
    let out = d.ccd_ok(&["session", "cleanup", "--older-than", "0s"]);
    assert_eq!(out.trim(), "removed 1 session");
    let out = d.ccd_ok(&["session", "cleanup", "--older-than", "0s"]);
    assert_eq!(out.trim(), "removed 0 sessions");
}

#[test]
fn query_names_its_id_on_stderr_and_keeps_stdout_for_the_answer() {
    let (_dir, agent) = stub_agent(include_str!("../../protocol/fixtures/text.jsonl"));
    let d = Daemon::builder().agent(agent).start();
    let out = d.ccd(&["query", "hi"]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let id = err
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("query "))
        .unwrap_or_else(|| panic!("no `query <id>` first on stderr: {err}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(id), "{stdout}");
    let sessions: Value = serde_json::from_str(&d.ccd_ok(&["session", "list", "--json"])).unwrap();
    let session = sessions[0]["id"].as_str().unwrap();
    let detail: Value =
        serde_json::from_str(&d.ccd_ok(&["session", "show", session, "--json"])).unwrap();
    assert_eq!(detail["turns"][0]["query_id"], id, "{detail}");
}
