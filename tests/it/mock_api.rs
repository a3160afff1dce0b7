//! A mock Anthropic Messages API for running the real Claude Code CLI (`claude`) end to end.
//!
//! [`MockApi::start`] serves HTTP/1.1 on `127.0.0.1:<ephemeral port>` from background threads
//! (one acceptor, one thread per connection, keep-alive) until it is dropped. Point the CLI at it
//! with `ANTHROPIC_BASE_URL=<mock.url()>` and any `ANTHROPIC_API_KEY` ([`MockApi::env`] gives
//! both). What each `POST /v1/messages` gets is the current [`Behaviour`], which a test can change
//! between requests with [`MockApi::set_behaviour`]; every such request is recorded
//! ([`MockApi::requests`]).
//!
//! ```ignore
//! let mock = MockApi::start(Behaviour::text("Hello"));
//! // run claude with mock.env() ...
//! assert!(mock.wait_for_requests(1, Duration::from_secs(30)));
//! assert_eq!(mock.requests()[0].last_user_text(), "say hello");
//! ```
//!
//! Other paths: `HEAD` (the CLI's runtime sends `HEAD /` to pre-connect) gets 200 with no body,
//! `POST /v1/messages/count_tokens` gets 200 `{"input_tokens":N}`, anything else a 404 error
//! body. Streamed answers are Server-Sent Events in chunked transfer encoding, one chunk per
//! event, each written straight to the socket. Requests with `"stream": false` get the same answer
//! as one JSON message.
//!
//! The tests at the bottom run the real CLI against the mock; [`claude_bin`] locates it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `input_tokens` the mock reports for every answer (in `message_start`).
pub const INPUT_TOKENS: u64 = 12;
/// `output_tokens` the mock reports for every answer (in `message_delta`; `message_start` says 1).
pub const OUTPUT_TOKENS: u64 = 5;

/// How a read on a connection waits before it looks at the shutdown flag again.
const POLL: Duration = Duration::from_millis(100);
/// A client that does not read its answer for this long loses the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;
const MAX_CONNECTIONS: usize = 256;

/// What the mock answers to `POST /v1/messages`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// A streamed answer with this text; stop_reason `end_turn`.
    Text(String),
    /// A request whose last message holds no `tool_result` gets a `tool_use` of `Bash` with input
    /// `{"command": command, "description": ...}` and stop_reason `tool_use`; a request whose
    /// last message holds a `tool_result` gets `Text(text)`.
    ToolThenText { command: String, text: String },
    /// An HTTP error: `status` with body `{"type":"error","error":{"type":..,"message":..}}`
    /// (plus `retry-after: 1` on 429).
    Error {
        status: u16,
        error_type: String,
        message: String,
    },
    /// `text` in `chunks` `text_delta` events, sleeping `delay` before each of them, so the whole
    /// answer takes at least `chunks × delay`. Each event is flushed as it is produced.
    SlowText {
        text: String,
        chunks: usize,
        delay: Duration,
    },
    /// Read the request and never answer (until the mock is dropped).
    Hang,
    /// A streamed answer: `first` as one `text_delta`, then nothing until the test calls
    /// [`MockApi::open_gate`], then `rest` as another. A client that shows `first` before the
    /// gate opens streams for real, with no timing involved.
    Gated { first: String, rest: String },
}

impl Behaviour {
    pub fn text(text: impl Into<String>) -> Behaviour {
        Behaviour::Text(text.into())
    }

    pub fn tool_then_text(command: impl Into<String>, text: impl Into<String>) -> Behaviour {
        Behaviour::ToolThenText {
            command: command.into(),
            text: text.into(),
        }
    }

    pub fn error(
        status: u16,
        error_type: impl Into<String>,
        message: impl Into<String>,
    ) -> Behaviour {
        Behaviour::Error {
            status,
            error_type: error_type.into(),
            message: message.into(),
        }
    }

    /// An error with the error type the real API uses for `status` (400 `invalid_request_error`,
    /// 401 `authentication_error`, 403 `permission_error`, 404 `not_found_error`, 413
    /// `request_too_large`, 429 `rate_limit_error`, 529 `overloaded_error`, else `api_error`).
    pub fn status(status: u16) -> Behaviour {
        let error_type = match status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        Behaviour::error(status, error_type, format!("mock {status} {error_type}"))
    }

    pub fn slow_text(text: impl Into<String>, chunks: usize, delay: Duration) -> Behaviour {
        Behaviour::SlowText {
            text: text.into(),
            chunks,
            delay,
        }
    }
}

/// One `POST /v1/messages` the mock received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The request target as sent, query included (`/v1/messages?beta=true`).
    pub path: String,
    /// `body.model` (empty if missing).
    pub model: String,
    /// `body.messages` (the array; `Null` if missing).
    pub messages: Value,
    /// The whole JSON body (`Null` if it was not JSON).
    pub body: Value,
    /// Request headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub kind: RequestKind,
}

/// What a `POST /v1/messages` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A turn of the conversation: answered as the current [`Behaviour`] says.
    Turn,
    /// A request the CLI makes on its own with a JSON-schema output format (2.1.197 asks for a
    /// session title this way when the prompt has 10 or more characters). Always answered at once
    /// with JSON that fits the schema, whatever the behaviour; left out of
    /// [`MockApi::requests`], [`MockApi::request_count`] and [`MockApi::wait_for_requests`].
    Structured,
}

impl RecordedRequest {
    pub fn message_count(&self) -> usize {
        self.messages.as_array().map_or(0, Vec::len)
    }

    /// Whether the last message's content holds a `tool_result` block.
    pub fn last_has_tool_result(&self) -> bool {
        last_has_tool_result(&self.messages)
    }

