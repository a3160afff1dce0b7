//! Fuzz harnesses for the parsers that take untrusted bytes.
//!
//! Each function takes one input and panics when the parser panics or breaks one of the
//! invariants checked here; returning is a pass. The same functions are run three ways:
//!
//! - by `cargo afl fuzz` through the binaries in `src/bin/` (coverage-guided, instrumented);
//! - by `cargo test` over the seed corpus in `corpus/<target>/` (`tests/corpus.rs`);
//! - by hand on one file: `cargo afl run --bin TARGET < FILE` (docs/security.md, "Fuzzing").
//!
//! Targets:
//!
//! - [`jsonrpc`]: [`parse_incoming`], one NDJSON frame from a client;
//! - [`codec`]: [`NdjsonCodec`], the framing of a client's byte stream into lines;
//! - [`agent`]: [`parse_line`], one line of the agent CLI's stream-json output.

use bytes::BytesMut;
use ccd_protocol::stream_json::{AgentMessage, Parsed, parse_line};
use ccd_protocol::{
    FrameError, Id, Incoming, NdjsonCodec, Payload, RawNumber, Request, Response, parse_incoming,
};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::codec::Decoder;

/// The batch limit the `jsonrpc` target parses with: small, so that the fuzzer reaches the
/// over-the-limit path with short inputs.
pub const MAX_BATCH: usize = 8;

/// `parse_incoming` on one frame.
///
/// Invariants: every error reply serialises to a valid JSON-RPC error object (`jsonrpc`
/// "2.0", an integer code and a string message, an `id` that is a string, a number or null,
/// nothing else) with -32700 or -32600; a frame that serde_json reads as JSON is never a
/// parse error; a batch holds 1 to [`MAX_BATCH`] items; a request re-serialises to a line
/// that parses back to the same request, and its id is echoed as valid JSON.
pub fn jsonrpc(data: &[u8]) {
    let is_batch = data.trim_ascii_start().first() == Some(&b'[');
    let is_json = serde_json::from_slice::<Value>(data).is_ok();
    match parse_incoming(data, MAX_BATCH) {
        Incoming::Invalid(reply) => {
            let code = error_reply(&reply);
            match code {
                -32700 => assert!(!is_json, "valid JSON answered as a parse error"),
                // An empty batch, or one over the limit.
                -32600 => assert!(is_batch, "only a batch is refused whole: {reply:?}"),
                _ => panic!("unexpected code {code} for a whole frame"),
            }
            assert_eq!(reply.id, Id::Null, "a frame refused whole has no id");
        }
        Incoming::Single(item) => {
            assert!(!is_batch, "a frame starting with `[` is a batch");
            assert_json_text(data);
            request_or_reply(item);
        }
        Incoming::Batch(items) => {
            assert!(is_batch, "only a frame starting with `[` is a batch");
            assert_json_text(data);
            assert!(
                (1..=MAX_BATCH).contains(&items.len()),
                "a batch of {} items",
                items.len()
            );
            items.into_iter().for_each(request_or_reply);
        }
    }
}

/// A frame that was accepted past the first stage is JSON text (numbers of any size).
fn assert_json_text(data: &[u8]) {
    assert!(
        serde_json::from_slice::<Box<RawValue>>(data).is_ok(),
        "accepted a frame that is not JSON text"
    );
}

