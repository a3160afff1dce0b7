//! The mock Messages API's own checks: over raw HTTP (keep-alive, chunked streaming, other
//! paths, errors, tool use, slow streams, hangs), then the real Claude Code CLI against it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::claude::CliEnv;
use crate::support::mock_api::*;

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
