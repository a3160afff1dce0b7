//! The socket side of the IPC gateway: accepts connections on the Unix socket, frames NDJSON,
//! parses JSON-RPC envelopes and batches, and sends each request to the [`GatewayActor`].
//!
//! Connection I/O runs in plain tasks beside the gateway actor, not inside its context, so a
//! restart of the gateway never drops a connection. Limits, each local to one connection:
//! - a line over `max_message_bytes` is answered -32600 and the connection is closed;
//! - at most `max_inflight_per_connection` requests run at once; past it the daemon stops
//!   reading from that connection (backpressure) until replies go out;
//! - replies are queued in a bounded channel and written with a timeout: a client that never
//!   reads is disconnected after `write_timeout_ms` and stalls nobody else;
//! - the reply bytes a connection holds (reserved for its requests in flight, a batch's reply
//!   being built, queued) stay under `max_message_bytes`, and those of all connections under
//!   the daemon-wide `max_pending_reply_bytes`: past either, the daemon stops reading from the
//!   connection (a batch answers its remaining requests -32009), except that a connection
//!   holding nothing may always have one request answered;
//! - at most `max_connections` connections: at the limit the longest-idle connection is closed
//!   to make room, and only when none is idle is the new one refused with -32009.
//!
//! Architecture invariant: only this module reads and writes the socket.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use ccd_protocol::{
    ErrorCode, FrameError, Id, Incoming, NdjsonCodec, RawResponse, Request, Response, RpcError,
    parse_incoming, to_line,
};
use futures_util::StreamExt;
use futures_util::future::{Either, FutureExt as _, ready};
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::StreamCommon as _;
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::ConnCtx;
use crate::gateway::{GatewayActor, Route};
use crate::outbound::{Held, LARGE_LINE, Meter, Outbound, ReplyBudget, footprint};

/// Replies are written in chunks of up to this many bytes when several are queued.
const WRITE_CHUNK: usize = 64 * 1024;
/// A queued line at least this long is written from its own buffer, not copied into a chunk
/// (shorter ones are counted at their length, see [`footprint`]).
const WRITE_DIRECT: usize = LARGE_LINE;
/// A connection's read buffer is shrunk back to this after a longer line.
const READ_KEEP: usize = 8 * 1024;

/// The `[ipc]` section of the configuration: the socket's limits.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpcConfig {
    /// Largest accepted message (one line), in bytes.
    pub max_message_bytes: usize,
    /// Most connections open at once; past it, idle connections are closed to make room, and
    /// when none is idle the new one is refused with -32009.
    pub max_connections: usize,
    /// Most requests in flight on one connection; past it the daemon stops reading from that
    /// connection until replies go out (backpressure).
    pub max_inflight_per_connection: usize,
    /// Most requests in one batch; a longer batch is refused whole with -32600.
    pub max_batch_requests: usize,
    /// A reply that cannot be written for this long closes the connection.
    pub write_timeout_ms: u64,
    /// Daemon-wide budget for replies waiting to be written (all connections together, batch
    /// replies as they are built included); past it the daemon stops reading from connections
    /// that have replies waiting.
    pub max_pending_reply_bytes: usize,
}

impl Default for IpcConfig {
    fn default() -> Self {
        IpcConfig {
            max_message_bytes: ccd_protocol::DEFAULT_MAX_MESSAGE_BYTES,
            max_connections: 1024,
            max_inflight_per_connection: 64,
            max_batch_requests: ccd_protocol::DEFAULT_MAX_BATCH,
            write_timeout_ms: 30_000,
            max_pending_reply_bytes: 256 * 1024 * 1024,
        }
    }
}

/// How a stop ends the requests in flight.
pub struct GracefulStop {
    /// How long they may take to finish on their own.
    pub timeout: Duration,
    /// Then called to cancel the work that still runs (agent runs), which then ends as
    /// cancelled, recorded and answered as such...
    pub cancel: Box<dyn FnOnce()>,
    /// ...within this long.
    pub cancel_grace: Duration,
}