    /// Text of the last `user` message: its content if a string, else its `text` blocks joined
    /// with newlines ("" if there is none).
    pub fn last_user_text(&self) -> String {
        let Some(messages) = self.messages.as_array() else {
            return String::new();
        };
        let Some(last) = messages.iter().rev().find(|m| m["role"] == "user") else {
            return String::new();
        };
        content_text(&last["content"])
    }

    /// All `tool_result` contents of the last message, as text.
    pub fn tool_results(&self) -> Vec<String> {
        let Some(last) = self.messages.as_array().and_then(|m| m.last()) else {
            return Vec::new();
        };
        let Some(blocks) = last["content"].as_array() else {
            return Vec::new();
        };
        blocks
            .iter()
            .filter(|b| b["type"] == "tool_result")
            .map(|b| content_text(&b["content"]))
            .collect()
    }

    /// A request header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn last_has_tool_result(messages: &Value) -> bool {
    messages
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
}

/// The mock server. Dropping it stops every thread it started and closes the port.
pub struct MockApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Notified on every recorded request and on shutdown.
    changed: Condvar,
    shutdown: AtomicBool,
    next_conn: AtomicU64,
}

struct State {
    behaviour: Behaviour,
    requests: Vec<RecordedRequest>,
    http_log: Vec<String>,
    /// Clones of the open connections, shut down on drop to wake their threads.
    conns: Vec<(u64, TcpStream)>,
    /// Whether [`Behaviour::Gated`] answers may go on past their first piece.
    gate_open: bool,
}

/// `now + d`, or a year from now if that overflows.
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

impl State {
    fn turns(&self) -> usize {
        self.requests
            .iter()
            .filter(|r| r.kind == RequestKind::Turn)
            .count()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Wait until the gate is open or the mock shuts down; true if it shut down.
    fn wait_for_gate(&self) -> bool {
        let mut state = self.lock();
        loop {
            if self.is_shutdown() {
                return true;
            }
            if state.gate_open {
                return false;
            }
            state = match self.changed.wait(state) {
                Ok(s) => s,
                Err(e) => e.into_inner(),
            };
        }
    }

    /// Sleep for `d` unless the mock shuts down first; true if it did.
    fn sleep_or_shutdown(&self, d: Duration) -> bool {
        let deadline = deadline_after(d);
        let mut state = self.lock();
        loop {
            if self.is_shutdown() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = match self.changed.wait_timeout(state, deadline - now) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

impl MockApi {
    /// Bind `127.0.0.1:0` and serve until dropped.
    pub fn start(behaviour: Behaviour) -> MockApi {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("mock API: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock API: local_addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                behaviour,
                requests: Vec::new(),
                http_log: Vec::new(),
                conns: Vec::new(),
                gate_open: false,
            }),
            changed: Condvar::new(),
            shutdown: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("mock-api-accept".into())
                .spawn(move || accept_loop(listener, shared))
                .expect("mock API: spawn acceptor")
        };
        MockApi {
            shared,
            addr,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment that points a Claude Code CLI at this mock: `ANTHROPIC_BASE_URL` and an
    /// `ANTHROPIC_API_KEY`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ANTHROPIC_BASE_URL".into(), self.url()),
            ("ANTHROPIC_API_KEY".into(), "sk-ant-mock-test-key".into()),
        ]
    }

    /// Every conversation turn (`POST /v1/messages` of kind [`RequestKind::Turn`]) received so
    /// far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let state = self.shared.lock();
        state
            .requests
            .iter()
            .filter(|r| r.kind == RequestKind::Turn)
            .cloned()
            .collect()
    }

    /// Every `POST /v1/messages` received so far, side requests included, in order.
    pub fn all_requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many conversation turns were received so far.
    pub fn request_count(&self) -> usize {
        self.shared.lock().turns()
    }

    /// Let [`Behaviour::Gated`] answers (waiting or to come) go on past their first piece.
    pub fn open_gate(&self) {
        self.shared.lock().gate_open = true;
        self.shared.changed.notify_all();
    }

    /// What later requests get.
    pub fn set_behaviour(&self, b: Behaviour) {
        self.shared.lock().behaviour = b;
    }

    /// Block until at least `n` conversation turns have been received, at most `limit`; whether
    /// they were.
    pub fn wait_for_requests(&self, n: usize, limit: Duration) -> bool {
        let deadline = deadline_after(limit);
        let mut state = self.shared.lock();
        loop {
            if state.turns() >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = match self.shared.changed.wait_timeout(state, deadline - now) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// One line per HTTP request of any kind: connection number, method, target, how the body
    /// came (content-length or chunked) and its size. For debugging.
    pub fn http_log(&self) -> Vec<String> {
        self.shared.lock().http_log.clone()
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let state = self.shared.lock();
            for (_, stream) in &state.conns {
                let _ = stream.shutdown(Shutdown::Both);
            }
            self.shared.changed.notify_all();
        }
        // Wake the acceptor out of accept(); if that fails, leave it rather than hang.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok();
        if let Some(acceptor) = self.acceptor.take()
            && woke
        {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if shared.is_shutdown() {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(_) => {
                // e.g. out of file descriptors: back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let (done, running): (Vec<_>, Vec<_>) = workers.drain(..).partition(|h| h.is_finished());
        workers = running;
        for h in done {
            let _ = h.join();
        }
        if workers.len() >= MAX_CONNECTIONS {
            continue; // dropping the stream closes it
        }
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        let conn_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("mock-api-conn-{id}"))
            .spawn(move || serve_connection(conn_shared, stream, id));
        if let Ok(h) = spawned {
            workers.push(h);
        }
    }
    drop(listener);
    for h in workers {
        let _ = h.join();
    }
}

fn serve_connection(shared: Arc<Shared>, stream: TcpStream, id: u64) {
    let _ = stream.set_read_timeout(Some(POLL));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    if let Ok(clone) = stream.try_clone() {
        shared.lock().conns.push((id, clone));
    }
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        shared: Arc::clone(&shared),
    };
    loop {
        match conn.read_request() {
            Ok(Some(req)) => {
                let keep_alive = req.keep_alive();
                match handle_request(&shared, &mut conn, id, req) {
                    Ok(()) if keep_alive => continue,
                    _ => break,
                }
            }
            Ok(None) | Err(ReadError::Io) | Err(ReadError::Shutdown) => break,
            Err(ReadError::Bad(why)) => {
                let body = error_body("invalid_request_error", &format!("mock API: {why}"));
                let _ = write_response(&mut conn.stream, 400, &[], body.as_bytes(), false, true);
                break;
            }
        }
    }
    let _ = conn.stream.shutdown(Shutdown::Both);
    shared.lock().conns.retain(|(i, _)| *i != id);
}

struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == "HTTP/1.0" {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        }
    }
}

enum ReadError {
    /// Malformed request: answer 400 and close.
    Bad(String),
    /// The peer went away or the socket failed: close.
    Io,
    /// The mock is shutting down.
    Shutdown,
}

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet consumed.
    buf: Vec<u8>,
    shared: Arc<Shared>,
}

