//! The CLI's blocking JSON-RPC client over the Unix socket. Starting the daemon when it is not
//! running is `daemon::connect_or_start`'s, above this module.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use ccd_protocol::{Id, Method, Notification, Payload, Request, Response, RpcError};
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, Stream};
use serde_json::Value;

use crate::home::Home;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The daemon answered with a JSON-RPC error.
    #[error("{}", .0.message)]
    Rpc(RpcError),
    /// The daemon is not running (or not answering on its socket).
    #[error("{0}")]
    NotRunning(String),
    /// The daemon took the request but did not answer within the client's timeout (it is
    /// stopped, stuck, or busy past the timeout).
    #[error("{0}")]
    NoAnswer(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub struct Client {
    reader: BufReader<Stream>,
    next_id: u64,
    peer: Peer,
}

/// What a socket error is explained with.
struct Peer {
    /// The daemon's pid file (its pid lock).
    pid_file: PathBuf,
    /// The receive timeout, if one is set.
    timeout: Option<Duration>,
}

/// An I/O error on the daemon's socket: a daemon that went away mid-call (it died, or is
/// stopping) is "not running", not a failure of this command's own output; a receive timeout
/// is a daemon that did not answer in time.
fn socket_error(peer: &Peer, e: std::io::Error, doing: &str) -> CallError {
    use std::io::ErrorKind::{
        BrokenPipe, ConnectionAborted, ConnectionReset, TimedOut, WouldBlock,
    };
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted => CallError::NotRunning(format!(
            "{doing}: the daemon closed the connection ({e}); is it running?"
        )),
        WouldBlock | TimedOut => CallError::NoAnswer(no_answer(peer)),
        _ => CallError::Other(anyhow::Error::new(e).context(doing.to_string())),
    }
}

/// "The daemon (pid N) did not answer within T", and what to do about it.
fn no_answer(peer: &Peer) -> String {
    // What is left of a deadline is shown as the whole it was meant to be: 2.9998 s is "3s".
    let shown = |t: Duration| match t.as_millis() {
        ms @ 0..1000 => Duration::from_millis(ms as u64),
        ms => Duration::from_secs(((ms + 500) / 1000) as u64),
    };
    let within = peer
        .timeout
        .map(|t| format!(" within {}", humantime::format_duration(shown(t))))
        .unwrap_or_default();
    match crate::home::PidLock::probe(&peer.pid_file).flatten() {
        Some(pid) => format!(
            "the daemon (pid {pid}) did not answer{within}: it may be stopped (SIGSTOP) or hung; \
             `kill -CONT {pid}` resumes a stopped daemon, `kill -9 {pid}` ends a hung one \
             (`ccd daemon logs` may say what it was doing)"
        ),
        None => format!("the daemon did not answer{within}"),
    }
}

/// When nothing answers on the socket but a process holds the pid lock (a daemon starting or
/// stopping, stuck, or whose socket file was deleted): what to tell the user. `ccd daemon
/// start` refuses to start a second daemon; `restart` signals this one and starts a new one.
pub fn lock_holder(home: &Home) -> Option<String> {
    let pid = crate::home::PidLock::probe(&home.pid_file())?;
    let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    let socket = home.socket();
    Some(if socket_orphaned(&socket) {
        format!(
            "a daemon is running (pid {pid}) but its socket {} is gone, so nothing can reach \
             it; run `ccd daemon restart` (or `ccd daemon stop`) to replace it",
            socket.display()
        )
    } else {
        format!(
            "the daemon (pid {pid}) holds the lock but does not answer on {}: it is starting or \
             stopping, or stuck; `ccd daemon restart` replaces it",
            socket.display()
        )
    })
}

/// Whether a process listens on a Unix socket bound to `path` while that path no longer leads
/// to it (the file was deleted or replaced): the kernel still lists the listener under the name
/// it was bound to (Linux: /proc/net/unix), and connecting by the path fails.
pub fn socket_orphaned(path: &std::path::Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let Some(want) = path.to_str() else {
        return false;
    };
    // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is a listening socket.
    let listening = table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8
            && fields[7] == want
            && u32::from_str_radix(fields[3], 16).is_ok_and(|f| f & 0x10000 != 0)
    });
    listening && std::os::unix::net::UnixStream::connect(path).is_err()
}