/// Serve connections until `shutdown` is cancelled, then stop gracefully: stop accepting, let
/// in-flight requests finish (up to `drain.timeout`, then cancel what still runs), write their
/// replies, close connections.
pub async fn serve(
    listener: Listener,
    gateway: Addr<GatewayActor>,
    cfg: IpcConfig,
    shutdown: CancellationToken,
    drain: GracefulStop,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) {
    let uid = current_euid();
    let requests = TaskTracker::new();
    let connections = TaskTracker::new();
    let table = Rc::new(RefCell::new(ConnTable::default()));
    let budget = Arc::new(ReplyBudget::new(cfg.max_pending_reply_bytes));
    let estimates = Rc::new(Estimates::new());
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the connections we have.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        if let Err(why) = check_peer(&stream, uid) {
            tracing::warn!(conn = next_id, "refused connection: {why}");
            continue;
        }
        let admitted = table
            .borrow_mut()
            .admit(next_id, cfg.max_connections, &budget);
        let Some(state) = admitted else {
            tracing::warn!(
                conn = next_id,
                "refused connection: {} connections open, none idle",
                cfg.max_connections
            );
            connections.spawn_local(refuse(stream, cfg.max_connections));
            continue;
        };
        let conn = Connection {
            id: next_id,
            metrics: metrics.clone(),
            gateway: gateway.clone(),
            cfg: cfg.clone(),
            state,
            requests: requests.clone(),
            estimates: estimates.clone(),
        };
        let table = table.clone();
        connections.spawn_local(async move {
            let id = conn.id;
            conn.run(stream).await;
            table.borrow_mut().conns.remove(&id);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; waiting for in-flight requests");
    // Open connections stop reading too (a client that keeps sending would otherwise keep the
    // daemon busy until the drain timeout) and their event subscriptions end; what they have
    // in flight finishes and its replies are written.
    for state in table.borrow().conns.values() {
        state.closing.cancel();
    }
    requests.close();
    if tokio::time::timeout(drain.timeout, requests.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight requests still running after {:?}; cancelling them",
            drain.timeout
        );
        (drain.cancel)();
        if tokio::time::timeout(drain.cancel_grace, requests.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight requests still running {:?} after their cancellation; closing anyway",
                drain.cancel_grace
            );
        }
    }
    connections.close();
    if tokio::time::timeout(Duration::from_secs(2), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
}

fn current_euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn check_peer(stream: &Stream, uid: u32) -> Result<(), String> {
    let creds = stream
        .peer_creds()
        .map_err(|e| format!("could not read peer credentials: {e}"))?;
    match creds.euid() {
        Some(peer) if peer == uid => Ok(()),
        Some(peer) => Err(format!("peer uid {peer} is not the daemon's uid {uid}")),
        None => Err("the peer's uid is unknown".into()),
    }
}

async fn refuse(stream: Stream, max: usize) {
    let mut send = stream;
    let err = RpcError::new(
        ErrorCode::Overloaded,
        format!("too many connections ({max} open, none idle); try again later"),
    );
    let line = to_line(&Response::error(Id::Null, err));
    let _ = tokio::time::timeout(Duration::from_secs(1), send.write_all(&line)).await;
}

/// Live connections, for the connection limit and for closing them all on stop.
#[derive(Default)]
struct ConnTable {
    conns: HashMap<u64, Rc<ConnState>>,
}

struct ConnState {
    /// Cancelled to make the connection stop reading (idle eviction, daemon stop).
    closing: CancellationToken,
    /// Cancelled when the client is gone (a write failed): in-flight work for it may stop.
    closed: CancellationToken,
    last_active: Cell<Instant>,
    inflight: Cell<usize>,
    /// Reply bytes held for the client (reserved, being built, queued) and not yet written:
    /// such a connection is not idle.
    unwritten: Arc<Meter>,
    /// Live event subscriptions: such a connection is never idle.
    subscriptions: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnTable {
    fn admit(&mut self, id: u64, max: usize, budget: &Arc<ReplyBudget>) -> Option<Rc<ConnState>> {
        if self.conns.len() >= max {
            let idle = self
                .conns
                .iter()
                .filter(|(_, s)| {
                    s.inflight.get() == 0
                        && s.unwritten.unwritten() == 0
                        && s.subscriptions.load(std::sync::atomic::Ordering::Relaxed) == 0
                        && !s.closing.is_cancelled()
                })
                .min_by_key(|(_, s)| s.last_active.get())
                .map(|(id, _)| *id)?;
            if let Some(evicted) = self.conns.remove(&idle) {
                tracing::info!(
                    conn = idle,
                    "closing the longest-idle connection to make room for a new one"
                );
                evicted.closing.cancel();
            }
        }
        let state = Rc::new(ConnState {
            closing: CancellationToken::new(),
            closed: CancellationToken::new(),
            last_active: Cell::new(Instant::now()),
            inflight: Cell::new(0),
            unwritten: Arc::new(Meter::new(budget.clone())),
            subscriptions: Default::default(),
        });
        self.conns.insert(id, state.clone());
        Some(state)
    }
}

struct Connection {
    id: u64,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    gateway: Addr<GatewayActor>,
    cfg: IpcConfig,
    state: Rc<ConnState>,
    requests: TaskTracker,
    estimates: Rc<Estimates>,
}

/// What each method's reply is expected to weigh, reserved against the reply budgets while a
/// request runs: the size of its last successful reply, or a bit less than the largest recent
/// one (an estimate shrinks by an eighth per smaller reply). A method not answered yet is
/// expected to take [`FIRST_ESTIMATE`]; a name that is no method gets a short error. Twice
/// that is reserved: the method's answer and the line made from it exist together for a
/// moment, and a burst of answers (hundreds of connections let in at once) is that large.
struct Estimates {
    by_method: HashMap<&'static str, Cell<usize>>,
}

const FIRST_ESTIMATE: usize = 64 * 1024;
const ERROR_ESTIMATE: usize = 256;

impl Estimates {
    fn new() -> Self {
        let by_method = ccd_protocol::methods::ALL_METHODS
            .iter()
            .map(|m| (*m, Cell::new(FIRST_ESTIMATE)))
            .collect();
        Estimates { by_method }
    }

    /// The reply bytes to reserve for `req` (none for a notification), and where to learn its
    /// real size.
    fn of(&self, req: &Request) -> (usize, Option<&Cell<usize>>) {
        if req.id.is_none() {
            return (0, None);
        }
        match self.by_method.get(req.method.as_str()) {
            Some(cell) => (2 * cell.get(), Some(cell)),
            None => (ERROR_ESTIMATE, None),
        }
    }
}

/// Learn a method's reply size from a successful reply (errors are short and say nothing about
/// the next result).
fn learn(estimate: Option<&Cell<usize>>, reply: &WireReply, len: usize) {
    if let (Some(cell), WireReply::Result(_)) = (estimate, reply) {
        let old = cell.get();
        cell.set(footprint(len).max(old - old / 8));
    }
}

/// Whether a connection holding `mine` reply bytes with `used` in-flight slots taken may start
/// work expected to reply `more` bytes: within the per-connection bound and the daemon-wide
/// budget, or holding nothing at all (so that a client that reads its replies is always served,
/// one request at a time at worst, whatever the others hold).
fn admits(meter: &Meter, limit: usize, used: usize, more: usize) -> bool {
    let mine = meter.unwritten();
    let budget = meter.budget();
    (mine == 0 && used == 0)
        || (mine.saturating_add(more) <= limit
            && budget.pending().saturating_add(more) <= budget.max())
}

impl Connection {
    async fn run(self, stream: Stream) {
        // A duplicate of the socket, to notice a peer that is gone (not just half-closed).
        let hangup = match &stream {
            Stream::UdSocket(s) => std::os::fd::AsFd::as_fd(s).try_clone_to_owned().ok(),
        };
        let (recv, send) = tokio::io::split(stream);
        let (out_tx, out_rx) =
            mpsc::channel::<Bytes>(self.cfg.max_inflight_per_connection.max(1) * 2);
        let timeout = Duration::from_millis(self.cfg.write_timeout_ms);
        let outbound = Outbound::with_meter(out_tx, self.state.unwritten.clone());
        let writer = actix_rt::spawn(write_loop(
            self.id,
            send,
            out_rx,
            outbound.meter(),
            timeout,
            self.state.closed.clone(),
        ));
        self.read_loop(recv, outbound, hangup).await;
        // The queue closes once the last sender is gone: its remaining replies go out first.
        let _ = writer.await;
        tracing::debug!(conn = self.id, "connection closed");
    }

    /// Read and answer requests until EOF or the connection closes, then finish the requests
    /// still in flight.
    async fn read_loop(
        &self,
        recv: ReadHalf<Stream>,
        out: Outbound,
        mut hangup: Option<std::os::fd::OwnedFd>,
    ) {
        // A client that is gone must be noticed (its queries cancelled) also when nothing is
        // read from it: at EOF, and as soon as reading stops for backpressure or full slots,
        // when its EOF would not be read. Watched from then on, once.
        let closed_token = self.state.closed.clone();
        let mut watch_hangup_once = move || {
            if let Some(fd) = hangup.take() {
                actix_rt::spawn(watch_hangup(fd, closed_token.clone()));
            }
        };
        let mut frames = FramedRead::new(recv, NdjsonCodec::new(self.cfg.max_message_bytes));
        let max_inflight = self.cfg.max_inflight_per_connection.max(1);
        let limit = self.cfg.max_message_bytes;
        let meter = out.meter();
        let ctx = ConnCtx::new(crate::conn::ConnInfo {
            id: self.id,
            outbound: out.clone(),
            closed: self.state.closed.clone(),
            closing: self.state.closing.clone(),
            subscriptions: self.state.subscriptions.clone(),
        });
        // The requests in flight on this connection, each resolving to the number of in-flight
        // slots it held. This task polls them itself: a tokio task per request (a cache-aligned
        // allocation, scheduling, its own wake-ups) was one of the dearest steps of a small
        // request.
        let mut inflight = FuturesUnordered::new();
        let mut used = 0usize;
        // Made once: the loop turns once per request that completes.
        let closing = self.state.closing.cancelled();
        let closed = self.state.closed.cancelled();
        tokio::pin!(closing, closed);
        'read: loop {
            // Read only with a free slot, and only while the reply bytes held for the client
            // stay under the message size limit and those of all clients under the daemon-wide
            // budget: a client that does not read its replies gets no new request read
            // (backpressure). Requests in flight keep running meanwhile.
            let free = used < max_inflight;
            let drained = admits(&meter, limit, used, 0);
            if !(free && drained) {
                watch_hangup_once();
            }
            let frame = tokio::select! {
                biased;
                _ = &mut closing => break,
                _ = &mut closed => break,
                Some(freed) = inflight.next() => {
                    used -= freed;
                    continue;
                }
                _ = meter.wait(|m| admits(m, limit, used, 0)), if free && !drained => continue,
                frame = frames.next(), if free && drained => frame,
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(FrameError::TooLong { limit })) => {
                    let err = RpcError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "message over the size limit of {limit} bytes; closing the connection"
                        ),
                    );
                    let line = to_line(&Response::error(Id::Null, err));
                    let held = Held::new(&meter, 0);
                    inflight.push(self.serve(Work::Invalid(line), 1, held, ctx.clone()));
                    break;
                }
                Some(Err(FrameError::Io(e))) => {
                    tracing::debug!(conn = self.id, "read error: {e}");
                    break;
                }
            };
            // `last_active` is not set here: the request counts in flight until its reply is
            // queued (a connection with one is never idle), and then sets it.
            // `expect`: the reply bytes this work is expected to add (a batch: its first
            // request's; it reserves the rest item by item).
            let (work, slots, expect) = match parse_incoming(&frame, self.cfg.max_batch_requests) {
                Incoming::Invalid(resp) => (Work::Invalid(to_line(&resp)), 1, 0),
                Incoming::Single(Ok(req)) => {
                    let (expect, estimate) = self.estimates.of(&req);
                    (Work::Single(Ok(req), estimate), 1, expect)
                }
                Incoming::Single(Err(invalid)) => (Work::Single(Err(invalid), None), 1, 0),
                // A batch's items count against the in-flight limit like single requests, up to
                // the whole limit: its items then run that many at a time.
                Incoming::Batch(items) => {
                    let slots = items.len().clamp(1, max_inflight);
                    let expect = items
                        .iter()
                        .find_map(|item| item.as_ref().ok().filter(|r| r.id.is_some()))
                        .map_or(0, |req| self.estimates.of(req).0);
                    (Work::Batch(items), slots, expect)
                }
            };
            drop(frame);
            // A long line leaves the read buffer grown to its length: that is not kept for as
            // long as the connection waits (what was read past the line is kept).
            let buffer = frames.read_buffer_mut();
            if buffer.capacity() > READ_KEEP && buffer.len() < READ_KEEP {
                let mut fresh = BytesMut::with_capacity(READ_KEEP);
                fresh.extend_from_slice(buffer);
                *buffer = fresh;
            }
            let ready =
                |used: usize| used + slots <= max_inflight && admits(&meter, limit, used, expect);
            if !ready(used) {
                watch_hangup_once();
            }
            while !ready(used) {
                tokio::select! {
                    biased;
                    _ = &mut closing => break 'read,
                    _ = &mut closed => break 'read,
                    Some(freed) = inflight.next() => used -= freed,
                    _ = meter.wait(|m| admits(m, limit, used, expect)),
                        if used + slots <= max_inflight => {}
                }
            }
            used += slots;
            let held = match &work {
                Work::Batch(items) => Held::new(&meter, batch_bytes(items)),
                _ => Held::new(&meter, expect),
            };
            inflight.push(self.serve(work, slots, held, ctx.clone()));
        }
        // EOF may be a half-close from a client still waiting for its replies, or a client that
        // is gone. Only the latter cancels its work (queries in flight).
        watch_hangup_once();
        // Requests still in flight finish, and their replies are queued, before the connection
        // closes.
        while inflight.next().await.is_some() {}
    }

    /// Answer one line's work holding `slots` in-flight slots; resolves to `slots` once the
    /// reply is queued for the client. The connection counts it in flight from this call on.
    ///
    /// Every request's future is allocated (in the connection's set of requests in flight), so
    /// it is kept small (a few hundred bytes): it is put together from combinators, which hold
    /// each step's state only while it runs (an `async` block would also keep a copy of every
    /// future it captures; this one was 1.5 KiB as one).
    ///
    /// `held` is the reply's reservation against the budgets (see [`admits`]); it becomes the
    /// reply's size once the reply is made, and is given back when the reply is written.
    fn serve<'a>(
        &'a self,
        work: Work<'a>,
        slots: usize,
        held: Held,
        ctx: ConnCtx,
    ) -> impl Future<Output = usize> + 'a {
        // Tracked from now until its reply is queued, so a graceful stop waits for it, and the
        // connection is not idle meanwhile.
        let tracked = self.requests.token();
        self.state.inflight.set(self.state.inflight.get() + 1);
        let metrics = self.metrics.as_deref();
        let line = match work {
            Work::Invalid(line) => Either::Left(ready(Some((line, held)))),
            Work::Single(Err(invalid), _) => Either::Left(ready(Some((to_line(&invalid), held)))),
            Work::Single(Ok(req), estimate) => Either::Right(Either::Left(
                answer(&self.gateway, req, ctx.clone(), metrics).map(move |r| {
                    r.map(|r| {
                        let line = to_line(&r);
                        learn(estimate, &r, line.len());
                        (line, held)
                    })
                }),
            )),
            // Boxed: a batch's state would make every request's future larger.
            Work::Batch(items) => Either::Right(Either::Right(Box::pin(self.answer_batch(
                items,
                slots,
                held,
                ctx.clone(),
            )))),
        };
        line.then(move |line| async move {
            if let Some((line, held)) = line {
                let _ = ctx.outbound.send_held(line, held).await;
            }
        })
        .map(move |()| {
            drop(tracked);
            let state = &self.state;
            state.inflight.set(state.inflight.get() - 1);
            state.last_active.set(Instant::now());
            slots
        })
    }

    /// A batch's replies, its items answered `slots` at a time, as one line (none if every
    /// item was a notification), with its bytes counted against the budgets.
    ///
    /// The line is built as the items are answered, and counted as it grows: each request
    /// reserves its expected reply while it runs, and one that would take the connection's
    /// reply bytes past `max_message_bytes` or the daemon's past `max_pending_reply_bytes`
    /// waits for the batch's earlier items; when none is left to wait for, it and every later
    /// request of the batch are not run and are answered -32009 each (the first request
    /// always runs). Notifications run whatever the budgets, as they reply nothing.
    ///
    /// `parsed` counts the parsed requests (see [`batch_bytes`]) until they have all been run.
    async fn answer_batch(
        &self,
        items: Vec<Result<Request, Response>>,
        slots: usize,
        parsed: Held,
        ctx: ConnCtx,
    ) -> Option<(Bytes, Held)> {
        let metrics = self.metrics.as_deref();
        let meter = ctx.outbound.meter();
        let limit = self.cfg.max_message_bytes;
        let mut line = Vec::new();
        let mut held = Held::new(&meter, 0);
        let mut append = |part: Option<(Vec<u8>, Held)>| {
            if let Some((part, part_held)) = part {
                line.extend_from_slice(if line.is_empty() { b"[" } else { b"," });
                line.extend_from_slice(&part);
                held.resize(footprint(line.len()));
                drop(part_held);
            }
        };
        let mut running = FuturesOrdered::new();
        let mut started = false;
        let mut refused: Option<&'static str> = None;
        for item in items {
            let req = match item {
                Ok(req) => req,
                Err(invalid) => {
                    let part = part(&WireReply::Other(invalid), Held::new(&meter, 0));
                    running.push_back(Either::Left(ready(Some(part))));
                    continue;
                }
            };
            let (expect, estimate) = self.estimates.of(&req);
            if expect > 0 && started {
                while refused.is_none() {
                    let mine = meter.unwritten().saturating_add(expect);
                    let all = meter.budget().pending().saturating_add(expect);
                    if mine <= limit && all <= meter.budget().max() {
                        break;
                    }
                    match running.next().await {
                        Some(done) => append(done),
                        None if mine > limit => refused = Some("ipc.max_message_bytes"),
                        None => refused = Some("ipc.max_pending_reply_bytes"),
                    }
                }
                if let Some(key) = refused {
                    let id = req.id.unwrap_or(Id::Null);
                    let err = RpcError::new(
                        ErrorCode::Overloaded,
                        format!("not run: the batch's replies would pass `{key}`"),
                    )
                    .with_data(serde_json::json!({ "limit": key }));
                    let reply = WireReply::Other(Response::error(id, err));
                    let part = part(&reply, Held::new(&meter, 0));
                    // Joined at once unless earlier replies are still to come (invalid items):
                    // a thousand refusals must not wait as a thousand buffers.
                    if running.is_empty() {
                        append(Some(part));
                    } else {
                        running.push_back(Either::Left(ready(Some(part))));
                    }
                    continue;
                }
            }
            started |= expect > 0;
            while running.len() >= slots {
                match running.next().await {
                    Some(done) => append(done),
                    None => break,
                }
            }
            let reserved = Held::new(&meter, expect);
            let answered = answer(&self.gateway, req, ctx.clone(), metrics).map(move |r| {
                r.map(|r| {
                    let done = part(&r, reserved);
                    learn(estimate, &r, done.0.len());
                    done
                })
            });
            running.push_back(Either::Right(answered));
        }
        while let Some(done) = running.next().await {
            append(done);
        }
        // The parsed requests are all gone now.
        drop(parsed);
        if line.is_empty() {
            return None;
        }
        line.extend_from_slice(b"]\n");
        // It grew by doubling: what it does not use is given back before it waits to be written.
        line.shrink_to_fit();
        held.resize(footprint(line.len()));
        Some((Bytes::from(line), held))
    }
}