impl Conn {
    /// Read more bytes into `buf`, waiting across read timeouts; Ok(0) at end of stream.
    fn read_more(&mut self) -> Result<usize, ReadError> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            if self.shared.is_shutdown() {
                return Err(ReadError::Shutdown);
            }
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return Err(ReadError::Io),
            }
        }
    }

    /// One line ending in CRLF (or LF), without it.
    fn read_line(&mut self, limit: usize) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > limit {
                return Err(ReadError::Bad("line too long".into()));
            }
            if self.read_more()? == 0 {
                return Err(ReadError::Bad("connection closed mid-request".into()));
            }
        }
    }

    fn read_exact_bytes(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            if self.read_more()? == 0 {
                return Err(ReadError::Bad("connection closed mid-body".into()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// The next request, or None if the peer closed the connection between requests.
    fn read_request(&mut self) -> Result<Option<Request>, ReadError> {
        // Wait for the first byte so a clean close between requests is not an error; skip the
        // empty lines a client may send between requests.
        loop {
            while self.buf.first().is_some_and(|&b| b == b'\r' || b == b'\n') {
                self.buf.remove(0);
            }
            if !self.buf.is_empty() {
                break;
            }
            if self.read_more()? == 0 {
                return Ok(None);
            }
        }
        let request_line = String::from_utf8_lossy(&self.read_line(MAX_HEAD)?).into_owned();
        let mut parts = request_line.split_ascii_whitespace();
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(ReadError::Bad(format!("bad request line {request_line:?}")));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(ReadError::Bad(format!("unsupported version {version:?}")));
        }
        let mut headers = Vec::new();
        let mut head_size = request_line.len();
        loop {
            let line = self.read_line(MAX_HEAD)?;
            if line.is_empty() {
                break;
            }
            head_size += line.len();
            if head_size > MAX_HEAD {
                return Err(ReadError::Bad("request head too large".into()));
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let Some((name, value)) = line.split_once(':') else {
                return Err(ReadError::Bad(format!("bad header line {line:?}")));
            };
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut req = Request {
            method: method.to_string(),
            target: target.to_string(),
            version: version.to_string(),
            headers,
            body: Vec::new(),
            chunked: false,
        };
        if req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| ReadError::Io)?;
        }
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            req.chunked = true;
            req.body = self.read_chunked_body()?;
        } else if let Some(len) = req.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| ReadError::Bad(format!("bad content-length {len:?}")))?;
            if len > MAX_BODY {
                return Err(ReadError::Bad("body too large".into()));
            }
            req.body = self.read_exact_bytes(len)?;
        }
        Ok(Some(req))
    }

    fn read_chunked_body(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = String::from_utf8_lossy(&self.read_line(1024)?).into_owned();
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| ReadError::Bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line(MAX_HEAD)?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(ReadError::Bad("body too large".into()));
            }
            let chunk = self.read_exact_bytes(size)?;
            body.extend_from_slice(&chunk);
            if !self.read_line(16)?.is_empty() {
                return Err(ReadError::Bad("chunk not followed by CRLF".into()));
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Status",
    }
}

fn error_body(error_type: &str, message: &str) -> String {
    json!({"type": "error", "error": {"type": error_type, "message": message}}).to_string()
}

