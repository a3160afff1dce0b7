//! The event bus: every observable thing the daemon does, as typed events, to every subscriber
//! and to the persisted event log.
//!
//! Publishing never blocks and never waits on a subscriber: [`Bus::publish`] takes a short lock,
//! numbers the event, and appends a shared reference to it (an `Arc`, not a copy) to each
//! matching subscriber's bounded queue and to the log's buffer. A queue that is full loses its
//! oldest event; the subscriber is then told how many it missed with a `lagged` event before its
//! next ones. A stalled subscriber therefore costs a publisher nothing but a pointer push.
//!
//! The [`EventBusActor`] (`eventbus`) owns the bus's background work: it writes published events
//! to the database in batches through the writer, and prunes them past the retention. The bus's
//! state lives in a shared core, so a restart of the actor loses no subscriber and no event: a
//! write under way runs outside the actor's context and keeps its batch through a restart; the
//! batch is written, or put back at the front of the buffer when the write fails.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::prelude::*;
use ccd_protocol::types::{Event, EventFilter, EventKind};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::store;
use crate::supervise::{Handle, Reply, Supervise, Supervision, ask, supervised};
use crate::writer::{Commit, WriterActor};

/// Most events kept for persistence while the writer is unavailable; older ones are dropped.
const MAX_PENDING: usize = 100_000;

/// Most events written to the log in one write (one op in the writer's group transaction), so
/// that a backlog after a failing spell does not hold the writer for one long statement run.
const FLUSH_BATCH: usize = 10_000;

/// `[events]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events older than this are pruned from the log.
    pub retention_days: u64,
    /// How many undelivered events a subscriber may have before it loses the oldest.
    pub subscriber_queue: usize,
    /// How often published events are written to the log.
    pub flush_interval_ms: u64,
    /// How often the log is pruned.
    pub prune_interval_s: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention_days: 7,
            subscriber_queue: 4096,
            flush_interval_ms: 200,
            prune_interval_s: 3600,
        }
    }
}

/// One subscriber's queue.
pub struct Subscriber {
    pub id: u64,
    /// The connection that subscribed (only it may unsubscribe).
    pub conn: u64,
    filter: EventFilter,
    capacity: usize,
    queue: Mutex<(VecDeque<Arc<Event>>, u64)>,
    ready: Notify,
    /// Cancelled by `event.unsubscribe`.
    pub ended: CancellationToken,
}

impl Subscriber {
    fn lock(&self) -> MutexGuard<'_, (VecDeque<Arc<Event>>, u64)> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, event: &Arc<Event>) {
        let mut q = self.lock();
        if q.0.len() >= self.capacity {
            q.0.pop_front();
            q.1 += 1;
        }
        q.0.push_back(event.clone());
        drop(q);
        self.ready.notify_one();
    }

    /// Wait for events: those queued, and how many were missed before them.
    pub async fn next_batch(&self) -> (Vec<Event>, u64) {
        let (events, missed) = self.next_shared().await;
        (
            events.into_iter().map(Arc::unwrap_or_clone).collect(),
            missed,
        )
    }

    /// As [`Subscriber::next_batch`], without copying the events (every subscriber and the
    /// log's buffer share them). Cancel-safe: nothing is taken from the queue until it returns.
    pub async fn next_shared(&self) -> (Vec<Arc<Event>>, u64) {
        loop {
            {
                let mut q = self.lock();
                if !q.0.is_empty() || q.1 > 0 {
                    let missed = std::mem::take(&mut q.1);
                    return (q.0.drain(..).collect(), missed);
                }
            }
            self.ready.notified().await;
        }
    }
}

/// A new subscription, with what a replay needs ([`Bus::try_subscribe_from`]).
/// Where a replaying subscription starts: after this event, with at most this many logged
/// events replayed.
#[derive(Debug, Clone, Copy)]
pub struct ReplayFrom {
    pub after_seq: u64,
    pub max_events: u32,
}

pub struct Subscription {
    pub sub: Arc<Subscriber>,
    /// The last event published before it.
    pub last_seq: u64,
    /// The first event not yet in the log.
    pub logged_before: u64,
    /// Events after the replay's start, matching, not yet in the log (oldest first).
    pub pending: Vec<Arc<Event>>,
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    next_sub: u64,
    subscribers: HashMap<u64, Arc<Subscriber>>,
    /// Events not yet written to the log, oldest first.
    pending: VecDeque<Arc<Event>>,
    /// Events dropped from `pending` for want of room since it was last reported.
    dropped: u64,
}

