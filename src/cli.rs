//! Command-line interface: clap definitions, then one function per command.
//!
//! Writes go through the daemon (auto-started unless `--no-autostart`); listings read the
//! database directly and never start the daemon.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use ccd_actors::store;
use ccd_protocol::Method;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self, NoParams};
use clap::{Args, Parser, Subcommand};

use crate::client::{CallError, Client};
use crate::daemon;
use crate::exit;
use crate::exit::UsageError;
use crate::home::{Home, read};
use crate::table::{Table, count, print_json};

/// `println!` that returns broken-pipe and other write errors instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {
        writeln!(std::io::stdout().lock(), $($t)*)?
    };
}

#[derive(Debug, Parser)]
#[command(
    name = "ccd",
    version,
    about = "A local supervisor daemon for coding-agent CLIs",
    long_about = "ccd runs a long-lived daemon that supervises coding-agent CLIs (Claude Code) and keeps \
their projects, settings and history in one SQLite database under $CCD_HOME (default ~/.ccd).\n\n\
Commands that change something talk to the daemon over $CCD_HOME/ccd.sock and start it when it is not \
running; listings read the database directly and work while the daemon is stopped.",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 daemon not running or unreachable, \
4 refused (rate limited or circuit open), 5 agent failed."
)]
pub struct Cli {
    /// Do not start the daemon when a command needs it and it is not running (exit 3 instead).
    #[arg(long, global = true)]
    no_autostart: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start, stop and inspect the daemon.
    #[command(subcommand)]
    Daemon(DaemonCmd),
    /// Call any JSON-RPC method and print its result as JSON.
    #[command(
        after_help = "Examples:\n  ccd api system.health\n  ccd api setting.upsert '{\"key\":\"k\",\"value\":\"v\"}'\n  ccd api system.describe | jq '.methods[].name'"
    )]
    Api {
        /// The method, e.g. system.health (see `ccd api system.describe`).
        method: String,
        /// Params as a JSON object, by name, e.g. '{"key":"k"}'; leave out (or give {}) for a
        /// method without params.
        #[arg(value_name = "JSON_PARAMS")]
        params: Option<String>,
    },
    /// Named working directories that agent runs use.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Key/value settings kept by the daemon.
    #[command(subcommand)]
    Setting(SettingCmd),
    /// Online backups of the database.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Run a prompt with Claude Code: the answer streams to stdout, a summary to stderr.
    #[command(
        after_help = "Examples:\n  ccd query \"explain src/main.rs\" --project web\n  ccd query \"and now add tests\" --session 2f6c...\n  ccd query \"list files\" --allowed-tools Bash --json | jq ."
    )]
    Query(crate::agent_cmd::QueryArgs),
    /// Conversations kept by the daemon: each query is a turn of a session.
    #[command(subcommand)]
    Session(crate::agent_cmd::SessionCmd),
    /// Run many prompts through the executor pool, with progress; results as JSONL.
    #[command(after_help = crate::agent_cmd::BATCH_HELP)]
    Batch(crate::agent_cmd::BatchArgs),
    /// Check what a first run needs, and say how to fix each problem: the agent command and its
    /// version, credentials (never shown), FUSE, the HTTP port, the daemon, the database, disk
    /// space. Exit 0 only when every check passes. Never starts the daemon.
    Doctor {
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The queries running, queued or waiting for the rate limiter (needs the running daemon;
    /// never starts it).
    Ps {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a running or queued query: its agent is stopped, its turn recorded as cancelled.
    #[command(after_help = "Example: ccd cancel 9b51  (any unique prefix of an id from `ccd ps`)")]
    Cancel {
        /// The query's id (from `ccd ps`, or the `query ID` line `ccd query` prints), or any
        /// unique prefix of it.
        query_id: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Agent definitions (Claude Code subagents), kept sealed by the daemon.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// The agent filesystem (read-only FUSE view of the sealed definitions).
    #[command(subcommand)]
    Vfs(VfsCmd),
    /// Run the agent CLI here with ccd's agent filesystem: checks the daemon and the mount, sets
    /// ORCHESTRATOR_* variables, then replaces itself with the agent.
    #[command(after_help = "Example: ccd launch -- --model sonnet")]
    Launch {
        /// Arguments for the agent CLI.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The rate limiter: limits in force and every key's state.
    #[command(subcommand)]
    Limiter(LimiterCmd),
    /// Circuit breakers in front of the agent.
    #[command(subcommand)]
    Breaker(BreakerCmd),
    /// The daemon's configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Print a shell completion script that completes commands, flags, project names, session
    /// ids and agent names (it calls back into ccd), e.g. `source <(ccd completions bash)` in
    /// ~/.bashrc.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Events: the recent log (read directly), or live with --follow.
    Events {
        /// Keep printing events as they happen (until Ctrl-C), across daemon restarts.
        #[arg(long, short)]
        follow: bool,
        /// Only this event type (repeatable), e.g. --type turn.completed.
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Only events newer than this (e.g. 1h, 7d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// How many recent events to print (without --follow).
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Queries, errors by class, tokens by kind and cost, by day, project and model (read
    /// directly from the database).
    Stats {
        /// Only this project's queries.
        #[arg(long, short, add = crate::complete::projects())]
        project: Option<String>,
        /// How far back (e.g. 24h, 7d, 30d).
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        since: Duration,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// A live terminal dashboard: actor health, queries in flight, live events, cost and tokens
    /// today, breakers and limits.
    Tui,
}

#[derive(Debug, Subcommand)]
enum AgentCmd {
    /// Import a directory of subagent .md files, one .md file, or a JSON bundle; all or
    /// nothing. Starts the daemon if needed (it holds the key).
    Import {
        /// The directory, .md file or JSON bundle to import.
        path: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List agent definitions (needs the running daemon, which holds the key; never starts it).
    List(ListArgs),
    /// Print one definition as its subagent file (needs the running daemon; never starts it).
    Show {
        /// The agent's name (see `ccd agent list`).
        #[arg(add = crate::complete::agents())]
        name: String,
        /// Print the definition as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Remove a definition.
    Rm {
        /// The agent's name.
        #[arg(add = crate::complete::agents())]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum VfsCmd {
    /// Whether the filesystem is mounted, where, and if not, why.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON inside a `*.sealed` file of this boot's filesystem (or a copy of one
    /// that keeps its file name).
    Unseal {
        /// The sealed file, e.g. $CCD_HOME/vfs/agents.sealed.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum LimiterCmd {
    /// Show the limits per scope and each key's tokens, window, in-flight, waiting, throttled.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Change one scope's limits while the daemon runs (until it restarts: [limiter] in
    /// config.toml holds the lasting ones). Limits not given stay as they are; 0 turns one off.
    #[command(
        after_help = "Examples:\n  ccd limiter set global --rate 0.5 --burst 2\n  ccd limiter set model --concurrency 2\n  ccd limiter set project --window-max 100 --window 1h"
    )]
    Set {
        /// global (every query), model (each model apart) or project (each project apart).
        #[arg(value_parser = ["global", "model", "project"])]
        scope: String,
        /// Token bucket: sustained queries per second (e.g. 0.5; 0: off).
        #[arg(long)]
        rate: Option<f64>,
        /// Token bucket: how many may start at once after a quiet spell (at least 1).
        #[arg(long)]
        burst: Option<u32>,
        /// Sliding window: at most this many queries in any --window (0: off).
        #[arg(long, requires = "window")]
        window_max: Option<u32>,
        /// The sliding window's length, e.g. 1m, 1h.
        #[arg(long, value_parser = parse_duration)]
        window: Option<Duration>,
        /// At most this many queries at once (0: off).
        #[arg(long)]
        concurrency: Option<u32>,
        /// Print the limiter's status as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BreakerCmd {
    /// Show every breaker's state.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Close a breaker (all when no KEY), forgetting its history. Never starts the daemon:
    /// breakers live in its memory, so with no daemon none is open (exit 0).
    Reset {
        /// The breaker's key as `ccd breaker status` shows it; all breakers when omitted.
        key: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Print every effective value and where it came from (default, config.toml, environment,
    /// flag); reads the files and environment, the daemon need not run.
    Show {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_set, help = SET_HELP)]
        set: Vec<(String, String)>,
    },
}

#[derive(Debug, Subcommand)]
enum DaemonCmd {
    /// Start the daemon in the background; returns once it answers (prints its pid).
    Start {
        /// How long to wait for the daemon to be ready: a duration (10s, 500ms, 2m) or seconds.
        #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Duration,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_set, help = SET_HELP)]
        set: Vec<(String, String)>,
        /// Print nothing when it starts or already runs (errors still go to stderr): for a
        /// login shell's profile.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Run the daemon in the foreground (SIGTERM or Ctrl-C stops it gracefully).
    Run {
        /// Report READY/ALREADY/ERROR on stdout for a parent `daemon start` (internal).
        #[arg(long, hide = true)]
        notify_ready: bool,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_set, help = SET_HELP)]
        set: Vec<(String, String)>,
    },
    /// Stop the daemon: finish in-flight requests, flush the writer, remove socket and pid file.
    Stop {
        /// How long to wait for it to exit: a duration (30s, 500ms, 2m) or seconds.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Duration,
    },
    /// Show pid, uptime, per-actor health, the agent CLI, the HTTP API and the agent
    /// filesystem; exit 3 when the daemon is not running.
    Status {
        /// Print `system.health` as JSON (`{"running": false, ...}` when not running).
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon if it runs, then start it (flags given to the old one's start are not
    /// kept: pass them again, or put them in config.toml).
    Restart {
        /// How long to wait for the old daemon to exit: a duration (30s, 500ms, 2m) or seconds.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_timeout)]
        timeout: Duration,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_set, help = SET_HELP)]
        set: Vec<(String, String)>,
    },
    /// Start the daemon at login: write and enable a systemd user service
    /// (~/.config/systemd/user/ccd.service) that runs `ccd daemon run` and restarts it if it
    /// fails. Without a systemd user manager, writes nothing and prints the line to add to
    /// ~/.profile instead (exit 1).
    Install {
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disable and remove the systemd user service (stopping the daemon it runs).
    Uninstall {
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the daemon's log ($CCD_HOME/logs/ccd.log).
    Logs {
        /// Keep printing new lines as they are written.
        #[arg(short, long)]
        follow: bool,
        /// How many lines to print first.
        #[arg(short = 'n', long = "lines", default_value_t = 50)]
        lines: usize,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectCmd {
    /// Register a project: NAME for the directory PATH (which must exist).
    Add {
        /// The project's name: 1 to 64 ASCII letters, digits, `.`, `_` and `-`, not starting
        /// with `.` or `-`.
        name: String,
        /// Its working directory (must exist; a relative path is resolved here).
        path: PathBuf,
        /// An environment variable for agent runs in this project (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Print the project as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a project: its directory, its environment, its name.
    #[command(
        after_help = "Examples:\n  ccd project set web --path ~/src/web2\n  ccd project set web --env ANTHROPIC_MODEL=sonnet --unset-env DEBUG\n  ccd project set web --rename site"
    )]
    Set {
        /// The project's name.
        #[arg(add = crate::complete::projects())]
        name: String,
        /// Its new working directory (must exist; a relative path is resolved here).
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// Set an environment variable for its agent runs (repeatable); others stay.
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Remove an environment variable (repeatable).
        #[arg(long = "unset-env", value_name = "KEY")]
        unset_env: Vec<String>,
        /// Its new name.
        #[arg(long, value_name = "NEW")]
        rename: Option<String>,
        /// Print the project as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List projects (reads the database directly).
    List(ListArgs),
    /// Remove a project.
    Rm {
        /// The project's name.
        #[arg(add = crate::complete::projects())]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum SettingCmd {
    /// Set KEY to VALUE.
    Set {
        /// The setting's name.
        key: String,
        /// Its value (any text).
        value: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one setting's value (reads the database directly).
    Get {
        /// The setting's name.
        key: String,
        /// Print the whole record as JSON (key, value, updated_at).
        #[arg(long)]
        json: bool,
    },
    /// List settings (reads the database directly).
    List(ListArgs),
    /// Remove a setting.
    Rm {
        /// The setting's name.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum BackupCmd {
    /// Back up the database while the daemon keeps serving (default: $CCD_HOME/backups/).
    Create {
        /// Where to write the backup (a new file); default: $CCD_HOME/backups/ccd-<time>.db.
        path: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List backups (reads the database directly).
    List(ListArgs),
    /// Delete a backup file and its record.
    Rm {
        /// The backup's id (see `ccd backup list`).
        id: i64,
    },
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// What `--help` says of `--set`, wherever it is taken.
const SET_HELP: &str = "Override a config value (repeatable), e.g. --set executor.pool_size=8. \
    A VALUE of @FILE is read from FILE, @- from stdin (one trailing newline dropped; @@ for a \
    value that starts with @): for secrets such as http.token, which on the command line any \
    local user could read with ps.";

/// A `--set SECTION.KEY=VALUE` config override. Whether the key exists is the configuration's
/// to say (as for config.toml and the environment); its shape is a usage error here. A value
/// `@FILE` is read from FILE (`@-`: stdin), so that a secret need not be on the command line,
/// which every local user can read; `@@...` is a value that starts with `@`.
fn parse_set(s: &str) -> Result<(String, String), String> {
    let (key, value) = parse_env(s)?;
    let word = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match key.split_once('.') {
        Some((section, name)) if word(section) && word(name) => {
            let value = set_value(&key, value)?;
            Ok((key, value))
        }
        _ => Err(format!(
            "`{key}` is not SECTION.KEY: give e.g. executor.pool_size=8 (`ccd config show` lists the keys)"
        )),
    }
}

/// A `--set` value as given, or read from the file (or stdin) that `@FILE` (`@-`) names.
fn set_value(key: &str, value: String) -> Result<String, String> {
    let Some(source) = value.strip_prefix('@') else {
        return Ok(value);
    };
    if source.starts_with('@') {
        return Ok(source.to_string());
    }
    let text = if source == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| format!("{key}=@-: reading stdin: {e}"))?;
        text
    } else if source.is_empty() {
        return Err(format!(
            "{key}=@: give @FILE or @- (stdin), or @@ for a value that starts with @"
        ));
    } else {
        std::fs::read_to_string(source).map_err(|e| format!("{key}=@{source}: {e}"))?
    };
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// A `--timeout`: a duration (`30s`, `500ms`, `2m`) or a bare number of seconds; never zero.
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(24 * 3600);
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{e}: give a duration (30s, 500ms, 2m) or a number of seconds"))?,
    };
    if d.is_zero() {
        return Err("a timeout must be longer than zero".into());
    }
    if d > MAX {
        return Err("a timeout is at most 24h (86400 seconds)".into());
    }
    Ok(d)
}

/// An age or a span of time, as `--since`/`--older-than` take it.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{e}: give a duration such as 90s, 10m, 12h, 7d or 2w (units ms, s, m, h, d, w)")
    })
}

pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    let autostart = !cli.no_autostart;
    match cli.command {
        Command::Daemon(cmd) => run_daemon(&home, cmd),
        Command::Api { method, params } => {
            let params = match params {
                None => None,
                Some(text) => {
                    let value = serde_json::from_str::<serde_json::Value>(&text)
                        .map_err(|e| UsageError(format!("JSON_PARAMS is not valid JSON: {e}")))?;
                    // The daemon takes params by name only; `[]` is its "no params" too.
                    let empty_array = value.as_array().is_some_and(Vec::is_empty);
                    if !(value.is_object() || empty_array) {
                        return Err(UsageError(format!(
                            "JSON_PARAMS must be a JSON object of params by name (positional \
                             params are not taken), not `{text}`"
                        ))
                        .into());
                    }
                    Some(value)
                }
            };
            let mut client = crate::daemon::connect_or_start(&home, autostart)?;
            match client.call_raw(&method, params) {
                Ok(result) => {
                    print_json(&result)?;
                    Ok(exit::OK)
                }
                Err(CallError::Rpc(e)) => {
                    // The whole error object, for scripts; the exit code says what kind it was.
                    eprintln!(
                        "{}",
                        serde_json::to_string_pretty(&e).unwrap_or_else(|_| e.message.clone())
                    );
                    Ok(crate::exit::rpc_code(&e))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Project(cmd) => run_project(&home, autostart, cmd),
        Command::Setting(cmd) => run_setting(&home, autostart, cmd),
        Command::Backup(cmd) => run_backup(&home, autostart, cmd),
        Command::Query(args) => crate::agent_cmd::query(&home, autostart, args),
        Command::Session(cmd) => crate::agent_cmd::session(&home, autostart, cmd),
        Command::Batch(args) => crate::agent_cmd::batch(&home, autostart, args),
        Command::Doctor { json } => crate::doctor::run(&home, json),
        Command::Ps { json } => crate::agent_cmd::ps(&home, json),
        Command::Cancel { query_id, json } => crate::agent_cmd::cancel(&home, &query_id, json),
        Command::Vfs(VfsCmd::Status { json }) => {
            let st = Client::connect(&home)?.call::<m::VfsStatus>(&NoParams {})?;
            if json {
                print_json(&st)?;
            } else if st.mounted {
                outln!("mounted at {}", st.mountpoint);
                if !st.damaged.is_empty() {
                    outln!(
                        "damaged, left out: {} (restore a backup, or `ccd agent rm` and import \
                         them again)",
                        st.damaged.join(", ")
                    );
                }
            } else {
                outln!(
                    "not mounted ({}): {}",
                    st.mountpoint,
                    st.reason.unwrap_or_else(|| "unknown reason".into())
                );
            }
            Ok(if st.mounted || !st.enabled {
                exit::OK
            } else {
                exit::ERROR
            })
        }
        Command::Vfs(VfsCmd::Unseal { file }) => {
            let file = std::path::absolute(&file)
                .with_context(|| format!("resolving {}", file.display()))?;
            let v = Client::connect(&home)?.call::<m::VfsUnseal>(&types::VfsUnseal {
                file: file.to_string_lossy().into_owned(),
            })?;
            print_json(&v)?;
            Ok(exit::OK)
        }
        Command::Launch { args } => crate::launch::run(&home, autostart, args),
        Command::Completions { shell } => {
            crate::complete::print_script(shell)?;
            Ok(exit::OK)
        }
        Command::Agent(cmd) => {
            // Reading definitions needs the daemon (only it holds the key), but like every
            // listing it never starts it.
            let mut client = match cmd {
                AgentCmd::List(_) | AgentCmd::Show { .. } => Client::connect(&home)?,
                _ => crate::daemon::connect_or_start(&home, autostart)?,
            };
            match cmd {
                AgentCmd::Import { path, json } => {
                    let path = std::path::absolute(&path)
                        .with_context(|| format!("resolving {}", path.display()))?;
                    let r = client.call::<m::AgentImport>(&types::AgentImport {
                        path: path.to_string_lossy().into_owned(),
                    })?;
                    if json {
                        print_json(&r)?;
                        return Ok(exit::OK);
                    }
                    outln!(
                        "imported {}: {}",
                        count(r.imported.len(), "agent"),
                        r.imported.join(", ")
                    );
                    if !r.replaced.is_empty() {
                        outln!("replaced: {}", r.replaced.join(", "));
                    }
                }
                AgentCmd::List(args) => {
                    let list = client.call::<m::AgentList>(&NoParams {})?;
                    if args.json {
                        print_json(&list.agents)?;
                    } else {
                        let mut t = Table::new(["NAME", "MODEL", "TOOLS", "DESCRIPTION"]);
                        for a in list.agents {
                            t.row([
                                a.name,
                                a.model.unwrap_or_else(|| "-".into()),
                                a.tools.join(","),
                                a.description,
                            ]);
                        }
                        t.print_or_empty(&mut std::io::stdout().lock(), "no agents")?;
                    }
                    if !list.damaged.is_empty() {
                        eprintln!(
                            "ccd: damaged, left out: {} (restore a backup, or `ccd agent rm` \
                             and import them again)",
                            list.damaged.join(", ")
                        );
                    }
                }
                AgentCmd::Show { name, json } => {
                    let d = client.call::<m::AgentGet>(&types::AgentName { name })?;
                    if json {
                        print_json(&d.agent)?;
                    } else {
                        write!(std::io::stdout().lock(), "{}", d.markdown)?;
                    }
                }
                AgentCmd::Rm { name } => {
                    let d = client.call::<m::AgentDelete>(&types::AgentName { name })?;
                    outln!("removed agent {}", d.name);
                }
            }
            Ok(exit::OK)
        }
        Command::Limiter(LimiterCmd::Set {
            scope,
            rate,
            burst,
            window_max,
            window,
            concurrency,
            json,
        }) => {
            if rate.is_none()
                && burst.is_none()
                && window_max.is_none()
                && window.is_none()
                && concurrency.is_none()
            {
                return Err(UsageError(
                    "nothing to change: give --rate, --burst, --window-max with --window, or \
                     --concurrency"
                        .into(),
                )
                .into());
            }
            let mut client = crate::daemon::connect_or_start(&home, autostart)?;
            let st = client.call::<m::LimiterStatus>(&NoParams {})?;
            let (scope_enum, mut spec) = match scope.as_str() {
                "global" => (types::Scope::Global, st.limits.global),
                "model" => (types::Scope::Model, st.limits.model),
                _ => (types::Scope::Project, st.limits.project),
            };
            if let Some(r) = rate {
                spec.rate_per_s = r;
            }
            if let Some(b) = burst {
                spec.burst = b;
            }
            if let Some(n) = window_max {
                spec.window_max = n;
            }
            if let Some(w) = window {
                spec.window_ms = u64::try_from(w.as_millis()).unwrap_or(u64::MAX);
            }
            if let Some(c) = concurrency {
                spec.concurrency = c;
            }
            let st = client.call::<m::LimiterConfigure>(&types::LimiterConfigure {
                scope: scope_enum,
                limits: spec,
            })?;
            if json {
                print_json(&st)?;
            } else {
                outln!(
                    "{scope}: rate {}/s, burst {}, window {} per {} ms, concurrency {} (until the \
                     daemon restarts)",
                    spec.rate_per_s,
                    spec.burst,
                    spec.window_max,
                    spec.window_ms,
                    spec.concurrency
                );
            }
            Ok(exit::OK)
        }
        Command::Limiter(LimiterCmd::Status { json }) => {
            let st = Client::connect(&home)?.call::<m::LimiterStatus>(&NoParams {})?;
            if json {
                print_json(&st)?;
                return Ok(exit::OK);
            }
            let mut out = std::io::stdout().lock();
            let spec = |s: &types::LimitSpec| {
                if s.is_off() {
                    return "off".to_string();
                }
                let mut parts = Vec::new();
                if s.rate_per_s > 0.0 {
                    parts.push(format!("{}/s burst {}", s.rate_per_s, s.burst));
                }
                if s.window_max > 0 {
                    parts.push(format!("{} per {} ms", s.window_max, s.window_ms));
                }
                if s.concurrency > 0 {
                    parts.push(format!("{} at once", s.concurrency));
                }
                parts.join(", ")
            };
            outln!(
                "limits: global {}; per model {}; per project {}",
                spec(&st.limits.global),
                spec(&st.limits.model),
                spec(&st.limits.project)
            );
            outln!();
            let mut t = Table::new([
                "KEY",
                "TOKENS",
                "WINDOW",
                "IN FLIGHT",
                "WAITING",
                "THROTTLED",
                "ADMITTED",
            ]);
            for k in st.keys {
                t.row([
                    k.key,
                    k.available_tokens
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    if k.spec.window_max > 0 {
                        format!("{}/{}", k.window_count, k.spec.window_max)
                    } else {
                        "-".into()
                    },
                    k.in_flight.to_string(),
                    k.waiting.to_string(),
                    k.throttled.to_string(),
                    k.admitted.to_string(),
                ]);
            }
            t.print_or_empty(&mut out, "no queries limited yet")?;
            Ok(exit::OK)
        }
        Command::Breaker(BreakerCmd::Status { json }) => {
            let st = Client::connect(&home)?.call::<m::BreakerStatus>(&NoParams {})?;
            if json {
                // A bare array, as every other listing prints.
                print_json(&st.breakers)?;
                return Ok(exit::OK);
            }
            let mut t = Table::new([
                "KEY",
                "STATE",
                "RETRY IN",
                "FAILURE RATE",
                "IN A ROW",
                "REJECTED",
                "OPENED",
            ]);
            for b in st.breakers {
                t.row([
                    b.key,
                    b.state.as_str().to_string(),
                    if b.retry_after_ms > 0 {
                        format!("{:.1}s", b.retry_after_ms as f64 / 1000.0)
                    } else {
                        "-".into()
                    },
                    format!("{:.0}% of {}", b.failure_rate * 100.0, b.calls_in_window),
                    b.consecutive_failures.to_string(),
                    b.rejected.to_string(),
                    b.times_opened.to_string(),
                ]);
            }
            t.print_or_empty(&mut std::io::stdout().lock(), "no breakers yet")?;
            Ok(exit::OK)
        }
        Command::Breaker(BreakerCmd::Reset { key, json }) => {
            // Breakers live in the daemon's memory: with no daemon there is none to reset (and
            // starting one to reset nothing would be a side effect nobody asked for).
            let mut client = match Client::connect(&home) {
                Err(CallError::NotRunning(_))
                    if crate::home::PidLock::probe(&home.pid_file()).is_none() =>
                {
                    if json {
                        print_json(&types::BreakerResetResult { reset: 0 })?;
                    } else {
                        outln!("ccd daemon is not running, so no breaker is open");
                    }
                    return Ok(exit::OK);
                }
                other => other?,
            };
            let r = client.call::<m::BreakerReset>(&types::BreakerReset { key: key.clone() })?;
            if let Some(key) = key.filter(|_| r.reset == 0) {
                anyhow::bail!("no breaker `{key}` (`ccd breaker status` lists them)");
            }
            if json {
                print_json(&r)?;
            } else {
                outln!("reset {}", count(r.reset, "breaker"));
            }
            Ok(exit::OK)
        }
        Command::Events {
            follow,
            types,
            since,
            lines,
            json,
        } => {
            if let Some(bad) = types
                .iter()
                .find(|t| !types::EVENT_TYPES.contains(&t.as_str()))
            {
                return Err(UsageError(format!(
                    "unknown event type `{bad}`; known: {}",
                    types::EVENT_TYPES.join(", ")
                ))
                .into());
            }
            let since_ms = since
                .map(|d| store::now_ms() - d.as_millis() as i64)
                .unwrap_or(0);
            let mut out = std::io::stdout().lock();
            if !follow {
                let events = read(&home, |c| store::recent_events(c, since_ms, &types, lines))?;
                for e in &events {
                    print_event(&mut out, e, json)?;
                }
                if events.is_empty() && !json {
                    writeln!(out, "no events")?;
                }
                return Ok(exit::OK);
            }
            let filter = types::EventFilter {
                types: (!types.is_empty()).then_some(types),
                ..Default::default()
            };
            follow_events(&home, filter, json, &mut out)
        }
        Command::Stats {
            project,
            since,
            json,
        } => {
            let since_ms = store::now_ms() - since.as_millis().min(i64::MAX as u128) as i64;
            let stats = read(&home, move |c| {
                store::stats(c, since_ms, project.as_deref()).map(Some)
            })?
            .unwrap_or_else(|| types::Stats {
                since: store::rfc3339(since_ms),
                rows: vec![],
                totals: Default::default(),
            });
            if json {
                print_json(&stats)?;
                return Ok(exit::OK);
            }
            let mut out = std::io::stdout().lock();
            let mut t = Table::new([
                "DAY",
                "PROJECT",
                "MODEL",
                "QUERIES",
                "OK",
                "ERRORS r/n/u",
                "T/C/R",
                "TOKENS in/out/cache",
                "COST",
            ]);
            for r in stats.rows.iter().chain(std::iter::once(&stats.totals)) {
                t.row([
                    if r.day.is_empty() {
                        "total".into()
                    } else {
                        r.day.clone()
                    },
                    match (&r.project, r.day.is_empty()) {
                        (Some(p), _) => p.clone(),
                        (None, true) => "all".into(),
                        (None, false) => "-".into(),
                    },
                    match (&r.model, r.day.is_empty()) {
                        (Some(m), _) => m.clone(),
                        (None, true) => "all".into(),
                        (None, false) => "-".into(),
                    },
                    r.queries.to_string(),
                    r.ok.to_string(),
                    format!(
                        "{}/{}/{}",
                        r.errors_retryable, r.errors_non_retryable, r.errors_unavailable
                    ),
                    format!("{}/{}/{}", r.timeouts, r.cancelled, r.refused),
                    format!(
                        "{}/{}/{}",
                        r.usage.input_tokens,
                        r.usage.output_tokens,
                        r.usage.cache_creation_input_tokens + r.usage.cache_read_input_tokens
                    ),
                    format!("${:.4}", r.cost_usd),
                ]);
            }
            outln!("since {}", stats.since);
            t.print(&mut out)?;
            outln!(
                "errors: r retryable, n non_retryable, u unavailable; T timeouts, C cancelled, R refused"
            );
            Ok(exit::OK)
        }
        Command::Tui => crate::tui::run(&home),
        Command::Config(ConfigCmd::Show { json, set }) => {
            let rows = ccd_actors::Config::explain(&home.root, &set)?;
            // A running daemon read its configuration when it started: say where it differs
            // from what a start now would use (never starting one to find out).
            let running: Option<(u32, Vec<types::ConfigValue>)> = Client::connect(&home)
                .ok()
                .map(|c| c.with_timeout(Duration::from_secs(10)))
                .and_then(|mut c| {
                    let pid = c.call::<m::SystemHealth>(&NoParams {}).ok()?.pid;
                    Some((pid, c.call::<m::SystemConfig>(&NoParams {}).ok()?.values))
                });
            // A value the daemon adjusted at start (to fit the machine) is not one a restart
            // would change: not noted.
            let differs = |key: &str, value: &serde_json::Value| {
                running.as_ref().and_then(|(_, values)| {
                    values.iter().find(|d| {
                        d.key == key && d.value != *value && !d.source.contains("at start")
                    })
                })
            };
            if json {
                let map: serde_json::Map<String, serde_json::Value> = rows
                    .iter()
                    .map(|(k, v, src)| {
                        let mut entry = serde_json::json!({ "value": v, "source": src });
                        if let Some(d) = differs(k, v) {
                            entry["daemon"] =
                                serde_json::json!({ "value": d.value, "source": d.source });
                        }
                        (k.clone(), entry)
                    })
                    .collect();
                print_json(&map)?;
            } else {
                let mut t = Table::new(["KEY", "VALUE", "SOURCE"]);
                let mut changed = Vec::new();
                for (k, v, src) in &rows {
                    t.row([k.clone(), v.to_string(), src.clone()]);
                    if let Some(d) = differs(k, v) {
                        changed.push(format!("{k} = {} ({})", d.value, d.source));
                    }
                }
                t.print(&mut std::io::stdout().lock())?;
                if let (Some((pid, _)), false) = (&running, changed.is_empty()) {
                    eprintln!(
                        "note: the running daemon (pid {pid}) started with other values: {}; \
                         `ccd daemon restart` applies the ones above",
                        changed.join("; ")
                    );
                }
            }
            Ok(exit::OK)
        }
    }
}

/// `ccd events --follow`: print events live until interrupted. When the daemon goes away (a
/// restart, a stop) it waits for it to come back, trying again with a backoff, and resumes
/// after the last event it saw (`after_seq`): each event is printed once, in order.
fn follow_events(
    home: &Home,
    filter: types::EventFilter,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    const MAX_RETRY: Duration = Duration::from_secs(2);
    // The last event seen (printed, or passed over by the daemon's filter): where to resume.
    let seen = std::cell::Cell::new(None::<u64>);
    let mut retry = FIRST_RETRY;
    let mut lost: Option<String> = None;
    loop {
        let mut client = match Client::connect(home) {
            Ok(c) => c,
            // Not running when the command starts: say so (exit 3), as every command does.
            Err(e) if lost.is_none() => return Err(e.into()),
            Err(CallError::NotRunning(_) | CallError::NoAnswer(_)) => {
                std::thread::sleep(retry);
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let filter = types::EventFilter {
            after_seq: seen.get(),
            ..filter.clone()
        };
        let mut failed = None;
        let resumed = lost.take().is_some();
        let outcome = client.follow_with(
            m::EventSubscribe::NAME,
            Some(serde_json::to_value(&filter)?),
            |result| {
                let Ok(sub) = serde_json::from_value::<types::Subscribed>(result.clone()) else {
                    return;
                };
                if resumed {
                    eprintln!(
                        "ccd: reconnected to the daemon; resuming after event {}",
                        filter.after_seq.unwrap_or(0)
                    );
                }
                match filter.after_seq {
                    // The log was started afresh (a new database): its numbers start again.
                    Some(after) if after > sub.last_seq => {
                        eprintln!(
                            "ccd: the daemon's event log restarted its numbering (now at {}); \
                             following from there",
                            sub.last_seq
                        );
                        seen.set(Some(sub.last_seq));
                    }
                    // Resuming: replayed events may still be on their way; `seen` follows them.
                    Some(_) => {}
                    // The first subscription: live events (some may have come before this
                    // answer) are all after `last_seq`, where a later resumption starts.
                    None => seen.set(Some(seen.get().unwrap_or(sub.last_seq))),
                }
            },
            |note| {
                if note.method != "event" {
                    return true;
                }
                let Ok(e) = serde_json::from_value::<types::Event>(note.params.clone()) else {
                    return true; // an event type newer than this CLI: skip it
                };
                let lagged = matches!(e.kind, types::EventKind::Lagged { .. });
                if !lagged {
                    if seen.get().is_some_and(|s| e.seq <= s) {
                        return true; // printed already
                    }
                    seen.set(Some(e.seq));
                }
                match print_event(out, &e, json) {
                    Ok(()) => true,
                    Err(err) => {
                        failed = Some(err);
                        false
                    }
                }
            },
        );
        if let Some(e) = failed {
            return Err(e);
        }
        match outcome {
            Ok(()) => return Ok(exit::OK),
            Err(CallError::NotRunning(why) | CallError::NoAnswer(why)) => {
                eprintln!("ccd: lost the daemon ({why}); waiting for it to come back…");
                lost = Some(why);
                retry = FIRST_RETRY;
            }
            // The daemon is there but cannot take the subscription now (its gateway is
            // restarting, say): try again.
            Err(CallError::Rpc(e)) if seen.get().is_some() => {
                eprintln!(
                    "ccd: {}: {}; trying again…",
                    m::EventSubscribe::NAME,
                    e.message
                );
                lost = Some(e.message);
                std::thread::sleep(MAX_RETRY);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn run_daemon(home: &Home, cmd: DaemonCmd) -> anyhow::Result<u8> {
    match cmd {
        DaemonCmd::Start {
            timeout,
            set,
            quiet,
        } => {
            daemon::start(home, timeout, quiet, &set, daemon::How::Explicit)?;
            Ok(exit::OK)
        }
        DaemonCmd::Run {
            notify_ready,
            mut set,
        } => {
            // From `daemon start`, which keeps them off the command line.
            if let Ok(json) = std::env::var(daemon::OVERRIDES_ENV) {
                let from_start: Vec<(String, String)> = serde_json::from_str(&json)
                    .with_context(|| format!("reading {}", daemon::OVERRIDES_ENV))?;
                set.splice(0..0, from_start);
            }
            daemon::run(home, notify_ready, &set)?;
            Ok(exit::OK)
        }
        DaemonCmd::Stop { timeout } => {
            if daemon::stop(home, timeout)? {
                outln!("ccd daemon stopped");
            } else {
                outln!("ccd daemon is not running");
            }
            Ok(exit::OK)
        }
        DaemonCmd::Restart { timeout, set } => {
            if crate::service::manages(home) {
                if !set.is_empty() {
                    return Err(UsageError(
                        "the daemon runs as the systemd service ccd.service, which --set does \
                         not reach: put the values in config.toml, then `ccd daemon restart`"
                            .into(),
                    )
                    .into());
                }
                crate::service::restart(home, timeout)?;
                outln!("restarted ccd.service");
                return Ok(exit::OK);
            }
            daemon::stop(home, timeout)?;
            daemon::start(
                home,
                Duration::from_secs(10),
                false,
                &set,
                daemon::How::Explicit,
            )?;
            Ok(exit::OK)
        }
        DaemonCmd::Status { json } => {
            let health = match Client::connect(home)
                .map(|c| c.with_timeout(Duration::from_secs(10)))
                .and_then(|mut c| c.call::<m::SystemHealth>(&NoParams {}))
            {
                Ok(h) => h,
                Err(CallError::NotRunning(_)) => {
                    let why = crate::client::lock_holder(home)
                        .unwrap_or_else(|| "ccd daemon is not running".to_string());
                    let service = crate::service::status();
                    if json {
                        outln!(
                            "{}",
                            serde_json::json!({ "running": false, "reason": why, "service": service })
                        );
                    } else {
                        outln!("{why}");
                        outln!("service: {}", service.line());
                    }
                    return Ok(exit::NOT_RUNNING);
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                // `running` as when it is not running, then `system.health`.
                let mut v = serde_json::to_value(&health)?;
                if let Some(map) = v.as_object_mut() {
                    map.insert("running".into(), true.into());
                    map.insert(
                        "service".into(),
                        serde_json::to_value(crate::service::status())?,
                    );
                }
                print_json(&v)?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "ccd daemon is running")?;
                writeln!(out, "  pid:      {}", health.pid)?;
                writeln!(out, "  version:  {}", health.version)?;
                writeln!(out, "  uptime:   {}", format_ms(health.uptime_ms))?;
                writeln!(out, "  status:   {}", health.status)?;
                writeln!(out, "  home:     {}", home.root.display())?;
                let agent = &health.agent;
                let agent_line = match (agent.available, &agent.version, &agent.reason) {
                    (Some(true), Some(v), _) => match &agent.path {
                        Some(path) if *path != agent.command => {
                            format!("{} ({v}) at {path}", agent.command)
                        }
                        _ => format!("{} ({v})", agent.command),
                    },
                    (Some(false), _, Some(why)) => format!("unavailable: {why}"),
                    (Some(false), _, None) => format!("`{}` unavailable", agent.command),
                    _ => format!("{} (being checked)", agent.command),
                };
                writeln!(out, "  agent:    {agent_line}")?;
                let x = &health.executor;
                writeln!(
                    out,
                    "  executor: {}, {} busy, {} queued",
                    count(x.size, "slot"),
                    x.busy,
                    x.queued
                )?;
                let api = &health.http_api;
                let http = match (&health.http, &api.reason) {
                    (Some(url), _) => url.clone(),
                    // An older daemon reports no `http_api` (an empty bind).
                    (None, _) if !api.enabled && !api.bind.is_empty() => {
                        "off (disabled by http.enabled)".to_string()
                    }
                    (None, Some(why)) => format!("off: {why}"),
                    (None, None) => "off".to_string(),
                };
                writeln!(out, "  http:     {http}")?;
                let vfs = &health.vfs;
                let vfs_line = match (vfs.enabled, vfs.mounted, &vfs.reason) {
                    (false, _, _) => "off (disabled by vfs.enabled)".to_string(),
                    (true, true, _) => format!("mounted at {}", vfs.mountpoint),
                    (true, false, Some(why)) => format!("not mounted: {why}"),
                    (true, false, None) => format!("not mounted at {}", vfs.mountpoint),
                };
                writeln!(out, "  vfs:      {vfs_line}")?;
                writeln!(out, "  service:  {}", crate::service::status().line())?;
                writeln!(out)?;
                let mut t = Table::new(["ACTOR", "STATE", "RESTARTS", "UPTIME", "LAST PANIC"]);
                for a in &health.actors {
                    t.row([
                        a.name.clone(),
                        a.state.as_str().to_string(),
                        a.restarts.to_string(),
                        format_ms(a.uptime_ms),
                        a.reason
                            .clone()
                            .or_else(|| a.last_panic.clone())
                            .unwrap_or_else(|| "-".into()),
                    ]);
                }
                t.print(&mut out)?;
            }
            Ok(exit::OK)
        }
        DaemonCmd::Logs { follow, lines } => {
            daemon::logs(home, lines, follow)?;
            Ok(exit::OK)
        }
        DaemonCmd::Install { json } => crate::service::install(home, json),
        DaemonCmd::Uninstall { json } => crate::service::uninstall(json),
    }
}

fn run_project(home: &Home, autostart: bool, cmd: ProjectCmd) -> anyhow::Result<u8> {
    match cmd {
        ProjectCmd::Add {
            name,
            path,
            env,
            json,
        } => {
            let path = std::path::absolute(&path)
                .with_context(|| format!("resolving {}", path.display()))?;
            let params = types::ProjectCreate {
                name,
                path: path.to_string_lossy().into_owned(),
                env: (!env.is_empty()).then(|| env.into_iter().collect()),
            };
            let p = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::ProjectCreate>(&params)?;
            if json {
                print_json(&p)?;
            } else {
                outln!("added project {} ({})", p.name, p.path);
            }
        }
        ProjectCmd::Set {
            name,
            path,
            env,
            unset_env,
            rename,
            json,
        } => {
            if path.is_none() && env.is_empty() && unset_env.is_empty() && rename.is_none() {
                return Err(UsageError(
                    "nothing to change: give --path, --env, --unset-env or --rename".into(),
                )
                .into());
            }
            let path = match path {
                Some(p) => Some(
                    std::path::absolute(&p)
                        .with_context(|| format!("resolving {}", p.display()))?
                        .to_string_lossy()
                        .into_owned(),
                ),
                None => None,
            };
            let mut client = crate::daemon::connect_or_start(home, autostart)?;
            // The environment is replaced whole: start from the project's own.
            let env = if env.is_empty() && unset_env.is_empty() {
                None
            } else {
                let lookup = name.clone();
                let current = read(home, move |c| store::project(c, &lookup))?
                    .ok_or_else(|| anyhow::anyhow!("no project named `{name}`"))?;
                let mut merged = current.env;
                for key in &unset_env {
                    merged.remove(key);
                }
                merged.extend(env);
                Some(merged)
            };
            let params = types::ProjectUpdate {
                name,
                path,
                new_name: rename,
                env,
            };
            let p = client.call::<m::ProjectUpdate>(&params)?;
            if json {
                print_json(&p)?;
            } else {
                outln!("updated project {} ({})", p.name, p.path);
            }
        }
        ProjectCmd::List(args) => {
            let projects = read(home, store::projects)?;
            if args.json {
                print_json(&projects)?;
            } else {
                let mut t = Table::new(["NAME", "PATH", "CREATED"]);
                for p in projects {
                    t.row([p.name, p.path, p.created_at]);
                }
                t.print_or_empty(&mut std::io::stdout().lock(), "no projects")?;
            }
        }
        ProjectCmd::Rm { name } => {
            let p = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::ProjectDelete>(&types::ProjectName { name })?;
            outln!("removed project {}", p.name);
        }
    }
    Ok(exit::OK)
}

fn run_setting(home: &Home, autostart: bool, cmd: SettingCmd) -> anyhow::Result<u8> {
    match cmd {
        SettingCmd::Set { key, value, json } => {
            let s = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::SettingUpsert>(&types::SettingUpsert { key, value })?;
            if json {
                print_json(&s)?;
            } else {
                outln!("{} = {}", s.key, s.value);
            }
        }
        SettingCmd::Get { key, json } => {
            let lookup = key.clone();
            let found = read(home, move |c| store::setting(c, &lookup))?;
            let Some(s) = found else {
                anyhow::bail!("no setting `{key}`");
            };
            if json {
                print_json(&s)?;
            } else {
                outln!("{}", s.value);
            }
        }
        SettingCmd::List(args) => {
            let settings = read(home, store::settings)?;
            if args.json {
                print_json(&settings)?;
            } else {
                // The value last: a long one runs on without pushing the other columns.
                let mut t = Table::new(["KEY", "UPDATED", "VALUE"]);
                for s in settings {
                    t.row([s.key, s.updated_at, s.value]);
                }
                t.print_or_empty(&mut std::io::stdout().lock(), "no settings")?;
            }
        }
        SettingCmd::Rm { key } => {
            let s = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::SettingDelete>(&types::SettingKey { key })?;
            outln!("removed setting {}", s.key);
        }
    }
    Ok(exit::OK)
}

fn run_backup(home: &Home, autostart: bool, cmd: BackupCmd) -> anyhow::Result<u8> {
    match cmd {
        BackupCmd::Create { path, json } => {
            let path = path
                .map(|p| {
                    std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))
                })
                .transpose()?
                .map(|p| p.to_string_lossy().into_owned());
            let b = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::BackupCreate>(&types::BackupCreate { path })?;
            if json {
                print_json(&b)?;
                return Ok(exit::OK);
            }
            outln!(
                "backup {} written to {} ({} bytes)",
                b.id,
                b.path,
                b.size_bytes
            );
        }
        BackupCmd::List(args) => {
            let backups = read(home, store::backups)?;
            if args.json {
                print_json(&backups)?;
            } else {
                let mut t = Table::new(["ID", "PATH", "SIZE", "CREATED"]);
                for b in backups {
                    t.row([
                        b.id.to_string(),
                        b.path,
                        b.size_bytes.to_string(),
                        b.created_at,
                    ]);
                }
                t.print_or_empty(&mut std::io::stdout().lock(), "no backups")?;
            }
        }
        BackupCmd::Rm { id } => {
            let b = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::BackupDelete>(&types::BackupId { id })?;
            outln!("removed backup {} ({})", b.id, b.path);
        }
    }
    Ok(exit::OK)
}

/// One event: a JSON line, or `time  #seq  type  key=value ...`.
fn print_event(out: &mut impl Write, e: &types::Event, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    } else {
        let mut fields = String::new();
        if let serde_json::Value::Object(map) = serde_json::to_value(&e.kind)? {
            for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "type") {
                if v.is_null() {
                    continue;
                }
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                fields.push_str(&format!(" {k}={v}"));
            }
        }
        writeln!(
            out,
            "{}  #{:<6} {:<18}{}",
            e.ts,
            e.seq,
            e.kind.type_name(),
            fields
        )?;
    }
    out.flush()?;
    Ok(())
}

fn format_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn set_values_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret=x\n").unwrap();
        let arg = format!("http.token=@{}", file.display());
        assert_eq!(
            super::parse_set(&arg).unwrap(),
            ("http.token".to_string(), "s3cret=x".to_string())
        );
        // Only one trailing newline is dropped; `@@` is a literal `@`.
        std::fs::write(&file, "two\n\n").unwrap();
        assert_eq!(super::parse_set(&arg).unwrap().1, "two\n");
        assert_eq!(super::parse_set("a.b=@@x").unwrap().1, "@x");
        assert_eq!(super::parse_set("a.b=x@y").unwrap().1, "x@y");
        let err = super::parse_set("a.b=@/no/such/file").unwrap_err();
        assert!(err.contains("a.b=@/no/such/file"), "{err}");
        assert!(super::parse_set("a.b=@").is_err());
    }

    use clap::CommandFactory;

    use super::Cli;

    /// Every argument of every command says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !arg.is_hide_set() && !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path}: {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {}: (no about)", sub.get_name()));
                }
                walk(sub, &path, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "no help for:\n{}", missing.join("\n"));
    }
}