/// A complete (non-streamed) response with Content-Length.
fn write_response(
    stream: &mut TcpStream,
    status: u16,
    extra_headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if !body.is_empty() || !head_only {
        out.push_str("content-type: application/json\r\n");
    }
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n", body.len()));
    out.push_str(if close {
        "connection: close\r\n\r\n"
    } else {
        "connection: keep-alive\r\n\r\n"
    });
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

fn handle_request(shared: &Shared, conn: &mut Conn, conn_id: u64, req: Request) -> io::Result<()> {
    let close = !req.keep_alive();
    shared.lock().http_log.push(format!(
        "conn={conn_id} {} {} {} body={}{}",
        req.method,
        req.target,
        req.version,
        req.body.len(),
        if req.chunked {
            " (chunked)"
        } else if req.header("content-length").is_some() {
            " (content-length)"
        } else {
            ""
        }
    ));
    let path = req.target.split('?').next().unwrap_or("");
    match (req.method.as_str(), path) {
        ("POST", "/v1/messages") => messages(shared, conn, req, close),
        ("POST", "/v1/messages/count_tokens") => {
            let body = json!({"input_tokens": INPUT_TOKENS}).to_string();
            write_response(&mut conn.stream, 200, &[], body.as_bytes(), false, close)
        }
        ("HEAD", _) => write_response(&mut conn.stream, 200, &[], b"", true, close),
        _ => {
            let body = error_body(
                "not_found_error",
                &format!("mock API: no route for {} {}", req.method, req.target),
            );
            write_response(&mut conn.stream, 404, &[], body.as_bytes(), false, close)
        }
    }
}

/// One answer: content blocks and a stop reason.
enum Block {
    /// Text, streamed in these pieces, sleeping `delay` before each; with `gated`, waiting for
    /// [`MockApi::open_gate`] before every piece after the first.
    Text {
        pieces: Vec<String>,
        delay: Duration,
        gated: bool,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

fn messages(shared: &Shared, conn: &mut Conn, req: Request, close: bool) -> io::Result<()> {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("").to_string();
    let schema = &body["output_config"]["format"];
    let kind = if schema["type"] == "json_schema" {
        RequestKind::Structured
    } else {
        RequestKind::Turn
    };
    let recorded = RecordedRequest {
        path: req.target.clone(),
        model: model.clone(),
        messages: body["messages"].clone(),
        body: body.clone(),
        headers: req.headers.clone(),
        kind,
    };
    let tool_result = recorded.last_has_tool_result();
    let (behaviour, n) = {
        let mut state = shared.lock();
        state.requests.push(recorded);
        shared.changed.notify_all();
        (state.behaviour.clone(), state.requests.len())
    };
    let request_id = ("request-id", format!("req_mock_{n}"));
    if body.is_null() {
        let body = error_body("invalid_request_error", "mock API: body is not JSON");
        return write_response(
            &mut conn.stream,
            400,
            &[request_id],
            body.as_bytes(),
            false,
            close,
        );
    }
    let text_block = |text: &str| Block::Text {
        pieces: vec![text.to_string()],
        delay: Duration::ZERO,
        gated: false,
    };
    let (block, stop_reason) = match behaviour {
        _ if kind == RequestKind::Structured => (
            text_block(&fill_schema(&schema["schema"], "").to_string()),
            "end_turn",
        ),
        Behaviour::Text(text) => (text_block(&text), "end_turn"),
        Behaviour::ToolThenText { text, .. } if tool_result => (text_block(&text), "end_turn"),
        Behaviour::ToolThenText { command, .. } => (
            Block::ToolUse {
                id: format!("toolu_mock_{n}"),
                name: "Bash".into(),
                input: json!({"command": command, "description": "Run the command the mock API asked for"}),
            },
            "tool_use",
        ),
        Behaviour::SlowText {
            text,
            chunks,
            delay,
        } => (
            Block::Text {
                pieces: split_text(&text, chunks),
                delay,
                gated: false,
            },
            "end_turn",
        ),
        Behaviour::Gated { first, rest } => (
            Block::Text {
                pieces: vec![first, rest],
                delay: Duration::ZERO,
                gated: true,
            },
            "end_turn",
        ),
        Behaviour::Error {
            status,
            error_type,
            message,
        } => {
            let mut headers = vec![request_id];
            if status == 429 {
                headers.push(("retry-after", "1".into()));
            }
            let body = error_body(&error_type, &message);
            return write_response(
                &mut conn.stream,
                status,
                &headers,
                body.as_bytes(),
                false,
                close,
            );
        }
        Behaviour::Hang => {
            // Never answer; end when the client goes away or the mock shuts down.
            while conn.buf.len() <= MAX_HEAD {
                match conn.read_more() {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            return Err(io::Error::other("hung request ended"));
        }
    };
    let model = if model.is_empty() {
        "claude-mock".to_string()
    } else {
        model
    };
    let message_id = format!("msg_mock_{n}");
    if body["stream"] == true {
        let answer = Answer {
            request_id: &request_id.1,
            message_id: &message_id,
            model: &model,
            block: &block,
            stop_reason,
        };
        stream_answer(shared, conn, &answer, close)
    } else {
        if let Block::Text { pieces, delay, .. } = &block
            && shared.sleep_or_shutdown(delay.saturating_mul(pieces.len() as u32))
        {
            return Err(io::Error::other("mock API shut down"));
        }
        let content = match &block {
            Block::Text { pieces, .. } => json!([{"type": "text", "text": pieces.concat()}]),
            Block::ToolUse { id, name, input } => {
                json!([{"type": "tool_use", "id": id, "name": name, "input": input}])
            }
        };
        let message = json!({
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": usage(OUTPUT_TOKENS),
        });
        let body = message.to_string();
        write_response(
            &mut conn.stream,
            200,
            &[request_id],
            body.as_bytes(),
            false,
            close,
        )
    }
}

/// A JSON value that fits a (simple) JSON schema: what a structured-output request gets.
fn fill_schema(schema: &Value, name: &str) -> Value {
    match schema["type"].as_str() {
        Some("object") => {
            let mut out = serde_json::Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (key, sub) in props {
                    out.insert(key.clone(), fill_schema(sub, key));
                }
            }
            Value::Object(out)
        }
        Some("array") => json!([]),
        Some("integer" | "number") => json!(0),
        Some("boolean") => json!(false),
        Some("null") => Value::Null,
        _ if name == "title" => json!("Mock session"),
        _ => json!("mock"),
    }
}

fn usage(output_tokens: u64) -> Value {
    json!({
        "input_tokens": INPUT_TOKENS,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

/// `text` cut into `chunks` pieces of about equal length (on char boundaries; at least one).
fn split_text(text: &str, chunks: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let chunks = chunks.max(1);
    (0..chunks)
        .map(|i| {
            let start = chars.len() * i / chunks;
            let end = chars.len() * (i + 1) / chunks;
            chars[start..end].iter().collect()
        })
        .collect()
}

/// Writes SSE events as HTTP chunks, each flushed at once.
struct EventStream<'a> {
    stream: &'a mut TcpStream,
}

impl EventStream<'_> {
    fn event(&mut self, data: Value) -> io::Result<()> {
        let name = data["type"].as_str().unwrap_or("message").to_string();
        let payload = format!("event: {name}\ndata: {data}\n\n");
        let chunk = format!("{:x}\r\n{payload}\r\n", payload.len());
        self.stream.write_all(chunk.as_bytes())?;
        self.stream.flush()
    }
}

struct Answer<'a> {
    request_id: &'a str,
    message_id: &'a str,
    model: &'a str,
    block: &'a Block,
    stop_reason: &'a str,
}

fn stream_answer(shared: &Shared, conn: &mut Conn, answer: &Answer, close: bool) -> io::Result<()> {
    let Answer {
        request_id,
        message_id,
        model,
        block,
        stop_reason,
    } = *answer;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         request-id: {request_id}\r\ntransfer-encoding: chunked\r\nconnection: {}\r\n\r\n",
        if close { "close" } else { "keep-alive" }
    );
    conn.stream.write_all(head.as_bytes())?;
    let mut events = EventStream {
        stream: &mut conn.stream,
    };
    events.event(json!({
        "type": "message_start",
        "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage(1),
        },
    }))?;
    match block {
        Block::Text {
            pieces,
            delay,
            gated,
        } => {
            events.event(json!({
                "type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""},
            }))?;
            for (i, piece) in pieces.iter().enumerate() {
                if !delay.is_zero() && shared.sleep_or_shutdown(*delay) {
                    return Err(io::Error::other("mock API shut down"));
                }
                if *gated && i > 0 && shared.wait_for_gate() {
                    return Err(io::Error::other("mock API shut down"));
                }
                events.event(json!({
                    "type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                }))?;
            }
        }
        Block::ToolUse { id, name, input } => {
            events.event(json!({
                "type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}},
            }))?;
            events.event(json!({
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": input.to_string()},
            }))?;
        }
    }
    events.event(json!({"type": "content_block_stop", "index": 0}))?;
    events.event(json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": OUTPUT_TOKENS},
    }))?;
    events.event(json!({"type": "message_stop"}))?;
    conn.stream.write_all(b"0\r\n\r\n")?;
    conn.stream.flush()
}

/// The Claude Code CLI the tests run: `$CCD_TEST_CLAUDE` if set, else
/// `<workspace>/target/claude-cli/node_modules/.bin/claude`. Panics with install instructions if
/// it is missing.
pub fn claude_bin() -> PathBuf {
    let path = match std::env::var_os("CCD_TEST_CLAUDE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/claude-cli/node_modules/.bin/claude")
        }
    };
    assert!(
        path.is_file(),
        "the Claude Code CLI is not at {} (set CCD_TEST_CLAUDE to use another one, or install it \
         with: npm install --prefix target/claude-cli @anthropic-ai/claude-code@2.1.197)",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// Tests: the mock over raw HTTP, then the real CLI against it.

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "ccd-mock-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A HOME and a project directory for CLI runs; runs in the same `CliEnv` share sessions.
struct CliEnv {
    home: TempDir,
    project: TempDir,
}

impl CliEnv {
    fn new() -> CliEnv {
        CliEnv {
            home: TempDir::new("home"),
            project: TempDir::new("proj"),
        }
    }

    fn spawn(&self, mock: &MockApi, args: &[&str], prompt: &str) -> Cli {
        let mut cmd = Command::new(claude_bin());
        cmd.args(["-p", "--output-format", "stream-json", "--verbose"])
            .args(args)
            .current_dir(self.project.path())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .env_remove("CLAUDE_CONFIG_DIR")
            .env_remove("ANTHROPIC_AUTH_TOKEN")
            .env_remove("ANTHROPIC_MODEL")
            .env_remove("CLAUDE_CODE_USE_BEDROCK")
            .env_remove("CLAUDE_CODE_USE_VERTEX")
            .envs(mock.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn claude");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(prompt.as_bytes()).expect("write prompt");
        drop(stdin);
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send((Instant::now(), value)).is_err() {
                    break;
                }
            }
        });
        let (tx, stderr) = mpsc::channel();
        let mut err_pipe = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        Cli {
            child,
            lines,
            stderr,
            seen: Vec::new(),
            started: Instant::now(),
        }
    }

    fn run(&self, mock: &MockApi, args: &[&str], prompt: &str) -> CliRun {
        self.spawn(mock, args, prompt)
            .finish(Duration::from_secs(90))
    }
}

/// A running CLI. Dropping it kills the process.
struct Cli {
    child: Child,
    lines: mpsc::Receiver<(Instant, Value)>,
    stderr: mpsc::Receiver<String>,
    seen: Vec<(Instant, Value)>,
    started: Instant,
}

struct CliRun {
    lines: Vec<(Instant, Value)>,
    status: ExitStatus,
    elapsed: Duration,
    stderr: String,
}

impl CliRun {
    fn result(&self) -> &Value {
        self.lines
            .iter()
            .map(|(_, v)| v)
            .find(|v| v["type"] == "result")
            .unwrap_or_else(|| panic!("no result line in:\n{}", self.describe()))
    }

    fn init(&self) -> &Value {
        self.lines
            .iter()
            .map(|(_, v)| v)
            .find(|v| v["type"] == "system" && v["subtype"] == "init")
            .unwrap_or_else(|| panic!("no init line in:\n{}", self.describe()))
    }

    fn assistant_texts(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["type"] == "assistant")
            .flat_map(|v| {
                v["message"]["content"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str().map(String::from))
            .collect()
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "status: {:?}, after {:?}\nstdout:\n",
            self.status, self.elapsed
        );
        for (_, v) in &self.lines {
            let line = v.to_string();
            s.push_str(&line[..line.len().min(600)]);
            s.push('\n');
        }
        s.push_str("stderr:\n");
        s.push_str(&self.stderr);
        s
    }
}

impl Cli {
    /// The first line (from now on) that satisfies `pred`, waiting at most `limit`.
    fn wait_for_line(&mut self, limit: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, v)) => {
                    self.seen.push((at, v.clone()));
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Wait for the CLI to exit (killing it after `limit`, which fails the test).
    fn finish(mut self, limit: Duration) -> CliRun {
        let deadline = self.started + limit;
        let status = loop {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => break None,
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        let timed_out = status.is_none();
        if timed_out {
            let _ = self.child.kill();
        }
        let status = match status {
            Some(s) => s,
            None => self.child.wait().expect("wait"),
        };
        // Collect the rest of stdout: its pipe closes when the CLI (and whatever it started) exits.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let run = CliRun {
            lines: std::mem::take(&mut self.seen),
            status,
            elapsed: self.started.elapsed(),
            stderr: self
                .stderr
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default(),
        };
        assert!(
            !timed_out,
            "claude did not finish within {limit:?}:\n{}",
            run.describe()
        );
        run
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw HTTP client for the mock: sends `req`, returns the bytes read until `done` says the
/// response is complete (or the peer closes, or 10 s pass).
fn raw_exchange(stream: &mut TcpStream, req: &[u8], done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

fn ends_with(suffix: &'static [u8]) -> impl Fn(&[u8]) -> bool {
    move |b: &[u8]| b.ends_with(suffix)
}

fn post_messages(body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST /v1/messages?beta=true HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn sse_events(raw: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(raw);
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            out.push((name.clone(), serde_json::from_str(d).unwrap()));
        }
    }
    out
}

#[test]
fn mock_api_raw_http_keep_alive_chunked_and_other_paths() {
    let mock = MockApi::start(Behaviour::text("raw hello"));
    let mut s = TcpStream::connect(mock.addr).unwrap();
    // Two streamed requests on one connection.
    for i in 0..2 {
        let got = raw_exchange(
            &mut s,
            &post_messages(&json!({"model": "m-1", "stream": true, "messages": [
                {"role": "user", "content": format!("hi {i}")}]})),
            ends_with(b"0\r\n\r\n"),
        );
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-type: text/event-stream"), "{text}");
        let events = sse_events(&got);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(events.iter().all(|(n, d)| d["type"] == n.as_str()));
        assert_eq!(events[0].1["message"]["model"], "m-1");
        assert_eq!(events[2].1["delta"]["text"], "raw hello");
        assert_eq!(events[4].1["delta"]["stop_reason"], "end_turn");
    }
    // A chunked request body, on the same connection.
    let body = json!({"model": "m-2", "stream": false, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "chunked hi"}]}]})
    .to_string();
    let (a, b) = body.split_at(10);
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let got = raw_exchange(&mut s, req.as_bytes(), |b| b.ends_with(b"}}"));
    let text = String::from_utf8_lossy(&got);
    let json_body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json_body["content"][0]["text"], "raw hello", "{text}");
    assert_eq!(json_body["model"], "m-2");
    // HEAD, count_tokens, unknown paths.
    let got = raw_exchange(
        &mut s,
        b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n",
        ends_with(b"\r\n\r\n"),
    );
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let got = raw_exchange(
        &mut s,
        b"POST /v1/messages/count_tokens?beta=true HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
        ends_with(b"}"),
    );
    assert!(String::from_utf8_lossy(&got).contains("\"input_tokens\":12"));
    let got = raw_exchange(
        &mut s,
        b"GET /nowhere HTTP/1.1\r\nconnection: close\r\n\r\n",
        |_| false,
    );
    assert!(got.starts_with(b"HTTP/1.1 404 Not Found\r\n"));

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].path, "/v1/messages?beta=true");
    assert_eq!(reqs[1].last_user_text(), "hi 1");
    assert_eq!(reqs[2].last_user_text(), "chunked hi");
    assert_eq!(reqs[2].model, "m-2");
    assert_eq!(mock.http_log().len(), 6);
    assert!(mock.http_log().iter().all(|l| l.starts_with("conn=1 ")));

    // Garbage does not hurt the mock.
    let mut bad = TcpStream::connect(mock.addr).unwrap();
    let got = raw_exchange(&mut bad, b"\x00\x01 nonsense\r\n\r\n", |_| false);
    assert!(got.starts_with(b"HTTP/1.1 400"));
    let mut bad = TcpStream::connect(mock.addr).unwrap();
    let got = raw_exchange(
        &mut bad,
        b"POST /v1/messages HTTP/1.1\r\ncontent-length: zzz\r\n\r\n",
        |_| false,
    );
    assert!(got.starts_with(b"HTTP/1.1 400"));
    let mut bad = TcpStream::connect(mock.addr).unwrap();
    let _ = raw_exchange(
        &mut bad,
        b"POST /v1/messages HTTP/1.1\r\ncontent-length: 100\r\n\r\n{",
        |_| true,
    );
    drop(bad);
    let got = raw_exchange(
        &mut TcpStream::connect(mock.addr).unwrap(),
        b"POST /v1/messages HTTP/1.1\r\ncontent-length: 5\r\nconnection: close\r\n\r\nnojsn",
        |_| false,
    );
    assert!(got.starts_with(b"HTTP/1.1 400"));
    assert_eq!(mock.request_count(), 4);

    // A structured-output side request (the CLI's session title) gets JSON fitting its schema
    // whatever the behaviour, and is not a turn.
    mock.set_behaviour(Behaviour::Hang);
    let title_req = post_messages(&json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "name this session"}],
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object",
            "properties": {"title": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["title"], "additionalProperties": false}}}}));
    let got = raw_exchange(
        &mut TcpStream::connect(mock.addr).unwrap(),
        &title_req,
        ends_with(b"0\r\n\r\n"),
    );
    let text = &sse_events(&got)[2].1["delta"]["text"];
    let title: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
    assert_eq!(title, json!({"title": "Mock session", "n": 0}));
    assert_eq!(mock.request_count(), 4);
    let all = mock.all_requests();
    assert_eq!(all.len(), 5);
    assert_eq!(all[4].kind, RequestKind::Structured);
    assert!(mock.requests().iter().all(|r| r.kind == RequestKind::Turn));
}

