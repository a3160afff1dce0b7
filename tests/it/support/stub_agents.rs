//! Stand-ins for the Claude Code CLI: shell scripts for what the real CLI cannot be made to do,
//! and a daemon that runs one.

use crate::support::daemon::Daemon;

/// A stand-in for the CLI that prints `transcript` (after reading the prompt), then creates
/// `done` beside itself; its arguments, one per line, are in `args` beside it. For what the
/// real CLI cannot be made to print: floods, garbage and oversized lines. Lives as long as the
/// returned directory.
pub fn stub_agent(transcript: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    script_agent(
        "printf '%s\\n' \"$@\" > \"$here/args\"\n\
         cat > /dev/null\ncat \"$here/transcript.jsonl\"\ntouch \"$here/done\"",
        &[("transcript.jsonl", transcript)],
    )
}

/// A stand-in for the CLI that answers `--version`, then runs the shell script `body` with
/// `$here` set to its own directory (where `files` are written first). Lives as long as the
/// returned directory.
pub fn script_agent(body: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).unwrap();
    }
    let agent = dir.path().join("agent");
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\nhere=\"$(dirname \"$0\")\"\n\
             if [ \"$1\" = \"--version\" ]; then env > \"$here/version.env\"; echo \"0.0.0 (stub agent)\"; exit 0; fi\n\
             {body}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (dir, agent)
}

/// A daemon whose agent command is `agent`, with `config` as its config.toml.
pub fn agent_at(agent: &std::path::Path, config: &str) -> Daemon {
    Daemon::builder().agent(agent).config(config).start()
}
