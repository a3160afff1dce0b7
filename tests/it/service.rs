//! `ccd daemon install | uninstall` and the service line of `ccd daemon status`, through the
//! real binary with a temporary HOME and XDG_CONFIG_HOME. Where systemd is absent (no
//! `systemctl`, or no user manager it can reach) install writes nothing and prints the line
//! for ~/.profile; with a stand-in `systemctl` first on PATH (it logs its arguments and starts
//! or stops the daemon as systemd would) the whole install and uninstall run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::support::daemon::*;

/// A `ccd` command of `d` with `HOME`, `XDG_CONFIG_HOME` and `PATH` of the test's choosing.
fn ccd(d: &Daemon, config: &Path, path: &str, args: &[&str]) -> Output {
    d.command(args)
        .env("XDG_CONFIG_HOME", config)
        .env("PATH", path)
        .output()
        .unwrap()
}

fn unit_file(config: &Path) -> PathBuf {
    config.join("systemd/user/ccd.service")
}

/// A directory holding `systemctl` with this body (a shell script).
fn fake_systemctl(dir: &Path, body: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("systemctl");
    std::fs::write(&file, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:/usr/bin:/bin", dir.display())
}

fn assert_no_systemd_fallback(d: &Daemon, config: &Path, path: &str, why: &str) {
    let out = ccd(d, config, path, &["daemon", "install"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot install the systemd user service")
            && err.contains(why)
            && err.contains("nothing was written")
            && err.contains("~/.profile")
            && err.contains(&format!("CCD_HOME='{}'", d.path().display()))
            && err.contains(&format!("'{}' daemon start --quiet", ccd_bin())),
        "{err}"
    );
    assert!(!config.join("systemd").exists(), "something was written");

    let out = ccd(d, config, path, &["daemon", "install", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["installed"], false, "{v}");
    assert!(v["reason"].as_str().unwrap().contains(why), "{v}");
    assert!(
        v["profile_line"]
            .as_str()
            .unwrap()
            .ends_with("daemon start --quiet"),
        "{v}"
    );
    assert!(!config.join("systemd").exists());
}

#[test]
fn without_systemd_install_writes_nothing_and_prints_the_profile_line() {
    let d = Daemon::builder().prepare();
    let config = d.path().join("config");
    // No systemctl at all.
    let empty = d.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    assert_no_systemd_fallback(&d, &config, empty.to_str().unwrap(), "not installed");
    // systemctl without a user manager, as in a container (or this one's own, when there is
    // one: the test's environment has no XDG_RUNTIME_DIR or bus address to reach it by).
    let real = std::env::var("PATH").unwrap();
    if Path::new("/usr/bin/systemctl").exists() || Path::new("/bin/systemctl").exists() {
        assert_no_systemd_fallback(&d, &config, &real, "user manager");
    }
    let path = fake_systemctl(
        &d.path().join("bin"),
        "echo 'Failed to connect to bus: No medium found' >&2; exit 1",
    );
    assert_no_systemd_fallback(&d, &config, &path, "No medium found");

    // The line it prints starts the daemon, quietly, and quietly again when it runs.
    assert_eq!(d.ccd_ok(&["daemon", "start", "--quiet"]), "");
    assert_eq!(d.ccd_ok(&["daemon", "start", "-q"]), "");
    assert!(
        d.ccd_ok(&["daemon", "status"])
            .contains("service:  not installed")
    );

    // Nothing to uninstall: said, exit 0.
    let out = ccd(&d, &config, &path, &["daemon", "uninstall"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not installed"));
    let out = ccd(&d, &config, &path, &["daemon", "uninstall", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["removed"], false, "{v}");
}

#[test]
fn install_enables_the_unit_after_stopping_a_daemon_run_outside_systemd() {
    let d = Daemon::start();
    let outside = d.pid();
    let config = d.path().join("config");
    let log = d.path().join("systemctl.log");
    // systemd's part: `enable --now` and `disable --now` start and stop the daemon.
    let path = fake_systemctl(
        &d.path().join("bin"),
        &format!(
            "echo \"$*\" >> '{log}'\n\
             case \"$*\" in\n\
             '--user enable --now ccd.service') exec '{bin}' daemon start --quiet ;;\n\
             '--user disable --now ccd.service') exec '{bin}' daemon stop >/dev/null ;;\n\
             '--user restart ccd.service') '{bin}' daemon stop >/dev/null; exec '{bin}' daemon start --quiet ;;\n\
             '--user is-enabled ccd.service') echo enabled ;;\n\
             '--user is-active ccd.service') echo active ;;\n\
             '--user show -p MainPID --value ccd.service') echo 0 ;;\n\
             esac",
            log = log.display(),
            bin = ccd_bin()
        ),
    );
    let out = ccd(&d, &config, &path, &["daemon", "install", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["installed"], true, "{v}");
    assert_eq!(v["stopped_pid"], outside, "{v}");
    let pid = v["pid"].as_u64().unwrap();
    assert_ne!(pid, u64::from(outside));
    assert_eq!(v["unit"], unit_file(&config).display().to_string());

    let unit = std::fs::read_to_string(unit_file(&config)).unwrap();
    assert!(
        unit.contains(&format!("ExecStart=\"{}\" daemon run\n", ccd_bin()))
            && unit.contains(&format!(
                "Environment=\"CCD_HOME={}\"\n",
                d.path().display()
            ))
            && unit.contains("Restart=on-failure"),
        "{unit}"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let daemon_reload = calls.find("--user daemon-reload").unwrap();
    let enable = calls.find("--user enable --now ccd.service").unwrap();
    assert!(daemon_reload < enable, "{calls}");

    let v: Value = serde_json::from_str(&d.ccd_ok(&["daemon", "status", "--json"])).unwrap();
    assert_eq!(v["service"]["installed"], false, "HOME's own config: {v}");
    let out = ccd(&d, &config, &path, &["daemon", "status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            &v["service"]["installed"],
            &v["service"]["enabled"],
            &v["service"]["active"]
        ),
        (&true.into(), &true.into(), &true.into()),
        "{v}"
    );
    let out = ccd(&d, &config, &path, &["daemon", "status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("service:  installed (enabled, active)"),
        "{}",
        describe(&out)
    );

    // A restart goes through systemd (stopping by hand would leave the service stopped), and
    // --set, which cannot reach a service, is refused.
    let out = ccd(
        &d,
        &config,
        &path,
        &["daemon", "restart", "--set", "executor.pool_size=2"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let before = d.pid();
    let out = ccd(&d, &config, &path, &["daemon", "restart"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("restarted ccd.service"));
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("--user restart ccd.service")
    );
    assert_ne!(d.pid(), before);
    d.call("system.ping", serde_json::json!({})).unwrap();

    let out = ccd(&d, &config, &path, &["daemon", "uninstall"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("disabled and stopped ccd.service"),
        "{}",
        describe(&out)
    );
    assert!(!unit_file(&config).exists());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("--user disable --now ccd.service")
    );
    assert_eq!(d.ccd(&["daemon", "status"]).status.code(), Some(3));
}

/// systemd refuses to enable the unit: the file it was given is taken back.
#[test]
fn a_unit_systemd_will_not_enable_is_not_left_behind() {
    let d = Daemon::builder().prepare();
    let config = d.path().join("config");
    let path = fake_systemctl(
        &d.path().join("bin"),
        "case \"$*\" in\n\
         '--user enable --now ccd.service') echo 'Failed to enable unit: Access denied' >&2; exit 1 ;;\n\
         esac",
    );
    let out = ccd(&d, &config, &path, &["daemon", "install"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Access denied"),
        "{}",
        describe(&out)
    );
    assert!(!unit_file(&config).exists());
}
