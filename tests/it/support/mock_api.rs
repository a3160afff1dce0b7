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
//! Its own checks are in `tests/it/mock_api.rs`; `support/claude.rs` finds and runs the real CLI.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
    /// Where it listens (`url()` is `http://` and this).
    pub addr: SocketAddr,
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
