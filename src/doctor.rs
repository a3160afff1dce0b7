//! `ccd doctor`: what a first run needs, checked one by one, each failure with how to fix it.
//!
//! Never starts the daemon and never changes anything: it reads the configuration a start
//! would use, the daemon's `system.health` when one is running, and the machine.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ccd_protocol::methods as m;
use ccd_protocol::types::{Health, NoParams};
use serde::Serialize;

use crate::client::{CallError, Client};
use crate::exit;
use crate::home::Home;

/// Less free space than this under `$CCD_HOME` fails the disk check.
const MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

/// One check's outcome.
#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    /// What was found.
    detail: String,
    /// How to fix it (null when it passed).
    fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// `ccd doctor`: exit 0 only when every check passes.
pub fn run(home: &Home, json: bool) -> anyhow::Result<u8> {
    let config = ccd_actors::Config::load(&home.root);
    let health = match Client::connect(home) {
        Ok(c) => Some(
            c.with_timeout(Duration::from_secs(10))
                .call::<m::SystemHealth>(&NoParams {}),
        ),
        Err(_) => None,
    };
    let mut checks = vec![daemon_check(home, health.as_ref())];
    let health = health.and_then(Result::ok);
    match &config {
        Ok(config) => {
            checks.push(agent_check(&config.executor.command, health.as_ref()));
            checks.push(credentials_check());
            checks.push(fuse_check(config.vfs.enabled));
            checks.push(http_check(&config.http, health.as_ref()));
        }
        Err(e) => checks.push(Check::fail(
            "configuration",
            format!("{e:#}"),
            format!(
                "correct {} or the CCD_* variable the message names",
                home.root.join("config.toml").display()
            ),
        )),
    }
    checks.push(database_check(home));
    checks.push(disk_check(&home.root));

    let all_ok = checks.iter().all(|c| c.ok);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &checks)?;
        writeln!(out)?;
    } else {
        for c in &checks {
            writeln!(
                out,
                "{}  {:<12} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            )?;
            if let Some(fix) = &c.fix {
                writeln!(out, "      {:<12} fix: {fix}", "")?;
            }
        }
        let failed = checks.iter().filter(|c| !c.ok).count();
        if failed > 0 {
            writeln!(out, "\n{} to fix", crate::table::count(failed, "check"))?;
        } else {
            writeln!(out, "\nall checks passed")?;
        }
    }
    Ok(if all_ok { exit::OK } else { exit::ERROR })
}

fn daemon_check(home: &Home, health: Option<&Result<Health, CallError>>) -> Check {
    let socket = home.socket();
    match health {
        Some(Ok(h)) => Check::pass(
            "daemon",
            format!(
                "running (pid {}, {}) on {}",
                h.pid,
                h.status,
                socket.display()
            ),
        ),
        Some(Err(e)) => Check::fail(
            "daemon",
            format!("{} does not answer: {e}", socket.display()),
            "run `ccd daemon restart` (and see `ccd daemon logs`)",
        ),
        None => Check::fail(
            "daemon",
            format!("not running (no answer on {})", socket.display()),
            "run `ccd daemon start` (commands that need it also start it)",
        ),
    }
}