/// The bus: cheap to clone, shared by every publisher.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Mutex<Inner>>,
    /// One write of the log at a time: held by the write under way (a periodic flush, or the
    /// final one at stop), and released when its batch is written or back in `pending`.
    flush_slot: Arc<Semaphore>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            inner: Arc::default(),
            flush_slot: Arc::new(Semaphore::new(1)),
        }
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Continue numbering after the log's last event.
    pub fn start_after(&self, last_seq: u64) {
        let mut inner = self.lock();
        inner.next_seq = inner.next_seq.max(last_seq);
    }

    /// Publish an event: numbered, fanned out to matching subscribers, queued for the log.
    pub fn publish(&self, kind: EventKind) {
        let mut inner = self.lock();
        inner.next_seq += 1;
        let event = Arc::new(Event {
            seq: inner.next_seq,
            ts: store::rfc3339(store::now_ms()),
            kind,
        });
        for sub in inner.subscribers.values() {
            if sub.filter.matches(&event.kind) {
                sub.push(&event);
            }
        }
        if inner.pending.len() >= MAX_PENDING {
            inner.pending.pop_front();
            inner.dropped += 1;
        }
        inner.pending.push_back(event);
    }

    pub fn subscribe(&self, conn: u64, filter: EventFilter, capacity: usize) -> Arc<Subscriber> {
        let mut inner = self.lock();
        Self::add(&mut inner, conn, filter, capacity)
    }

    /// As [`Bus::subscribe`], unless connection `conn` already holds `max` subscriptions
    /// (counted under the bus's lock, so an `unsubscribe` makes room at once); with what a
    /// replay from `after_seq` needs, all taken under that lock: the subscription gets every event published after `last_seq`; the events
    /// still waiting for the log after `after_seq` that match the filter; and `logged_before`,
    /// the first event not yet in the log (every earlier one is there, unless dropped or
    /// pruned, once no write of the log is under way: see [`Bus::hold_log`]).
    pub fn try_subscribe_from(
        &self,
        conn: u64,
        filter: EventFilter,
        capacity: usize,
        max: usize,
        after_seq: u64,
    ) -> Option<Subscription> {
        let mut inner = self.lock();
        let held = inner
            .subscribers
            .values()
            .filter(|s| s.conn == conn)
            .count();
        if held >= max {
            return None;
        }
        let pending = inner
            .pending
            .iter()
            .filter(|e| e.seq > after_seq && filter.matches(&e.kind))
            .cloned()
            .collect();
        let last_seq = inner.next_seq;
        let logged_before = inner.pending.front().map_or(last_seq + 1, |e| e.seq);
        let sub = Self::add(&mut inner, conn, filter, capacity);
        Some(Subscription {
            sub,
            last_seq,
            logged_before,
            pending,
        })
    }

    /// Subscribe with a replay: the events logged after `after_seq` (at most `replay_max`; the
    /// older ones are reported by a `lagged` event first), then those still waiting for the
    /// log, then every event published from now on. Returns the subscription and the replay,
    /// oldest first, with nothing missing or repeated between the two. `None` when `conn`
    /// already holds `max` subscriptions.
    pub async fn subscribe_replaying(
        &self,
        reader: &crate::reader::Reader,
        conn: u64,
        filter: EventFilter,
        capacity: usize,
        max: usize,
        from: ReplayFrom,
    ) -> Result<Option<(Subscription, Vec<Event>)>, crate::ActorError> {
        let ReplayFrom {
            after_seq,
            max_events: replay_max,
        } = from;
        // No write of the log may run between the subscription and the read of the log, or a
        // batch being written would be in neither.
        let hold = self.hold_log().await;
        let types = filter.types.clone().unwrap_or_default();
        let wanted = filter.clone();
        let Some(s) = self.try_subscribe_from(conn, filter, capacity, max, after_seq) else {
            return Ok(None);
        };
        let before = s.logged_before;
        let logged = reader
            .read("replaying events", move |c| {
                store::events_between(c, after_seq, before, &types, replay_max)
            })
            .await;
        drop(hold);
        let (logged, left_out) = match logged {
            Ok(r) => r,
            Err(e) => {
                self.remove(s.sub.id);
                return Err(e);
            }
        };
        let mut replay: Vec<Event> = Vec::new();
        if left_out > 0 {
            replay.push(Event {
                seq: logged.first().map_or(before, |e| e.seq).saturating_sub(1),
                ts: store::rfc3339(store::now_ms()),
                kind: EventKind::Lagged { missed: left_out },
            });
        }
        replay.extend(logged.into_iter().filter(|e| wanted.matches(&e.kind)));
        replay.extend(s.pending.iter().map(|e| (**e).clone()));
        Ok(Some((s, replay)))
    }

    /// Wait until no write of the log is under way, and keep any from starting until the
    /// permit is dropped: meanwhile every published event is either in the log or pending.
    pub async fn hold_log(&self) -> OwnedSemaphorePermit {
        self.flush_slot
            .clone()
            .acquire_owned()
            .await
            .expect("the log's write slot is never closed")
    }

    fn add(inner: &mut Inner, conn: u64, filter: EventFilter, capacity: usize) -> Arc<Subscriber> {
        inner.next_sub += 1;
        let sub = Arc::new(Subscriber {
            id: inner.next_sub,
            conn,
            filter,
            capacity: capacity.max(1),
            queue: Mutex::new((VecDeque::new(), 0)),
            ready: Notify::new(),
            ended: CancellationToken::new(),
        });
        inner.subscribers.insert(sub.id, sub.clone());
        sub
    }

    /// End subscription `id` of connection `conn`; false when it has no such subscription.
    pub fn unsubscribe(&self, conn: u64, id: u64) -> bool {
        let mut inner = self.lock();
        match inner.subscribers.get(&id) {
            Some(sub) if sub.conn == conn => {
                sub.ended.cancel();
                inner.subscribers.remove(&id);
                true
            }
            _ => false,
        }
    }

    /// Forget a subscriber whose delivery ended (the client went away).
    pub fn remove(&self, id: u64) {
        self.lock().subscribers.remove(&id);
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// The oldest `max` events waiting for the log, and how many were dropped for want of room
    /// since the last call.
    fn take_batch(&self, max: usize) -> (Vec<Arc<Event>>, u64) {
        let mut inner = self.lock();
        let n = inner.pending.len().min(max);
        let batch = inner.pending.drain(..n).collect();
        (batch, std::mem::take(&mut inner.dropped))
    }

    /// Put a batch whose write failed back in front of what was published since, in order.
    /// Past [`MAX_PENDING`] the oldest events are dropped, as by `publish`.
    fn requeue(&self, batch: Vec<Arc<Event>>) {
        let mut inner = self.lock();
        for event in batch.into_iter().rev() {
            inner.pending.push_front(event);
        }
        let excess = inner.pending.len().saturating_sub(MAX_PENDING);
        inner.pending.drain(..excess);
        inner.dropped += excess as u64;
    }

    /// Write the oldest batch of pending events to the log, holding `slot` until it is written
    /// or back in the buffer. Returns false when there was nothing to write.
    async fn write_batch(
        &self,
        writer: &Addr<WriterActor>,
        _slot: &OwnedSemaphorePermit,
    ) -> Result<bool, crate::ActorError> {
        let (batch, dropped) = self.take_batch(FLUSH_BATCH);
        if dropped > 0 {
            tracing::warn!(
                "{dropped} events were dropped from the log's buffer ({MAX_PENDING} at most) \
                 while they could not be written; they were still delivered to subscribers"
            );
        }
        if batch.is_empty() {
            return Ok(false);
        }
        let n = batch.len();
        // The writer consumes its op; the batch is shared with it rather than copied, so that
        // a failed write can put it back as it was.
        let batch = Arc::new(batch);
        let written = ask(
            writer,
            "writer",
            Commit(store::InsertEvents {
                events: batch.clone(),
            }),
        )
        .await;
        match written {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::warn!("writing {n} events to the log: {e}; will retry");
                // The writer has dropped its share by the time it answers; if not, copy the
                // pointers.
                self.requeue(Arc::unwrap_or_clone(batch));
                Err(e)
            }
        }
    }
}

