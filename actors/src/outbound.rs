//! A connection's outgoing lines (replies and notifications, in order) with a count of the bytes
//! queued but not yet written to the socket, which the socket side uses for backpressure: it
//! stops reading requests from a connection whose client is not reading what it already has.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

#[derive(Clone, Debug)]
pub struct Outbound {
    tx: mpsc::Sender<Bytes>,
    meter: Arc<Meter>,
}

/// The count of a connection's queued, unwritten bytes, shared by its senders and its writer.
#[derive(Debug, Default)]
pub struct Meter {
    unwritten: AtomicUsize,
    written: Notify,
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
        let n = line.len();
        self.meter.unwritten.fetch_add(n, Ordering::SeqCst);
        let mut counted = Counted {
            meter: &self.meter,
            n,
            queued: false,
        };
        // Most lines find room at once: only a full queue waits, in a boxed future, which keeps
        // the future of every reply small.
        let sent = match self.tx.try_send(line) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(line)) => Box::pin(self.tx.send(line)).await,
            Err(mpsc::error::TrySendError::Closed(line)) => Err(mpsc::error::SendError(line)),
        };
        counted.queued = sent.is_ok();
        sent
    }

    /// The byte count, for the writer (which must not hold a sender: the queue closes when the
    /// last sender is gone).
    pub fn meter(&self) -> Arc<Meter> {
        self.meter.clone()
    }
}

/// A line's bytes counted by [`Outbound::send`]: uncounted when dropped unless queued.
struct Counted<'a> {
    meter: &'a Meter,
    n: usize,
    queued: bool,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if !self.queued {
            self.meter.wrote(self.n);
        }
    }
}

impl Meter {
    /// Bytes queued and not yet written.
    pub fn unwritten(&self) -> usize {
        self.unwritten.load(Ordering::SeqCst)
    }

    /// The writer has written (or dropped) `n` queued bytes.
    pub fn wrote(&self, n: usize) {
        // Never below zero, whatever a caller reports.
        let _ = self
            .unwritten
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(n))
            });
        self.written.notify_waiters();
    }

    /// Waits until at most `limit` bytes are queued and not yet written.
    pub async fn drained_to(&self, limit: usize) {
        loop {
            let notified = self.written.notified();
            tokio::pin!(notified);
            // Registered before the check, so a write between the check and the wait wakes us.
            notified.as_mut().enable();
            if self.unwritten() <= limit {
                return;
            }
            notified.await;
        }
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
}
