//! Command-line interface: the top of clap's definitions (`Cli`, `Command`) and the dispatch
//! to one module per command group, which holds that group's arguments and what it does.
//!
//! Writes go through the daemon (auto-started unless `--no-autostart`); listings read the
//! database directly and never start the daemon.

use clap::{Parser, Subcommand};

use crate::exit;
use crate::home::Home;

/// `println!` that returns broken-pipe and other write errors instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {
        writeln!(std::io::stdout().lock(), $($t)*)?
    };
}

mod agent;
mod api;
mod args;
mod backup;
mod batch;
mod breaker;
mod config;
mod daemon;
mod events;
mod limiter;
mod project;
mod query;
mod session;
mod setting;
mod shell;
mod stats;
mod vfs;

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
    Daemon(daemon::DaemonCmd),
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
    Project(project::ProjectCmd),
    /// Key/value settings kept by the daemon.
    #[command(subcommand)]
    Setting(setting::SettingCmd),
    /// Online backups of the database.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Run a prompt with Claude Code: the answer streams to stdout, a summary to stderr.
    #[command(
        after_help = "Examples:\n  ccd query \"explain src/main.rs\" --project web\n  ccd query \"and now add tests\" --session 2f6c...\n  ccd query \"list files\" --allowed-tools Bash --json | jq ."
    )]
    Query(query::QueryArgs),
    /// Conversations kept by the daemon: each query is a turn of a session.
    #[command(subcommand)]
    Session(session::SessionCmd),
    /// Run many prompts through the executor pool, with progress; results as JSONL.
    #[command(after_help = batch::BATCH_HELP)]
    Batch(batch::BatchArgs),
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
    Agent(agent::AgentCmd),
    /// The agent filesystem (read-only FUSE view of the sealed definitions).
    #[command(subcommand)]
    Vfs(vfs::VfsCmd),
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
    Limiter(limiter::LimiterCmd),
    /// Circuit breakers in front of the agent.
    #[command(subcommand)]
    Breaker(breaker::BreakerCmd),
    /// The daemon's configuration.
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// Print a shell completion script that completes commands, flags, project names, session
    /// ids and agent names (it calls back into ccd), e.g. `source <(ccd completions bash)` in
    /// ~/.bashrc.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Events: the recent log (read directly), or live with --follow.
    Events(events::EventsArgs),
    /// Queries, errors by class, tokens by kind and cost, by day, project and model (read
    /// directly from the database).
    Stats(stats::StatsArgs),
    /// A live terminal dashboard: actor health, queries in flight, live events, cost and tokens
    /// today, breakers and limits.
    Tui,
    /// Print the shell integration to `eval` in your shell's startup file: a `ccd` function with
    /// which `ccd cd PROJECT` changes the shell's directory, and completions.
    #[command(after_help = "Add to ~/.bashrc:       eval \"$(ccd init bash)\"\n\
Add to ~/.zshrc:        eval \"$(ccd init zsh)\"   (after compinit, for completions)\n\
Add to fish's config:   ccd init fish | source")]
    Init {
        /// bash, zsh or fish.
        shell: shell::InitShell,
    },
    /// Print a project's directory; with the shell integration (`ccd init`), change to it.
    /// Without a project: the directory of the most recent session.
    #[command(
        after_help = "Examples:\n  ccd cd web\n  ccd cd        (where the latest session ran)"
    )]
    Cd {
        /// The project's name.
        #[arg(add = crate::complete::projects())]
        project: Option<String>,
    },
}

/// Run one command: each group's module has its own function.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    let autostart = !cli.no_autostart;
    match cli.command {
        Command::Daemon(cmd) => daemon::run(&home, cmd),
        Command::Api { method, params } => api::run(&home, autostart, &method, params),
        Command::Project(cmd) => project::run(&home, autostart, cmd),
        Command::Setting(cmd) => setting::run(&home, autostart, cmd),
        Command::Backup(cmd) => backup::run(&home, autostart, cmd),
        Command::Query(args) => query::query(&home, autostart, args),
        Command::Session(cmd) => session::run(&home, autostart, cmd),
        Command::Batch(args) => batch::run(&home, autostart, args),
        Command::Doctor { json } => crate::doctor::run(&home, json),
        Command::Ps { json } => query::ps(&home, json),
        Command::Cancel { query_id, json } => query::cancel(&home, &query_id, json),
        Command::Agent(cmd) => agent::run(&home, autostart, cmd),
        Command::Vfs(cmd) => vfs::run(&home, cmd),
        Command::Launch { args } => crate::launch::run(&home, autostart, args),
        Command::Limiter(cmd) => limiter::run(&home, autostart, cmd),
        Command::Breaker(cmd) => breaker::run(&home, cmd),
        Command::Config(cmd) => config::run(&home, cmd),
        Command::Completions { shell } => {
            crate::complete::print_script(shell)?;
            Ok(exit::OK)
        }
        Command::Events(args) => events::run(&home, args),
        Command::Stats(args) => stats::run(&home, args),
        Command::Tui => crate::tui::run(&home),
        Command::Init { shell } => shell::init(shell),
        Command::Cd { project } => shell::cd(&home, project),
    }
}

#[cfg(test)]
mod tests {
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
