//! The HTTP API: /health (and its 503), /metrics as Prometheus text, /api/stats, /api/events
//! as Server-Sent Events, the bearer token, and the refusal of a non-loopback bind without one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::*;

fn http_daemon(extra_config: &str) -> (Daemon, String) {
    let d = Daemon::builder()
        .fault_injection()
        .env("CCD_HTTP_ENABLED", "true")
        .config(&format!("[http]\nbind = \"127.0.0.1:0\"\n{extra_config}"))
        .start();
    let url = d.call("system.health", json!({})).unwrap()["http"]
        .as_str()
        .expect("the API's URL in system.health")
        .to_string();
    let addr = url.trim_start_matches("http://").to_string();
    (d, addr)
}

/// A GET with `Connection: close`: (status, headers, body).
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    get_authorized(addr, path, token.map(|t| format!("Bearer {t}")).as_deref())
}

/// A GET with `Connection: close` and this `Authorization` header, if any.
fn get_authorized(addr: &str, path: &str, authorization: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

#[test]
fn health_is_200_and_503_when_an_actor_fails() {
    let (d, addr) = http_daemon(
        "[supervisor]\nmax_restarts = 1\nwindow_ms = 600000\nbackoff_initial_ms = 600000\nbackoff_max_ms = 600000\n",
    );
    let (status, head, body) = get(&addr, "/health", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/json")
    );
    let h: Value = serde_json::from_str(&body).unwrap();
    assert!(
        h["actors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "writer")
    );
    for _ in 0..2 {
        d.call("debug.crash", json!({"actor": "writer"}))
            .unwrap_err();
    }
    let (status, _, body) = get(&addr, "/health", None);
    assert_eq!(status, 503, "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["failed"][0]["actor"], "writer");
    assert!(
        h["failed"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("restarted")
    );
}

#[test]
fn metrics_are_prometheus_text() {
    let (d, addr) = http_daemon("");
    for _ in 0..3 {
        d.call("system.ping", json!({})).unwrap();
    }
    d.call("debug.crash", json!({"actor": "gateway"}))
        .unwrap_err();
    let (status, head, body) = get(&addr, "/metrics", None);
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    // Every line is a comment or `name{labels} value` with a number.
    let mut names = std::collections::HashSet::new();
    for line in body.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "not a number in {line:?}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        names.insert(name.to_string());
    }
    for expected in [
        "ccd_queries_total",
        "ccd_tokens_total",
        "ccd_cost_usd_total",
        "ccd_actor_restarts_total",
        "ccd_query_duration_seconds_bucket",
        "ccd_rpc_requests_total",
        "ccd_rpc_duration_seconds_bucket",
        "ccd_limiter_waits_total",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from /metrics:\n{body}"
        );
    }
    let pings = body
        .lines()
        .find(|l| l.starts_with("ccd_rpc_requests_total{method=\"system.ping\"}"))
        .unwrap();
    assert!(
        pings.ends_with(" 3") || pings.rsplit(' ').next().unwrap().parse::<u64>().unwrap() >= 3,
        "{pings}"
    );
    assert!(
        body.contains("ccd_actor_restarts_total{actor=\"gateway\"} 1"),
        "{body}"
    );
}

#[test]
fn stats_and_events_over_http() {
    let (d, addr) = http_daemon("");
    let (status, _, body) = get(&addr, "/api/stats?since=1d", None);
    assert_eq!(status, 200, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["stats"]["totals"]["queries"], 0);
    assert!(s["machine"]["rss_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(s["machine"]["uptime_s"].as_f64().is_some());
    assert_eq!(get(&addr, "/api/stats?since=whenever", None).0, 400);

    // Server-Sent Events: the stream stays open and carries the bus's events.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /api/events?types=session.created HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let created = d.call("session.create", json!({})).unwrap();
    let mut saw = false;
    while !saw {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the event stream ended"
        );
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            let e: Value = serde_json::from_str(data).unwrap();
            assert_eq!(e["type"], "session.created");
            saw = e["session_id"] == created["id"];
        }
    }
    assert_eq!(get(&addr, "/api/events?types=bogus", None).0, 400);
}

/// `ccd_event_subscribers` from /metrics.
fn subscribers(addr: &str) -> u64 {
    let (status, _, body) = get(addr, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("ccd_event_subscribers "))
        .unwrap_or_else(|| panic!("no ccd_event_subscribers in /metrics:\n{body}"))
        .parse()
        .unwrap()
}

#[test]
fn an_event_stream_client_that_leaves_is_unsubscribed() {
    let (d, addr) = http_daemon("");
    // The metrics themselves are fed by a subscription of their own.
    let base = subscribers(&addr);
    for round in 1..=3 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        assert_eq!(subscribers(&addr), base + 1, "round {round}");
        drop(r);
        // The server notices at the latest when it next writes to the stream.
        wait_until(
            "the stream's subscriber to leave the bus",
            Duration::from_secs(30),
            || {
                d.call("session.create", json!({})).unwrap();
                subscribers(&addr) == base
            },
        );
    }
}

#[test]
fn a_token_guards_every_request() {
    let (_d, addr) = http_daemon("token = \"s3cret\"\n");
    assert_eq!(get(&addr, "/health", None).0, 401);
    assert_eq!(get(&addr, "/metrics", Some("wrong")).0, 401);
    // A prefix of it, or it with more after it, is just as wrong.
    assert_eq!(get(&addr, "/metrics", Some("s3cre")).0, 401);
    assert_eq!(get(&addr, "/metrics", Some("s3cret2")).0, 401);
    assert_eq!(get(&addr, "/health", Some("s3cret")).0, 200);
    // The scheme is case-insensitive (RFC 7235), and one or more spaces may follow it; the
    // token itself is compared exactly.
    for auth in [
        "bearer s3cret",
        "BEARER s3cret",
        "bEaReR s3cret",
        "Bearer   s3cret",
    ] {
        assert_eq!(
            get_authorized(&addr, "/health", Some(auth)).0,
            200,
            "{auth}"
        );
    }
    for auth in [
        "Bearer S3CRET",
        "Basic s3cret",
        "Bearers3cret",
        "s3cret",
        "Bearer",
        "Bearer ",
    ] {
        assert_eq!(
            get_authorized(&addr, "/health", Some(auth)).0,
            401,
            "{auth}"
        );
    }
}

#[test]
fn a_taken_port_leaves_the_api_off_and_start_status_and_health_say_why() {
    // Some other process (a dev server, another ccd) holds the port.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = squatter.local_addr().unwrap().to_string();
    let d = Daemon::builder()
        .env("CCD_HTTP_ENABLED", "true")
        .env("CCD_HTTP_BIND", &bind)
        .prepare();
    let out = d.ccd(&["daemon", "start"]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains(&bind) && err.contains("in use"),
        "{err}"
    );
    d.log_containing(&format!("the HTTP API is off: {bind} is in use"));

    let v: Value = serde_json::from_str(&d.ccd_ok(&["daemon", "status", "--json"])).unwrap();
    assert_eq!(v["http"], Value::Null, "{v}");
    let api = &v["http_api"];
    assert_eq!(
        (api["enabled"].clone(), api["bind"].clone()),
        (json!(true), json!(bind))
    );
    assert_eq!(api["url"], Value::Null, "{v}");
    let reason = api["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason in {v}"));
    assert!(
        reason.contains(&bind) && reason.contains("in use"),
        "{reason}"
    );
    // The same in system.health, for scripts (and `ccd doctor`).
    let h = d.call("system.health", json!({})).unwrap();
    assert_eq!(h["http_api"], *api);
    let text = d.ccd_ok(&["daemon", "status"]);
    assert!(
        text.lines()
            .any(|l| l.contains("http:") && l.contains("off: ") && l.contains("in use")),
        "{text}"
    );
    assert!(!d.path().join("http.url").exists());
    drop(squatter);
}