#[test]
fn mock_api_raw_errors_tool_use_slow_stream_and_hang() {
    let mock = MockApi::start(Behaviour::status(429));
    let mut s = TcpStream::connect(mock.addr).unwrap();
    let req = post_messages(&json!({"model": "m", "stream": true, "messages": []}));
    let got = raw_exchange(&mut s, &req, ends_with(b"}}"));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{text}"
    );
    assert!(text.contains("retry-after: 1\r\n"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "mock 429 rate_limit_error"}})
    );

    mock.set_behaviour(Behaviour::tool_then_text("echo x", "done"));
    let got = raw_exchange(&mut s, &req, ends_with(b"0\r\n\r\n"));
    let events = sse_events(&got);
    assert_eq!(events[1].1["content_block"]["type"], "tool_use");
    assert_eq!(events[1].1["content_block"]["name"], "Bash");
    let input: Value =
        serde_json::from_str(events[2].1["delta"]["partial_json"].as_str().unwrap()).unwrap();
    assert_eq!(input["command"], "echo x");
    assert!(input["description"].is_string());
    assert_eq!(events[4].1["delta"]["stop_reason"], "tool_use");
    let with_result = post_messages(&json!({"model": "m", "stream": true, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]}));
    let got = raw_exchange(&mut s, &with_result, ends_with(b"0\r\n\r\n"));
    assert_eq!(sse_events(&got)[2].1["delta"]["text"], "done");
    let last = mock.requests().pop().unwrap();
    assert!(last.last_has_tool_result());
    assert_eq!(last.tool_results(), ["x"]);
    assert_eq!(last.last_user_text(), "");

    // SlowText really streams: the first delta arrives long before the last.
    mock.set_behaviour(Behaviour::slow_text(
        "abcdef",
        3,
        Duration::from_millis(300),
    ));
    let started = Instant::now();
    s.write_all(&req).unwrap();
    let mut got = Vec::new();
    let mut first_delta = None;
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
        if first_delta.is_none() && String::from_utf8_lossy(&got).contains("text_delta") {
            first_delta = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let first_delta = first_delta.unwrap();
    assert!(total >= Duration::from_millis(900), "{total:?}");
    assert!(
        total - first_delta >= Duration::from_millis(500),
        "{first_delta:?} {total:?}"
    );
    let pieces: Vec<String> = sse_events(&got)
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pieces, ["ab", "cd", "ef"]);

    // Hang: the request is recorded, nothing comes back, and drop does not wait for it.
    mock.set_behaviour(Behaviour::Hang);
    s.write_all(&req).unwrap();
    assert!(mock.wait_for_requests(5, Duration::from_secs(5)));
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(s.read(&mut buf).is_err(), "Hang answered");
    // A slow stream in flight and an idle keep-alive connection must not block drop either.
    mock.set_behaviour(Behaviour::slow_text("x", 1, Duration::from_secs(3600)));
    let mut s2 = TcpStream::connect(mock.addr).unwrap();
    s2.write_all(&req).unwrap();
    let _idle = TcpStream::connect(mock.addr).unwrap();
    assert!(mock.wait_for_requests(6, Duration::from_secs(5)));
    assert!(!mock.wait_for_requests(7, Duration::from_millis(50)));
    let addr = mock.addr;
    let started = Instant::now();
    drop(mock);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        started.elapsed()
    );
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "connection not closed");
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}