/// What a batch's parsed requests take while it runs (a thousand of them, about 150 kB, for as
/// long as the batch runs), counted against the reply budgets with its replies.
fn batch_bytes(items: &[Result<Request, Response>]) -> usize {
    let heap: usize = items
        .iter()
        .map(|item| item.as_ref().map_or(64, |req| req.method.len() + 64))
        .sum();
    std::mem::size_of_val(items) + heap
}

/// One reply of a batch as JSON text, with `held` counting its bytes until it joins the line.
fn part(reply: &WireReply, mut held: Held) -> (Vec<u8>, Held) {
    let text = serde_json::to_vec(reply).unwrap_or_else(|e| {
        format!(
            r#"{{"jsonrpc":"2.0","error":{{"code":-32603,"message":"could not encode reply: {e}"}},"id":null}}"#
        )
        .into_bytes()
    });
    held.resize(footprint(text.capacity()));
    (text, held)
}

/// Cancel `closed` once the peer has closed its end entirely (POLLHUP), checked every 100 ms
/// until the connection is done.
async fn watch_hangup(fd: std::os::fd::OwnedFd, closed: CancellationToken) {
    use rustix::event::{PollFd, PollFlags, poll};
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::empty())];
        let hung_up = poll(
            &mut fds,
            Some(&rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        )
        .map(|_| fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR))
        // A failed poll (EINTR while a signal is handled) says nothing about the peer.
        .unwrap_or(false);
        if hung_up {
            closed.cancel();
            return;
        }
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// One request's reply: a result as the JSON text the gateway made, or an error.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum WireReply {
    Result(RawResponse),
    Other(Response),
}

