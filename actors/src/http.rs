//! The HTTP API (actix-web): `/health`, `/metrics` (Prometheus text), `/api/stats` and
//! `/api/events` (Server-Sent Events from the bus).
//!
//! It is another front end to the same daemon: health and breaker state are asked of the
//! GatewayActor exactly as an IPC client would ask, stats are read from SQLite, and events come
//! from a bus subscription. It binds 127.0.0.1:3000 by default; a non-loopback address is
//! refused at start unless `http.token` is set, and with a token every request must carry
//! `Authorization: Bearer <token>`.
//!
//! What a client can make it hold is bounded, since without a token any local user may connect:
//! at most `http.max_connections` connections (one descriptor each, counted in the daemon's
//! open-file budget; past it new ones wait in the listen backlog), of which at most
//! `http.max_event_streams` are `/api/events` streams (past it: 503). A stream's queue holds
//! [`STREAM_QUEUE`] events, shared with the bus rather than copied, and an idle stream is sent a
//! comment every [`KEEPALIVE`], so that a client that went away is noticed (the write fails) and
//! its slot and subscription are freed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use ccd_protocol::types::{self, ActorState, EventFilter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conn::ConnCtx;
use crate::eventbus::Bus;
use crate::gateway::{GatewayActor, Route};
use crate::metrics::{Metrics, escape};
use crate::reader::Reader;
use crate::store;

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// `IP:PORT`; port 0 picks a free one (reported by `system.health`).
    pub bind: String,
    /// Required for a non-loopback bind; when set, every request must send it as a bearer token.
    pub token: String,
    /// Most connections open at once (one file descriptor each); past it new ones wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// Most `/api/events` streams open at once; past it, 503. Less than `max_connections`, so
    /// that streams never take every connection.
    pub max_event_streams: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            bind: "127.0.0.1:3000".into(),
            token: String::new(),
            max_connections: 256,
            max_event_streams: 64,
        }
    }
}

impl HttpConfig {
    /// File descriptors the API may hold for connections: one each, when it is on.
    pub fn connection_fds(&self) -> u64 {
        if self.enabled {
            self.max_connections as u64
        } else {
            0
        }
    }

    /// Lower `max_connections` to `room` (at least 2) if it is more, and `max_event_streams`
    /// below it; says what was lowered.
    pub fn fit_connections(&mut self, room: u64) -> Option<String> {
        let room = usize::try_from(room).unwrap_or(usize::MAX).max(2);
        if !self.enabled || self.max_connections <= room {
            return None;
        }
        let was = (self.max_connections, self.max_event_streams);
        self.max_connections = room;
        self.max_event_streams = self.max_event_streams.min(room - 1);
        let mut said = format!("http.max_connections lowered from {} to {room}", was.0);
        if self.max_event_streams != was.1 {
            said.push_str(&format!(
                ", http.max_event_streams from {} to {}",
                was.1, self.max_event_streams
            ));
        }
        Some(said)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        let addr: SocketAddr = self.bind.parse().map_err(|_| {
            format!(
                "`http.bind` must be IP:PORT, e.g. 127.0.0.1:3000, not `{}`",
                self.bind
            )
        })?;
        if !addr.ip().is_loopback() && self.token.is_empty() {
            return Err(format!(
                "`http.bind` is {}, which is not a loopback address: set `http.token` to expose the API beyond this machine",
                self.bind
            ));
        }
        Ok(())
    }
}

/// Shared by every HTTP handler.
#[derive(Clone)]
struct State {
    gateway: Addr<GatewayActor>,
    reader: Reader,
    bus: Bus,
    metrics: Arc<Metrics>,
    /// SHA-256 of `http.token`; `None` without a token.
    token: Option<[u8; 32]>,
    /// `/api/events` streams open now, and the most allowed.
    streams: Arc<AtomicUsize>,
    max_streams: usize,
    started: Instant,
}

