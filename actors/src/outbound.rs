//! A connection's outgoing lines (replies and notifications, in order) with a count of the reply
//! bytes it holds and has not yet written to the socket, which the socket side uses for
//! backpressure: it stops reading requests from a connection whose client is not reading what it
//! already has. Every connection's count also adds up in one daemon-wide [`ReplyBudget`]
//! (`ipc.max_pending_reply_bytes`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

#[derive(Clone, Debug)]
pub struct Outbound {
    tx: mpsc::Sender<Bytes>,
    meter: Arc<Meter>,
}

/// The count of a connection's reply bytes not yet written: reserved for its requests in flight,
/// being built (a batch's reply) or queued. Shared by its senders and its writer.
#[derive(Debug, Default)]
pub struct Meter {
    unwritten: AtomicUsize,
    written: Notify,
    budget: Arc<ReplyBudget>,
}

/// The daemon-wide count of reply bytes not yet written, over all connections, and its bound.
#[derive(Debug)]
pub struct ReplyBudget {
    max: usize,
    pending: AtomicUsize,
    /// Connections waiting for room ([`Meter::wait`]); bytes freed are announced only to them.
    waiters: AtomicUsize,
    /// Bytes freed since waiters were last woken: they are woken every [`WAKE_STEP`] bytes, not
    /// at every write, so that hundreds of blocked connections do not all wake per small reply.
    freed_since_wake: AtomicUsize,
    freed: Notify,
}

/// See [`ReplyBudget::freed_since_wake`].
const WAKE_STEP: usize = 64 * 1024;

/// Lines from this long on are large allocations, which [`footprint`] rounds up.
pub const LARGE_LINE: usize = 16 * 1024;

/// What a line of `len` bytes is counted as: what it takes in memory. A large allocation is
/// rounded up to one of four size classes per power of two and given one page more (jemalloc's
/// large classes, with its cache-oblivious offset): a 61,197-byte reply takes 69,632 bytes, and
/// counting only its length let 256 MiB of replies take 290 MiB.
pub fn footprint(len: usize) -> usize {
    if len < LARGE_LINE {
        return len;
    }
    let step = len.next_power_of_two() / 8;
    len.div_ceil(step) * step + 4096
}

impl Default for ReplyBudget {
    /// No bound (for connections that are not the socket's: tests, the HTTP API's calls).
    fn default() -> Self {
        ReplyBudget::new(usize::MAX)
    }
}

impl ReplyBudget {
    pub fn new(max: usize) -> Self {
        ReplyBudget {
            max,
            pending: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            freed_since_wake: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// The bound, `ipc.max_pending_reply_bytes`.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Reply bytes held, over all connections, and not yet written.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    fn add(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::SeqCst);
    }

    fn sub(&self, n: usize) {
        let before = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                Some(p.saturating_sub(n))
            })
            .unwrap_or(0);
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return;
        }
        let freed = self.freed_since_wake.fetch_add(n, Ordering::SeqCst) + n;
        let after = before.saturating_sub(n);
        if freed >= WAKE_STEP || after == 0 || (before > self.max && after <= self.max) {
            self.freed_since_wake.store(0, Ordering::SeqCst);
            self.freed.notify_waiters();
        }
    }
}

impl Outbound {
    pub fn new(tx: mpsc::Sender<Bytes>) -> Self {
        Self::with_meter(tx, Arc::default())
    }

    /// Count the queued bytes in `meter` (which others may read).
    pub fn with_meter(tx: mpsc::Sender<Bytes>, meter: Arc<Meter>) -> Self {
        Outbound { tx, meter }
    }

    /// Queue one line for the connection's writer; waits while the queue is full. A line that
    /// is not queued (the queue closed, or this future was dropped while it waited for room,
    /// as when a `select!` takes another branch) is not counted.
    pub async fn send(&self, line: Bytes) -> Result<(), mpsc::error::SendError<Bytes>> {
        self.send_held(line, Held::new(&self.meter, 0)).await
    }

