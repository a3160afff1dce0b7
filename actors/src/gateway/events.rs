//! `event.*` (live subscriptions delivered as `event` notifications on the connection, and the
//! persisted log) and `stats.get`.

use std::sync::Arc;

use ccd_protocol::methods as m;
use ccd_protocol::types;

use super::context::Services;
use super::dispatch::Dispatcher;
use crate::conn::ConnCtx;
use crate::error::ActorError;
use crate::supervise::Reply;
use crate::{store, validate};

pub fn register(d: &mut Dispatcher) {
    d.reply::<m::EventSubscribe>(subscribe)
        .sync::<m::EventUnsubscribe>(|s, p, conn| {
            Ok(types::Unsubscribed {
                unsubscribed: s.query.bus().unsubscribe(conn.id, p.subscription_id),
            })
        })
        .reply::<m::EventList>(list)
        .reply::<m::StatsGet>(stats);
}

/// `event.subscribe`: live events from now, or (with `after_seq`) the logged ones after it
/// first.
fn subscribe(s: &Services, filter: types::EventFilter, conn: &ConnCtx) -> Reply<types::Subscribed> {
    if let Err(e) = validate::event_types("types", filter.types.as_deref()) {
        return Reply::err(e);
    }
    let bus = s.query.bus().clone();
    let conn = conn.clone();
    let queue = s.info.subscriber_queue;
    let overloaded = || {
        ActorError::Overloaded(format!(
            "this connection has {MAX_SUBSCRIPTIONS_PER_CONNECTION} event \
             subscriptions, the most one may have; unsubscribe one first"
        ))
    };
    let Some(after) = filter.after_seq else {
        let Some(sub) = bus.try_subscribe_from(
            conn.id,
            filter,
            queue,
            MAX_SUBSCRIPTIONS_PER_CONNECTION,
            u64::MAX,
        ) else {
            return Reply::err(overloaded());
        };
        let answer = types::Subscribed {
            subscription_id: sub.sub.id,
            last_seq: sub.last_seq,
        };
        conn.subscriptions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        actix_rt::spawn(deliver(bus, sub.sub, conn, Vec::new()));
        return Reply::ok(answer);
    };
    // Replay, then live.
    let reader = s.reader.clone();
    Reply::later(async move {
        let (sub, replay) = bus
            .subscribe_replaying(
                &reader,
                conn.id,
                filter,
                queue,
                MAX_SUBSCRIPTIONS_PER_CONNECTION,
                crate::eventbus::ReplayFrom {
                    after_seq: after,
                    max_events: REPLAY_MAX,
                },
            )
            .await?
            .ok_or_else(overloaded)?;
        let answer = types::Subscribed {
            subscription_id: sub.sub.id,
            last_seq: sub.last_seq,
        };
        conn.subscriptions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        actix_rt::spawn(deliver(bus, sub.sub, conn, replay));
        Ok(answer)
    })
}

/// `event.list`: a page of the persisted log.
fn list(s: &Services, p: types::EventListParams, _: &ConnCtx) -> Reply<types::EventList> {
    let checked = (|| {
        validate::event_types("types", p.types.as_deref())?;
        let since_ms = match &p.since {
            None => 0,
            Some(s) => validate::since("since", s)?,
        };
        let limit = validate::page_limit("event.list", p.limit)?;
        Ok::<_, ccd_protocol::RpcError>((since_ms, limit))
    })();
    let (since, limit) = match checked {
        Ok(v) => v,
        Err(e) => return Reply::err(e),
    };
    let after = p.after_seq.unwrap_or(0);
    let types = p.types.unwrap_or_default();
    let reader = s.reader.clone();
    Reply::later(async move {
        let events = reader
            .read("listing events", move |c| {
                store::events(c, after, since, &types, limit)
            })
            .await?;
        Ok(types::EventList { events })
    })
}

/// `stats.get`: the same figures as `ccd stats` and `/api/stats`.
fn stats(s: &Services, p: types::StatsParams, _: &ConnCtx) -> Reply<types::StatsReport> {
    let since_ms = match validate::since("since", p.since.as_deref().unwrap_or("7d")) {
        Ok(v) => v,
        Err(e) => return Reply::err(e),
    };
    let project = p.project;
    let reader = s.reader.clone();
    let started = s.info.started;
    Reply::later(async move {
        let stats = reader
            .read("reading stats", move |c| {
                store::stats(c, since_ms, project.as_deref())
            })
            .await?;
        Ok(types::StatsReport {
            stats,
            machine: crate::procstat::machine(started),
        })
    })
}

/// Event subscriptions one connection may hold at once (each has its own queue and task).
const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 64;

/// Most logged events one subscription replays (`after_seq`); older ones are reported as a
/// `lagged` event.
pub const REPLAY_MAX: u32 = 100_000;

/// Deliver a subscription's events as `event` notifications until it ends or the client goes.
/// Waiting on a slow client blocks only this task: the bus drops the subscriber's oldest events
/// and reports them as `lagged`.
async fn deliver(
    bus: crate::eventbus::Bus,
    sub: Arc<crate::eventbus::Subscriber>,
    conn: ConnCtx,
    replay: Vec<types::Event>,
) {
    'deliver: {
        for event in &replay {
            if !send_event(&sub, &conn, event).await {
                break 'deliver;
            }
        }
        drop(replay);
        loop {
            let (events, missed) = tokio::select! {
                batch = sub.next_batch() => batch,
                _ = conn.closed.cancelled() => break,
                _ = conn.closing.cancelled() => break,
                _ = sub.ended.cancelled() => break,
            };
            let lagged = (missed > 0).then(|| types::Event {
                seq: events.first().map(|e| e.seq.saturating_sub(1)).unwrap_or(0),
                ts: store::rfc3339(store::now_ms()),
                kind: types::EventKind::Lagged { missed },
            });
            for event in lagged.iter().chain(events.iter()) {
                if !send_event(&sub, &conn, event).await {
                    break 'deliver;
                }
            }
        }
    }
    bus.remove(sub.id);
    conn.subscriptions
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Send one `event` notification; false when the subscription or the connection ended.
async fn send_event(
    sub: &crate::eventbus::Subscriber,
    conn: &ConnCtx,
    event: &types::Event,
) -> bool {
    let note =
        ccd_protocol::Notification::new("event", serde_json::to_value(event).unwrap_or_default());
    tokio::select! {
        r = conn.outbound.send(ccd_protocol::to_line(&note)) => r.is_ok(),
        _ = conn.closed.cancelled() => false,
        _ = conn.closing.cancelled() => false,
        _ = sub.ended.cancelled() => false,
    }
}