impl State {
    /// Ask the gateway, as an IPC client would.
    async fn call(&self, method: &str, params: Value) -> Result<Value, ccd_protocol::RpcError> {
        let (tx, _rx) = mpsc::channel(1);
        let conn = ConnCtx::new(crate::conn::ConnInfo {
            id: u64::MAX - 1,
            outbound: crate::outbound::Outbound::new(tx),
            closed: CancellationToken::new(),
            closing: CancellationToken::new(),
            subscriptions: Default::default(),
        });
        let route = Route {
            method: method.into(),
            params: Some(params),
            conn,
        };
        let answer = crate::gateway::route(&self.gateway, route).await?;
        serde_json::from_str(answer.get()).map_err(|e| {
            ccd_protocol::RpcError::internal(format!("reading the result of {method}: {e}"))
        })
    }

    /// The answer refusing `req`, if it may not be answered: with no token, only requests
    /// addressed to a loopback name are; with a token, only those that carry it.
    fn refusal(&self, req: &HttpRequest) -> Option<HttpResponse> {
        let Some(expected) = &self.token else {
            return match req.headers().get("host").and_then(|h| h.to_str().ok()) {
                Some(host) if is_loopback_host(host) => None,
                other => Some(HttpResponse::Forbidden().json(json!({
                    "error": format!(
                        "Host {:?} is not a loopback name: without http.token the API answers \
                         only requests to 127.0.0.1, [::1] or localhost (this stops web pages \
                         from reaching it through DNS rebinding)",
                        other.unwrap_or("(none)")
                    )
                }))),
            };
        };
        (!authorized(req, expected)).then(unauthorized)
    }
}

/// `req` carries the bearer token whose SHA-256 is `expected`: `Authorization: <scheme> <token>`
/// where the scheme is `Bearer` in any case (RFC 7235: auth schemes are case-insensitive),
/// followed by one or more spaces. The digests are compared in constant time, so the time
/// taken says nothing about how much of a guess was right; hashing first hides the token's
/// length too.
fn authorized(req: &HttpRequest, expected: &[u8; 32]) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| bearer_token(v.as_bytes()))
        .is_some_and(|token| {
            let given: [u8; 32] = Sha256::digest(token).into();
            bool::from(given.ct_eq(expected))
        })
}

/// The token of an `Authorization` header value using the `Bearer` scheme (in any case), or
/// `None` for another scheme or no token.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii_start();
    (!token.is_empty()).then_some(token)
}

fn bearer_digest(token: &str) -> Option<[u8; 32]> {
    (!token.is_empty()).then(|| Sha256::digest(token).into())
}

/// `host` (a Host header: name and optional port) names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1] or [::1]:PORT
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("www-authenticate", "Bearer"))
        .json(json!({"error": "missing or wrong bearer token (http.token)"}))
}

fn rpc_failure(e: ccd_protocol::RpcError) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({ "error": e }))
}

