//! `ccd-bench`, the load generator whose figures docs/benchmarks.md records: a smoke run of its
//! request modes with tiny counts, so that a change that breaks the tool (or makes the daemon
//! answer its requests with errors, which it counts as failures) shows here, not on the day
//! someone re-measures. No speed is asserted.

use std::process::Command;

use crate::support::daemon::describe;

fn bench(args: &[&str]) -> String {
    let home = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_ccd-bench"))
        .args(args)
        .args(["--ccd", env!("CARGO_BIN_EXE_ccd")])
        // Its daemons inherit this: no HTTP port or FUSE mount per daemon, as in every test.
        .env("CCD_HTTP_ENABLED", "false")
        .env("CCD_VFS_ENABLED", "false")
        .env("HOME", home.path())
        .env_remove("CCD_HOME")
        .output()
        .expect("running ccd-bench");
    assert!(
        out.status.success(),
        "ccd-bench {args:?}:\n{}",
        describe(&out)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn upsert_runs_every_comparison_without_a_failed_request() {
    for clients in [["--client-threads", "1"], ["--client-threads", "0"]] {
        let mut args = vec!["upsert", "-c", "4", "-r", "20", "--warmup", "2"];
        args.extend(clients);
        args.extend(["--depth", if clients[1] == "1" { "4" } else { "1" }]);
        let out = bench(&args);
        for row in [
            "setting.upsert (ccd)                  4 conn:       80 ok, 0 failed",
            "setting.upsert (ccd, max_batch=1)     4 conn:       80 ok, 0 failed",
            "SQLite, 1 txn per write (1 thread)    1 conn:       80 ok, 0 failed",
        ] {
            assert!(out.contains(row), "no `{row}` in:\n{out}");
        }
        assert!(out.contains("ratio: ccd 4 conn throughput"), "{out}");
    }
}

#[test]
fn ping_runs_against_the_echo_baseline_without_a_failed_request() {
    let out = bench(&["ping", "-c", "2", "-r", "50", "--warmup", "2"]);
    for row in [
        "system.ping (ccd)                     2 conn:      100 ok, 0 failed",
        "bare NDJSON echo                      2 conn:      100 ok, 0 failed",
    ] {
        assert!(out.contains(row), "no `{row}` in:\n{out}");
    }
}

#[test]
fn stream_times_every_delta_without_a_failed_query() {
    let out = bench(&[
        "stream",
        "-q",
        "2",
        "-d",
        "20",
        "--interval",
        "1ms",
        "--warmup",
        "1",
    ]);
    for label in ["bare stub (agent → pipe", "ccd query (agent → ccd"] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line in:\n{out}"));
        assert!(
            line.contains(" 2 ok, 0 failed,") && line.contains(" 40 deltas; p50 "),
            "{line}\nin:\n{out}"
        );
    }
    assert!(
        out.contains("target: a delta printed by `ccd query`"),
        "{out}"
    );
}