const PROMPT: &str = "Say hello to the mock";

#[test]
fn mock_api_cli_text_answer() {
    let mock = MockApi::start(Behaviour::text("Hello from the Rust mock"));
    let env = CliEnv::new();
    let run = env.run(&mock, &[], PROMPT);
    assert_eq!(run.status.code(), Some(0), "{}", run.describe());
    let result = run.result();
    assert_eq!(result["is_error"], false, "{}", run.describe());
    assert_eq!(result["result"], "Hello from the Rust mock");
    assert_eq!(result["num_turns"], 1);
    assert!(result["total_cost_usd"].as_f64().unwrap() > 0.0, "{result}");
    assert_eq!(result["usage"]["input_tokens"], INPUT_TOKENS);
    assert_eq!(result["usage"]["output_tokens"], OUTPUT_TOKENS);
    assert_eq!(run.assistant_texts(), ["Hello from the Rust mock"]);

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1, "{:?}", mock.http_log());
    let req = &reqs[0];
    assert!(req.path.starts_with("/v1/messages"), "{}", req.path);
    assert_eq!(req.body["stream"], true);
    assert!(!req.model.is_empty());
    assert!(
        req.last_user_text().contains(PROMPT),
        "{}",
        req.last_user_text()
    );
    assert!(!req.last_has_tool_result());
    assert!(req.header("x-api-key").is_some());
    // The model is echoed: the CLI's assistant message carries the request's model.
    let assistant = run
        .lines
        .iter()
        .map(|(_, v)| v)
        .find(|v| v["type"] == "assistant")
        .unwrap();
    assert_eq!(assistant["message"]["model"], req.model.as_str());
}

