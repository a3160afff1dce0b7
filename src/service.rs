//! `ccd daemon install | uninstall`: the daemon as a systemd user service, started at login and
//! restarted by systemd when it fails; and what `ccd daemon status` says about it.
//!
//! Where systemd cannot be used (no `systemctl`, or no user manager to talk to, as in most
//! containers) `install` writes nothing and prints the line to add to the login shell instead.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::client::Client;
use crate::exit;
use crate::home::{Home, PidLock};

/// The unit's name.
pub const UNIT: &str = "ccd.service";

/// `$XDG_CONFIG_HOME/systemd/user/ccd.service` (default `~/.config/...`).
pub fn unit_path() -> anyhow::Result<PathBuf> {
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .context("neither XDG_CONFIG_HOME nor HOME is set")?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(config.join("systemd/user").join(UNIT))
}

/// One word of a unit file, quoted: `\` and `"` escaped, `%` (a specifier) doubled, and in
/// `ExecStart=` (`exec`) `$` doubled too (systemd expands `$VAR` there).
fn quote(s: &str, exec: bool) -> anyhow::Result<String> {
    if s.contains(['\n', '\r']) {
        bail!("`{s}` contains a line break, which a unit file cannot hold");
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if exec => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// The unit file: `ccd daemon run` in the foreground with this `CCD_HOME`, and the `PATH` it
/// finds the agent CLI on (a user manager's own PATH is usually shorter than a login shell's).
/// `Restart=on-failure`: a crash, a panic that stops it, `kill -9` restart it; `ccd daemon
/// stop` (a clean exit) leaves it stopped until the next login or `systemctl --user start ccd`.
pub fn render_unit(exe: &Path, ccd_home: &Path, path_env: Option<&str>) -> anyhow::Result<String> {
    let exe = exe
        .to_str()
        .context("the ccd executable's path is not UTF-8")?;
    let ccd_home = ccd_home.to_str().context("CCD_HOME is not UTF-8")?;
    let mut unit = String::new();
    unit.push_str(
        "# Written by `ccd daemon install`; `ccd daemon uninstall` removes it.\n\
         [Unit]\n\
         Description=ccd: supervisor daemon for coding-agent CLIs\n\
         \n\
         [Service]\n\
         Type=simple\n",
    );
    unit.push_str(&format!("ExecStart={} daemon run\n", quote(exe, true)?));
    unit.push_str(&format!(
        "Environment={}\n",
        quote(&format!("CCD_HOME={ccd_home}"), false)?
    ));
    if let Some(path) = path_env.filter(|p| !p.is_empty()) {
        unit.push_str(&format!(
            "Environment={}\n",
            quote(&format!("PATH={path}"), false)?
        ));
    }
    unit.push_str(
        "Restart=on-failure\n\
         RestartSec=2\n\
         # The daemon drains in-flight requests on SIGTERM (daemon.shutdown_timeout_ms).\n\
         TimeoutStopSec=60\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
    );
    Ok(unit)
}

/// Run `systemctl --user ARGS`: its stdout, or why it failed.
fn systemctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "`systemctl` is not installed (no systemd)".to_string(),
            _ => format!("running `systemctl`: {e}"),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let err = if err.is_empty() {
        out.status.to_string()
    } else {
        err
    };
    Err(format!(
        "`systemctl --user {}` failed: {err}",
        args.join(" ")
    ))
}

/// Whether `systemctl --user` reaches a user manager; if not, why.
fn user_manager() -> Result<(), String> {
    match systemctl(&["show-environment"]) {
        Ok(_) => Ok(()),
        Err(e) if e.contains("not installed") => Err(e),
        Err(e) => Err(format!(
            "`systemctl --user` cannot reach a systemd user manager ({})",
            e.rsplit_once("failed: ").map(|(_, why)| why).unwrap_or(&e)
        )),
    }
}

/// What `ccd daemon status` says about the service.
#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    /// The unit file exists.
    pub installed: bool,
    pub unit: String,
    /// `systemctl --user is-enabled` says enabled; null when systemctl cannot tell.
    pub enabled: Option<bool>,
    /// `systemctl --user is-active` says active; null when systemctl cannot tell.
    pub active: Option<bool>,
    /// Why enabled/active are unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ServiceStatus {
    /// One line for `ccd daemon status`.
    pub fn line(&self) -> String {
        if !self.installed {
            return "not installed (`ccd daemon install` starts it at login)".into();
        }
        let state = match (self.enabled, self.active, &self.reason) {
            (Some(e), Some(a), _) => format!(
                "{}, {}",
                if e { "enabled" } else { "disabled" },
                if a { "active" } else { "inactive" }
            ),
            (_, _, Some(why)) => format!("systemd state unknown: {why}"),
            _ => "systemd state unknown".into(),
        };
        format!("installed ({state}), {}", self.unit)
    }
}