enum Work<'a> {
    /// An error reply already made (an invalid line).
    Invalid(Bytes),
    /// A request (and where to learn its method's reply size), or an error reply.
    Single(Result<Request, Response>, Option<&'a Cell<usize>>),
    Batch(Vec<Result<Request, Response>>),
}

/// Route one request through the gateway; `None` for a notification.
///
/// Made of combinators, like [`Connection::serve`], to keep every request's future small.
fn answer<'a>(
    gateway: &Addr<GatewayActor>,
    req: Request,
    conn: ConnCtx,
    metrics: Option<&'a crate::metrics::Metrics>,
) -> impl Future<Output = Option<WireReply>> + use<'a> {
    let started = Instant::now();
    let Request {
        id, method, params, ..
    } = req;
    let method_name = metrics.map(|_| method.clone());
    let route = Route {
        method,
        params,
        conn,
    };
    crate::gateway::route(gateway, route).map(move |result| {
        if let (Some(m), Some(method)) = (metrics, method_name) {
            m.rpc(&method, started.elapsed());
        }
        let id = id?;
        Some(match result {
            Ok(v) => WireReply::Result(RawResponse::new(id, v)),
            Err(e) => WireReply::Other(Response::error(id, RpcError::from(e))),
        })
    })
}

/// Write the connection's queued lines until the queue closes or a write fails or times out.
///
/// Short lines that are queued together are copied into one chunk and written at once (each
/// dropped as it is copied); a long line is written from its own buffer, so that no reply is
/// ever held twice. A line's bytes stop counting against the budgets once written, or once it
/// is clear that they never will be.
async fn write_loop(
    id: u64,
    mut send: WriteHalf<Stream>,
    mut rx: mpsc::Receiver<Bytes>,
    meter: Arc<Meter>,
    timeout: Duration,
    closed: CancellationToken,
) {
    let mut chunk = BytesMut::new();
    'write: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(line) = next.take() {
            if line.len() >= WRITE_DIRECT {
                if !write(id, &mut send, &chunk, timeout).await {
                    meter.wrote(footprint(line.len()));
                    break 'write;
                }
                meter.wrote(chunk.len());
                chunk.clear();
                let written = write(id, &mut send, &line, timeout).await;
                meter.wrote(footprint(line.len()));
                drop(line);
                if !written {
                    break 'write;
                }
            } else {
                chunk.extend_from_slice(&line);
            }
            // Coalesce replies already queued into one write.
            if chunk.len() < WRITE_CHUNK {
                next = rx.try_recv().ok();
            }
        }
        if !write(id, &mut send, &chunk, timeout).await {
            break;
        }
        meter.wrote(chunk.len());
        chunk.clear();
        // A chunk grown for a burst of replies is not kept for the connection's whole life.
        if chunk.capacity() > WRITE_CHUNK {
            chunk = BytesMut::new();
        }
    }
    closed.cancel();
    // What is still queued will not be written: it no longer counts.
    meter.wrote(chunk.len());
    rx.close();
    while let Ok(line) = rx.try_recv() {
        meter.wrote(footprint(line.len()));
    }
}

/// Write all of `buf`; false if the client is gone or did not read for `timeout`.
async fn write(id: u64, send: &mut WriteHalf<Stream>, buf: &[u8], timeout: Duration) -> bool {
    if buf.is_empty() {
        return true;
    }
    match tokio::time::timeout(timeout, send.write_all(buf)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(conn = id, "client gone: {e}");
            false
        }
        Err(_) => {
            tracing::warn!(
                conn = id,
                "client did not read its replies for {timeout:?}; closing the connection"
            );
            false
        }
    }
}