#[test]
fn mock_api_cli_runs_a_tool() {
    let mock = MockApi::start(Behaviour::tool_then_text(
        "echo hi-from-tool",
        "The tool said hi.",
    ));
    let env = CliEnv::new();
    let run = env.run(&mock, &["--allowedTools", "Bash"], "Run a command");
    assert_eq!(run.status.code(), Some(0), "{}", run.describe());
    assert_eq!(run.result()["result"], "The tool said hi.");
    assert_eq!(run.result()["num_turns"], 2);
    // The CLI reports the tool's output as a user message.
    let tool_result = run
        .lines
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["type"] == "user")
        .flat_map(|v| {
            v["message"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|b| b["type"] == "tool_result")
        .unwrap_or_else(|| panic!("no tool_result:\n{}", run.describe()));
    assert_eq!(tool_result["content"], "hi-from-tool");

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2, "{:?}", mock.http_log());
    assert!(!reqs[0].last_has_tool_result());
    assert!(reqs[1].last_has_tool_result());
    let results = reqs[1].tool_results();
    assert!(
        results.iter().any(|r| r.contains("hi-from-tool")),
        "{results:?}"
    );
    assert_eq!(reqs[1].message_count(), reqs[0].message_count() + 2);
}

#[test]
fn mock_api_cli_resume() {
    let mock = MockApi::start(Behaviour::text("first answer"));
    let env = CliEnv::new();
    let first = env.run(&mock, &[], "first question");
    assert_eq!(first.status.code(), Some(0), "{}", first.describe());
    let session_id = first.init()["session_id"].as_str().unwrap().to_string();
    assert_eq!(first.result()["session_id"], session_id.as_str());

    mock.set_behaviour(Behaviour::text("second answer"));
    let resume = format!("--resume={session_id}");
    let second = env.run(&mock, &[&resume], "second question");
    assert_eq!(second.status.code(), Some(0), "{}", second.describe());
    assert_eq!(second.result()["result"], "second answer");

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].message_count(), 2, "{}", reqs[0].messages);
    assert_eq!(reqs[1].message_count(), 4, "{}", reqs[1].messages);
    assert!(reqs[1].last_user_text().contains("second question"));
    let history = reqs[1].messages.to_string();
    assert!(
        history.contains("first question") && history.contains("first answer"),
        "{history}"
    );
}

