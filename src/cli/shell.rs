//! Shell integration: `ccd init SHELL` and `ccd cd [PROJECT]`.
//!
//! A program cannot change the directory of the shell that runs it. The function that
//! `eval "$(ccd init bash)"` defines can: for `ccd cd ...` it asks the program for the
//! directory and changes to it in the shell itself (as zoxide does); every other command goes
//! to the program unchanged. The same output registers ccd's completions, so `ccd cd <TAB>`
//! offers project names.

use std::io::{IsTerminal, Write};

use ccd_actors::store;
use ccd_actors::store::SessionFilter;
use clap::ValueEnum;

use crate::exit;
use crate::home::{Home, read};

/// The shells `ccd init` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitShell {
    Bash,
    Zsh,
    Fish,
}

/// `ccd init SHELL`: the function and the completions, for `eval` in the shell's startup file.
pub fn init(shell: InitShell) -> anyhow::Result<u8> {
    let program = crate::complete::self_program();
    let program = program.to_string_lossy();
    let run = if program.contains('/') {
        match shell {
            InitShell::Fish => fish_quote(&program),
            _ => sh_quote(&program),
        }
    } else {
        // By name: whichever `ccd` is on PATH when the function runs.
        "ccd".to_string()
    };
    let mut out = std::io::stdout().lock();
    let (completion, function) = match shell {
        InitShell::Bash => (clap_complete::Shell::Bash, sh_function(&run, "bash")),
        InitShell::Zsh => (clap_complete::Shell::Zsh, sh_function(&run, "zsh")),
        InitShell::Fish => (clap_complete::Shell::Fish, fish_function(&run)),
    };
    out.write_all(function.as_bytes())?;
    let registration = crate::complete::registration(completion)?;
    if shell == InitShell::Zsh {
        // zsh registers completions with compdef, which exists once compinit has run.
        writeln!(out, "if (( $+functions[compdef] )); then")?;
        out.write_all(&registration)?;
        writeln!(out, "fi")?;
    } else {
        out.write_all(&registration)?;
    }
    out.flush()?;
    Ok(exit::OK)
}

/// The bash and zsh function. Output of `ccd cd` that is not a directory (its `--help`, say)
/// is printed rather than changed to.
fn sh_function(run: &str, shell: &str) -> String {
    format!(
        r#"# ccd shell integration ({shell}): `ccd cd [PROJECT]` changes this shell's directory.
ccd() {{
    if [ "$#" -ge 1 ] && [ "$1" = cd ]; then
        shift
        local __ccd_dir
        __ccd_dir="$(command {run} cd "$@")" || return
        if [ -d "$__ccd_dir" ]; then
            builtin cd -- "$__ccd_dir"
        else
            printf '%s\n' "$__ccd_dir"
        fi
    else
        command {run} "$@"
    fi
}}
"#
    )
}

fn fish_function(run: &str) -> String {
    format!(
        r#"# ccd shell integration (fish): `ccd cd [PROJECT]` changes this shell's directory.
function ccd --description 'ccd, with `ccd cd PROJECT` changing directory'
    if test (count $argv) -ge 1; and test "$argv[1]" = cd
        set -l __ccd_dir (command {run} cd $argv[2..-1])
        or return $status
        if test -d "$__ccd_dir"
            builtin cd -- "$__ccd_dir"
        else
            printf '%s\n' $__ccd_dir
        end
    else
        command {run} $argv
    end
end
"#
    )
}

/// `'...'` for sh: every `'` closed, escaped and reopened.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `'...'` for fish, where `\` and `'` are escaped inside single quotes.
fn fish_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', r"\\").replace('\'', r"\'"))
}

/// `ccd cd [PROJECT]`: print the project's directory (the shell function changes to it); with no
/// project, the directory of the most recent session (its project's, else where it ran).
pub fn cd(home: &Home, project: Option<String>) -> anyhow::Result<u8> {
    let dir = match project {
        Some(name) => {
            let lookup = name.clone();
            match read(home, move |c| store::project(c, &lookup))? {
                Some(p) => p.path,
                None => {
                    let known: Vec<String> = read(home, store::projects)?
                        .into_iter()
                        .map(|p| p.name)
                        .collect();
                    let known = if known.is_empty() {
                        "there are none yet: add one with `ccd project add NAME DIR`".to_string()
                    } else {
                        format!("projects: {}", known.join(", "))
                    };
                    anyhow::bail!("no project named `{name}` ({known})");
                }
            }
        }
        None => latest_session_dir(home)?,
    };
    if !std::path::Path::new(&dir).is_dir() {
        anyhow::bail!("{dir} is not a directory (any more?): change it with `ccd project set`");
    }
    writeln!(std::io::stdout().lock(), "{dir}")?;
    if std::io::stdout().is_terminal() {
        eprintln!(
            "(a program cannot change its shell's directory: with `eval \"$(ccd init bash)\"` \
             in ~/.bashrc (or zsh, fish), `ccd cd` goes there)"
        );
    }
    Ok(exit::OK)
}

/// The directory of the most recently used session: its project's, else the one it ran in.
fn latest_session_dir(home: &Home) -> anyhow::Result<String> {
    let filter = SessionFilter {
        limit: Some(1),
        ..Default::default()
    };
    let (sessions, _) = read(home, move |c| store::sessions(c, filter))?;
    let Some(session) = sessions.into_iter().next() else {
        anyhow::bail!("no session yet: give a project (`ccd cd PROJECT`, see `ccd project list`)");
    };
    if let Some(name) = &session.project {
        let lookup = name.clone();
        if let Some(p) = read(home, move |c| store::project(c, &lookup))? {
            return Ok(p.path);
        }
    }
    session.cwd.ok_or_else(|| {
        anyhow::anyhow!(
            "the latest session ({}) has no directory recorded: give a project",
            session.id
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_backslashes() {
        assert_eq!(sh_quote("/opt/it's/ccd"), r"'/opt/it'\''s/ccd'");
        assert_eq!(fish_quote(r"/opt/it's\ccd"), r"'/opt/it\'s\\ccd'");
    }
}