impl Client {
    /// Connect to a running daemon; `NotRunning` when nothing answers on the socket.
    pub fn connect(home: &Home) -> Result<Client, CallError> {
        let path = home.socket();
        let name = path
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .with_context(|| format!("socket path {}", path.display()))?;
        match Stream::connect(name) {
            Ok(stream) => Ok(Client {
                reader: BufReader::new(stream),
                next_id: 1,
                peer: Peer {
                    pid_file: home.pid_file(),
                    timeout: None,
                },
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Err(CallError::NotRunning(lock_holder(home).unwrap_or_else(|| {
                    format!(
                        "the ccd daemon is not running (no answer on {}); start it with `ccd daemon start`",
                        path.display()
                    )
                })))
            }
            Err(e) => Err(CallError::Other(
                anyhow::Error::new(e).context(format!("connecting to {}", path.display())),
            )),
        }
    }

    /// A duplicate of the connection's socket, to shut it down from another thread: a client
    /// that hangs up has its queries cancelled by the daemon, and a call blocked on the
    /// connection returns.
    pub fn socket(&self) -> Option<std::os::fd::OwnedFd> {
        match self.reader.get_ref() {
            Stream::UdSocket(s) => std::os::fd::AsFd::as_fd(s).try_clone_to_owned().ok(),
        }
    }

    /// Give up on a reply after `timeout` (for calls that must not hang on a stuck daemon).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        use interprocess::local_socket::traits::Stream as _;
        match self.reader.get_ref().set_recv_timeout(Some(timeout)) {
            Ok(()) => self.peer.timeout = Some(timeout),
            Err(e) => tracing::debug!("setting a receive timeout: {e}"),
        }
        self
    }

    /// Call a method by name with raw JSON params.
    pub fn call_raw(&mut self, method: &str, params: Option<Value>) -> Result<Value, CallError> {
        self.call_streaming(method, params, |_| {})
    }

    /// Call a method, handing every server-to-client notification that arrives before the
    /// reply to `on_note`.
    pub fn call_streaming(
        &mut self,
        method: &str,
        params: Option<Value>,
        mut on_note: impl FnMut(&Notification),
    ) -> Result<Value, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request::new(id, method, params))
            .context("encoding the request")?;
        line.push(b'\n');
        let stream = self.reader.get_mut();
        stream
            .write_all(&line)
            .map_err(|e| socket_error(&self.peer, e, "sending the request to the daemon"))?;
        stream.flush().ok();
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = self
                .reader
                .read_line(&mut buf)
                .map_err(|e| socket_error(&self.peer, e, "reading the daemon's reply"))?;
            if n == 0 {
                return Err(CallError::NotRunning(
                    "the daemon closed the connection before answering (is it stopping?)".into(),
                ));
            }
            let Ok(resp) = serde_json::from_str::<Response>(&buf) else {
                if let Ok(note) = serde_json::from_str::<Notification>(&buf) {
                    on_note(&note);
                }
                continue;
            };
            if resp.id != Id::from(id) {
                if resp.id == Id::Null
                    && let Payload::Error(e) = resp.payload
                {
                    return Err(CallError::Rpc(e));
                }
                continue;
            }
            return resp.into_result().map_err(CallError::Rpc);
        }
    }

    /// Call `method`, then keep handing every notification to `on_note` until it returns false
    /// or the daemon closes the connection.
    pub fn follow(
        &mut self,
        method: &str,
        params: Option<Value>,
        on_note: impl FnMut(&Notification) -> bool,
    ) -> Result<(), CallError> {
        self.follow_with(method, params, |_| {}, on_note)
    }

    /// As [`Client::follow`], handing `method`'s result to `on_result` when it comes (the
    /// notifications that came before it went to `on_note` already).
    pub fn follow_with(
        &mut self,
        method: &str,
        params: Option<Value>,
        on_result: impl FnOnce(&Value),
        mut on_note: impl FnMut(&Notification) -> bool,
    ) -> Result<(), CallError> {
        let mut keep = true;
        let result = self.call_streaming(method, params, |n| keep = keep && on_note(n))?;
        on_result(&result);
        let mut buf = String::new();
        while keep {
            buf.clear();
            if self
                .reader
                .read_line(&mut buf)
                .map_err(|e| socket_error(&self.peer, e, "reading from the daemon"))?
                == 0
            {
                return Err(CallError::NotRunning(
                    "the daemon closed the connection".into(),
                ));
            }
            if let Ok(note) = serde_json::from_str::<Notification>(&buf) {
                keep = on_note(&note);
            }
        }
        Ok(())
    }

    /// Call a typed method.
    pub fn call<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, CallError> {
        let params = serde_json::to_value(params).context("encoding params")?;
        let value = self.call_raw(M::NAME, Some(params))?;
        serde_json::from_value(value)
            .with_context(|| format!("decoding the daemon's answer to {}", M::NAME))
            .map_err(CallError::Other)
    }
}