#[test]
fn mock_api_cli_error_400() {
    let mock = MockApi::start(Behaviour::error(
        400,
        "invalid_request_error",
        "mock says no",
    ));
    let env = CliEnv::new();
    let run = env
        .spawn(&mock, &[], PROMPT)
        .finish(Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    let result = run.result();
    assert_eq!(result["is_error"], true);
    assert_eq!(result["api_error_status"], 400);
    assert!(
        result["result"].as_str().unwrap().contains("mock says no"),
        "{result}"
    );
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    assert_eq!(mock.request_count(), 1);
}

#[test]
fn mock_api_cli_error_401_retries() {
    let mock = MockApi::start(Behaviour::status(401));
    let env = CliEnv::new();
    let mut cli = env.spawn(&mock, &[], PROMPT);
    let retry = cli.wait_for_line(Duration::from_secs(60), |v| {
        v["type"] == "system" && v["subtype"] == "api_retry"
    });
    cli.kill();
    let retry = retry.unwrap_or_else(|| panic!("no api_retry line; saw {:?}", cli.seen));
    assert_eq!(retry["error"], "authentication_failed", "{retry}");
    assert_eq!(retry["error_status"], 401, "{retry}");
    assert!(mock.wait_for_requests(1, Duration::from_secs(5)));
    assert_eq!(mock.requests()[0].body["stream"], true);
}

#[test]
fn mock_api_cli_slow_text_streams() {
    let (chunks, delay) = (4, Duration::from_millis(400));
    let mock = MockApi::start(Behaviour::slow_text("one two three four", chunks, delay));
    let env = CliEnv::new();
    let run = env
        .spawn(&mock, &["--include-partial-messages"], PROMPT)
        .finish(Duration::from_secs(90));
    assert_eq!(run.status.code(), Some(0), "{}", run.describe());
    assert_eq!(run.result()["result"], "one two three four");
    assert_eq!(run.assistant_texts().concat(), "one two three four");
    // The CLI saw the deltas one by one as they were sent (it prints them as stream_event lines).
    let deltas: Vec<Instant> = run
        .lines
        .iter()
        .filter(|(_, v)| v["type"] == "stream_event" && v["event"]["delta"]["type"] == "text_delta")
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(deltas.len(), chunks, "{}", run.describe());
    let spread = *deltas.last().unwrap() - deltas[0];
    assert!(
        spread >= delay * (chunks as u32 - 1) / 2,
        "deltas not streamed: {spread:?}"
    );
    assert!(run.elapsed >= delay * chunks as u32, "{:?}", run.elapsed);
}

#[test]
fn mock_api_cli_hang_then_kill() {
    let mock = MockApi::start(Behaviour::Hang);
    let env = CliEnv::new();
    let mut cli = env.spawn(&mock, &[], PROMPT);
    assert!(
        mock.wait_for_requests(1, Duration::from_secs(30)),
        "{:?}",
        mock.http_log()
    );
    let result = cli.wait_for_line(Duration::from_secs(1), |v| v["type"] == "result");
    assert!(result.is_none(), "the CLI got an answer: {result:?}");
    cli.kill();
    let started = Instant::now();
    drop(mock);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        started.elapsed()
    );
}
