//! Shell integration: `eval "$(ccd init SHELL)"` in a real bash (and zsh and fish where they are
//! installed) defines a `ccd` function with which `ccd cd PROJECT` changes the shell's own
//! directory, and registers completions that offer project names.

use std::path::Path;
use std::process::Command;

use crate::support::daemon::*;

/// Run `script` in `shell` (without the user's startup files) with `d`'s home and the `ccd`
/// under test first on PATH, as a user's shell would find it; returns (status, stdout, stderr).
fn run_shell(d: &Daemon, shell: &str, script: &str) -> (i32, String, String) {
    let bin_dir = Path::new(ccd_bin()).parent().expect("ccd's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let no_rc: &[&str] = match shell {
        "bash" => &["--norc", "--noprofile", "-c"],
        "zsh" => &["-f", "-c"],
        _ => &["--no-config", "-c"],
    };
    let out = Command::new(shell)
        .args(no_rc)
        .arg(script)
        .env_clear()
        .env("PATH", path)
        .env("HOME", d.path())
        .env("CCD_HOME", d.path())
        .env("CCD_HTTP_ENABLED", "false")
        .env("CCD_VFS_ENABLED", "false")
        .current_dir(d.path())
        .output()
        .unwrap_or_else(|e| panic!("running {shell}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn installed(shell: &str) -> bool {
    Command::new(shell)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn ccd_cd_changes_the_shells_directory_in_each_shell() {
    let d = Daemon::start();
    let web = tempfile::tempdir().unwrap();
    let api = tempfile::tempdir().unwrap();
    let web_dir = web.path().canonicalize().unwrap();
    let api_dir = api.path().canonicalize().unwrap();
    d.ccd_ok(&["project", "add", "web", web_dir.to_str().unwrap()]);
    d.ccd_ok(&["project", "add", "api", api_dir.to_str().unwrap()]);
    // The latest session is api's: `ccd cd` alone goes there.
    d.ccd_ok(&["session", "new", "--project", "api"]);

    // bash and zsh run the same lines; fish says `; and` and `$status`.
    let posix = |shell: &str| {
        format!(
            r#"eval "$(ccd init {shell})"
               ccd cd web && pwd
               ccd cd nope; echo "status $?"; pwd
               ccd cd && pwd
               ccd project list >/dev/null && echo "other commands pass through""#
        )
    };
    let fish = r#"ccd init fish | source
               ccd cd web; and pwd
               ccd cd nope; echo "status $status"; pwd
               ccd cd; and pwd
               ccd project list >/dev/null; and echo "other commands pass through""#;
    let scripts = [
        ("bash", posix("bash")),
        ("zsh", posix("zsh")),
        ("fish", fish.to_string()),
    ];
    let mut ran = Vec::new();
    for (shell, script) in scripts {
        if shell != "bash" && !installed(shell) {
            eprintln!("{shell} is not installed: its integration is not tested here");
            continue;
        }
        let (status, out, err) = run_shell(&d, shell, &script);
        assert_eq!(status, 0, "{shell}: {out}\n{err}");
        let lines: Vec<&str> = out.lines().collect();
        let want = [
            web_dir.to_str().unwrap(),
            "status 1",
            web_dir.to_str().unwrap(),
            api_dir.to_str().unwrap(),
            "other commands pass through",
        ];
        assert_eq!(lines, want, "{shell}; stderr:\n{err}");
        assert!(
            err.contains("no project named `nope` (projects: api, web)"),
            "{shell}: {err}"
        );
        ran.push(shell);
    }
    assert!(ran.contains(&"bash"), "bash always runs");
}

#[test]
fn ccd_cd_without_the_function_prints_the_directory_and_says_what_is_wrong() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_string();
    // No session yet: `ccd cd` alone needs a project.
    let out = d.ccd(&["cd"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no session yet"));

    d.ccd_ok(&["project", "add", "web", &path]);
    assert_eq!(d.ccd_ok(&["cd", "web"]).trim_end(), path);
    // A project whose directory went away is named, with the way to fix it.
    drop(dir);
    let out = d.ccd(&["cd", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a directory") && err.contains("ccd project set"),
        "{err}"
    );
}

#[test]
fn completion_offers_project_names_for_ccd_cd() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    d.ccd_ok(&["project", "add", "website", dir.path().to_str().unwrap()]);
    d.ccd_ok(&["project", "add", "api", dir.path().to_str().unwrap()]);
    // The callback the registered bash completion makes for `ccd cd w<TAB>`.
    let out = d
        .command(&["--", "ccd", "cd", "w"])
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", "2")
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_COMPLETE_SPACE", "true")
        .env("_CLAP_IFS", "\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let words: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(words, ["website"]);
    // And `ccd init bash` registers it for the function.
    let (status, out, err) = run_shell(&d, "bash", r#"eval "$(ccd init bash)"; complete -p ccd"#);
    assert_eq!(status, 0, "{err}");
    assert!(out.contains("-F _clap_complete_ccd ccd"), "{out}");
}