    /// [`Outbound::send`] for a line whose bytes were counted ahead (a reply, reserved when its
    /// request was admitted): the count becomes the line's length, and goes when it is written,
    /// or at once if the line is not queued.
    pub async fn send_held(
        &self,
        line: Bytes,
        mut held: Held,
    ) -> Result<(), mpsc::error::SendError<Bytes>> {
        held.resize(footprint(line.len()));
        // Most lines find room at once: only a full queue waits, in a boxed future, which keeps
        // the future of every reply small.
        let sent = match self.tx.try_send(line) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(line)) => Box::pin(self.tx.send(line)).await,
            Err(mpsc::error::TrySendError::Closed(line)) => Err(mpsc::error::SendError(line)),
        };
        if sent.is_ok() {
            // Queued: the writer takes the count back as it writes the line.
            held.n = 0;
        }
        sent
    }

    /// The byte count, for the writer (which must not hold a sender: the queue closes when the
    /// last sender is gone).
    pub fn meter(&self) -> Arc<Meter> {
        self.meter.clone()
    }
}

/// Bytes counted in a [`Meter`] (and its budget) ahead of being queued: a reply's reservation
/// while its request runs, a batch's reply while it is built. Uncounted when dropped, unless
/// handed to [`Outbound::send_held`] and queued.
#[derive(Debug)]
pub struct Held {
    meter: Arc<Meter>,
    n: usize,
}

impl Held {
    pub fn new(meter: &Arc<Meter>, n: usize) -> Held {
        meter.add(n);
        Held {
            meter: meter.clone(),
            n,
        }
    }

    /// Count `n` bytes instead.
    pub fn resize(&mut self, n: usize) {
        if n > self.n {
            self.meter.add(n - self.n);
        } else if n < self.n {
            self.meter.wrote(self.n - n);
        }
        self.n = n;
    }

    pub fn bytes(&self) -> usize {
        self.n
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.n > 0 {
            self.meter.wrote(self.n);
        }
    }
}

impl Meter {
    /// A connection's count, adding up in `budget`.
    pub fn new(budget: Arc<ReplyBudget>) -> Self {
        Meter {
            unwritten: AtomicUsize::new(0),
            written: Notify::new(),
            budget,
        }
    }

    pub fn budget(&self) -> &ReplyBudget {
        &self.budget
    }

    /// Bytes held (reserved, being built or queued) and not yet written, each line counted at
    /// its [`footprint`].
    pub fn unwritten(&self) -> usize {
        self.unwritten.load(Ordering::SeqCst)
    }

    fn add(&self, n: usize) {
        self.unwritten.fetch_add(n, Ordering::SeqCst);
        self.budget.add(n);
    }

    /// The writer has written (or dropped) `n` counted bytes (a line's [`footprint`]).
    pub fn wrote(&self, n: usize) {
        // Never below zero, whatever a caller reports.
        let before = self
            .unwritten
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(n))
            })
            .unwrap_or(0);
        self.budget.sub(n.min(before));
        self.written.notify_waiters();
    }

    /// Waits until at most `limit` bytes are held and not yet written.
    pub async fn drained_to(&self, limit: usize) {
        self.wait(|m| m.unwritten() <= limit).await
    }

    /// Waits until `ready` holds, checked again whenever this connection writes or the
    /// daemon-wide budget frees room.
    pub async fn wait(&self, ready: impl Fn(&Meter) -> bool) {
        let budget = &self.budget;
        budget.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(budget);
        loop {
            let written = self.written.notified();
            let freed = budget.freed.notified();
            tokio::pin!(written, freed);
            // Registered before the check, so a write between the check and the wait wakes us.
            written.as_mut().enable();
            freed.as_mut().enable();
            if ready(self) {
                return;
            }
            tokio::select! {
                _ = written => {}
                _ = freed => {}
            }
        }
    }
}