fn request_or_reply(item: Result<Request, Response>) {
    match item {
        Err(reply) => assert_eq!(error_reply(&reply), -32600, "{reply:?}"),
        Ok(request) => {
            assert_eq!(request.jsonrpc, "2.0");
            assert!(
                matches!(
                    request.params,
                    None | Some(Value::Object(_) | Value::Array(_))
                ),
                "params that are neither an object nor an array"
            );
            if let Some(id) = &request.id {
                // The reply echoes the id: it must be a valid id on the wire too.
                let reply = Response::result(id.clone(), Value::Null);
                let text = serde_json::to_vec(&reply).expect("a reply serialises");
                let wire: WireResult = serde_json::from_slice(&text)
                    .unwrap_or_else(|e| panic!("reply {:?}: {e}", String::from_utf8_lossy(&text)));
                assert_eq!(wire.jsonrpc, "2.0");
                assert_wire_id(&wire.id, id);
            }
            // Re-serialised (as a client library would send it), it is the same request.
            let line = serde_json::to_vec(&request).expect("a request serialises");
            match parse_incoming(&line, MAX_BATCH) {
                Incoming::Single(Ok(again)) => assert_eq!(
                    again,
                    request,
                    "re-serialised as {}",
                    String::from_utf8_lossy(&line)
                ),
                other => panic!(
                    "re-serialised request {} parsed as {other:?}",
                    String::from_utf8_lossy(&line)
                ),
            }
        }
    }
}

/// An error reply as it goes on the wire: exactly these members.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireError {
    jsonrpc: String,
    error: WireErrorObject,
    id: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireErrorObject {
    code: i64,
    message: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireResult {
    jsonrpc: String,
    #[allow(dead_code)]
    result: Box<RawValue>,
    id: Box<RawValue>,
}

/// Check `reply` serialises to a valid JSON-RPC 2.0 error response; its code.
fn error_reply(reply: &Response) -> i64 {
    let Payload::Error(error) = &reply.payload else {
        panic!("a parse outcome with a result: {reply:?}")
    };
    let text = serde_json::to_vec(reply).expect("an error reply serialises");
    let wire: WireError = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "error reply {:?} is not a JSON-RPC error object: {e}",
            String::from_utf8_lossy(&text)
        )
    });
    assert_eq!(wire.jsonrpc, "2.0");
    assert_eq!(
        (wire.error.code, wire.error.message.as_str()),
        (error.code, error.message.as_str())
    );
    assert!(wire.error.data.is_none(), "a parse error carries no data");
    assert!(!error.message.is_empty());
    assert_wire_id(&wire.id, &reply.id);
    wire.error.code
}

/// `wire` (the id as serialised) is a string, a number or null, and is `id`'s own text.
fn assert_wire_id(wire: &RawValue, id: &Id) {
    let text = wire.get();
    match id {
        Id::Null => assert_eq!(text, "null"),
        Id::String(s) => assert_eq!(
            serde_json::from_str::<String>(text).expect("a string id reads back"),
            *s
        ),
        Id::Number(n) => {
            assert_eq!(text, n.as_str(), "a number id is echoed verbatim");
            assert!(
                RawNumber::new(text).is_some(),
                "id {text} is not a JSON number"
            );
        }
    }
}

/// `NdjsonCodec` on a byte stream, fed in chunks.
///
/// The first byte picks the size limit (1 to 32 bytes), the second how the rest is fed (in
/// chunks of 1 to 16 bytes, or all at once); the rest is the stream. The frames and the error
/// must be those of a plain model of the framing, whatever the chunking: each `\n`-terminated
/// line without its `\n` and one `\r` before it, blank lines skipped, a last line without `\n`
/// still a frame, and a line over the limit an error that ends the stream. So no frame is over
/// the limit, and the frames are exactly the input's lines.
pub fn codec(data: &[u8]) {
    let [limit, feed, input @ ..] = data else {
        return;
    };
    let max_len = 1 + usize::from(limit % 32);
    let chunk = if feed & 0x80 != 0 {
        input.len().max(1)
    } else {
        1 + usize::from(feed % 16)
    };
    let got = decode_stream(input, max_len, chunk);
    for frame in got.iter().flatten() {
        assert!(frame.len() <= max_len, "a frame of {} bytes", frame.len());
    }
    assert_eq!(
        got,
        framing_model(input, max_len),
        "limit {max_len}, chunks of {chunk}"
    );
}

/// A frame, or the size-limit error (always the last item).
type Frames = Vec<Result<Vec<u8>, ()>>;