#[test]
fn port_0_serves_on_a_free_port_published_in_status_health_and_http_url() {
    let d = Daemon::builder()
        .env("CCD_HTTP_ENABLED", "true")
        .env("CCD_HTTP_BIND", "127.0.0.1:0")
        .start();
    let file = d.path().join("http.url");
    let url = std::fs::read_to_string(&file).expect("$CCD_HOME/http.url");
    let url = url.trim();
    let port: u16 = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{url}"));
    assert_ne!(port, 0);
    let v: Value = serde_json::from_str(&d.ccd_ok(&["daemon", "status", "--json"])).unwrap();
    assert_eq!(v["http"], url, "{v}");
    assert_eq!(v["http_api"]["url"], url, "{v}");
    assert_eq!(v["http_api"]["bind"], "127.0.0.1:0", "{v}");
    assert_eq!(v["http_api"]["reason"], Value::Null, "{v}");
    assert!(
        d.ccd_ok(&["daemon", "status"])
            .contains(&format!("http:     {url}"))
    );
    let (status, _, body) = get(url.trim_start_matches("http://"), "/health", None);
    assert_eq!(status, 200, "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["pid"], d.pid());

    d.stop();
    assert!(!file.exists(), "http.url left behind after stop");
}

#[test]
fn a_non_loopback_bind_without_a_token_refuses_to_start() {
    let d = Daemon::builder()
        .env("CCD_HTTP_ENABLED", "true")
        .config("[http]\nbind = \"0.0.0.0:0\"\n")
        .prepare();
    let out = d.ccd(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.bind") && err.contains("http.token"),
        "{err}"
    );
}

#[test]
fn without_a_token_only_requests_to_a_loopback_name_are_answered() {
    let (_d, addr) = http_daemon("");
    // What a web page reaching the port through DNS rebinding would send.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /api/stats HTTP/1.1\r\nHost: rebound.example:3000\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    assert!(raw.contains("not a loopback name"), "{raw}");
    // Addressed to 127.0.0.1 (as `get` does) it is served.
    let (status, _, _) = get(&addr, "/api/stats", None);
    assert_eq!(status, 200);
}

/// Open `/api/events` on a connection of its own: the status, and the stream, its head read
/// (so a stream that should have been refused cannot hang the test).
fn open_events(addr: &str) -> (u16, BufReader<TcpStream>) {
    let (status, _, r) = open_events_head(addr);
    (status, r)
}

/// [`open_events`], with the head's lines (lowercase).
fn open_events_head(addr: &str) -> (u16, String, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {line:?}"));
    let mut head = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the head ended early");
        if line == "\r\n" {
            return (status, head, r);
        }
        head.push_str(&line.to_ascii_lowercase());
    }
}