impl Bus {
    /// Write what is pending, batch after batch, so that a flush keeps up with however many
    /// events were published since the last one. A failure is logged, and its batch is back
    /// in the buffer for the next flush.
    async fn write_pending(&self, writer: &Addr<WriterActor>, slot: &OwnedSemaphorePermit) {
        while let Ok(true) = self.write_batch(writer, slot).await {
            if self.lock().pending.is_empty() {
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct EventBusActor {
    sup: Supervision,
    bus: Bus,
    writer: Addr<WriterActor>,
    cfg: EventsConfig,
}

supervised!(EventBusActor);

impl EventBusActor {
    pub fn new(sup: Supervision, bus: Bus, writer: Addr<WriterActor>, cfg: EventsConfig) -> Self {
        EventBusActor {
            sup,
            bus,
            writer,
            cfg,
        }
    }

    /// Write the oldest batch of what was published since the last flush, in one write (one
    /// transaction), unless a write is still under way.
    ///
    /// The write runs as a task of its own, not in the actor's context: a restart drops the
    /// context's futures, and a batch dropped with one (say, its write failed after the
    /// restart) would be neither written nor put back.
    fn flush(&mut self) {
        let Ok(slot) = self.bus.flush_slot.clone().try_acquire_owned() else {
            return;
        };
        if self.bus.lock().pending.is_empty() {
            return;
        }
        let bus = self.bus.clone();
        let writer = self.writer.clone();
        actix_rt::spawn(async move {
            bus.write_pending(&writer, &slot).await;
        });
    }

    fn prune(&mut self) {
        let cutoff = store::now_ms() - (self.cfg.retention_days.min(100_000) * 86_400_000) as i64;
        let writer = self.writer.clone();
        actix_rt::spawn(async move {
            match ask(
                &writer,
                "writer",
                Commit(store::PruneEvents { before_ms: cutoff }),
            )
            .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!("pruned {n} events past the retention"),
                Err(e) => tracing::warn!("pruning events: {e}"),
            }
        });
    }
}

impl Supervise for EventBusActor {
    fn supervision(&self) -> &Supervision {
        &self.sup
    }

    fn reset(&mut self, _: &mut Context<Self>) -> anyhow::Result<()> {
        // Nothing to rebuild: a write under way is not the actor's (see `flush`); it still
        // holds the bus's flush slot, and its batch is written or put back in the buffer.
        Ok(())
    }

    fn on_started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(
            Duration::from_millis(self.cfg.flush_interval_ms.max(10)),
            |act, _| act.flush(),
        );
        self.prune();
        ctx.run_interval(
            Duration::from_secs(self.cfg.prune_interval_s.max(1)),
            |act, _| act.prune(),
        );
    }
}

/// Write everything published so far now (used at stop).
pub struct FlushEvents;

impl crate::supervise::ActorRequest for FlushEvents {
    type Output = ();
}

impl Handle<FlushEvents> for EventBusActor {
    fn handle(&mut self, _: FlushEvents, _: &mut Context<Self>) -> Reply<()> {
        let bus = self.bus.clone();
        let writer = self.writer.clone();
        Reply::later(async move {
            // After the write under way, if any: a batch it fails to write is back in the
            // buffer by then, and is written here.
            let slot = bus
                .flush_slot
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| crate::ActorError::internal("flushing events", e))?;
            while bus.write_batch(&writer, &slot).await? {}
            Ok(())
        })
    }
}

/// Publish through the bus from the supervision layer's health changes.
pub fn supervision_publisher(bus: Bus) -> impl Fn(EventKind) + Send + Sync + 'static {
    move |kind| bus.publish(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(q: &str) -> EventKind {
        EventKind::TurnStarted {
            session_id: "s".into(),
            query_id: q.into(),
            project: Some("p".into()),
            model: None,
        }
    }

    #[test]
    fn events_are_numbered_and_filtered() {
        let bus = Bus::new();
        bus.start_after(41);
        let all = bus.subscribe(1, EventFilter::default(), 10);
        let only_breakers = bus.subscribe(
            1,
            EventFilter {
                types: Some(vec!["breaker.opened".into()]),
                ..Default::default()
            },
            10,
        );
        let other_project = bus.subscribe(
            1,
            EventFilter {
                project: Some("q".into()),
                ..Default::default()
            },
            10,
        );
        bus.publish(turn("a"));
        bus.publish(EventKind::BreakerOpened {
            key: "k".into(),
            reason: "r".into(),
        });
        let q = all.lock();
        assert_eq!(q.0.iter().map(|e| e.seq).collect::<Vec<_>>(), [42, 43]);
        assert_eq!(only_breakers.lock().0.len(), 1);
        assert_eq!(other_project.lock().0.len(), 0);
        assert_eq!(bus.take_batch(usize::MAX).0.len(), 2);
    }

    #[test]
    fn the_log_buffer_keeps_the_newest_and_a_failed_batch_goes_back_in_front() {
        let bus = Bus::new();
        for i in 0..MAX_PENDING + 5 {
            bus.publish(turn(&i.to_string()));
        }
        let seqs = |events: &[Arc<Event>]| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let (batch, dropped) = bus.take_batch(3);
        assert_eq!(dropped, 5);
        assert_eq!(seqs(&batch), [6, 7, 8], "the oldest five were dropped");
        bus.publish(turn("late"));
        bus.requeue(batch);
        let (all, dropped) = bus.take_batch(usize::MAX);
        assert_eq!(dropped, 1, "putting the batch back made one too many");
        assert_eq!(all.len(), MAX_PENDING);
        assert_eq!(all.first().map(|e| e.seq), Some(7));
        assert!(
            all.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
            "in order, with the late one last"
        );
        assert_eq!(all.last().map(|e| e.seq), Some(MAX_PENDING as u64 + 6));
    }

    /// Wait until `cond` holds; fail after a minute (which only bounds a hang).
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The count of events with sequence number `seq` in the log.
    fn logged(conn: &rusqlite::Connection, seq: u64) -> i64 {
        conn.query_row("SELECT count(*) FROM events WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap()
    }

    /// One flush writes everything pending, however many batches that takes.
    #[actix_rt::test]
    async fn a_flush_keeps_up_with_more_than_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, db) = crate::writer::start_for_test(dir.path());
        let bus = Bus::new();
        let n = FLUSH_BATCH * 2 + 5;
        for i in 0..n {
            bus.publish(turn(&i.to_string()));
        }
        let slot = bus.flush_slot.clone().try_acquire_owned().unwrap();
        bus.write_pending(&writer, &slot).await;
        assert!(bus.lock().pending.is_empty());
        let conn = rusqlite::Connection::open(&db).unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, n as i64);
    }

    /// A restart of the actor while its write is at the writer loses nothing, even when that
    /// write then fails: the batch is put back, and written by a later flush.
    #[actix_rt::test]
    async fn a_restart_during_a_write_loses_no_event() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::db_path(dir.path());
        let health = crate::supervise::HealthRegistry::new(Default::default());
        // The writer on a thread of its own (as in the daemon), since it will block on a lock.
        let writer = crate::writer::WriterActor::new(
            health.register("writer"),
            db.clone(),
            crate::store::WriterConfig {
                busy_timeout_ms: 60_000,
                ..Default::default()
            },
        )
        .unwrap();
        let arbiter = Arbiter::new();
        let writer = Supervisor::start_in_arbiter(&arbiter.handle(), move |_| writer);
        // Hold the database's write lock: the writer's next write waits for it.
        let lock = rusqlite::Connection::open(&db).unwrap();
        lock.busy_timeout(Duration::from_secs(30)).unwrap();
        lock.execute_batch("BEGIN IMMEDIATE").unwrap();

        let bus = Bus::new();
        let actor = EventBusActor::new(
            health.register("eventbus"),
            bus.clone(),
            writer.clone(),
            EventsConfig {
                flush_interval_ms: 10,
                ..Default::default()
            },
        );
        let actor = Supervisor::start(move |_| actor);
        bus.publish(turn("a"));
        // Taken by a flush: its write is at the writer, which waits for the lock.
        until("a flush to take the event", || {
            bus.lock().pending.is_empty()
        })
        .await;
        actor
            .send(crate::supervise::Call(crate::supervise::Crash))
            .await
            .unwrap()
            .unwrap_err();
        // The write now fails (and would go on failing), then, once the trigger is gone,
        // succeeds.
        lock.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'refused'); END;
             COMMIT",
        )
        .unwrap();
        until("the failed batch to be back in the buffer", || {
            !bus.lock().pending.is_empty()
        })
        .await;
        assert_eq!(logged(&lock, 1), 0);
        lock.execute_batch("DROP TRIGGER refuse").unwrap();
        until("the event to be in the log", || logged(&lock, 1) == 1).await;
        arbiter.stop();
    }

    #[test]
    fn a_full_queue_loses_its_oldest_and_counts_them() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bus = Bus::new();
        let sub = bus.subscribe(7, EventFilter::default(), 3);
        for i in 0..10 {
            bus.publish(turn(&i.to_string()));
        }
        let (events, missed) = rt.block_on(sub.next_batch());
        assert_eq!(missed, 7);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [8, 9, 10]);
        assert!(
            !bus.unsubscribe(8, sub.id),
            "another connection cannot end it"
        );
        assert!(bus.unsubscribe(7, sub.id));
        assert!(sub.ended.is_cancelled());
        assert_eq!(bus.subscriber_count(), 0);
    }
}
