//! `ccd`: a local supervisor daemon for coding-agent CLIs, and the CLI that talks to it.
//!
//! The CLI parses arguments (clap), then either runs the daemon (`daemon run`), manages it
//! (`daemon start|stop|status|restart|logs`), sends a JSON-RPC call over the Unix socket (every
//! write, auto-starting the daemon), or reads SQLite directly (listings: they work while the
//! daemon is stopped). Exit codes: `exit`.

mod cli;
mod client;
mod complete;
mod daemon;
mod doctor;
mod exit;
mod home;
mod launch;
mod logging;
mod service;
mod table;
mod tui;

use std::process::ExitCode;

/// jemalloc rather than glibc's malloc: the daemon's requests allocate on one thread and free
/// on another (the gateway and the writer), which glibc serves through its arenas' locks and
/// slow paths; jemalloc cut the daemon's CPU per request by a fifth (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts: one background thread gives freed memory
/// back to the system within about a second (by default it waits ten, and only while something
/// allocates), so a burst of large replies does not keep the daemon big.
// SAFETY: jemalloc reads this symbol (its `malloc_conf`, with the prefix tikv-jemalloc-sys
// builds it with) as a `const char *` to a NUL-terminated string. A `&[u8; N]` is a thin
// pointer to `N` bytes that live for the whole program and are never written; the bytes end
// with NUL and hold only ASCII.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 85] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use clap::Parser;

use crate::client::CallError;

fn main() -> ExitCode {
    // `COMPLETE=SHELL ccd -- WORDS...`: the completion script asking for candidates.
    complete::answer_if_asked(<cli::Cli as clap::CommandFactory>::command);
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit::code(&e);
            if is_broken_pipe(&e) {
                return ExitCode::from(exit::OK);
            }
            eprintln!("ccd: {}", render(&e));
            ExitCode::from(code)
        }
    }
}

/// "what we were doing: why", the whole chain on one line.
fn render(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    // A broken pipe on the daemon's socket is the daemon going away, not our reader leaving.
    if e.chain().any(|c| c.downcast_ref::<CallError>().is_some()) {
        return false;
    }
    e.chain().any(|c| {
        let io = c.downcast_ref::<std::io::Error>().map(|io| io.kind());
        let json = c
            .downcast_ref::<serde_json::Error>()
            .and_then(|j| j.io_error_kind());
        io.or(json) == Some(std::io::ErrorKind::BrokenPipe)
    })
}