fn decode_stream(input: &[u8], max_len: usize, chunk: usize) -> Frames {
    let mut codec = NdjsonCodec::new(max_len);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let push = |r: Result<Option<bytes::Bytes>, FrameError>, out: &mut Frames| match r {
        Ok(Some(frame)) => {
            out.push(Ok(frame.to_vec()));
            true
        }
        Ok(None) => false,
        Err(FrameError::TooLong { limit }) => {
            assert_eq!(limit, max_len);
            out.push(Err(()));
            false
        }
        Err(FrameError::Io(e)) => panic!("i/o error from a buffer: {e}"),
    };
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        while push(codec.decode(&mut buf), &mut out) {}
        if out.last() == Some(&Err(())) {
            return out;
        }
    }
    // As FramedRead does at the end of the stream: decode_eof until it yields nothing.
    while push(codec.decode_eof(&mut buf), &mut out) {}
    out
}

fn framing_model(input: &[u8], max_len: usize) -> Frames {
    let mut out = Vec::new();
    let mut lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    let tail = lines.pop().unwrap_or_default();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > max_len {
            out.push(Err(()));
            return out;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            out.push(Ok(line.to_vec()));
        }
    }
    if tail.len() > max_len {
        out.push(Err(()));
    } else if !tail.iter().all(u8::is_ascii_whitespace) {
        out.push(Ok(tail.to_vec()));
    }
    out
}

/// `parse_line` on one line of the agent's stdout.
///
/// Invariants: it fails exactly when the line is not a JSON object; the raw message is the
/// line's JSON; the typed view agrees with the message's `type` (and `subtype`); the raw JSON,
/// which ccd streams to clients, parses back to the same message.
pub fn agent(data: &[u8]) {
    let as_json = serde_json::from_slice::<Value>(data);
    let Ok(parsed) = parse_line(data) else {
        assert!(
            !matches!(as_json, Ok(Value::Object(_))),
            "a JSON object refused"
        );
        return;
    };
    assert_eq!(as_json.ok().as_ref(), Some(&parsed.raw));
    assert!(parsed.raw.is_object());
    typed_view_agrees(&parsed);
    if let AgentMessage::Result(result) = &parsed.message {
        result.usage.total();
    }
    let line = serde_json::to_vec(&parsed.raw).expect("a Value serialises");
    let again = parse_line(&line).expect("the raw message parses back");
    assert_eq!(
        again,
        parsed,
        "re-serialised as {}",
        String::from_utf8_lossy(&line)
    );
}

fn typed_view_agrees(parsed: &Parsed) {
    let field = |name: &str| parsed.raw.get(name).and_then(Value::as_str);
    let kind = field("type");
    let subtype = field("subtype");
    match &parsed.message {
        AgentMessage::Init(_) => assert_eq!((kind, subtype), (Some("system"), Some("init"))),
        AgentMessage::ApiRetry(_) => {
            assert_eq!((kind, subtype), (Some("system"), Some("api_retry")))
        }
        AgentMessage::System { subtype: s } => {
            assert_eq!(kind, Some("system"));
            assert_eq!(s.as_str(), subtype.unwrap_or(""));
            assert!(
                s != "init" && s != "api_retry",
                "a typed subtype left untyped"
            );
        }
        AgentMessage::Assistant(_) => assert_eq!(kind, Some("assistant")),
        AgentMessage::User(_) => assert_eq!(kind, Some("user")),
        AgentMessage::Result(_) => assert_eq!(kind, Some("result")),
        AgentMessage::StreamEvent(event) => {
            assert_eq!(kind, Some("stream_event"));
            assert_eq!(event, parsed.raw.get("event").unwrap_or(&Value::Null));
        }
        AgentMessage::RateLimit(info) => {
            assert_eq!(kind, Some("rate_limit_event"));
            assert_eq!(
                info,
                parsed.raw.get("rate_limit_info").unwrap_or(&Value::Null)
            );
        }
        AgentMessage::Unknown => assert!(
            !matches!(kind, Some("system" | "stream_event" | "rate_limit_event"))
                || (kind == Some("system") && matches!(subtype, Some("init" | "api_retry"))),
            "a known type classified as unknown"
        ),
    }
}