/// The service's state; systemctl is asked only when the unit file exists.
pub fn status() -> ServiceStatus {
    let unit = unit_path().ok();
    let installed = unit.as_ref().is_some_and(|u| u.is_file());
    let mut st = ServiceStatus {
        installed,
        unit: unit.map(|u| u.display().to_string()).unwrap_or_default(),
        enabled: None,
        active: None,
        reason: None,
    };
    if installed {
        match user_manager() {
            Ok(()) => {
                // `is-enabled`/`is-active` exit non-zero for "disabled"/"inactive".
                let word = |cmd: &str| match systemctl(&[cmd, UNIT]) {
                    Ok(s) => s,
                    Err(e) => e,
                };
                st.enabled = Some(word("is-enabled").lines().next() == Some("enabled"));
                st.active = Some(word("is-active").lines().next() == Some("active"));
            }
            Err(why) => st.reason = Some(why),
        }
    }
    st
}

/// Whether this home's daemon runs under the systemd service: the unit is installed for this
/// `CCD_HOME` and systemd says it is active. Then `ccd daemon restart` goes through systemd
/// (stopping it by hand would leave the service stopped, and the new daemon outside it).
pub fn manages(home: &Home) -> bool {
    let Ok(unit) = unit_path() else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(&unit) else {
        return false;
    };
    let ours = format!("CCD_HOME={}\"", home.root.display());
    text.lines()
        .any(|l| l.starts_with("Environment=") && l.ends_with(&ours))
        && status().active == Some(true)
}