/// The agent command as the daemon runs it: what a running daemon resolved and ran, else the
/// configured command resolved now and asked for its version.
fn agent_check(command: &str, health: Option<&Health>) -> Check {
    const NAME: &str = "agent";
    let install = "install Claude Code (npm install -g @anthropic-ai/claude-code) or set \
                   executor.command / CCD_AGENT_CMD, then `ccd daemon restart`";
    if let Some(agent) = health.map(|h| &h.agent) {
        return match (agent.available, &agent.version, &agent.path) {
            (Some(true), Some(v), path) => Check::pass(
                NAME,
                format!(
                    "{} ({v}) at {}",
                    agent.command,
                    path.as_deref().unwrap_or("?")
                ),
            ),
            (Some(false), _, _) => Check::fail(
                NAME,
                agent.reason.clone().unwrap_or_else(|| "unavailable".into()),
                install,
            ),
            _ => Check::pass(
                NAME,
                format!("{} (the daemon is still checking it)", agent.command),
            ),
        };
    }
    let path_var = std::env::var_os("PATH");
    let Some(path) = ccd_actors::executor::resolve_command(command, path_var.as_deref()) else {
        return Check::fail(NAME, format!("`{command}` not found on PATH"), install);
    };
    let version = std::process::Command::new(&path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output();
    match version {
        Ok(o) if o.status.success() => Check::pass(
            NAME,
            format!(
                "{command} ({}) at {}",
                String::from_utf8_lossy(&o.stdout).trim(),
                path.display()
            ),
        ),
        Ok(o) => Check::fail(
            NAME,
            format!("`{} --version` failed with {}", path.display(), o.status),
            install,
        ),
        Err(e) => Check::fail(NAME, format!("cannot run {}: {e}", path.display()), install),
    }
}

/// Credentials for the agent, never shown: an API key or token in this environment (which
/// each query carries), a cloud provider, or Claude Code's own login.
fn credentials_check() -> Check {
    const NAME: &str = "credentials";
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    for var in [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
    ] {
        if set(var) {
            return Check::pass(
                NAME,
                format!("{var} is set in this environment (not shown)"),
            );
        }
    }
    for (var, what) in [
        ("CLAUDE_CODE_USE_BEDROCK", "Amazon Bedrock"),
        ("CLAUDE_CODE_USE_VERTEX", "Google Vertex AI"),
    ] {
        if set(var) {
            return Check::pass(NAME, format!("{what} ({var}); its own credentials apply"));
        }
    }
    let login = std::env::var_os("HOME").map(|h| Path::new(&h).join(".claude/.credentials.json"));
    match login {
        Some(file) if file.is_file() => Check::pass(
            NAME,
            format!("Claude Code is logged in ({})", file.display()),
        ),
        _ => Check::fail(
            NAME,
            "no ANTHROPIC_API_KEY or token in this environment, and Claude Code is not logged in",
            "run `claude` once and log in, or export ANTHROPIC_API_KEY",
        ),
    }
}

fn fuse_check(enabled: bool) -> Check {
    const NAME: &str = "fuse";
    if !enabled {
        return Check::pass(NAME, "not needed (vfs.enabled = false)");
    }
    let fusermount = std::env::var_os("PATH")
        .and_then(|p| ccd_actors::executor::resolve_command("fusermount3", Some(&p)));
    match (Path::new("/dev/fuse").exists(), fusermount) {
        (true, Some(f)) => Check::pass(NAME, format!("/dev/fuse and {}", f.display())),
        (false, _) => Check::fail(
            NAME,
            "/dev/fuse is missing: the agent filesystem cannot be mounted",
            "load the fuse module (modprobe fuse), or in a container pass --device /dev/fuse; \
             or set vfs.enabled = false",
        ),
        // root mounts without the setuid helper.
        (true, None) if rustix::process::geteuid().is_root() => Check::pass(
            NAME,
            "/dev/fuse (fusermount3 is not installed: root mounts without it, but a mount left \
             by a killed daemon is then not cleaned up until the next start)",
        ),
        (true, None) => Check::fail(
            NAME,
            "fusermount3 is not on PATH",
            "install FUSE 3 (apt-get install fuse3), or set vfs.enabled = false",
        ),
    }
}

/// The HTTP API: serving on ccd's daemon, or its port free for the next start.
fn http_check(http: &ccd_actors::http::HttpConfig, health: Option<&Health>) -> Check {
    const NAME: &str = "http";
    if !http.enabled {
        return Check::pass(NAME, "off (http.enabled = false)");
    }
    if let Some(h) = health {
        return match &h.http {
            Some(url) => Check::pass(NAME, format!("this daemon serves {url}")),
            None => Check::fail(
                NAME,
                match &h.http_api.reason {
                    Some(why) => format!("the daemon is not serving: {why}"),
                    None => format!("the daemon is not serving on {}", http.bind),
                },
                "see `ccd daemon status` and the log for why; another process may hold the \
                 port: set http.bind = \"127.0.0.1:0\" for a free one, then `ccd daemon restart`",
            ),
        };
    }
    match std::net::TcpListener::bind(&http.bind) {
        Ok(_) => Check::pass(NAME, format!("{} is free", http.bind)),
        Err(e) => Check::fail(
            NAME,
            format!("{} cannot be bound: {e}", http.bind),
            "another process holds it (`ss -ltnp` shows which): set http.bind = \
             \"127.0.0.1:0\" for a free port, or stop that process",
        ),
    }
}

fn database_check(home: &Home) -> Check {
    const NAME: &str = "database";
    let db = home.db();
    let conn = match ccd_actors::store::open_reader(&db) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Check::pass(
                NAME,
                format!("none yet ({} is made at first start)", db.display()),
            );
        }
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot open {}: {e:#}", db.display()),
                "restore a backup (docs/operations.md, \"Backups and restore\")",
            );
        }
    };
    match conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
        Ok(s) if s == "ok" => {
            Check::pass(NAME, format!("{} passes its integrity check", db.display()))
        }
        Ok(s) => Check::fail(
            NAME,
            format!("{}: {s}", db.display()),
            "restore a backup (docs/operations.md, \"Backups and restore\")",
        ),
        Err(e) => Check::fail(
            NAME,
            format!("checking {}: {e}", db.display()),
            "restore a backup (docs/operations.md, \"Backups and restore\")",
        ),
    }
}

fn disk_check(root: &Path) -> Check {
    const NAME: &str = "disk";
    // $CCD_HOME itself, or the nearest directory above it that exists.
    let mut dir = root;
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    match rustix::fs::statvfs(dir) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let mib = free / (1024 * 1024);
            if free >= MIN_FREE_BYTES {
                Check::pass(NAME, format!("{mib} MiB free under {}", dir.display()))
            } else {
                Check::fail(
                    NAME,
                    format!("only {mib} MiB free under {}", dir.display()),
                    "free some space (old backups: `ccd backup list`, `ccd backup rm ID`)",
                )
            }
        }
        Err(e) => Check::fail(
            NAME,
            format!("cannot read the free space of {}: {e}", dir.display()),
            "check that the directory is readable",
        ),
    }
}