/// One waiter of a [`ReplyBudget`], counted while it waits.
struct Waiting<'a>(&'a ReplyBudget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_queued_bytes_until_written() {
        let (tx, mut rx) = mpsc::channel(8);
        let out = Outbound::new(tx);
        let meter = out.meter();
        out.send(Bytes::from_static(b"hello\n")).await.unwrap();
        out.send(Bytes::from_static(b"hi\n")).await.unwrap();
        assert_eq!(meter.unwritten(), 9);
        let waiter = {
            let meter = meter.clone();
            tokio::spawn(async move { meter.drained_to(3).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "9 bytes are still queued");
        let first = rx.recv().await.unwrap();
        meter.wrote(first.len());
        waiter.await.unwrap();
        assert_eq!(meter.unwritten(), 3);
        meter.wrote(100);
        assert_eq!(meter.unwritten(), 0, "never below zero");
    }

    #[test]
    fn a_large_line_counts_what_the_allocator_gives_it() {
        assert_eq!(footprint(100), 100);
        assert_eq!(footprint(LARGE_LINE - 1), LARGE_LINE - 1);
        assert_eq!(footprint(61_197), 65_536 + 4096);
        assert_eq!(footprint(65_537), 81_920 + 4096);
        assert_eq!(footprint(1 << 20), (1 << 20) + 4096);
    }

    #[tokio::test]
    async fn a_send_given_up_while_waiting_for_room_takes_its_bytes_back() {
        let (tx, _rx) = mpsc::channel(1);
        let out = Outbound::new(tx);
        out.send(Bytes::from_static(b"queued\n")).await.unwrap();
        // The queue is full: this send waits, and is dropped for the branch that is ready.
        tokio::select! {
            biased;
            _ = out.send(Bytes::from_static(b"given up\n")) => panic!("the queue was full"),
            _ = std::future::ready(()) => {}
        }
        assert_eq!(out.meter().unwritten(), 7);
    }

    #[tokio::test]
    async fn a_closed_channel_takes_its_bytes_back() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let out = Outbound::new(tx);
        assert!(out.send(Bytes::from_static(b"x\n")).await.is_err());
        assert_eq!(out.meter().unwritten(), 0);
    }

    #[tokio::test]
    async fn every_connection_counts_in_the_budget_until_written_or_dropped() {
        let budget = Arc::new(ReplyBudget::new(100));
        let (tx_a, mut rx_a) = mpsc::channel(8);
        let (tx_b, _rx_b) = mpsc::channel(8);
        let a = Outbound::with_meter(tx_a, Arc::new(Meter::new(budget.clone())));
        let b = Outbound::with_meter(tx_b, Arc::new(Meter::new(budget.clone())));
        // A reservation counts at once, and becomes the line's size when queued.
        let held = Held::new(&a.meter(), 40);
        assert_eq!((a.meter().unwritten(), budget.pending()), (40, 40));
        a.send_held(Bytes::from_static(b"0123456789"), held)
            .await
            .unwrap();
        b.send(Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(budget.pending(), 13);
        // A reservation given up counts no more.
        drop(Held::new(&b.meter(), 50));
        assert_eq!((b.meter().unwritten(), budget.pending()), (3, 13));
        let line = rx_a.recv().await.unwrap();
        a.meter().wrote(line.len());
        assert_eq!((a.meter().unwritten(), budget.pending()), (0, 3));
        // Reporting more than was counted takes nothing from the other connections.
        a.meter().wrote(1000);
        assert_eq!(budget.pending(), 3);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_the_budget_frees_room() {
        let budget = Arc::new(ReplyBudget::new(100));
        let mine = Arc::new(Meter::new(budget.clone()));
        let other = Arc::new(Meter::new(budget.clone()));
        let hog = Held::new(&other, 100);
        let waiter = {
            let mine = mine.clone();
            tokio::spawn(async move { mine.wait(|m| m.budget().pending() + 10 <= 100).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the budget is full");
        drop(hog);
        waiter.await.unwrap();
        assert_eq!(budget.pending(), 0);
    }
}