/// `systemctl --user restart ccd.service`, then wait (up to `timeout`) for the new daemon.
pub fn restart(home: &Home, timeout: std::time::Duration) -> anyhow::Result<()> {
    systemctl(&["restart", UNIT]).map_err(anyhow::Error::msg)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if crate::client::Client::connect(home).is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "systemd restarted {UNIT}, but the daemon did not answer within {}; see \
                 `journalctl --user -u {UNIT}` and `ccd daemon logs`",
                humantime::format_duration(timeout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The line for a login shell's profile that starts the daemon when systemd cannot.
pub fn profile_line(exe: &Path, home: &Home) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let exe = q(&exe.to_string_lossy());
    let default_home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ccd"));
    if default_home.as_deref() == Some(home.root.as_path()) {
        format!("{exe} daemon start --quiet")
    } else {
        format!(
            "CCD_HOME={} {exe} daemon start --quiet",
            q(&home.root.to_string_lossy())
        )
    }
}

#[derive(Debug, Serialize)]
struct InstallOutcome {
    installed: bool,
    unit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    /// The daemon's pid once systemd started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    /// A daemon that ran outside systemd and was stopped first.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Without systemd: the line to add to the login shell's profile instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile_line: Option<String>,
}

/// `ccd daemon install`.
pub fn install(home: &Home, json: bool) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("finding the ccd executable")?;
    let unit_file = unit_path()?;
    let mut outcome = InstallOutcome {
        installed: false,
        unit: unit_file.display().to_string(),
        enabled: None,
        pid: None,
        stopped_pid: None,
        reason: None,
        profile_line: None,
    };
    // Nothing is written unless systemd can enable it: no half-done install.
    if let Err(why) = user_manager() {
        let line = profile_line(&exe, home);
        outcome.reason = Some(why.clone());
        outcome.profile_line = Some(line.clone());
        if json {
            crate::table::print_json(&outcome)?;
        }
        eprintln!(
            "ccd: cannot install the systemd user service: {why}; nothing was written.\n\
             To start the daemon at login without systemd, add this line to ~/.profile (or your \
             login shell's startup file):\n\n    {line}\n\n\
             (it starts the daemon unless one runs; nothing restarts it if it fails, but any \
             ccd command that needs it starts it again)"
        );
        return Ok(exit::ERROR);
    }
    let ccd_home = &home.root;
    let unit = render_unit(&exe, ccd_home, std::env::var("PATH").ok().as_deref())?;
    let previous = std::fs::read_to_string(&unit_file).ok();

    // A daemon running outside systemd holds the lock the unit's would need: stop it first.
    if let Some(pid) = PidLock::probe(&home.pid_file()) {
        let main_pid = systemctl(&["show", "-p", "MainPID", "--value", UNIT])
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|p| *p != 0);
        if pid.is_none() || pid != main_pid {
            crate::daemon::stop(home, Duration::from_secs(60))?;
            outcome.stopped_pid = pid;
            if !json {
                let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
                eprintln!("ccd: stopped the daemon running outside systemd (pid {pid})");
            }
        }
    }

    let dir = unit_file.parent().context("the unit file's directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&unit_file, &unit)
        .with_context(|| format!("writing {}", unit_file.display()))?;
    let enabled = systemctl(&["daemon-reload"])
        .and_then(|_| systemctl(&["enable", "--now", UNIT]))
        // A unit that was running already: the new file takes effect with a restart.
        .and_then(|_| match &previous {
            Some(old) if *old != unit => systemctl(&["restart", UNIT]),
            _ => Ok(String::new()),
        });
    if let Err(why) = enabled {
        // Undo: a unit file systemd would not enable is not left behind.
        match previous {
            Some(old) => {
                let _ = std::fs::write(&unit_file, old);
            }
            None => {
                let _ = std::fs::remove_file(&unit_file);
            }
        }
        let _ = systemctl(&["daemon-reload"]);
        bail!("enabling {UNIT}: {why}");
    }
    outcome.installed = true;
    outcome.enabled = Some(true);
    // systemd returns once it has forked: wait for the daemon to answer.
    let deadline = Instant::now() + Duration::from_secs(15);
    let pid = loop {
        if let Ok(h) = Client::connect(home)
            .map(|c| c.with_timeout(Duration::from_secs(5)))
            .and_then(|mut c| {
                c.call::<ccd_protocol::methods::SystemHealth>(&ccd_protocol::types::NoParams {})
            })
        {
            break Some(h.pid);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    outcome.pid = pid;
    if json {
        crate::table::print_json(&outcome)?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "installed {}", unit_file.display())?;
        match pid {
            Some(pid) => writeln!(
                out,
                "enabled {UNIT}: the daemon runs under systemd (pid {pid}), starts at login and \
                 is restarted if it fails"
            )?,
            None => writeln!(
                out,
                "enabled {UNIT}, but the daemon did not answer within 15s: see \
                 `systemctl --user status ccd` and `journalctl --user -u ccd`"
            )?,
        }
    }
    Ok(if pid.is_some() { exit::OK } else { exit::ERROR })
}

/// `ccd daemon uninstall`: disable (stopping the daemon it runs) and remove the unit.
pub fn uninstall(json: bool) -> anyhow::Result<u8> {
    let unit_file = unit_path()?;
    let unit = unit_file.display().to_string();
    if !unit_file.exists() {
        if json {
            crate::table::print_json(&serde_json::json!({
                "removed": false, "unit": unit, "reason": "not installed"
            }))?;
        } else {
            writeln!(
                std::io::stdout().lock(),
                "{UNIT} is not installed (no {unit})"
            )?;
        }
        return Ok(exit::OK);
    }
    let manager = user_manager();
    if manager.is_ok() {
        systemctl(&["disable", "--now", UNIT]).map_err(anyhow::Error::msg)?;
    }
    std::fs::remove_file(&unit_file).with_context(|| format!("removing {unit}"))?;
    if manager.is_ok() {
        let _ = systemctl(&["daemon-reload"]);
    }
    if json {
        let mut v = serde_json::json!({ "removed": true, "unit": unit });
        if let Err(why) = &manager {
            v["reason"] = why.clone().into();
        }
        crate::table::print_json(&v)?;
    } else {
        let mut out = std::io::stdout().lock();
        match &manager {
            Ok(()) => writeln!(
                out,
                "disabled and stopped {UNIT}, removed {unit} (any ccd command that needs the \
                 daemon starts it again)"
            )?,
            Err(why) => writeln!(out, "removed {unit} (not disabled through systemd: {why})")?,
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn unit_runs_the_daemon_in_the_foreground_with_its_home() {
        let unit = render_unit(
            Path::new("/opt/my tools/ccd"),
            Path::new("/home/u/.ccd"),
            Some("/home/u/.local/bin:/usr/bin"),
        )
        .unwrap();
        assert!(
            unit.contains("ExecStart=\"/opt/my tools/ccd\" daemon run\n"),
            "{unit}"
        );
        assert!(unit.contains("Environment=\"CCD_HOME=/home/u/.ccd\"\n"));
        assert!(unit.contains("Environment=\"PATH=/home/u/.local/bin:/usr/bin\"\n"));
        assert!(unit.contains("Restart=on-failure\n"));
        assert!(unit.contains("[Install]\nWantedBy=default.target\n"));
        assert!(!unit.contains("--notify-ready"));
    }

    #[test]
    fn unit_escapes_what_systemd_would_expand() {
        let unit = render_unit(Path::new("/x/100%/$HOME/c\"d"), Path::new("/h/50%"), None).unwrap();
        assert!(
            unit.contains(r#"ExecStart="/x/100%%/$$HOME/c\"d" daemon run"#),
            "{unit}"
        );
        assert!(
            unit.contains("Environment=\"CCD_HOME=/h/50%%\"\n"),
            "{unit}"
        );
        assert!(!unit.contains("PATH="));
        assert!(render_unit(Path::new("/a\nb"), Path::new("/h"), None).is_err());
    }

    #[test]
    fn profile_line_names_a_home_other_than_the_default() {
        let home = Home {
            root: "/srv/it's ccd".into(),
        };
        let line = profile_line(Path::new("/usr/bin/ccd"), &home);
        assert_eq!(
            line,
            r#"CCD_HOME='/srv/it'\''s ccd' '/usr/bin/ccd' daemon start --quiet"#
        );
    }
}
