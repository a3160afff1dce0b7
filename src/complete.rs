//! Shell completion: `ccd completions SHELL` prints a small script that calls back into `ccd`
//! (clap_complete's `COMPLETE=SHELL ccd -- WORDS...` protocol) for every completion, so values
//! are completed too: project names, the newest open sessions' ids, and agent names.
//!
//! Candidates come from the database, read directly (the daemon is never started); agent
//! definitions are sealed with a key only the daemon holds, so agent names are offered only
//! while it runs (a short `agent.list`).

use std::ffi::OsString;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use ccd_actors::store;
use ccd_protocol::methods as m;
use ccd_protocol::types::NoParams;
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use clap_complete::env::EnvCompleter;

use crate::client::Client;
use crate::home::{Home, read};

/// The environment variable of the callback protocol.
pub const VAR: &str = "COMPLETE";

/// How many open sessions `--session` and `session show|close|rm` offer, newest first.
const SESSIONS: u32 = 50;

/// Answer a completion request (`COMPLETE=SHELL ccd -- ...`) and exit; otherwise return.
/// `command` is the whole command line's definition (the CLI's clap types, which name this
/// module's candidates).
pub fn answer_if_asked(command: fn() -> clap::Command) {
    clap_complete::CompleteEnv::with_factory(command)
        .var(VAR)
        .complete();
}

/// `ccd completions SHELL`: the script that registers the completer with the shell.
pub fn print_script(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let script = registration(shell)?;
    std::io::stdout()
        .lock()
        .write_all(&script)
        .context("writing the completion script")?;
    Ok(())
}

/// The script that registers the completer with `shell`.
pub fn registration(shell: clap_complete::Shell) -> anyhow::Result<Vec<u8>> {
    let completer: &dyn EnvCompleter = match shell {
        clap_complete::Shell::Bash => &clap_complete::env::Bash,
        clap_complete::Shell::Zsh => &clap_complete::env::Zsh,
        clap_complete::Shell::Fish => &clap_complete::env::Fish,
        clap_complete::Shell::Elvish => &clap_complete::env::Elvish,
        clap_complete::Shell::PowerShell => &clap_complete::env::Powershell,
        other => anyhow::bail!("no completion for {other}"),
    };
    let program = self_program();
    let mut script = Vec::new();
    completer
        .write_registration(VAR, "ccd", "ccd", &program.to_string_lossy(), &mut script)
        .context("writing the completion script")?;
    Ok(script)
}

/// How scripts should run `ccd`: as this one was run, by name on PATH or by its absolute path.
pub fn self_program() -> std::path::PathBuf {
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("ccd"));
    let program = std::path::PathBuf::from(argv0);
    if program.components().count() > 1 {
        std::path::absolute(&program).unwrap_or(program)
    } else {
        program
    }
}

fn home() -> Option<Home> {
    Home::from_env().ok()
}

/// Registered project names, with their directories as help.
pub fn projects() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        let Some(home) = home() else { return vec![] };
        read(&home, store::projects)
            .unwrap_or_default()
            .into_iter()
            .map(|p| CompletionCandidate::new(p.name).help(Some(p.path.into())))
            .collect()
    })
}

/// The newest open sessions' ids, with their project (or directory) and last use as help.
pub fn sessions() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        let Some(home) = home() else { return vec![] };
        let (found, _) = read(&home, |c| {
            store::sessions(
                c,
                store::SessionFilter {
                    status: Some(ccd_protocol::types::SessionStatus::Open),
                    limit: Some(SESSIONS),
                    ..Default::default()
                },
            )
        })
        .unwrap_or_default();
        found
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let place = s.project.or(s.cwd).unwrap_or_else(|| "-".into());
                CompletionCandidate::new(s.id)
                    .help(Some(format!("{place}, {}", s.last_used_at).into()))
                    .display_order(Some(i))
            })
            .collect()
    })
}

/// Agent names, when the daemon runs (never started for this, and given half a second).
pub fn agents() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        let Some(home) = home() else { return vec![] };
        Client::connect(&home)
            .map(|c| c.with_timeout(Duration::from_millis(500)))
            .and_then(|mut c| c.call::<m::AgentList>(&NoParams {}))
            .map(|list| {
                list.agents
                    .into_iter()
                    .map(|a| CompletionCandidate::new(a.name).help(Some(a.description.into())))
                    .collect()
            })
            .unwrap_or_default()
    })
}
