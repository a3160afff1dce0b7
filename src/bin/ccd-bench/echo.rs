//! The bare NDJSON echo server: the floor a `system.ping` is compared with.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};

use crate::cli::{Driver, Limits};
use crate::client::Expect;
use crate::daemon::TempDir;
use crate::phase::{Op, Phase, PhaseResult, run_phase};

/// An in-process Unix-socket NDJSON echo server: a thread per connection writes every line
/// it reads back unchanged.
struct EchoServer {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    // Dropped last: the socket lives in here.
    _dir: TempDir,
}

impl EchoServer {
    fn start(keep_temp: bool) -> Result<EchoServer> {
        let dir = TempDir::new("echo", keep_temp)?;
        let socket = dir.path.join("echo.sock");
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("binding the echo socket {}", socket.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_a = Arc::clone(&stop);
        let accept = thread::Builder::new()
            .name("echo-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop_a.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    // A failed spawn drops the connection; the client then reports the failure.
                    let _ = thread::Builder::new()
                        .name("echo-conn".into())
                        .spawn(move || echo_connection(stream));
                }
            })
            .context("spawning the echo accept thread")?;
        Ok(EchoServer {
            socket,
            stop,
            accept: Some(accept),
            _dir: dir,
        })
    }
}

fn echo_connection(stream: UnixStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        writer.write_all(&line)?;
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

pub(crate) fn run_echo_phase(
    connections: u32,
    requests: u32,
    limits: &Limits,
    keep_temp: bool,
) -> Result<PhaseResult> {
    let server = EchoServer::start(keep_temp)?;
    run_phase(&Phase {
        label: "bare NDJSON echo".into(),
        socket: server.socket.clone(),
        op: Op::Ping,
        expect: Expect::Echo,
        connections,
        requests,
        limits: limits.clone(),
        driver: Driver::Threads,
    })
}