/// A gauge's value from /metrics.
fn gauge(addr: &str, name: &str) -> u64 {
    let (status, _, body) = get(addr, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
        .parse()
        .unwrap()
}

#[test]
fn event_streams_are_capped_and_a_client_that_left_makes_room() {
    let (d, addr) = http_daemon("max_event_streams = 2\n");
    let mut streams: Vec<_> = (0..2)
        .map(|_| {
            let (status, r) = open_events(&addr);
            assert_eq!(status, 200);
            r
        })
        .collect();
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
    let (status, head, mut r) = open_events_head(&addr);
    assert_eq!(status, 503, "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .unwrap_or_else(|| panic!("no content-length in {head}"))
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    r.read_exact(&mut body).unwrap();
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("http.max_event_streams"), "{body}");
    // Other requests are still answered, on the socket and over HTTP.
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
    assert_eq!(get(&addr, "/health", None).0, 200);
    assert_eq!(gauge(&addr, "ccd_http_event_streams"), 2);

    // A client that goes away without a word, while nothing is published: the keep-alive
    // comments written to its stream find out, and free its place.
    drop(streams.pop());
    let mut reopened = None;
    wait_until(
        "the departed client's stream to make room",
        Duration::from_secs(60),
        || {
            assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
            match open_events(&addr) {
                (200, r) => reopened = Some(r),
                (503, _) => std::thread::sleep(Duration::from_millis(100)),
                (other, _) => panic!("status {other}"),
            }
            reopened.is_some()
        },
    );
    let mut reopened = reopened.unwrap();
    assert_eq!(gauge(&addr, "ccd_http_event_streams"), 2);
    // An idle stream is sent comments (which SSE clients ignore).
    let mut line = String::new();
    while !line.starts_with(": keep-alive") {
        line.clear();
        assert!(
            reopened.read_line(&mut line).unwrap() > 0,
            "the stream ended"
        );
    }
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
}

/// Connections to the HTTP API the daemon has accepted: those on its port with a socket
/// (connections still in the listen backlog have none, inode 0). Counted by inode, since a
/// read of /proc/net/tcp while sockets come and go may show one twice.
fn accepted_http_connections(addr: &str) -> usize {
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next()?;
            (u16::from_str_radix(local_port, 16) == Ok(port) && f[3] == "01" && f[9] != "0")
                .then(|| f[9].to_string())
        })
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[test]
fn http_connections_are_capped_and_the_rest_wait() {
    let (d, addr) = http_daemon("max_connections = 4\nmax_event_streams = 2\n");
    let _streams: Vec<_> = (0..2).map(|_| open_events(&addr).1).collect();
    // More idle connections than are left: the daemon takes two, the rest wait for room.
    let idle: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    wait_until(
        "the daemon to accept up to its limit",
        Duration::from_secs(30),
        || accepted_http_connections(&addr) >= 4,
    );
    for _ in 0..20 {
        let n = accepted_http_connections(&addr);
        assert!(
            n <= 4,
            "{n} connections accepted, past http.max_connections"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
    // Once they leave, a waiting client is served.
    drop(idle);
    assert_eq!(get(&addr, "/health", None).0, 200);
    assert_eq!(d.call("system.ping", json!({})).unwrap(), "pong");
}

#[test]
fn http_limits_are_validated() {
    let d = Daemon::builder()
        .env("CCD_HTTP_ENABLED", "true")
        .config("[http]\nbind = \"127.0.0.1:0\"\nmax_connections = 8\nmax_event_streams = 8\n")
        .prepare();
    let out = d.ccd(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "`http.max_event_streams` must be at least 1 and less than `http.max_connections`"
        ),
        "{err}"
    );
    let d = Daemon::builder().prepare();
    let shown = d.ccd_ok(&["config", "show"]);
    for key in ["http.max_connections", "http.max_event_streams"] {
        assert!(shown.contains(key), "{key} missing from:\n{shown}");
    }
}

#[test]
fn an_event_stream_resumes_after_last_event_id() {
    let (d, addr) = http_daemon("");
    let ids: Vec<String> = (0..3)
        .map(|_| {
            d.call("session.create", json!({})).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // The first one's seq, once the log has it.
    let mut first = 0;
    wait_until("the events to be logged", Duration::from_secs(30), || {
        let events = d
            .call("event.list", json!({"types": ["session.created"]}))
            .unwrap();
        let found = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["session_id"] == ids[0].as_str())
            .and_then(|e| e["seq"].as_u64());
        first = found.unwrap_or(0);
        found.is_some()
    });
    // A reconnecting EventSource: what came after the id it saw, then what happens live.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /api/events?types=session.created HTTP/1.1\r\nHost: {addr}\r\nLast-Event-ID: {first}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let live = d.call("session.create", json!({})).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut id = 0;
    while seen.len() < 3 {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the event stream ended"
        );
        if let Some(v) = line.trim_end().strip_prefix("id: ") {
            id = v.parse().unwrap();
        }
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            let e: Value = serde_json::from_str(data).unwrap();
            seen.push((id, e["session_id"].as_str().unwrap().to_string()));
        }
    }
    let sessions: Vec<&str> = seen.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(sessions, [ids[1].as_str(), ids[2].as_str(), live.as_str()]);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert!(seen[0].0 > first);
    // An id that is not a seq is refused, not ignored.
    let (status, _, body) = get_with(&addr, "/api/events", &[("Last-Event-ID", "yesterday")]);
    assert_eq!(status, 400, "{body}");
}

/// A GET with extra headers: status, head, body.
fn get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}