async fn health(req: HttpRequest, st: web::Data<State>) -> HttpResponse {
    if let Some(refused) = st.refusal(&req) {
        return refused;
    }
    match st.call("system.health", json!({})).await {
        Ok(h) => {
            let failed: Vec<Value> = h["actors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["state"] == "failed")
                .map(|a| json!({"actor": a["name"], "reason": a["reason"]}))
                .collect();
            let status = if failed.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut body = h;
            body["failed"] = Value::Array(failed);
            HttpResponse::build(status).json(body)
        }
        Err(e) => rpc_failure(e),
    }
}

async fn prometheus(req: HttpRequest, st: web::Data<State>) -> HttpResponse {
    if let Some(refused) = st.refusal(&req) {
        return refused;
    }
    let health = st.call("system.health", json!({})).await.ok();
    let breakers = st.call("breaker.status", json!({})).await.ok();
    let mut out = String::new();
    st.metrics.render(&mut out);
    if let Some(h) = &health {
        out.push_str("# HELP ccd_actor_restarts_total Restarts of each supervised actor.\n# TYPE ccd_actor_restarts_total counter\n");
        for a in h["actors"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "ccd_actor_restarts_total{{actor=\"{}\"}} {}\n",
                escape(a["name"].as_str().unwrap_or("")),
                a["restarts"].as_u64().unwrap_or(0)
            ));
        }
        out.push_str("# HELP ccd_actor_up 1 when the actor runs, 0 when restarting or failed.\n# TYPE ccd_actor_up gauge\n");
        for a in h["actors"].as_array().into_iter().flatten() {
            let up = u8::from(a["state"] == ActorState::Running.as_str());
            out.push_str(&format!(
                "ccd_actor_up{{actor=\"{}\"}} {up}\n",
                escape(a["name"].as_str().unwrap_or(""))
            ));
        }
        out.push_str("# HELP ccd_executor_busy Executors running an agent.\n# TYPE ccd_executor_busy gauge\n");
        out.push_str(&format!(
            "ccd_executor_busy {}\n",
            h["executor"]["busy"].as_u64().unwrap_or(0)
        ));
        out.push_str("# HELP ccd_executor_queued Queries waiting for an executor.\n# TYPE ccd_executor_queued gauge\n");
        out.push_str(&format!(
            "ccd_executor_queued {}\n",
            h["executor"]["queued"].as_u64().unwrap_or(0)
        ));
    }
    if let Some(b) = &breakers {
        out.push_str("# HELP ccd_breaker_state Circuit breaker state: 0 closed, 1 half-open, 2 open.\n# TYPE ccd_breaker_state gauge\n");
        for br in b["breakers"].as_array().into_iter().flatten() {
            let v = match br["state"].as_str() {
                Some("OPEN") => 2,
                Some("HALF_OPEN") => 1,
                _ => 0,
            };
            out.push_str(&format!(
                "ccd_breaker_state{{key=\"{}\"}} {v}\n",
                escape(br["key"].as_str().unwrap_or(""))
            ));
        }
    }
    out.push_str("# HELP ccd_event_subscribers Live event-bus subscribers (IPC subscriptions and /api/events streams).\n# TYPE ccd_event_subscribers gauge\n");
    out.push_str(&format!(
        "ccd_event_subscribers {}\n",
        st.bus.subscriber_count()
    ));
    out.push_str("# HELP ccd_http_event_streams Open /api/events streams (at most http.max_event_streams).\n# TYPE ccd_http_event_streams gauge\n");
    out.push_str(&format!(
        "ccd_http_event_streams {}\n",
        st.streams.load(Ordering::Relaxed)
    ));
    out.push_str("# HELP ccd_uptime_seconds Time since the daemon started.\n# TYPE ccd_uptime_seconds gauge\n");
    out.push_str(&format!(
        "ccd_uptime_seconds {}\n",
        st.started.elapsed().as_secs_f64()
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(out)
}

#[derive(Deserialize)]
struct StatsQuery {
    since: Option<String>,
    project: Option<String>,
}

async fn api_stats(
    req: HttpRequest,
    st: web::Data<State>,
    q: web::Query<StatsQuery>,
) -> HttpResponse {
    if let Some(refused) = st.refusal(&req) {
        return refused;
    }
    let since = q.since.clone().unwrap_or_else(|| "7d".into());
    let since_ms = match crate::validate::since("since", &since) {
        Ok(ms) => ms,
        Err(e) => return HttpResponse::BadRequest().json(json!({ "error": e })),
    };
    let project = q.project.clone();
    let stats = st
        .reader
        .read("reading stats", move |c| {
            store::stats(c, since_ms, project.as_deref())
        })
        .await;
    match stats {
        Ok(stats) => HttpResponse::Ok().json(types::StatsReport {
            stats,
            machine: crate::procstat::machine(st.started),
        }),
        Err(e) => HttpResponse::InternalServerError().json(json!({ "error": e.to_string() })),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    types: Option<String>,
}

/// How often an event stream with nothing to send gets an SSE comment line. A client that went
/// away is noticed only when a write to it fails, so this bounds how long its stream keeps its
/// slot and its bus subscription (one or two of these).
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Undelivered events an event stream may have before it loses the oldest (and is sent
/// `lagged`). Smaller than `events.subscriber_queue`: anyone local may open a stream.
const STREAM_QUEUE: usize = 256;

async fn api_events(
    req: HttpRequest,
    st: web::Data<State>,
    q: web::Query<EventsQuery>,
) -> HttpResponse {
    if let Some(refused) = st.refusal(&req) {
        return refused;
    }
    let types: Option<Vec<String>> = q.types.as_ref().map(|t| {
        t.split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    });
    if let Some(bad) = types
        .iter()
        .flatten()
        .find(|t| !types::EVENT_TYPES.contains(&t.as_str()))
    {
        return HttpResponse::BadRequest()
            .json(json!({ "error": format!("unknown event type `{bad}`") }));
    }
    let Some(slot) = StreamSlot::take(&st.streams, st.max_streams) else {
        return HttpResponse::ServiceUnavailable()
            .insert_header(("retry-after", "5"))
            .json(json!({
                "error": format!(
                    "too many event streams: {} are open, the most http.max_event_streams \
                     allows; try again when one closes",
                    st.max_streams
                )
            }));
    };
    let filter = EventFilter {
        types,
        ..Default::default()
    };
    // A reconnecting EventSource sends the last id it saw: what happened since comes first,
    // from the event log, then the live events, none missing or repeated.
    let last_id = match req.headers().get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) if v.trim().is_empty() => None,
        Some(Ok(v)) => match v.trim().parse::<u64>() {
            Ok(seq) => Some(seq),
            Err(_) => {
                return HttpResponse::BadRequest().json(json!({
                    "error": format!("Last-Event-ID must be an event's seq (a number), got `{v}`")
                }));
            }
        },
        Some(Err(_)) => {
            return HttpResponse::BadRequest()
                .json(json!({ "error": "Last-Event-ID must be an event's seq (a number)" }));
        }
    };
    let (sub, replay) = match last_id {
        None => (
            st.bus.subscribe(u64::MAX - 2, filter, STREAM_QUEUE),
            Vec::new(),
        ),
        Some(after) => {
            let replayed = st
                .bus
                .subscribe_replaying(
                    &st.reader,
                    u64::MAX - 2,
                    filter,
                    STREAM_QUEUE,
                    usize::MAX,
                    crate::eventbus::ReplayFrom {
                        after_seq: after,
                        max_events: crate::gateway::REPLAY_MAX,
                    },
                )
                .await;
            match replayed {
                Ok(Some((s, replay))) => (s.sub, replay),
                // Only a connection holding `max` subscriptions is refused, and HTTP streams
                // have no such limit (their slots are counted above): answered all the same.
                Ok(None) => {
                    return HttpResponse::ServiceUnavailable()
                        .json(json!({ "error": "too many event streams" }));
                }
                Err(e) => {
                    return HttpResponse::InternalServerError()
                        .json(json!({ "error": format!("replaying events: {e}") }));
                }
            }
        }
    };
    // The stream owns the subscription and the slot: when actix-web drops it (the client went
    // away, noticed when a write to it fails), the guard takes the subscriber off the bus.
    let sub = Subscription {
        sub,
        bus: st.bus.clone(),
        _slot: slot,
    };
    let first = (!replay.is_empty()).then(|| {
        let replay: Vec<Arc<types::Event>> = replay.into_iter().map(Arc::new).collect();
        sse_chunk(&replay, 0)
    });
    let stream = futures_util::stream::unfold((sub, first), |(sub, first)| async move {
        if let Some(chunk) = first {
            return Some((Ok::<_, actix_web::Error>(chunk), (sub, None)));
        }
        let chunk = match tokio::time::timeout(KEEPALIVE, sub.sub.next_shared()).await {
            Ok((events, missed)) => sse_chunk(&events, missed),
            Err(_) => Bytes::from_static(b": keep-alive\n\n"),
        };
        Some((Ok::<_, actix_web::Error>(chunk), (sub, None)))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}

/// Events (after a `lagged` notice if some were missed) as Server-Sent Events.
fn sse_chunk(events: &[Arc<types::Event>], missed: u64) -> Bytes {
    let mut chunk = String::new();
    if missed > 0 {
        chunk.push_str(&format!(
            "event: lagged\ndata: {}\n\n",
            json!({ "missed": missed })
        ));
    }
    for e in events {
        let data = serde_json::to_string(&**e).unwrap_or_default();
        chunk.push_str(&format!(
            "id: {}\nevent: {}\ndata: {data}\n\n",
            e.seq,
            e.kind.type_name()
        ));
    }
    Bytes::from(chunk)
}

/// One of the `http.max_event_streams` places, given back when dropped.
struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<StreamSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| StreamSlot(open.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An SSE client's place on the bus, removed when the response stream is dropped.
struct Subscription {
    sub: Arc<crate::eventbus::Subscriber>,
    bus: Bus,
    _slot: StreamSlot,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.bus.remove(self.sub.id);
    }
}

/// Bind and serve; returns the bound address. The server runs until the system stops.
pub fn start(
    cfg: &HttpConfig,
    gateway: Addr<GatewayActor>,
    reader: Reader,
    bus: Bus,
    metrics: Arc<Metrics>,
) -> anyhow::Result<SocketAddr> {
    use anyhow::Context as _;
    let state = State {
        gateway,
        reader,
        bus,
        metrics,
        token: bearer_digest(&cfg.token),
        streams: Arc::default(),
        max_streams: cfg.max_event_streams,
        started: Instant::now(),
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route("/health", web::get().to(health))
            .route("/metrics", web::get().to(prometheus))
            .route("/api/stats", web::get().to(api_stats))
            .route("/api/events", web::get().to(api_events))
    })
    .workers(1)
    // Per worker, and there is one: the API's descriptors stay within what the daemon keeps
    // for it (`reserved_fds` in src/daemon/boot.rs).
    .max_connections(cfg.max_connections)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(&cfg.bind)
    .with_context(|| format!("binding the HTTP API to {}", cfg.bind))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .context("the HTTP server bound no address")?;
    actix_rt::spawn(server.run());
    Ok(addr)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_scheme_in_any_case() {
        let token = |v: &str| super::bearer_token(v.as_bytes()).map(|t| t.to_vec());
        for ok in ["Bearer t0k", "bearer t0k", "BEARER t0k", "Bearer  t0k"] {
            assert_eq!(token(ok), Some(b"t0k".to_vec()), "{ok}");
        }
        for bad in [
            "Basic t0k",
            "Bearert0k",
            "t0k",
            "Bearer",
            "Bearer ",
            "Bear t0k",
            "",
        ] {
            assert_eq!(token(bad), None, "{bad}");
        }
        assert_eq!(
            token("Bearer T0K"),
            Some(b"T0K".to_vec()),
            "the token keeps its case"
        );
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:3000",
            "localhost",
            "LOCALHOST:80",
            "[::1]",
            "[::1]:3000",
            "127.1.2.3:9",
        ] {
            assert!(super::is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:3000",
            "10.0.0.1:3000",
            "",
            "[::2]:3000",
            "localhost.evil.example",
            "127.0.0.1.evil.example:3000",
        ] {
            assert!(!super::is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn stream_slots_are_counted_and_given_back() {
        let open = std::sync::Arc::default();
        let a = super::StreamSlot::take(&open, 2).unwrap();
        let _b = super::StreamSlot::take(&open, 2).unwrap();
        assert!(super::StreamSlot::take(&open, 2).is_none());
        drop(a);
        assert!(super::StreamSlot::take(&open, 2).is_some());
    }

    #[test]
    fn fitting_lowers_connections_and_keeps_streams_below_them() {
        let mut cfg = super::HttpConfig::default();
        assert_eq!(cfg.fit_connections(1_000), None);
        assert_eq!(
            cfg.fit_connections(60).as_deref(),
            Some(
                "http.max_connections lowered from 256 to 60, http.max_event_streams from 64 to 59"
            )
        );
        assert_eq!((cfg.max_connections, cfg.max_event_streams), (60, 59));
        assert_eq!(
            cfg.fit_connections(0).as_deref(),
            Some("http.max_connections lowered from 60 to 2, http.max_event_streams from 59 to 1")
        );
        cfg.enabled = false;
        assert_eq!(cfg.connection_fds(), 0);
        assert_eq!(cfg.fit_connections(0), None);
    }
}
